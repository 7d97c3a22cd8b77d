"""Router versions side by side: /v1/route with a named version, an A/B split between two real
trained routers, and per-version counts in /metrics (real Redis, real routers, in process and over
the separate router server)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway_support import MATHS, POEMS, QUERIES, REDIS_URL, TEACHERS, serve
from router_api.app import create_app
from services.core.settings import ApiKey, Settings
from services.method.ab import ab_arm
from services.routing.model import Router
from services.routing.training import TrainConfig, train_router

STUDENT = "ab-stu"
#: Distinct one-prompt requests: sums (v1 sends them to mathy, v2 to poet) and poems (the other way).
REQUESTS = [[f"What is {i} plus {i + 5}? Show the sum."] for i in range(12)] + [
    [f"Write a short poem about the {w}."] for w in ("sea", "moon", "rain", "snow", "city", "lake", "fog", "sky")]


@pytest.fixture(scope="module")
def swapped_dir(tmp_path_factory):
    """A second real router that prefers the other teacher on each kind of prompt."""
    scores = np.array([[0.0, 1.0, 0.5]] * len(MATHS) + [[1.0, 0.0, 0.5]] * len(POEMS))
    router, metrics = train_router(MATHS + POEMS, TEACHERS, scores, TrainConfig(seed=0))
    return router.save(tmp_path_factory.mktemp("router") / "v2", metrics=metrics)


@pytest.fixture(scope="module")
def versions(store, router_dir, swapped_dir):
    """The student with v1 (active) and v2; each version's library answer to every request."""
    store.register_student(STUDENT, "smollm2-135m-instruct")
    store.add_router_version(STUDENT, "v1", str(router_dir))
    store.add_router_version(STUDENT, "v2", str(swapped_dir), activate=False)
    prompts = [r[0] for r in REQUESTS] + QUERIES
    return {v: dict(zip(prompts, (x.teacher for x in Router.load(path, device="cpu").route(prompts))))
            for v, path in (("v1", router_dir), ("v2", swapped_dir))}


@pytest.fixture(scope="module")
def settings(store, pool_file):
    return Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu", precision="fp32")


def _counts(scrape: str, name: str) -> dict[str, float]:
    """{version: value} of a per-version counter of the student in a Prometheus scrape."""
    pattern = rf'^{name}_total{{student="{STUDENT}",version="([^"]+)"}} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, scrape, re.MULTILINE)}


