"""Faults injected into a running stack: a private Redis (AOF on) restarted mid-job, a whole
generation worker SIGKILLed, a teacher down for the whole job, a teacher answering 30% 5xx.

Real Redis, real Celery worker processes, the real gateway, loopback teachers speaking the
OpenAI protocol. The broker's visibility timeout stays at its production value (7200 s), so
only the leases and the watchdog can bring a lost item back within the tests' bounds. Every
test asserts the job ends in time, in the state its output earns, with exactly one row per
prompt that has an answer, and that no degraded calibration activates a router.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import httpx
import pytest
import redis

from services.demo.problems import make_problems
from services.embedded.stack import LocalStack, free_port
from services.jobs.store import JobStore
from services.method.formats import Teacher, dump_teacher_pool
from fake_teacher import FakeTeacher
from private_redis import PrivateRedis
from fake_vllm import start_server

LEASE_S = 4
PROMPTS = {p["prompt"]: p for p in make_problems(40, seed=5)}
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def _teacher(name: str, url: str) -> Teacher:
    return Teacher(name=name, family="fake", size_b=7.0, base_url=f"{url}/v1", model=name)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    work = tmp_path_factory.mktemp("chaos")
    server = PrivateRedis(work)
    server.start()
    right = {p: f"The answer is \\boxed{{{q['reference']}}}." for p, q in PROMPTS.items()}
    fakes = {"steady": FakeTeacher("steady", answers=right, latency_s=0.4),
             "wrong": FakeTeacher("wrong", answers={p: "The answer is \\boxed{-1}." for p in PROMPTS}),
             "flaky": FakeTeacher("flaky", fail_rate=0.3, seed=7)}
    servers = {name: start_server(f.app) for name, f in fakes.items()}
    teachers = [_teacher(name, url) for name, (url, _) in servers.items()]
    teachers.append(_teacher("down", f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    stack = LocalStack(work_dir=work, redis_url=server.url, key_prefix=prefix,
                       teacher_pool=dump_teacher_pool(teachers, work / "pool.yaml"),
                       concurrency={"generation": 2, "scoring": 1, "training": 1},
                       extra_env={"PERSYN_LEASE_SECONDS": str(LEASE_S), "PERSYN_WATCHDOG_INTERVAL_S": "1",
                                  "PERSYN_REDIS_RETRY_S": "30", "PERSYN_TASK_MAX_RETRIES": "2",
                                  "PERSYN_ROUTER_MIN_PROMPTS": "10", "PERSYN_ROUTER_MIN_PAIRS": "10",
                                  # chunks of 2 items: a fault always meets chunks in flight and queued
                                  "PERSYN_CHUNK_ITEMS": "2", "PERSYN_MIN_CHUNKS": "1", "PERSYN_CHUNK_PARALLEL": "2"})
    try:
        with stack:
            with httpx.Client(base_url=stack.url, timeout=30) as client:
                yield stack, server, JobStore.from_url(server.url, prefix), client, fakes
    finally:
        for _, stop in servers.values():
            stop()
        server.stop()


def _submit(client, student, prompts, teachers, **spec):
    client.post("/v1/students", json={"student_id": student})
    body = {"kind": "synthesize", "student_id": student, "strategy": "random", "prompts": prompts,
            "teachers": teachers, "seed": 3, **spec}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _plain(n, seed):
    return [{"id": f"p{seed}-{i}", "prompt": p["prompt"]} for i, p in enumerate(make_problems(n, seed=seed))]


def _wait(store, job_id, timeout):
    """Poll the store (through Redis outages) until the job ends; returns (state, seconds waited)."""
    start = time.time()
    while time.time() - start < timeout:
        try:
            state = store.state(job_id)
            if state not in ("queued", "running"):
                return state, time.time() - start
        except redis.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still running after {timeout}s: {store.stage_progress(job_id)}")


def _rows(client, job_id):
    response = client.get(f"/v1/jobs/{job_id}/dataset")
    assert response.status_code == 200
    rows = [json.loads(line) for line in response.text.splitlines() if line]
    assert len({r["id"] for r in rows}) == len(rows), "duplicate rows"
    return rows


def _rows_so_far(store, job_id):
    try:
        return store.row_count(job_id)
    except redis.ConnectionError:
        return -1


def _kill_tree(proc):
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
        children = [int(c) for c in fh.read().split()]
    for child in children:
        os.kill(child, signal.SIGKILL)
    proc.kill()
    proc.wait()


def _report(name, **numbers):
    print(f"\nRECOVERY {name}: " + ", ".join(f"{k}={v:.1f}s" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in numbers.items()))


def test_redis_restarted_mid_job_ends_with_every_row(chaos):
    stack, server, store, client, fakes = chaos
    prompts = _plain(16, seed=1)
    job_id = _submit(client, "redis-restart", prompts, ["steady"])
    deadline = time.time() + 60
    while _rows_so_far(store, job_id) < 3 and time.time() < deadline:
        time.sleep(0.1)
    server.stop()
    down_at = time.time()
    time.sleep(5)
    server.start()
    back_at = time.time()
    state, waited = _wait(store, job_id, timeout=75)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert state == "succeeded", job
    assert sorted(r["id"] for r in _rows(client, job_id)) == sorted(p["id"] for p in prompts)
    generate = next(s for s in job["stages"] if s["stage"] == "generate")
    assert generate["done"] == 16 and generate["failed"] == 0
    _report("redis-restart", down=back_at - down_at, job_end_after_restart=waited,
            redis_retries=generate["redis_retries"], redelivered=generate["redelivered"])


def _restart_generation_worker(stack, **env):
    """Replace the generation worker (warm shutdown) by one with ``env`` on top of the stack's."""
    old = stack.workers["generation"]
    old.terminate()
    old.wait(30)
    stack.extra_env.pop("PERSYN_REDIS_RETRY_S", None)
    stack.extra_env.update(env)
    stack.start_worker("generation")


