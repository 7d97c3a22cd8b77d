"""The generation store on its two backends: SQLite (one host) and a real PostgreSQL server (a cluster)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from services.core import generations as gen
from services.core.generations import GenerationStore, JobGenerations, generation_key

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _postgres_database():
    """A database of its own on the local PostgreSQL server (trust auth), dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"persyn_gen_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    admin.execute(f"CREATE DATABASE {name}")
    return admin, name, f"postgresql://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'generations.sqlite'}"
        return
    admin, name, url = _postgres_database()
    try:
        yield url
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def _open(url, **bounds):
    return GenerationStore(url, max_bytes=bounds.get("max_bytes", 1 << 30), max_age_s=bounds.get("max_age_s", 3600))


MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


def test_key_covers_endpoint_model_messages_and_every_decoding_parameter():
    base = generation_key("http://a/v1", "m", MESSAGES, {"temperature": 0.6, "seed": 1, "max_tokens": 64})
    assert base == generation_key("http://a/v1/", "m", MESSAGES, {"max_tokens": 64, "seed": 1, "temperature": 0.6})
    others = {
        generation_key("http://b/v1", "m", MESSAGES, {"temperature": 0.6, "seed": 1, "max_tokens": 64}),
        generation_key("http://a/v1", "m2", MESSAGES, {"temperature": 0.6, "seed": 1, "max_tokens": 64}),
        generation_key("http://a/v1", "m", [{"role": "system", "content": "Be brief."}, *MESSAGES],
                       {"temperature": 0.6, "seed": 1, "max_tokens": 64}),
        generation_key("http://a/v1", "m", MESSAGES, {"temperature": 0.6, "seed": 2, "max_tokens": 64}),  # sample 2
        generation_key("http://a/v1", "m", MESSAGES, {"temperature": 0.6, "seed": 1, "max_tokens": 65}),
        generation_key("http://a/v1", "m", MESSAGES, {"temperature": 0.7, "seed": 1, "max_tokens": 64}),
    }
    assert base not in others and len(others) == 6
    # a parameter that is not sent is not part of the key
    assert generation_key("http://a/v1", "m", MESSAGES, {"temperature": 0, "seed": None}) == \
        generation_key("http://a/v1", "m", MESSAGES, {"temperature": 0})


def test_answers_survive_a_restart_and_are_shared_by_every_process(store_url):
    first = _open(store_url)
    first.put("k1", {"text": "4", "completion_tokens": 1}, job="job-a")
    first.close()
    second, third = _open(store_url), _open(store_url)  # a restarted worker, and another one
    assert second.get("k1") == {"text": "4", "completion_tokens": 1}
    third.put("k2", {"text": "5"}, job="job-b")
    third.flush()
    assert second.get_many(["k1", "k2", "k3"]) == {"k1": {"text": "4", "completion_tokens": 1}, "k2": {"text": "5"}}
    assert second.stats()["entries"] == 2


def test_a_job_that_asked_for_fresh_answers_reads_only_its_own(store_url):
    store = _open(store_url)
    store.put("old", {"text": "from another job"}, job="job-a")
    fresh = JobGenerations(store, "job-b", reuse=False)
    assert fresh.get("old") is None
    fresh.put("old", {"text": "fresh"})  # replaces the entry: the newest answer serves later jobs
    fresh.put("mine", {"text": "mine"})
    assert fresh.get("mine") == {"text": "mine"} and fresh.get("old") == {"text": "fresh"}
    assert JobGenerations(store, "job-c").get("old") == {"text": "fresh"}
    store.close()  # commits before the fixture drops the database (a failed commit stays pending)


def test_age_bound_hides_and_evicts_old_answers(store_url):
    store = _open(store_url, max_age_s=0.5)
    store.put("k", {"text": "x"}, job="j")
    assert store.get("k") == {"text": "x"}
    time.sleep(0.7)
    assert store.get("k") is None
    assert store.evict() == 1 and store.stats()["entries"] == 0


def test_size_bound_evicts_the_least_recently_used_first(store_url, monkeypatch):
    monkeypatch.setattr(gen, "EVICT_EVERY", 5)
    monkeypatch.setattr(gen, "TOUCH_S", 0.0)  # every read marks its entry used
    text = "y" * 1000
    store = _open(store_url, max_bytes=10_000)
    for i in range(4):
        store.put(f"k{i}", {"text": text}, job="j")
        store.flush()
        time.sleep(0.01)
    store.get("k0")  # read: k0 is now the most recently used
    for i in range(4, 10):  # the 10th write finds ~10.2 KB stored: down to 9 KB, least recently used first
        store.put(f"k{i}", {"text": text}, job="j")
        store.flush()
        time.sleep(0.01)
    assert store.stats()["bytes"] <= 9_000
    assert store.get("k0") is not None, "the recently read entry was evicted before older ones"
    assert store.get("k1") is None and store.get("k2") is None, "the least recently used entries stayed"
    for i in range(10, 40):
        store.put(f"k{i}", {"text": text}, job="j")
    assert store.stats()["bytes"] <= 10_000  # every commit that passes the bound is followed by an eviction


def test_a_put_is_readable_at_once_and_committed_by_the_flusher_within_a_moment(store_url):
    writer = _open(store_url)
    writer.put("k", {"text": "soon"}, job="j")
    assert writer.get("k") == {"text": "soon"}  # the writing process sees its pending answer
    other = _open(store_url)  # another process sees it once the flusher committed it
    deadline = time.time() + 5
    while other.get("k") is None:
        assert time.time() < deadline, "the pending answer was never committed"
        time.sleep(0.02)
    assert other.get("k") == {"text": "soon"}


def test_a_store_that_does_not_answer_is_a_connection_error_the_task_retries(tmp_path):
    store = _open(f"sqlite:///{tmp_path / 'gone.sqlite'}")
    store._db.close()  # the database went away under the worker
    with pytest.raises(ConnectionError, match="generation store"):
        JobGenerations(store, "job").get("k")


def _open_and_put(url: str, n: int, start) -> None:
    start.wait()  # every process opens the new file at the same moment
    store = _open(url)
    store.put(f"k{n}", {"text": str(n)}, job="j")
    store.close()


def test_worker_processes_opening_a_new_store_at_once_all_get_it(tmp_path):
    """A host's generation workers start together and create the file together (SQLite's switch to WAL
    needs the file to itself): every one opens it and keeps its answer."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    start = context.Barrier(12)
    procs = [context.Process(target=_open_and_put, args=(url, n, start)) for n in range(12)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0] * 12
    assert _open(url).stats()["entries"] == 12


def test_bad_store_url_is_a_clear_error():
    with pytest.raises(ValueError, match="sqlite:///PATH or postgresql://"):
        _open("mysql://x")


def test_a_lost_postgresql_connection_is_opened_again(monkeypatch):
    """A worker process keeps its store for life: after the server drops its connection (a restart,
    a failover), reads and pending writes go through on a new connection instead of failing forever."""
    monkeypatch.setattr(gen, "FLUSH_S", 60.0)  # only the explicit flush commits
    admin, name, url = _postgres_database()

    def drop_connections():
        admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s", [name])

    try:
        store = _open(url)
        store.put("k1", {"text": "4"}, job="j")
        store.flush()
        drop_connections()
        assert store.get("k1") == {"text": "4"}
        store.put("k2", {"text": "5"}, job="j")
        drop_connections()
        store.flush()
        assert _open(url).get("k2") == {"text": "5"}
        store.close()
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()
