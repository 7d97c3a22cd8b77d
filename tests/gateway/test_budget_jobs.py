"""Budgets and priced dry runs on the real stack: real Redis, real Celery workers, the real gateway
over loopback HTTP, loopback teachers speaking the OpenAI protocol and the tiny real router.

A dry run must call no teacher and write nothing to Redis, and its allocation must be the one the
job then routes (chunked as the worker routes: PERSYN_ROUTE_CHUNK_PROMPTS is small here).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from chaos.fake_teacher import FakeTeacher
from fake_vllm import start_server
from gateway_support import MATHS, POEMS, REDIS_URL, TEACHERS
from services.embedded.stack import LocalStack
from services.method.formats import Teacher, dump_teacher_pool

STUDENT = "budgeted"
#: Mean output tokens per answer in the (pretend) calibration, and $ per 1M output tokens: the strong
#: teachers cost, "middle" is cheap. Per prompt: mathy $1e-3, poet $4e-4, middle $2e-5.
TOKENS = {"mathy": 100.0, "poet": 80.0, "middle": 20.0}
PRICES = {"mathy": 10.0, "poet": 5.0, "middle": 1.0}
PROMPTS = [{"id": f"q{i:02d}", "prompt": p} for i, p in enumerate(MATHS + POEMS)]
UNCONSTRAINED_USD = 20 * 1e-3 + 12 * 4e-4  # every sum to mathy, every poem to poet
CHEAPEST_USD = len(PROMPTS) * 2e-5
CHUNK = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory, store, router_dir):
    work = tmp_path_factory.mktemp("budget")
    fakes = {name: FakeTeacher(name) for name in TEACHERS}
    servers = {name: start_server(f.app) for name, f in fakes.items()}
    pool = [Teacher(name=n, family="fake", size_b=7.0, base_url=f"{servers[n][0]}/v1", model=n,
                    cost_per_1m_output=PRICES[n]) for n in TEACHERS]
    store.register_student(STUDENT, "smollm2-135m-instruct")
    store.add_router_version(STUDENT, "v1", str(router_dir), {"calibration_stats": {"output_tokens": TOKENS}})
    store.register_student("fresh", "smollm2-135m-instruct")
    running = LocalStack(work_dir=work, redis_url=REDIS_URL, key_prefix=store.p,
                         teacher_pool=dump_teacher_pool(pool, work / "pool.yaml"),
                         concurrency={"generation": 1, "scoring": 1, "training": 1},
                         extra_env={"PERSYN_ROUTE_CHUNK_PROMPTS": str(CHUNK), "PERSYN_PRECISION": "fp32"})
    try:
        with running, httpx.Client(base_url=running.url, timeout=120) as client:
            yield client, fakes
    finally:
        for _, stop in servers.values():
            stop()


def _body(**spec):
    return {"kind": "synthesize", "student_id": STUDENT, "prompts": PROMPTS, **spec}


def _keys(store) -> set[str]:
    """The service's keys, but the workers' own (the broker's bindings and the watchdog's lock come and go)."""
    return {k for k in store.r.scan_iter(f"{store.p}:*")
            if not k.startswith((f"{store.p}:watchdog:", f"{store.p}:celery:"))}


def _teacher_calls(fakes) -> int:
    return sum(sum(f.outcomes.values()) for f in fakes.values())


def _wait(client, job_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end: {job}")


@pytest.mark.parametrize("spec", [{}, {"budget_usd": 0.01}, {"strategy": "oracle", "alpha": 1.0}, {"strategy": "mix"},
                                  {"kind": "calibrate", "calibration_size": 10, "alpha": 1.0}])
def test_a_dry_run_calls_no_teacher_and_stores_nothing(stack, store, spec):
    client, fakes = stack
    before, calls = _keys(store), _teacher_calls(fakes)
    response = client.post("/v1/jobs", json=_body(dry_run=True, **spec))
    assert response.status_code == 200, response.text
    assert _keys(store) == before and _teacher_calls(fakes) == calls
    plan = response.json()
    assert plan["dry_run"] is True and plan["router_version"] == "v1" and plan["n_prompts"] == len(PROMPTS)
    for name, teacher in plan["teachers"].items():
        assert teacher["output_tokens"] == pytest.approx(teacher["prompts"] * TOKENS[name])
        assert teacher["cost_usd"] == pytest.approx(teacher["prompts"] * TOKENS[name] * PRICES[name] / 1e6)
    assert plan["total"]["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in plan["teachers"].values()))
    gts = plan["generate_then_select"]
    assert gts["generations"] == 3 * len(PROMPTS)
    assert gts["cost_usd"] == pytest.approx(len(PROMPTS) * (1e-3 + 4e-4 + 2e-5))
    if spec.get("strategy") == "oracle":  # generate-then-select: every teacher, every prompt
        assert plan["total"]["cost_usd"] == pytest.approx(gts["cost_usd"])
    elif spec.get("kind") == "calibrate":  # every teacher answers the calibration sample
        assert plan["total"]["prompts"] == 3 * 10
        assert plan["total"]["cost_usd"] == pytest.approx(10 * (1e-3 + 4e-4 + 2e-5))
    else:
        assert plan["total"]["prompts"] == len(PROMPTS)


def test_without_a_budget_the_dry_run_prices_the_argmax_route(stack):
    client, _ = stack
    plan = client.post("/v1/jobs", json=_body(dry_run=True)).json()
    assert {t: v["prompts"] for t, v in plan["teachers"].items()} == {"mathy": 20, "poet": 12, "middle": 0}
    assert plan["total"]["cost_usd"] == pytest.approx(UNCONSTRAINED_USD)
    assert plan["routing"]["strength_lost"] == 0


def test_a_budgeted_dry_run_is_what_the_job_then_routes_within_the_budget(stack, store):
    client, fakes = stack
    budget = 0.01
    plan = client.post("/v1/jobs", json=_body(dry_run=True, budget_usd=budget)).json()
    assert CHEAPEST_USD < plan["total"]["cost_usd"] <= budget < UNCONSTRAINED_USD
    assert plan["routing"]["strength_lost"] > 0
    assert plan["routing"]["unconstrained_cost_usd"] == pytest.approx(UNCONSTRAINED_USD)
    assert plan["teachers"]["middle"]["prompts"] > 0  # the budget moved prompts to the cheap teacher

    calls = _teacher_calls(fakes)
    response = client.post("/v1/jobs", json=_body(budget_usd=budget))
    assert response.status_code == 202, response.text
    job = _wait(client, response.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["allocation"] == {t: v["prompts"] for t, v in plan["teachers"].items() if v["prompts"]}
    assert _teacher_calls(fakes) - calls == len(PROMPTS)  # one routed answer per prompt
    cost = job["routing_cost"]
    assert cost["budget_usd"] == budget and cost["routed_prompts"] == len(PROMPTS)
    assert cost["expected_cost_usd"] == pytest.approx(plan["total"]["cost_usd"], abs=1e-6)
    assert cost["expected_cost_usd"] <= budget
    assert cost["strength_lost"] == pytest.approx(plan["routing"]["strength_lost"])
    assert cost["spent_usd"] == pytest.approx(sum(u["cost"] for u in job["usage"].values()))
    assert json.loads(json.dumps(job["spec"])).get("dry_run") is None


@pytest.mark.parametrize("spec, code, words", [
    ({"budget_usd": CHEAPEST_USD / 2}, 422, "infeasible budget_usd"),
    ({"max_output_tokens_total": 100}, 422, "infeasible max_output_tokens_total"),
    ({"budget_usd": -1.0}, 422, "budget_usd"),
    ({"budget_usd": 0}, 422, "budget_usd"),
    ({"max_output_tokens_total": -5}, 422, "max_output_tokens_total"),
    ({"budget_usd": 0.01, "strategy": "random"}, 422, "apply to the persyn strategy"),
    ({"budget_usd": 0.01, "kind": "calibrate"}, 422, "bound routed generation"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_bad_budgets_are_refused_alike_with_and_without_dry_run(stack, store, spec, code, words, dry_run):
    client, fakes = stack
    before, calls = _keys(store), _teacher_calls(fakes)
    response = client.post("/v1/jobs", json=_body(**{"dry_run": dry_run, **spec}))
    assert response.status_code == code, response.text
    assert words in response.json()["detail"]
    assert _keys(store) == before and _teacher_calls(fakes) == calls


def test_a_dry_run_of_a_student_without_router_is_409_and_stores_nothing(stack, store):
    client, fakes = stack
    before, calls = _keys(store), _teacher_calls(fakes)
    response = client.post("/v1/jobs", json=_body(dry_run=True, student_id="fresh", kind="persyn", alpha=1.0))
    assert response.status_code == 409, response.text
    assert "has no active router" in response.json()["detail"]
    assert _keys(store) == before and _teacher_calls(fakes) == calls


def test_a_dry_run_upload_that_fails_to_parse_is_the_same_422(stack):
    client, _ = stack
    answers = []
    for dry_run in (False, True):
        spec = json.dumps({"kind": "synthesize", "student_id": STUDENT, "dry_run": dry_run})
        answers.append(client.post("/v1/jobs/upload", data={"spec": spec},
                                   files={"file": ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": \n')}))
    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].json() == answers[1].json()
    assert "line 2" in answers[0].json()["detail"]


def test_an_upload_dry_run_prices_like_the_json_one(stack):
    client, _ = stack
    spec = json.dumps({"kind": "synthesize", "student_id": STUDENT, "dry_run": True, "budget_usd": 0.01})
    lines = "".join(json.dumps(p) + "\n" for p in PROMPTS).encode()
    upload = client.post("/v1/jobs/upload", data={"spec": spec}, files={"file": ("p.jsonl", lines)})
    assert upload.status_code == 200, upload.text
    direct = client.post("/v1/jobs", json=_body(dry_run=True, budget_usd=0.01)).json()
    assert upload.json()["teachers"] == direct["teachers"]


def test_the_cli_dry_run_prints_the_plan_and_starts_nothing(stack, store, tmp_path, capsys):
    from services.cli.main import main

    client, fakes = stack
    spec, prompts = tmp_path / "spec.json", tmp_path / "prompts.jsonl"
    spec.write_text(json.dumps({"kind": "synthesize", "student_id": STUDENT, "budget_usd": 0.01}))
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    before, calls = _keys(store), _teacher_calls(fakes)
    assert main(["jobs", "submit", str(spec), str(prompts), "--dry-run", "--url", str(client.base_url)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert _keys(store) == before and _teacher_calls(fakes) == calls
    direct = client.post("/v1/jobs", json=_body(dry_run=True, budget_usd=0.01)).json()
    assert plan["teachers"] == direct["teachers"] and plan["total"]["cost_usd"] <= 0.01
    spec.write_text(json.dumps({"kind": "synthesize", "student_id": STUDENT, "budget_usd": -1}))
    assert main(["jobs", "submit", str(spec), str(prompts), "--dry-run", "--url", str(client.base_url)]) != 0
    assert "job rejected (422)" in capsys.readouterr().err