def test_redis_down_past_the_tasks_retry_bound_is_recovered_by_the_watchdog(chaos):
    """Tasks give up on Redis after 1 s and are acked; their items are not forgotten."""
    stack, server, store, client, fakes = chaos
    _restart_generation_worker(stack, PERSYN_REDIS_RETRY_S="1")
    try:
        prompts = _plain(12, seed=6)
        job_id = _submit(client, "redis-long-outage", prompts, ["steady"])
        deadline = time.time() + 60
        while _rows_so_far(store, job_id) < 2 and time.time() < deadline:
            time.sleep(0.1)
        server.stop()
        time.sleep(6)
        server.start()
        state, waited = _wait(store, job_id, timeout=75)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert state == "succeeded", job
        assert sorted(r["id"] for r in _rows(client, job_id)) == sorted(p["id"] for p in prompts)
        generate = next(s for s in job["stages"] if s["stage"] == "generate")
        assert generate["redelivered"] >= 1 and generate["failed"] == 0
        _report("redis-outage-past-retry-bound", down=6.0, job_end_after_restart=waited,
                redelivered=generate["redelivered"])
    finally:
        _restart_generation_worker(stack)


def test_sigkilled_worker_items_are_requeued_by_the_watchdog(chaos):
    stack, server, store, client, fakes = chaos
    prompts = _plain(10, seed=2)
    job_id = _submit(client, "worker-kill", prompts, ["steady"])
    deadline = time.time() + 60
    while _rows_so_far(store, job_id) < 2 and time.time() < deadline:
        time.sleep(0.05)
    _kill_tree(stack.workers["generation"])
    killed_at = time.time()
    stack.start_worker("generation")
    requeued_at = None
    while requeued_at is None and time.time() - killed_at < 60:
        stages = client.get(f"/v1/jobs/{job_id}").json()["stages"]
        if any(s["redelivered"] for s in stages):
            requeued_at = time.time()
        time.sleep(0.2)
    assert requeued_at is not None, "the watchdog never requeued the killed worker's items"
    state, waited = _wait(store, job_id, timeout=60)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert state == "succeeded", job
    assert sorted(r["id"] for r in _rows(client, job_id)) == sorted(p["id"] for p in prompts)
    attempts = store.attempts(job_id)
    # only the killed processes' chunks (2 items each) ran twice
    assert sum(n - 1 for n in attempts.values()) <= 2 * stack.concurrency["generation"]
    assert requeued_at - killed_at < LEASE_S + 15
    _report("worker-sigkill", requeued_after_kill=requeued_at - killed_at,
            job_end_after_kill=time.time() - killed_at,
            redelivered=sum(s["redelivered"] for s in job["stages"]))


def test_teacher_down_for_the_whole_job_ends_partial_with_its_reason(chaos):
    stack, server, store, client, fakes = chaos
    prompts = _plain(8, seed=3)
    job_id = _submit(client, "teacher-down", prompts, ["steady", "down"])
    state, waited = _wait(store, job_id, timeout=80)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assigned = {pid: a["teacher"] for pid, a in store.get_results(job_id, "assign").items()}
    assert set(assigned.values()) == {"steady", "down"}  # the random draw gave the dead teacher some prompts
    assert state == "partial", job
    rows = _rows(client, job_id)
    assert sorted(r["id"] for r in rows) == sorted(pid for pid, t in assigned.items() if t == "steady")
    assert job["failures"]["down"]["items"] == sum(t == "down" for t in assigned.values())
    assert "down" in job["error"] and "have no row" in job["error"]
    _report("teacher-down", job_end=waited, failed_items=job["failures"]["down"]["items"])


