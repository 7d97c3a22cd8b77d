"""Bounded state: a finished job's working keys expire after ``job_working_ttl_s`` and everything
else of it after ``job_retention_s``, so Redis returns to its size before the job (real Redis)."""

from __future__ import annotations

import time

from services.core.settings import Settings
from services.jobs.leases import Leases
from services.jobs.stages import cancel_job, conclude, generation_units
from services.jobs.store import JobStore


def _keys(store: JobStore) -> set[str]:
    return set(store.r.scan_iter(f"{store.p}:*", count=1000))


def _run_job(store: JobStore, n: int) -> str:
    """A synthesize job as its workers leave it: plan, answers, rows, counted items, a lease."""
    prompts = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(n)]
    job_id = store.create_job("synthesize", {"student_id": "s", "strategy": "random"}, prompts)
    store.set_state(job_id, "running")
    pairs = [(f"p{i}", "t") for i in range(n)]
    leases = Leases(store)
    leases.record_plan(job_id, "generate", generation_units(job_id, "generate", pairs, 4, "g"))
    store.start_stage(job_id, "generate", n)
    leases.acquire(job_id, "generate", "g00000", "task-1", lease_s=60)
    store.count_attempts(job_id, [f"p{i}|t" for i in range(n)])
    store.put_results(job_id, "gen", {f"p{i}|t": {"text": "r"} for i in range(n)})
    store.put_rows(job_id, [{"id": f"p{i}", "prompt": "q", "response": "r", "teacher": "t"} for i in range(n)])
    store.mark_items(job_id, "generate", [(f"p{i}|t", True, None) for i in range(n)], unit="g00000")
    return job_id


def test_a_finished_job_leaves_nothing_behind_after_its_retention(store):
    settings = Settings(key_prefix=store.p, job_working_ttl_s=1, job_retention_s=2)
    store.register_student("s", "m")
    baseline = _keys(store)
    done = _run_job(store, 10)
    cancelled = _run_job(store, 3)
    assert len(_keys(store)) > len(baseline) + 10
    assert conclude(store, done, settings=settings) == "succeeded"
    cancel_job(store, cancelled, settings)
    working = store._k("job", done, "results", "gen")
    retained = store._k("job", done, "rows")
    assert 0 < store.r.ttl(working) <= 1 and 1 < store.r.ttl(retained) <= 2
    time.sleep(1.2)
    assert not store.r.exists(working)  # answers are gone, the dataset is still downloadable
    assert store.row_count(done) == 10 and store.state(cancelled) == "cancelled"
    time.sleep(1.2)
    leftover = _keys(store) - baseline
    assert {k for k in leftover if not k.endswith(":lease:generate:g00000")} == set()
    assert store.r.ttl(store._k("job", done, "lease", "generate", "g00000")) > 0  # a lease expires by itself

