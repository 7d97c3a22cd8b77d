"""The HTTP gateway against real Redis, a real trained router and (for routing) real uvicorn."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway_support import QUERIES, REDIS_URL, TEACHERS, IdleRouterClient, serve
from router_api.app import create_app
from services.core.settings import ApiKey, Settings
from services.jobs.store import JobStore
from services.routing.client import HTTPRouterClient
from services.routing.model import Router


@pytest.fixture(scope="module")
def students(store, router_dir):
    store.register_student("stu-a", "smollm2-135m-instruct", "llama")
    store.add_router_version("stu-a", "v1", str(router_dir), {"hit@1": 1.0})
    store.register_student("stu-new", "smollm2-135m-instruct")
    return "stu-a", "stu-new"


@pytest.fixture(scope="module")
def settings(store, pool_file):
    return Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu", precision="fp32",
                    max_prompts_per_request=4, max_prompt_chars=200, max_job_prompts=5)


@pytest.fixture(scope="module")
def client(settings, store, students):
    """The gateway with its own in-process router service (made in the lifespan from settings)."""
    with TestClient(create_app(settings, store=store)) as client:
        yield client


# --------------------------------------------------------------------------- routing

def test_routing_over_http_equals_the_library(settings, store, students, router_dir):
    expected = Router.load(router_dir, device="cpu").route(QUERIES, top_k=2)
    with serve(create_app(settings, store=store)) as base, httpx.Client(base_url=base, timeout=60) as http:
        replies = [http.post("/v1/route", json={"student_id": "stu-a", "prompts": QUERIES[:2], "top_k": 2}),
                   http.post("/v1/route", json={"student_id": "stu-a", "prompts": QUERIES[2:], "top_k": 2})]
        scrape = http.get("/metrics").text
        ready = http.get("/readyz")
    results = []
    for reply in replies:
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["student_id"] == "stu-a" and body["router_version"] == "v1"
        results += body["results"]
    assert [r["teacher"] for r in results] == [e.teacher for e in expected] == ["mathy", "poet", "mathy", "poet"]
    for got, want in zip(results, expected):
        assert got["top_k"] == want.top_k
        assert set(got["strengths"]) == set(TEACHERS)
        np.testing.assert_allclose([got["strengths"][t] for t in TEACHERS], [want.strengths[t] for t in TEACHERS],
                                   atol=1e-5)
    assert 'persyn_route_assignments_total{teacher="mathy"} 2.0' in scrape
    assert "persyn_route_latency_seconds_count 2.0" in scrape
    assert "persyn_router_batch_size_count" in scrape and "persyn_router_batch_size_count 0.0" not in scrape
    assert 'persyn_jobs{state="running"}' in scrape and "persyn_task_failures" in scrape
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"


def test_routing_through_a_separate_router_server_equals_the_library(settings, store, students, router_dir):
    from dataclasses import replace

    from services.routing.server import create_app as create_router_server

    expected = Router.load(router_dir, device="cpu").route(QUERIES, top_k=3)
    with serve(create_router_server(settings)) as router_url:
        remote = replace(settings, router_service_url=router_url)
        with serve(create_app(remote, store=store)) as base, httpx.Client(base_url=base, timeout=60) as http:
            reply = http.post("/v1/route", json={"student_id": "stu-a", "prompts": QUERIES})
            ready = http.get("/readyz")
            missing = http.post("/v1/route", json={"student_id": "stu-new", "prompts": QUERIES[:1]})
    assert reply.status_code == 200, reply.text
    assert [r["teacher"] for r in reply.json()["results"]] == [e.teacher for e in expected]
    for got, want in zip(reply.json()["results"], expected):
        np.testing.assert_allclose([got["strengths"][t] for t in TEACHERS], [want.strengths[t] for t in TEACHERS],
                                   atol=1e-5)
    assert ready.status_code == 200 and missing.status_code == 409


def test_route_top_k_above_the_pool_returns_the_whole_ranking(client):
    reply = client.post("/v1/route", json={"student_id": "stu-a", "prompts": ["What is 2 plus 2?"], "top_k": 10})
    assert reply.status_code == 200, reply.text
    [result] = reply.json()["results"]
    assert sorted(result["top_k"]) == sorted(TEACHERS) and result["top_k"][0] == result["teacher"]


@pytest.mark.parametrize("body, code, words", [
    ({"student_id": "nobody", "prompts": ["hi"]}, 404, "unknown student"),
    ({"student_id": "stu-new", "prompts": ["hi"]}, 409, "calibrate"),
    ({"student_id": "stu-a", "prompts": []}, 422, ""),
    ({"student_id": "stu-a", "prompts": ["ok", "   "]}, 422, "blank"),
    ({"student_id": "stu-a", "prompts": ["hi"], "top_k": 0}, 422, ""),
    ({"student_id": "stu-a"}, 422, ""),
    ({"student_id": "stu-a", "prompts": ["hi"] * 5}, 413, "at most 4"),
    ({"student_id": "stu-a", "prompts": ["x" * 201]}, 413, "at most 200"),
])
def test_route_rejects_bad_input(client, body, code, words):
    reply = client.post("/v1/route", json=body)
    assert reply.status_code == code, reply.text
    assert words in json.dumps(reply.json()["detail"])


# --------------------------------------------------------------------------- students and teachers

def test_students_register_read_and_activate(client, settings, router_dir):
    reply = client.post("/v1/students", json={"student_id": "stu-b"})
    assert reply.status_code == 201, reply.text
    assert reply.json()["model"] == settings.default_student_model and reply.json()["active_version"] is None
    assert client.post("/v1/students", json={"student_id": "no spaces"}).status_code == 422
    assert client.post("/v1/students", json={"student_id": "x" * 65}).status_code == 422
    assert client.get("/v1/students/unknown").status_code == 404
    student = client.get("/v1/students/stu-a").json()
    assert student["active_version"] == "v1" and [v["version"] for v in student["versions"]] == ["v1"]
    assert client.post("/v1/students/stu-a/activate", json={"version": "v9"}).status_code == 404
    assert client.post("/v1/students/unknown/activate", json={"version": "v1"}).status_code == 404
    reply = client.post("/v1/students/stu-a/activate", json={"version": "v1"})
    assert reply.status_code == 200 and reply.json()["active_version"] == "v1"


def test_teachers_list_the_pool_without_secrets(client, store):
    reply = client.get("/v1/teachers")
    assert reply.status_code == 200
    assert [t["name"] for t in reply.json()] == TEACHERS
    assert set(reply.json()[0]) == {"name", "family", "size_b", "model", "base_url", "long_cot",
                                    "cost_per_1m_output"}
    with TestClient(create_app(Settings(key_prefix=store.p), store=store, router_client=IdleRouterClient())) as bare:
        assert bare.get("/v1/teachers").json() == []


# --------------------------------------------------------------------------- jobs

def _job(**overrides):
    return {"kind": "synthesize", "student_id": "stu-a", "strategy": "random",
            "prompts": [{"prompt": "What is 1 plus 2?", "reference": 3}, {"prompt": "Write a poem about rain."}],
            **overrides}


def test_job_submit_describe_cancel(client, store, enqueued):
    reply = client.post("/v1/jobs", json=_job())
    assert reply.status_code == 202, reply.text
    job = reply.json()
    assert job["kind"] == "synthesize" and job["state"] in ("queued", "running")
    assert job["spec"]["strategy"] == "random" and job["spec"]["alpha"] == 0.4
    assert store.prompts(job["id"]) == [{"id": "p000001", "prompt": "What is 1 plus 2?", "reference": "3"},
                                        {"id": "p000002", "prompt": "Write a poem about rain."}]
    assert enqueued, "the job's first stage was not enqueued"
    assert client.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.delete("/v1/jobs/nope").status_code == 404


def test_calibrate_job_fans_out_over_the_pool(client, enqueued):
    without_reference = client.post("/v1/jobs", json=_job(kind="calibrate", student_id="stu-new"))
    assert without_reference.status_code == 422 and "has no reference" in without_reference.text
    prompts = [{"prompt": "What is 1 plus 2?", "reference": 3}, {"prompt": "What is 2 plus 2?", "reference": 4}]
    reply = client.post("/v1/jobs", json=_job(kind="calibrate", student_id="stu-new", strategy="persyn",
                                              calibration_size=2, teachers=["mathy", "poet"], prompts=prompts))
    assert reply.status_code == 202, reply.text
    assert reply.json()["stage"] == "calibration.generate" and reply.json()["n_calibration"] == 2
    # every calibration prompt x every chosen teacher, in chunks of items
    assert sorted(tuple(pair) for _, args, _ in enqueued for pair in args[3]) == [
        ("p000001", "mathy"), ("p000001", "poet"), ("p000002", "mathy"), ("p000002", "poet")]


def test_a_calibration_may_ask_for_the_papers_fine_tuned_router(client, enqueued):
    prompts = [{"prompt": "What is 1 plus 2?", "reference": 3}, {"prompt": "What is 2 plus 2?", "reference": 4}]
    job = dict(kind="calibrate", student_id="stu-new", calibration_size=2, prompts=prompts)
    reply = client.post("/v1/jobs", json=_job(**job, router_mode="finetune", router_backbone="smollm2-135m-instruct"))
    assert reply.status_code == 202, reply.text
    assert reply.json()["spec"]["router_mode"] == "finetune"
    assert reply.json()["spec"]["router_backbone"] == "smollm2-135m-instruct"
    for bad in ({"router_mode": "lora"}, {"router_backbone": "/etc"}, {"router_backbone": "../x"},
                {"max_error_rate": -0.1}, {"max_error_rate": 1.5}):
        refused = client.post("/v1/jobs", json=_job(**job, **bad))
        assert refused.status_code == 422 and list(bad)[0] in refused.json()["detail"], refused.text


def test_a_kcenter_calibration_first_samples_on_the_training_queue(client, store, enqueued):
    prompts = [{"prompt": f"What is {i} plus 2?", "reference": i + 2} for i in range(4)]
    job = dict(kind="calibrate", student_id="stu-new", calibration_size=2, prompts=prompts)
    reply = client.post("/v1/jobs", json=_job(**job, calibration_sampler="kcenter"))
    assert reply.status_code == 202, reply.text
    described = reply.json()
    assert described["stage"] == "calibration.sample" and described["n_calibration"] == 0
    assert described["spec"]["calibration_sampler"] == "kcenter" and "calibration_pending" not in described["spec"]
    assert enqueued == [("persyn.training.sample_calibration", [described["id"]], "training")]
    enqueued.clear()
    # no more prompts than it keeps: every prompt calibrates, chosen at submit as the random sampler does
    reply = client.post("/v1/jobs", json=_job(**{**job, "calibration_size": 4}, calibration_sampler="kcenter"))
    assert reply.json()["stage"] == "calibration.generate" and reply.json()["n_calibration"] == 4
    assert client.post("/v1/jobs", json=_job(**job)).json()["spec"]["calibration_sampler"] == "random"
    refused = client.post("/v1/jobs", json=_job(**job, calibration_sampler="coreset"))
    assert refused.status_code == 422 and "calibration_sampler" in refused.json()["detail"], refused.text


def test_a_hybrid_synthesis_is_accepted_with_references(client, enqueued):
    prompts = [{"prompt": "What is 1 plus 2?", "reference": 3}, {"prompt": "What is 2 plus 2?", "reference": 4}]
    reply = client.post("/v1/jobs", json=_job(strategy="persyn", hybrid_margin=0.5, prompts=prompts))
    assert reply.status_code == 202, reply.text
    assert reply.json()["spec"]["hybrid_margin"] == 0.5 and reply.json()["stage"] == "route"
    assert reply.json()["hybrid"] == {"margin": 0.5, "prompts": 0, "extra_generations": 0, "switched": 0}
    assert client.post("/v1/jobs", json=_job()).json()["hybrid"] is None


def test_ids_that_could_reach_other_redis_keys_are_rejected(client, store):
    job_id = store.create_job("synthesize", {"student_id": "stu-a"}, [{"id": "x", "prompt": "y"}])
    for path in (f"/v1/jobs/{job_id}:order", f"/v1/jobs/{job_id}:order/dataset", "/v1/students/stu-a:versions"):
        assert client.get(path).status_code == 422, path
    assert client.post("/v1/route", json={"student_id": "stu-a:versions", "prompts": ["hi"]}).status_code == 422


@pytest.mark.parametrize("overrides, code, words", [
    ({"alpha": 2}, 422, "less than or equal to 1"),
    ({"prompts": [{"prompt": "x", "reference": True}]}, 422, "reference"),
    ({"kind": "distil"}, 422, "calibrate"),
    ({"strategy": "best"}, 422, "persyn"),
    ({"calibration_size": 1}, 422, ""),
    ({"max_tokens": 0}, 422, ""),
    ({"hybrid_margin": 0.5}, 422, "hybrid_margin needs strategy 'persyn'"),
    ({"strategy": "persyn", "hybrid_margin": 0}, 422, "greater than 0"),
    ({"strategy": "persyn", "hybrid_margin": "wide"}, 422, "hybrid_margin"),
    ({"kind": "calibrate", "strategy": "persyn", "hybrid_margin": 0.5}, 422, "kind 'synthesize' or 'persyn'"),
    ({"strategy": "persyn", "hybrid_margin": 0.5}, 422, "has no reference"),  # both answers get scored
    ({"temperature": 0.7}, 422, "Extra inputs"),
    ({"teachers": ["mathy", "gpt-9"]}, 422, "gpt-9"),
    ({"teachers": ["mathy"], "strong_teacher": "poet"}, 422, "strong_teacher"),
    ({"strong_teacher": "gpt-9"}, 422, "strong_teacher"),
    ({"student_id": "nobody"}, 404, "unknown student"),
    ({"student_id": "stu-new", "strategy": "persyn"}, 409, "calibrate job"),
    ({"student_id": "stu-new", "strategy": "car"}, 409, "calibrate job"),
    ({"prompts": []}, 422, ""),
    ({"prompts": [{"prompt": " "}]}, 422, "blank"),
    ({"prompts": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}, 422, "duplicate prompt id"),
    ({"prompts": [{"prompt": f"q{i}"} for i in range(6)]}, 413, "at most 5"),
    ({"prompts": [{"prompt": "x" * 201}]}, 413, "at most 200"),
])
def test_job_submit_rejects_bad_input(client, enqueued, overrides, code, words):
    reply = client.post("/v1/jobs", json=_job(**overrides))
    assert reply.status_code == code, reply.text
    assert words in json.dumps(reply.json()["detail"])
    assert not enqueued


def _upload(client, spec: dict, lines: list[str]):
    return client.post("/v1/jobs/upload", data={"spec": json.dumps(spec)},
                       files={"file": ("prompts.jsonl", "\n".join(lines).encode(), "application/x-ndjson")})


def test_job_upload(client, store, enqueued):
    spec = {k: v for k, v in _job().items() if k != "prompts"}
    good = [json.dumps({"id": 7, "prompt": "What is 2 plus 2?", "reference": "4"}), "",
            json.dumps({"id": "b", "prompt": "A poem about snow."})]
    reply = _upload(client, spec, good)
    assert reply.status_code == 202, reply.text
    assert store.prompt_ids(reply.json()["id"]) == ["7", "b"]

    bad_line = _upload(client, spec, good[:1] + ["", '{"prompt": "unterminated'])
    assert bad_line.status_code == 422 and "line 3" in bad_line.json()["detail"]
    no_prompt = _upload(client, spec, good[:1] + [json.dumps({"id": "c"})])
    assert no_prompt.status_code == 422 and "line 2" in no_prompt.json()["detail"]
    repeated = _upload(client, spec, good + [json.dumps({"id": "b", "prompt": "again"})])
    assert repeated.status_code == 422 and "line 4" in repeated.json()["detail"]
    too_many = _upload(client, spec, [json.dumps({"prompt": f"q{i}"}) for i in range(6)])
    assert too_many.status_code == 413
    bad_spec = _upload(client, {**spec, "alpha": 2}, good)
    assert bad_spec.status_code == 422 and "body.spec.alpha: Input should be less than or equal to 1" \
        in bad_spec.json()["detail"]
    assert _upload(client, {**spec, "prompts": []}, good).status_code == 422
    not_json = client.post("/v1/jobs/upload", data={"spec": "{"}, files={"file": ("p.jsonl", b"{}")})
    assert not_json.status_code == 422
    assert len(enqueued) == 1



@pytest.fixture(scope="module")
def big_client(settings, store, students):
    """The gateway with room for uploads of several Redis batches."""
    from dataclasses import replace

    with TestClient(create_app(replace(settings, max_job_prompts=6000), store=store)) as client:
        yield client


def test_a_rejected_upload_leaves_nothing_in_redis(big_client, store, enqueued):
    """Every rejection after prompts were written (a bad line, a repeat, a long prompt, a check of the job
    layer) deletes what the upload had staged, and names the right lines."""
    spec = {k: v for k, v in _job().items() if k != "prompts"}
    good = [json.dumps({"prompt": f"Question {i}?"}) for i in range(2500)]  # three Redis batches
    before = set(store.r.scan_iter(f"{store.p}:*"))
    cases = [
        (good + ['{"prompt": "unterminated'], 422, "line 2501"),
        (good[:1500] + [""] + good[1500:] + [json.dumps({"id": "p001200", "prompt": "again"})], 422,
         "line 2502: duplicate prompt id 'p001200' (first at line 1200)"),
        (good + [json.dumps({"prompt": "x" * 201})], 413, "prompt 'p002501' has 201 characters; at most 200"),
        (good + [json.dumps({"prompt": "y"})] * 3501, 413, "more than 6000 prompts"),
    ]
    for lines, code, words in cases:
        reply = _upload(big_client, spec, lines)
        assert reply.status_code == code and words in reply.json()["detail"], reply.text
    calibrate = {**spec, "kind": "calibrate", "student_id": "stu-new"}  # no references, no reward model
    reply = _upload(big_client, calibrate, good)
    assert reply.status_code == 422 and "prompt 'p000001' has no reference" in reply.json()["detail"], reply.text
    foreign = _upload(big_client, {**spec, "student_id": "nobody"}, good)
    assert foreign.status_code == 404
    assert set(store.r.scan_iter(f"{store.p}:*")) == before
    assert not enqueued


def test_a_streamed_upload_keeps_every_prompt_in_order(big_client, store, enqueued):
    """5,000 lines over several Redis batches: ids given or by position, blank lines skipped, and the
    calibration sample drawn from the whole file."""
    prompts = []
    for i in range(5000):
        prompt = {"prompt": f"What is {i} plus 1?", "reference": str(i + 1)}
        prompts.append({"id": f"own-{i}", **prompt} if i % 3 == 0 else prompt)
    lines = []
    for i, prompt in enumerate(prompts):
        lines += [json.dumps(prompt)] + ([""] if i % 700 == 0 else [])
    spec = {"kind": "calibrate", "student_id": "stu-new", "calibration_size": 50, "seed": 3}
    reply = _upload(big_client, spec, lines)
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    expected = [{"id": p.get("id", f"p{i + 1:06d}"), **p} for i, p in enumerate(prompts)]
    assert store.prompts(job_id) == expected and reply.json()["n_prompts"] == 5000
    chosen = sorted(np.random.default_rng(3).choice(5000, size=50, replace=False).tolist())
    calibration = store.job_record(job_id)["spec"]["calibration"]
    assert calibration == [expected[i]["id"] for i in chosen]
    assert {pid for _, args, _ in enqueued for pid, _ in args[3]} == set(calibration)
    assert store.r.ttl(f"{store.p}:job:{job_id}:prompts") == store.r.ttl(f"{store.p}:job:{job_id}:order") == -1
    assert job_id in store.list_jobs()

def test_dataset_streams_in_every_format(client, store):
    job_id = store.create_job("synthesize", {"student_id": "stu-a"},
                              [{"id": f"q{i}", "prompt": f"Question {i}?"} for i in range(3)])
    rows = [{"id": "q0", "prompt": "Question 0?", "response": "Answer ü 0", "teacher": "mathy"},
            {"id": "q2", "prompt": "Question 2?", "response": "Answer 2", "teacher": "poet"}]
    for row in rows:
        store.put_row(job_id, row)

    reply = client.get(f"/v1/jobs/{job_id}/dataset")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
    assert reply.headers["x-persyn-job-state"] == "queued"
    assert reply.headers["content-disposition"] == f'attachment; filename="persyn-{job_id}.jsonl"'
    assert [json.loads(line) for line in reply.text.splitlines()] == rows

    sharegpt = client.get(f"/v1/jobs/{job_id}/dataset", params={"format": "sharegpt"})
    assert sharegpt.headers["content-type"].startswith("application/json")
    assert sharegpt.json()[1] == {"conversations": [{"from": "human", "value": "Question 2?"},
                                                    {"from": "gpt", "value": "Answer 2"}]}
    alpaca = client.get(f"/v1/jobs/{job_id}/dataset", params={"format": "alpaca"})
    assert alpaca.json() == [{"instruction": r["prompt"], "input": "", "output": r["response"]} for r in rows]
    assert "-alpaca.json" in alpaca.headers["content-disposition"]

    empty = store.create_job("synthesize", {"student_id": "stu-a"}, [{"id": "x", "prompt": "y"}])
    assert client.get(f"/v1/jobs/{empty}/dataset", params={"format": "sharegpt"}).json() == []
    assert client.get(f"/v1/jobs/{job_id}/dataset", params={"format": "csv"}).status_code == 422
    assert client.get("/v1/jobs/nope/dataset").status_code == 404


# --------------------------------------------------------------------------- auth, probes, docs

def test_api_keys_guard_v1_and_metrics_but_not_the_probes(store):
    keys = (ApiKey("team-a", "k1"), ApiKey("team-b", "k2"), ApiKey("ops", "k3", admin=True))
    app = create_app(Settings(key_prefix=store.p, api_keys=keys), store=store, router_client=IdleRouterClient())
    with TestClient(app) as client:
        missing = client.get("/v1/teachers")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "API key" in missing.json()["detail"]
        for header in ("Bearer k4", "Bearer k1x", "Basic k1", "Bearer ключ".encode()):
            reply = client.get("/v1/teachers", headers={"Authorization": header})
            assert reply.status_code == 401, header
        assert client.post("/v1/route", json={}).status_code == 401  # auth before validation
        for key in ("k1", "k2", "k3"):
            assert client.get("/v1/teachers", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for path in ("/healthz", "/readyz"):
            assert client.get(path).status_code == 200, path
        assert client.get("/metrics").status_code == 401
        forbidden = client.get("/metrics", headers={"Authorization": "Bearer k1"})
        assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
        assert client.get("/metrics", headers={"Authorization": "Bearer k3"}).status_code == 200


def test_readyz_reports_what_is_down(store):
    down = JobStore.from_url("redis://127.0.0.1:1/0", store.p)
    settings = Settings(key_prefix=store.p, router_service_url="http://127.0.0.1:9")
    with TestClient(create_app(settings, store=down, router_client=HTTPRouterClient(settings.router_service_url))) \
            as client:
        reply = client.get("/readyz")
        assert reply.status_code == 503
        checks = reply.json()["checks"]
        assert checks["redis"] != "ok" and "unreachable" in checks["router_service"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200  # job figures are skipped, not a 500


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/route", "/v1/students", "/v1/jobs", "/v1/jobs/upload", "/v1/jobs/{job_id}/dataset",
            "/v1/teachers", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    route = spec["paths"]["/v1/route"]["post"]
    assert route["tags"] == ["routing"] and route["summary"]
    assert {"401", "404", "409", "413", "422", "503"} <= set(route["responses"])
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
            if path.startswith("/v1"):
                assert "401" in errors and (path == "/v1/teachers" or {"422", "503"} <= set(errors)), (method, path)
            for code, response in errors.items():
                if code != "503" or path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == error, (method, path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # 422 is {"detail": str} like the rest
    assert spec["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    schemas = spec["components"]["schemas"]
    assert schemas["RouteRequest"]["properties"]["prompts"]["items"]["minLength"] == 1
    assert schemas["PromptIn"]["properties"]["prompt"]["minLength"] == 1


def test_a_validation_error_is_the_documented_string_detail(client):
    reply = client.post("/v1/route", json={"student_id": "stu-a", "prompts": ["", " \n"], "top_k": "x"})
    assert reply.status_code == 422 and reply.json() == {"detail": "; ".join((
        "body.prompts.0: String should have at least 1 character", "body.prompts.1: must not be empty or blank",
        "body.top_k: Input should be a valid integer, unable to parse string as an integer"))}