def test_a_teacher_that_fails_everything_stops_its_job_early_naming_it(chaos):
    stack, server, store, client, fakes = chaos
    prompts = _plain(40, seed=6)
    job_id = _submit(client, "error-budget", prompts, ["down"], max_error_rate=0.2)
    state, waited = _wait(store, job_id, timeout=80)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert state == "failed" and job["error"].startswith("stopped early:"), job
    generate = next(s for s in job["stages"] if s["stage"] == "generate")
    assert generate["done"] == 0 and generate["failed"] < 40  # stopped before every prompt was tried
    assert job["failures"]["down"]["items"] == generate["failed"] and job["failures"]["down"]["kinds"]
    assert "down:" in job["error"]
    _report("error-budget", job_end=waited, failed_before_stop=generate["failed"])


def test_teacher_with_30_percent_5xx_still_gives_every_row(chaos):
    stack, server, store, client, fakes = chaos
    prompts = _plain(12, seed=4)
    before = fakes["flaky"].outcomes["http_500"]
    job_id = _submit(client, "flaky", prompts, ["flaky"])
    state, waited = _wait(store, job_id, timeout=80)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert state == "succeeded", job
    assert sorted(r["id"] for r in _rows(client, job_id)) == sorted(p["id"] for p in prompts)
    assert fakes["flaky"].outcomes["http_500"] > before  # the fault really was met
    _report("teacher-30pct-5xx", job_end=waited, injected_500s=fakes["flaky"].outcomes["http_500"] - before)


def test_degraded_calibration_never_replaces_a_good_router(chaos):
    stack, server, store, client, fakes = chaos
    client.post("/v1/students", json={"student_id": "gated"})
    calibration = [p for p in PROMPTS.values()][:12]
    good = client.post("/v1/jobs", json={"kind": "calibrate", "student_id": "gated", "prompts": calibration,
                                         "calibration_size": 12, "alpha": 0.0, "teachers": ["steady", "wrong"]})
    assert good.status_code == 202, good.text
    state, _ = _wait(store, good.json()["id"], timeout=120)
    job = client.get(f"/v1/jobs/{good.json()['id']}").json()
    assert state == "succeeded", job
    assert job["router_gate"]["activated"], job["router_gate"]
    assert client.get("/v1/students/gated").json()["active_version"] == job["router_version"]

    for teachers, trains in ((["steady", "down"], False), (["steady", "wrong", "down"], True)):
        response = client.post("/v1/jobs", json={"kind": "calibrate", "student_id": "gated", "prompts": calibration,
                                                 "calibration_size": 12, "alpha": 0.0, "teachers": teachers})
        state, _ = _wait(store, response.json()["id"], timeout=120)
        bad = client.get(f"/v1/jobs/{response.json()['id']}").json()
        assert bad["failures"]["down"]["items"] == 12
        student = client.get("/v1/students/gated").json()
        assert student["active_version"] == job["router_version"]  # the good router stays
        if trains:  # pairs between steady and wrong: a router is trained, stored inactive with the reason
            assert state == "partial", bad
            [version] = [v for v in student["versions"] if v["version"] == bad["router_version"]]
            assert not version["metrics"]["gate"]["activated"]
            assert "degraded" in version["metrics"]["gate"]["reason"]
            assert bad["router_gate"]["reason"] == version["metrics"]["gate"]["reason"]
        else:  # one answer per prompt: no pairs, nothing to train
            assert state == "failed" and "no training pairs" in bad["error"], bad


def test_a_persyn_job_whose_router_the_gate_refuses_uses_the_best_single_teacher(chaos):
    stack, server, store, client, fakes = chaos
    client.post("/v1/students", json={"student_id": "small-calibration"})
    prompts = [p for p in PROMPTS.values()][12:24]
    response = client.post("/v1/jobs", json={"kind": "persyn", "student_id": "small-calibration", "prompts": prompts,
                                             "calibration_size": 6, "alpha": 0.0, "teachers": ["steady", "wrong"]})
    assert response.status_code == 202, response.text
    state, _ = _wait(store, response.json()["id"], timeout=120)
    job = client.get(f"/v1/jobs/{response.json()['id']}").json()
    assert state == "succeeded", job
    assert not job["router_gate"]["activated"] and "PERSYN_ROUTER_MIN_PROMPTS" in job["router_gate"]["reason"]
    assert client.get("/v1/students/small-calibration").json()["active_version"] is None
    rows = _rows(client, job["id"])
    assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in prompts)
    assert {r["teacher"] for r in rows} == {"steady"}  # calibration rows keep their best answer, the rest: best single