def test_a_request_may_name_a_version_and_an_unknown_one_is_404(settings, store, versions):
    assert versions["v1"][QUERIES[0]] == "mathy" and versions["v2"][QUERIES[0]] == "poet"
    with TestClient(create_app(settings, store=store)) as client:
        for version in (None, "v1", "v2"):
            body = {"student_id": STUDENT, "prompts": QUERIES, **({"version": version} if version else {})}
            reply = client.post("/v1/route", json=body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["router_version"] == (version or "v1")
            assert [r["teacher"] for r in reply.json()["results"]] == [versions[version or "v1"][q] for q in QUERIES]
        unknown = client.post("/v1/route", json={"student_id": STUDENT, "prompts": QUERIES, "version": "v9"})
        assert unknown.status_code == 404 and unknown.json() == {
            "detail": f"student {STUDENT!r} has no router version 'v9'"}
        for bad in ("../v1", "v1:x", ""):
            refused = client.post("/v1/route", json={"student_id": STUDENT, "prompts": QUERIES, "version": bad})
            assert refused.status_code == 422 and "version" in refused.json()["detail"]
        scrape = client.get("/metrics").text
    assert _counts(scrape, "persyn_route_requests") == {"v1": 2.0, "v2": 1.0}
    assert _counts(scrape, "persyn_route_prompts") == {"v1": 2.0 * len(QUERIES), "v2": len(QUERIES)}


def test_a_named_version_through_the_separate_router_server(settings, store, versions):
    from services.routing.server import create_app as create_router_server

    with serve(create_router_server(settings)) as router_url, \
            TestClient(create_app(replace(settings, router_service_url=router_url), store=store)) as client:
        reply = client.post("/v1/route", json={"student_id": STUDENT, "prompts": QUERIES, "version": "v2"})
        unknown = client.post("/v1/route", json={"student_id": STUDENT, "prompts": QUERIES, "version": "v9"})
    assert reply.status_code == 200 and reply.json()["router_version"] == "v2"
    assert [r["teacher"] for r in reply.json()["results"]] == [versions["v2"][q] for q in QUERIES]
    assert unknown.status_code == 404 and "no router version 'v9'" in unknown.json()["detail"]


def test_an_ab_split_serves_both_versions_by_the_hash_of_the_prompts(settings, store, versions):
    with TestClient(create_app(settings, store=store)) as client:
        for bad, code in (({"version_a": "v1", "version_b": "v9", "share_b": 0.5}, 404),
                          ({"version_a": "v1", "version_b": "v2", "share_b": 1.5}, 422),
                          ({"version_a": "v1", "version_b": "v2", "share_b": -0.1}, 422),
                          ({"version_a": "v1", "version_b": "v1", "share_b": 0.5}, 422),
                          ({"version_a": "v1", "version_b": "v2"}, 422),
                          ({"version_a": "v1", "version_b": "v2", "share_b": 0.5, "seed": 3}, 422)):
            refused = client.put(f"/v1/students/{STUDENT}/ab", json=bad)
            assert refused.status_code == code and isinstance(refused.json()["detail"], str), (bad, refused.text)
        assert client.get(f"/v1/students/{STUDENT}").json()["ab"] is None
        split = {"version_a": "v1", "version_b": "v2", "share_b": 0.5}
        reply = client.put(f"/v1/students/{STUDENT}/ab", json=split)
        assert reply.status_code == 200 and reply.json()["ab"] == split and reply.json()["active_version"] == "v1"

        served = {}
        for request in REQUESTS:
            reply = client.post("/v1/route", json={"student_id": STUDENT, "prompts": request})
            assert reply.status_code == 200, reply.text
            version = served[request[0]] = reply.json()["router_version"]
            assert version == ("v2" if ab_arm(request, 0.5) == "b" else "v1")
            assert reply.json()["results"][0]["teacher"] == versions[version][request[0]]
        assert set(served.values()) == {"v1", "v2"}
        again = [client.post("/v1/route", json={"student_id": STUDENT, "prompts": r}).json()["router_version"]
                 for r in REQUESTS[:6]]
        assert again == [served[r[0]] for r in REQUESTS[:6]]  # the same request meets the same version
        named = client.post("/v1/route", json={"student_id": STUDENT, "prompts": REQUESTS[0], "version": "v2"})
        assert named.json()["router_version"] == "v2"  # a named version wins over the split
        scrape = client.get("/metrics").text

        everything_to_b = client.put(f"/v1/students/{STUDENT}/ab", json={**split, "share_b": 1.0})
        assert everything_to_b.status_code == 200
        assert {client.post("/v1/route", json={"student_id": STUDENT, "prompts": r}).json()["router_version"]
                for r in REQUESTS} == {"v2"}
        cleared = client.delete(f"/v1/students/{STUDENT}/ab")
        assert cleared.status_code == 200 and cleared.json()["ab"] is None
        assert {client.post("/v1/route", json={"student_id": STUDENT, "prompts": r}).json()["router_version"]
                for r in REQUESTS} == {"v1"}
        assert client.put("/v1/students/nobody/ab", json=split).status_code == 404
        assert client.delete("/v1/students/nobody/ab").status_code == 404
    n_b = sum(v == "v2" for v in served.values()) + sum(served[r[0]] == "v2" for r in REQUESTS[:6]) + 1
    assert _counts(scrape, "persyn_route_requests") == {"v1": len(REQUESTS) + 6 + 1 - n_b, "v2": n_b}


def test_another_tenants_split_is_unknown(store, pool_file, versions):
    keys = (ApiKey("team-a", "key-a"), ApiKey("team-b", "key-b"))
    settings = Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu", api_keys=keys)
    a, b = ({"Authorization": f"Bearer {k}"} for k in ("key-a", "key-b"))
    with TestClient(create_app(settings, store=store)) as client:
        assert client.post("/v1/students", headers=b, json={"student_id": "b-ab"}).status_code == 201
        store.add_router_version("b-ab", "v1", store.router_version(STUDENT, "v1")[1])
        store.add_router_version("b-ab", "v2", store.router_version(STUDENT, "v2")[1], activate=False)
        split = {"version_a": "v1", "version_b": "v2", "share_b": 0.5}
        for method, path, body in (("PUT", "/v1/students/b-ab/ab", split), ("DELETE", "/v1/students/b-ab/ab", None),
                                   ("POST", "/v1/route", {"student_id": "b-ab", "prompts": ["hi"], "version": "v2"})):
            reply = client.request(method, path, headers=a, json=body)
            assert reply.status_code == 404 and reply.json() == {"detail": "unknown student 'b-ab'"}, reply.text
        assert client.put("/v1/students/b-ab/ab", headers=b, json=split).json()["ab"] == split
        assert store.ab_split("b-ab") == split
