"""Never pay for a generation twice: the same job again, a job resumed after a cancel, a worker killed
between storing an answer and writing its row, a teacher added to a calibrated pool.

Real Redis (a private server, so it can be flushed), real Celery workers, the real gateway, loopback
teachers speaking the OpenAI protocol that count every request they receive, per prompt.
"""

from __future__ import annotations

import shutil
import time
import uuid

import httpx
import pytest
import redis

from services.demo.problems import make_problems
from services.embedded.stack import LocalStack
from services.jobs.store import JobStore
from services.method.formats import Teacher, dump_teacher_pool
from services.synthesis.teachers import math_samples_for
from fake_teacher import FakeTeacher
from fake_vllm import start_server
from private_redis import PrivateRedis
from test_chaos import _kill_tree, _rows, _wait

LEASE_S = 4
MATH = make_problems(10, seed=21)
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def _plain(n: int, seed: int) -> list[dict]:
    return [{"id": f"q{seed}-{i}", "prompt": f"{p['prompt']} (set {seed})"}
            for i, p in enumerate(make_problems(n, seed=seed))]


SLOW = _plain(2, seed=33)


@pytest.fixture(scope="module")
def reuse(tmp_path_factory):
    work = tmp_path_factory.mktemp("reuse")
    server = PrivateRedis(work)
    server.start()
    right = {p["prompt"]: f"The answer is \\boxed{{{p['reference']}}}." for p in MATH}
    fakes = {"alpha": FakeTeacher("alpha", answers=right, latency_s=0.3),
             "beta": FakeTeacher("beta", answers={p["prompt"]: "The answer is \\boxed{-1}." for p in MATH}),
             "gamma": FakeTeacher("gamma", answers=right),
             "tortoise": FakeTeacher("tortoise", slow={SLOW[1]["prompt"]: 8.0})}
    servers = {name: start_server(f.app) for name, f in fakes.items()}
    teachers = [Teacher(name=name, family="fake", size_b=7.0, base_url=f"{url}/v1", model=name)
                for name, (url, _) in servers.items()]
    prefix = f"reuse-{uuid.uuid4().hex[:8]}"
    stack = LocalStack(work_dir=work, redis_url=server.url, key_prefix=prefix,
                       teacher_pool=dump_teacher_pool(teachers, work / "pool.yaml"),
                       concurrency={"generation": 2, "scoring": 1, "training": 1},
                       extra_env={"PERSYN_LEASE_SECONDS": str(LEASE_S), "PERSYN_WATCHDOG_INTERVAL_S": "1",
                                  "PERSYN_ROUTER_MIN_PROMPTS": "5", "PERSYN_ROUTER_MIN_PAIRS": "5",
                                  "PERSYN_CHUNK_ITEMS": "2", "PERSYN_MIN_CHUNKS": "1", "PERSYN_CHUNK_PARALLEL": "2"})
    try:
        with stack:
            with httpx.Client(base_url=stack.url, timeout=30) as client:
                yield stack, server, JobStore.from_url(server.url, prefix), client, fakes
    finally:
        for _, stop in servers.values():
            stop()
        server.stop()


def _submit(client, student: str, prompts: list[dict], teachers: list[str], **spec) -> dict:
    client.post("/v1/students", json={"student_id": student})
    body = {"kind": "synthesize", "student_id": student, "strategy": "random", "prompts": prompts,
            "teachers": teachers, "seed": 3, **spec}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _finished(client, store, job_id: str, timeout: float = 90) -> dict:
    _wait(store, job_id, timeout)
    return client.get(f"/v1/jobs/{job_id}").json()


def _asked(fake: FakeTeacher, prompts: list[dict]) -> dict[str, int]:
    return {p["id"]: fake.asked[p["prompt"]] for p in prompts}


def test_the_same_job_again_asks_no_teacher_even_after_a_redis_flush_and_a_worker_restart(reuse):
    stack, server, store, client, fakes = reuse
    prompts = _plain(8, seed=31)
    first = _finished(client, store, _submit(client, "again", prompts, ["beta", "gamma"])["id"])
    assert first["state"] == "succeeded", first
    asked = {name: sum(_asked(fakes[name], prompts).values()) for name in ("beta", "gamma")}
    assert sum(asked.values()) == 8 and first["generations"] == {"requested": 8, "from_store": 0}
    first_rows = sorted((r["id"], r["response"]) for r in _rows(client, first["id"]))

    redis.Redis.from_url(server.url).flushall()  # every job, student, queue and binding gone
    for queue, worker in list(stack.workers.items()):  # and every worker restarted
        _kill_tree(worker)
        stack.start_worker(queue)
    second = _finished(client, store, _submit(client, "again", prompts, ["beta", "gamma"])["id"])
    assert second["state"] == "succeeded", second
    assert {name: sum(_asked(fakes[name], prompts).values()) for name in ("beta", "gamma")} == asked
    assert second["generations"] == {"requested": 0, "from_store": 8}
    assert sorted((r["id"], r["response"]) for r in _rows(client, second["id"])) == first_rows

    fresh = _finished(client, store, _submit(client, "again", prompts, ["beta", "gamma"], cache=False)["id"])
    assert fresh["state"] == "succeeded" and fresh["generations"] == {"requested": 8, "from_store": 0}
    assert sum(sum(_asked(fakes[name], prompts).values()) for name in ("beta", "gamma")) == 16


