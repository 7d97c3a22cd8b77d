"""Bad input is a 4xx JSON ``{"detail": message}``, never a 5xx: ids, model refs, NaN/Infinity, invalid
Unicode, deep nesting, Redis down; and one bad prompt never fails another request's micro-batch."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway_support import QUERIES, REDIS_URL
from router_api.app import create_app
from services.core.settings import Settings
from services.jobs.store import JobStore
from services.routing.model import Router
from services.routing.service import RouterService

SURROGATE = '"\\ud800 x"'  # JSON text of a string holding a lone surrogate
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def settings(store, pool_file):
    return Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu")


@pytest.fixture(scope="module")
def client(settings, store, router_dir):
    store.register_student("stu", "smollm2-135m-instruct")
    store.add_router_version("stu", "v1", str(router_dir), {})
    with TestClient(create_app(settings, store=store)) as client:
        yield client


def _post_raw(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def _upload(client, spec: str, lines: list[str]):
    return client.post("/v1/jobs/upload", data={"spec": spec},
                       files={"file": ("p.jsonl", "\n".join(lines).encode(), "application/x-ndjson")})


def _message(reply, code: int = 422) -> str:
    assert reply.status_code == code, reply.text
    body = reply.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


SPEC = json.dumps({"kind": "synthesize", "student_id": "stu", "strategy": "random"})


# --------------------------------------------------------------------------- ids and model references

@pytest.mark.parametrize("student_id", ["..", ".", ".hidden", "-x", "a/b", "a:b", "a b", "é", "x" * 65, ""])
def test_unsafe_student_ids_are_rejected_everywhere(client, student_id):
    assert "student_id" in _message(client.post("/v1/students", json={"student_id": student_id}))
    assert "student_id" in _message(client.post("/v1/route", json={"student_id": student_id, "prompts": ["hi"]}))
    job = {"kind": "synthesize", "student_id": student_id, "strategy": "random", "prompts": [{"prompt": "hi"}]}
    assert "student_id" in _message(client.post("/v1/jobs", json=job))


@pytest.mark.parametrize("path", ["/v1/students/%2E%2E", "/v1/students/.hidden", "/v1/students/a:b/activate",
                                  "/v1/jobs/%2E%2E", "/v1/jobs/.x/dataset", "/v1/jobs/a%3Ab"])
def test_unsafe_ids_in_urls_are_rejected(client, path):
    method = client.post if path.endswith("activate") else client.get
    kwargs = {"json": {"version": "v1"}} if path.endswith("activate") else {}
    assert "path." in _message(method(path, **kwargs))


def test_unsafe_version_names_are_rejected(client):
    for version in ("..", "../v1", "v1:x", ""):
        assert "version" in _message(client.post("/v1/students/stu/activate", json={"version": version}))


@pytest.mark.parametrize("model", ["/etc", "../models/x", "~/model", "org/../x", "a/b/c", "/", "org/", "C:\\m"])
def test_model_references_that_are_paths_are_rejected(client, model):
    assert "model" in _message(client.post("/v1/students", json={"student_id": "stu-m", "model": model}))


def test_packaged_and_hub_style_models_are_accepted(client):
    for model in ("smollm2-135m-instruct", "Qwen/Qwen2.5-1.5B-Instruct"):
        reply = client.post("/v1/students", json={"student_id": "stu-m", "model": model})
        assert reply.status_code == 201 and reply.json()["model"] == model


# --------------------------------------------------------------------------- NaN, Unicode, nesting

@pytest.mark.parametrize("path, text", [
    ("/v1/route", '{"student_id": "stu", "prompts": ["hi"], "top_k": NaN}'),
    ("/v1/route", '{"student_id": "stu", "prompts": ["hi"], "extra": [1, {"x": Infinity}]}'),
    ("/v1/students", '{"student_id": "stu-nan", "family": "x", "ignored": -Infinity}'),
    ("/v1/jobs", '{"kind": "synthesize", "student_id": "stu", "alpha": NaN, "prompts": [{"prompt": "hi"}]}'),
    ("/v1/jobs", '{"kind": "synthesize", "student_id": "stu", "prompts": [{"prompt": "hi", "reference": NaN}]}'),
    ("/v1/students/stu/activate", '{"version": "v1", "x": NaN}'),
])
def test_nan_and_infinity_anywhere_in_a_body_are_422(client, store, path, text):
    before = len(store.list_jobs(1000))
    detail = _message(_post_raw(client, path, text))
    assert "is not a JSON number" in detail
    assert len(store.list_jobs(1000)) == before and "stu-nan" not in store.list_students()


def test_nan_in_an_upload_is_422(client):
    assert "spec" in _message(_upload(client, SPEC.replace('"random"', '"random", "alpha": NaN'), ['{"prompt": "hi"}']))
    assert "line 2" in _message(_upload(client, SPEC, ['{"prompt": "hi"}', '{"prompt": "x", "reference": Infinity}']))


def test_validation_errors_name_fields_without_echoing_input(client):
    detail = _message(client.post("/v1/jobs", json={"kind": "distil", "student_id": "stu", "alpha": 7,
                                                      "prompts": [{"prompt": "  "}]}))
    assert "body.kind" in detail and "body.alpha" in detail and "body.prompts.0.prompt: must not be empty" in detail
    assert "distil" not in detail.split("body.kind:")[1].split(";")[0]  # the message, not the input


def test_a_lone_surrogate_is_422_before_anything_runs(client, store, enqueued):
    before = len(store.list_jobs(1000))
    route = _post_raw(client, "/v1/route", f'{{"student_id": "stu", "prompts": ["ok", {SURROGATE}]}}')
    assert "body.prompts.1" in _message(route) and "surrogate" in _message(route)
    job = _post_raw(client, "/v1/jobs", f'{{"kind": "synthesize", "student_id": "stu", "strategy": "random", '
                                        f'"prompts": [{{"prompt": "fine"}}, {{"prompt": {SURROGATE}}}]}}')
    assert "body.prompts.1.prompt" in _message(job)
    prompt_id = _post_raw(client, "/v1/jobs", f'{{"kind": "synthesize", "student_id": "stu", "strategy": "random", '
                                              f'"prompts": [{{"id": {SURROGATE}, "prompt": "fine"}}]}}')
    assert "surrogate" in _message(prompt_id)
    assert "line 1" in _message(_upload(client, SPEC, [f'{{"prompt": {SURROGATE}}}']))
    assert "surrogate" in _message(_post_raw(client, "/v1/students", f'{{"student_id": "s", {SURROGATE}: 1}}'))
    assert not enqueued and len(store.list_jobs(1000)) == before  # rejected at submit, never after a 202


def test_deep_nesting_is_422_not_a_recursion_error(client):
    assert "nested too deeply" in _message(_upload(client, SPEC, ['{"prompt": "hi", "x": ' + DEEP + "}"]))
    assert "nested too deeply" in _message(_post_raw(client, "/v1/route", '{"student_id": "stu", "x": ' + DEEP + "}"))
    assert "nested too deeply" in _message(_upload(client, '{"x": ' + DEEP + "}", ['{"prompt": "hi"}']))


def test_bodies_that_cannot_be_read_are_4xx_json(client):
    assert "not UTF-8" in _message(client.post("/v1/route", content=b'{"x": "\xff"}',
                                                headers={"Content-Type": "application/json"}))
    assert "not valid JSON" in _message(_post_raw(client, "/v1/route", '{"student_id": '))
    broken = client.post("/v1/jobs/upload", content=b"--x\r\nnot a part",
                         headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert "multipart" in _message(broken, 400)


# --------------------------------------------------------------------------- Redis down

def test_redis_down_is_503_json_on_every_route_that_needs_it(store, pool_file):
    down = JobStore.from_url("redis://127.0.0.1:1/0", store.p)  # nothing listens on port 1: refused at once
    settings = Settings(key_prefix=store.p, teacher_pool=pool_file, device="cpu")
    job = {"kind": "synthesize", "student_id": "stu", "strategy": "random", "prompts": [{"prompt": "hi"}]}
    calls = [("GET", "/v1/students/stu", None), ("POST", "/v1/students", {"student_id": "stu"}),
             ("POST", "/v1/students/stu/activate", {"version": "v1"}),
             ("POST", "/v1/route", {"student_id": "stu", "prompts": ["hi"]}), ("POST", "/v1/jobs", job),
             ("GET", "/v1/jobs/0123456789abcdef", None), ("DELETE", "/v1/jobs/0123456789abcdef", None),
             ("GET", "/v1/jobs/0123456789abcdef/dataset", None)]
    with TestClient(create_app(settings, store=down), raise_server_exceptions=False) as client:
        for method, path, body in calls:
            assert "Redis" in _message(client.request(method, path, json=body), 503), (method, path)
        upload = _upload(client, SPEC, ['{"prompt": "hi"}'])
        assert "Redis" in _message(upload, 503)
        assert client.get("/v1/teachers").status_code == 200  # needs no Redis


# --------------------------------------------------------------------------- micro-batch isolation

def test_a_prompt_the_tokenizer_refuses_fails_only_its_own_request(store, router_dir):
    """Twenty concurrent requests share micro-batches; the one with a lone surrogate alone fails."""
    store.register_student("stu-batch", "smollm2-135m-instruct")
    store.add_router_version("stu-batch", "v1", str(router_dir), {})
    requests = [[QUERIES[i % 4], QUERIES[(i + 1) % 4]] for i in range(20)]
    requests[7] = [QUERIES[0], "\ud800 x"]

    async def go():
        service = RouterService(store.active_router, device="cpu", max_wait_ms=50, max_batch_size=64)
        try:
            results = await asyncio.gather(*(service.route("stu-batch", r) for r in requests),
                                           return_exceptions=True)
            return results
        finally:
            await service.aclose()

    results = asyncio.run(go())
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [7]
    library = Router.load(router_dir, device="cpu")
    for i, routed in enumerate(results):
        if i != 7:
            want = library.strengths(requests[i])
            got = np.array([[r.strengths[t] for t in library.teachers] for r in routed.results])
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_surrogate_in_one_of_many_concurrent_http_requests_fails_only_itself(client):
    from concurrent.futures import ThreadPoolExecutor

    good = json.dumps({"student_id": "stu", "prompts": QUERIES[:2]})
    bad = f'{{"student_id": "stu", "prompts": ["ok", {SURROGATE}]}}'
    bodies = [bad if i == 5 else good for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda text: _post_raw(client, "/v1/route", text), bodies))
    assert [r.status_code for r in replies] == [422 if i == 5 else 200 for i in range(16)]
