"""The whole service on loopback: real Redis, real Celery worker processes, real HTTP,
the demo teacher pool on llama.cpp and the real student and router backbone."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import httpx
import numpy as np
import pytest

from services.demo.problems import make_problems
from services.embedded.stack import LocalStack
from services.jobs.store import JobStore
from services.routing.model import Router

STUDENT = "smol"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from services.demo.pool import DemoPool
    from services.method.formats import dump_teacher_pool

    prefix = f"test-svc-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("stack")
    with DemoPool() as pool:
        teachers = pool.teachers
        for t in teachers:  # short answers keep the jobs quick
            t.sampling = {**t.sampling, "max_tokens": 32}
        pool_file = dump_teacher_pool(teachers, work / "pool.yaml")
        with LocalStack(work_dir=work, key_prefix=prefix, teacher_pool=pool_file,
                        concurrency={"generation": 2, "scoring": 1, "training": 1},
                        extra_env={"PERSYN_LEASE_SECONDS": "5", "PERSYN_WATCHDOG_INTERVAL_S": "1",
                                   # tiny calibrations (no validation split): the gate checks size only
                                   "PERSYN_ROUTER_MIN_PROMPTS": "3", "PERSYN_ROUTER_MIN_PAIRS": "1",
                                   "PERSYN_PRECISION": "fp32"}) as running:
            store = JobStore.from_url(running.redis_url, prefix)
            with httpx.Client(base_url=running.url, timeout=60) as client:
                yield running, store, client, [t.name for t in teachers]
            for key in store.r.scan_iter(f"{prefix}:*"):
                store.r.delete(key)


def wait(client, job_id, timeout=420, until=("succeeded", "failed", "cancelled")):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in until:
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def dataset(client, job_id, fmt="jsonl"):
    response = client.get(f"/v1/jobs/{job_id}/dataset", params={"format": fmt})
    assert response.status_code == 200
    if fmt == "jsonl":
        return [json.loads(line) for line in response.text.splitlines() if line]
    return response.json()


def test_persyn_job_end_to_end_then_routing_matches_the_library(stack):
    running, store, client, teachers = stack
    assert client.post("/v1/students", json={"student_id": STUDENT, "family": "smollm2"}).status_code == 201
    prompts = make_problems(6, seed=3)
    response = client.post("/v1/jobs", json={"kind": "persyn", "student_id": STUDENT, "prompts": prompts,
                                             "calibration_size": 3, "seed": 0})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["state"] == "succeeded", job
    stages = {s["stage"]: s for s in job["stages"]}
    assert list(stages) == ["calibration.generate", "calibration.score", "train", "route", "generate"]
    assert stages["calibration.generate"]["total"] == 3 * len(teachers)
    assert stages["generate"]["total"] == 3
    rows = dataset(client, job["id"])
    assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in prompts)
    assert sum(job["allocation"].values()) == 6 and set(job["allocation"]) <= set(teachers)
    assert all(u["completion_tokens"] > 0 for u in job["usage"].values())
    assert len(dataset(client, job["id"], "sharegpt")) == 6

    student = client.get(f"/v1/students/{STUDENT}").json()
    assert student["active_version"] == job["router_version"]
    version = next(v for v in student["versions"] if v["version"] == job["router_version"])
    tokens = version["metrics"]["calibration_stats"]["output_tokens"]  # what budgets and dry runs price from
    assert set(tokens) == set(teachers) and all(t > 0 for t in tokens.values())
    assert job["routing_cost"]["routed_prompts"] == 3 and job["routing_cost"]["expected_cost_usd"] >= 0
    new_prompts = [p["prompt"] for p in make_problems(5, seed=9)]
    routed = client.post("/v1/route", json={"student_id": STUDENT, "prompts": new_prompts, "top_k": 2}).json()
    assert routed["router_version"] == job["router_version"]
    _, path = store.active_router(STUDENT)
    expected = Router.load(path).route(new_prompts, top_k=2)
    for got, want in zip(routed["results"], expected):
        assert got["teacher"] == want.teacher and got["top_k"] == want.top_k
        np.testing.assert_allclose([got["strengths"][t] for t in teachers],
                                   [want.strengths[t] for t in teachers], atol=1e-5)


def _synthesize(client, n, seed):
    prompts = [{"id": p["id"], "prompt": p["prompt"]} for p in make_problems(n, seed=seed)]
    client.post("/v1/students", json={"student_id": "rand-student"})
    response = client.post("/v1/jobs", json={"kind": "synthesize", "student_id": "rand-student",
                                             "strategy": "random", "prompts": prompts, "seed": seed})
    assert response.status_code == 202, response.text
    return response.json()["id"], prompts


def _kill_tree(proc):
    """SIGKILL the worker and its pool processes: nothing gets to ack or requeue."""
    for child in _children(proc.pid):
        os.kill(child, signal.SIGKILL)
    proc.kill()
    proc.wait()


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        return []


def test_worker_killed_mid_job_still_gives_one_row_per_prompt(stack):
    running, store, client, teachers = stack
    job_id, prompts = _synthesize(client, 10, seed=11)
    deadline = time.time() + 180
    while time.time() < deadline:  # kill once generation has started but not finished
        stages = {s["stage"]: s for s in client.get(f"/v1/jobs/{job_id}").json()["stages"]}
        if "generate" in stages and 1 <= stages["generate"]["done"] < stages["generate"]["total"] - 2:
            break
        time.sleep(0.2)
    killed = running.workers["generation"]
    in_flight = running.concurrency["generation"]
    _kill_tree(killed)
    running.start_worker("generation")
    job = wait(client, job_id)
    assert job["state"] == "succeeded", job
    rows = dataset(client, job_id)
    assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in prompts)  # exactly one row each
    attempts = store.attempts(job_id)
    assert set(attempts) == {f"{r['id']}|{r['teacher']}" for r in rows}
    repeated = sum(n - 1 for n in attempts.values())
    assert repeated <= in_flight, attempts  # only the tasks the killed worker held ran twice


def test_cancel_stops_a_running_job(stack):
    running, store, client, teachers = stack
    job_id, prompts = _synthesize(client, 40, seed=12)
    deadline = time.time() + 120
    while time.time() < deadline:
        stages = {s["stage"]: s for s in client.get(f"/v1/jobs/{job_id}").json()["stages"]}
        if stages.get("generate", {}).get("done", 0) >= 1:
            break
        time.sleep(0.2)
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    time.sleep(6)  # in-flight tasks finish; queued ones must do nothing
    settled = sum(store.attempts(job_id).values())
    time.sleep(6)
    assert sum(store.attempts(job_id).values()) == settled
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled"
    assert job["stages"][-1]["done"] < len(prompts)
    assert len(dataset(client, job_id)) == job["rows"] < len(prompts)  # partial dataset stays downloadable


def test_generate_then_select_strategies_pick_by_their_scores(stack):
    running, store, client, teachers = stack
    client.post("/v1/students", json={"student_id": "gts-student"})
    prompts = make_problems(2, seed=21)
    jobs = {}
    for strategy in ("oracle", "scas"):
        response = client.post("/v1/jobs", json={"kind": "synthesize", "student_id": "gts-student",
                                                 "strategy": strategy, "prompts": prompts, "seed": 1})
        assert response.status_code == 202, response.text
        jobs[strategy] = response.json()["id"]
    for strategy, job_id in jobs.items():
        job = wait(client, job_id)
        assert job["state"] == "succeeded", job
        assert [(s["stage"], s["total"]) for s in job["stages"]] == [("generate", 2 * len(teachers)), ("select", 2)]
        rows = dataset(client, job_id)
        assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in prompts)
        for row in rows:
            scores = store.get_result(job_id, "score", row["id"])
            values = scores["combined"] if strategy == "oracle" else [-c for c in scores["scas_cost"]]
            assert row["teacher"] == scores["teachers"][int(np.argmax(values))]
            assert row["response"] == store.get_result(job_id, "gen", f"{row['id']}|{row['teacher']}")["text"]


def test_calibrate_job_then_baselines_that_use_its_statistics(stack):
    running, store, client, teachers = stack
    client.post("/v1/students", json={"student_id": "base-student", "family": "smollm2"})
    response = client.post("/v1/jobs", json={"kind": "calibrate", "student_id": "base-student",
                                             "prompts": make_problems(3, seed=31), "calibration_size": 3})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["state"] == "succeeded", job
    assert [s["stage"] for s in job["stages"]] == ["calibration.generate", "calibration.score", "train"]
    assert job["rows"] == 0  # calibration alone builds no dataset
    student = client.get("/v1/students/base-student").json()
    [version] = student["versions"]
    assert student["active_version"] == version["version"] == job["router_version"]
    stats = version["metrics"]["calibration_stats"]
    quality, learn = stats["quality"], stats["learnability"]
    strong = max(teachers, key=lambda t: quality[t])
    car = max(teachers, key=lambda t: quality[t] / (1 + (-learn[t])))
    family = max((t for t in teachers if t != "demo-creative"), key=lambda t: quality[t])  # smollm2 family

    prompts = [{"id": p["id"], "prompt": p["prompt"]} for p in make_problems(3, seed=32)]
    expected = {"strong": {strong}, "car": {car}, "family_strong": {family}, "mix": set(teachers)}
    submitted = {}
    for strategy in expected:
        response = client.post("/v1/jobs", json={"kind": "synthesize", "student_id": "base-student",
                                                 "strategy": strategy, "prompts": prompts, "max_tokens": 6})
        assert response.status_code == 202, response.text
        submitted[strategy] = response.json()["id"]
    for strategy, job_id in submitted.items():
        job = wait(client, job_id)
        assert job["state"] == "succeeded", job
        used = {r["teacher"] for r in dataset(client, job_id)}
        assert job["rows"] == len(prompts)
        asked = [u for u in job["usage"].values() if u["requests"]]
        assert all(0 < u["completion_tokens"] <= 6 * u["requests"] for u in asked)  # the job's limit
        # every prompt's answer was asked for, or came from the store (same prompt, teacher and decoding)
        assert job["generations"]["requested"] + job["generations"]["from_store"] == len(prompts)
        if strategy == "mix":
            assert used <= expected[strategy]  # a uniform per-prompt draw over the pool
        else:
            assert used == expected[strategy], strategy


def test_a_kcenter_calibration_samples_on_the_training_worker_then_trains(stack):
    running, store, client, teachers = stack
    from services.method.kcenter import kcenter_greedy
    from services.routing.model import PromptEncoder

    client.post("/v1/students", json={"student_id": "active-student", "family": "smollm2"})
    prompts = make_problems(7, seed=41)
    response = client.post("/v1/jobs", json={"kind": "calibrate", "student_id": "active-student", "prompts": prompts,
                                             "calibration_size": 3, "calibration_sampler": "kcenter", "seed": 2})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["state"] == "succeeded", job
    assert [s["stage"] for s in job["stages"]] == ["calibration.sample", "calibration.generate",
                                                   "calibration.score", "train"]
    assert job["n_calibration"] == 3 and job["stages"][1]["total"] == 3 * len(teachers)
    # the worker's choice is the library's greedy k-center on the backbone's embeddings
    features = PromptEncoder("all-minilm-l6-v2", device="cpu").encode([p["prompt"] for p in prompts])
    expected = sorted(prompts[i]["id"] for i in kcenter_greedy(features, 3, seed=2))
    assert sorted(store.job_record(job["id"])["spec"]["calibration"]) == expected
    assert sorted(store.get_results(job["id"], "score")) == expected


def test_hybrid_fallback_asks_the_runner_up_and_keeps_the_better_answer(stack):
    running, store, client, teachers = stack
    client.post("/v1/students", json={"student_id": "hybrid-student", "family": "smollm2"})
    calibrated = client.post("/v1/jobs", json={"kind": "calibrate", "student_id": "hybrid-student",
                                               "prompts": make_problems(4, seed=51), "calibration_size": 4})
    assert wait(client, calibrated.json()["id"])["state"] == "succeeded"
    prompts = make_problems(4, seed=52)
    submitted = {}
    for margin in (1e6, 1e-12):  # every prompt ambiguous / none (the router's strengths are never tied)
        response = client.post("/v1/jobs", json={"kind": "synthesize", "student_id": "hybrid-student",
                                                 "prompts": prompts, "hybrid_margin": margin, "max_tokens": 16})
        assert response.status_code == 202, response.text
        submitted[margin] = response.json()["id"]

    job = wait(client, submitted[1e6])
    assert job["state"] == "succeeded", job
    stages = {s["stage"]: s for s in job["stages"]}
    assert list(stages) == ["route", "generate", "hybrid.generate", "hybrid.select"]
    assert stages["hybrid.generate"]["total"] == stages["hybrid.select"]["total"] == len(prompts)
    rows = {r["id"]: r for r in dataset(client, job["id"])}
    assert len(rows) == len(prompts) and sum(job["allocation"].values()) == len(prompts)
    switched = 0
    for p in prompts:
        assigned = store.get_result(job["id"], "assign", p["id"])
        assert assigned["second"] != assigned["teacher"]
        scores = store.get_result(job["id"], "score", p["id"])
        assert sorted(scores["teachers"]) == sorted([assigned["teacher"], assigned["second"]])
        combined = {t: (-np.inf if c is None else c) for t, c in zip(scores["teachers"], scores["combined"])}
        first, second = assigned["teacher"], assigned["second"]
        best = second if combined[second] > combined[first] else first
        row = rows[p["id"]]
        assert row["teacher"] == best
        assert row["response"] == store.get_result(job["id"], "gen", f"{p['id']}|{best}")["text"]
        switched += best != assigned["teacher"]
        assert row["source"] == ("hybrid" if best != assigned["teacher"] else "routed")
    assert job["hybrid"] == {"margin": 1e6, "prompts": len(prompts), "extra_generations": len(prompts),
                             "switched": switched}
    assert job["allocation"] == {t: n for t in teachers if (n := sum(r["teacher"] == t for r in rows.values()))}

    job = wait(client, submitted[1e-12])
    assert job["state"] == "succeeded", job
    assert [s["total"] for s in job["stages"]] == [1, len(prompts), 0, 0]
    assert job["hybrid"]["extra_generations"] == 0 and all(r["source"] == "routed" for r in dataset(client, job["id"]))