def test_a_job_cancelled_halfway_and_resumed_asks_exactly_the_missing_requests(reuse):
    stack, server, store, client, fakes = reuse
    prompts = _plain(16, seed=32)
    job_id = _submit(client, "resumed", prompts, ["alpha"])["id"]
    deadline = time.time() + 60
    while store.row_count(job_id) < 6 and time.time() < deadline:
        time.sleep(0.05)
    cancelled = client.delete(f"/v1/jobs/{job_id}").json()
    assert cancelled["state"] == "cancelled"
    time.sleep(2)  # requests in flight at the cancel finish; their answers are kept, their rows are not written
    kept = store.row_count(job_id)
    assert 6 <= kept < 16
    asked_before = sum(_asked(fakes["alpha"], prompts).values())

    resumed = client.post(f"/v1/jobs/{job_id}/resume")
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["resumes"] == 1 and resumed.json()["resumed_prompts"] == 16 - kept
    job = _finished(client, store, job_id)
    assert job["state"] == "succeeded", job
    assert sorted(r["id"] for r in _rows(client, job_id)) == sorted(p["id"] for p in prompts)
    assert set(_asked(fakes["alpha"], prompts).values()) == {1}, "a prompt was asked twice"
    # over both runs the job paid for one request per prompt: the resume asked only what was never answered
    assert job["generations"]["requested"] == 16 and asked_before < 16

    again = client.post(f"/v1/jobs/{job_id}/resume")
    assert again.status_code == 409 and "succeeded" in again.json()["detail"]
    unknown = client.post("/v1/jobs/no-such-job/resume")
    assert unknown.status_code == 404 and "unknown job" in unknown.json()["detail"]


def test_a_worker_killed_after_storing_an_answer_but_before_its_row_asks_no_second_time(reuse):
    stack, server, store, client, fakes = reuse
    quick, slow = SLOW  # one chunk: the quick answer is stored while the slow one is still out
    job_id = _submit(client, "killed", SLOW, ["tortoise"])["id"]
    deadline = time.time() + 30
    while not (fakes["tortoise"].asked[quick["prompt"]] and fakes["tortoise"].asked[slow["prompt"]]):
        assert time.time() < deadline, "the chunk never started"
        time.sleep(0.05)
    time.sleep(1.0)  # the quick answer is back and stored; the chunk waits on the slow one, no row written
    assert store.row_count(job_id) == 0
    _kill_tree(stack.workers["generation"])
    stack.start_worker("generation")
    job = _finished(client, store, job_id, timeout=90)
    assert job["state"] == "succeeded", job
    assert sorted(r["id"] for r in _rows(client, job_id)) == [quick["id"], slow["id"]]
    assert fakes["tortoise"].asked[quick["prompt"]] == 1, "the stored answer was asked for again"
    assert job["generations"]["from_store"] >= 1


def test_adding_a_teacher_and_recalibrating_asks_only_the_new_teacher(reuse):
    stack, server, store, client, fakes = reuse
    client.post("/v1/students", json={"student_id": "growing"})

    def calibrate(teachers):
        response = client.post("/v1/jobs", json={"kind": "calibrate", "student_id": "growing", "prompts": MATH,
                                                 "calibration_size": len(MATH), "alpha": 0.0, "teachers": teachers})
        assert response.status_code == 202, response.text
        return _finished(client, store, response.json()["id"], timeout=150)

    def asked():
        return {name: sum(_asked(fakes[name], MATH).values()) for name in ("alpha", "beta", "gamma")}

    first = calibrate(["alpha", "beta"])
    assert first["state"] == "succeeded", first
    before = asked()
    samples = math_samples_for(Teacher(name="x", family="fake", size_b=7.0, base_url="http://x/v1", model="x"))
    assert before == {"alpha": len(MATH) * samples, "beta": len(MATH) * samples, "gamma": 0}

    grown = calibrate(["alpha", "beta", "gamma"])
    assert grown["state"] == "succeeded", grown
    after = asked()
    assert after == {**before, "gamma": len(MATH) * samples}  # only the new teacher answered, each prompt once
    assert grown["generations"] == {"requested": len(MATH) * samples, "from_store": 2 * len(MATH) * samples}
    version = next(v for v in client.get("/v1/students/growing").json()["versions"]
                   if v["version"] == grown["router_version"])
    assert set(version["metrics"]["calibration_stats"]["quality"]) == {"alpha", "beta", "gamma"}  # the full set

    shrunk = calibrate(["beta", "gamma"])
    assert shrunk["state"] == "succeeded", shrunk
    assert asked() == after and shrunk["generations"]["requested"] == 0  # a removed teacher costs nothing
