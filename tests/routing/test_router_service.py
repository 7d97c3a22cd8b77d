"""The router service (micro-batching, hot reload, LRU) and the standalone router server, with real
pieces: a tiny router trained on the real MiniLM backbone, real Redis, real HTTP through uvicorn."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid

import httpx
import numpy as np
import pytest
import redis
import uvicorn

from services.core.settings import Settings
from services.jobs.store import JobStore
from services.routing.client import HTTPRouterClient, LocalRouterClient, RouterClient, router_client_from_settings
from services.routing.model import Router
from services.routing.server import create_app
from services.routing.service import NoActiveRouter, RoutedBatch, RouterService, RouterUnavailable
from services.routing.training import TrainConfig, train_router

REDIS_URL = "redis://127.0.0.1:6379/0"
TEACHERS = ["mathy", "poet", "middle"]
MATHS = [f"What is {a} plus {b}? Show the sum." for a, b in zip(range(3, 18), range(40, 55))]
POEMS = [f"Write a short poem about the {w}." for w in
         ("sea", "moon", "forest", "rain", "winter", "city", "river", "mountain", "desert", "garden",
          "stars", "autumn", "snow", "sun", "wind")]
QUERIES = ["What is 12 plus 30?", "Write a short poem about the lake.", "What is 7 plus 61? Show the sum.",
           "Write a short poem about the fog and the harbour at night.", "Compute 5 plus 9.",
           "A poem on the meadow, please.", "What is 100 plus 23?", "Write a short poem about love."]


def _train(tmp_path_factory, score_cache, swapped: bool, name: str):
    prompts = MATHS + POEMS
    maths_row, poem_row = [1.0, 0.0, 0.5], [0.0, 1.0, 0.5]
    if swapped:
        maths_row, poem_row = poem_row, maths_row
    scores = np.array([maths_row] * len(MATHS) + [poem_row] * len(POEMS))
    router, metrics = train_router(prompts, TEACHERS, scores, TrainConfig(seed=0), cache=score_cache)
    return router.save(tmp_path_factory.mktemp(name) / "router", metrics=metrics)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, score_cache):
    v1 = _train(tmp_path_factory, score_cache, False, "v1")
    v2 = _train(tmp_path_factory, score_cache, True, "v2")
    return {"v1": (str(v1), Router.load(v1, device="cpu")), "v2": (str(v2), Router.load(v2, device="cpu"))}


@pytest.fixture(scope="module")
def store():
    prefix = f"test-rs-{uuid.uuid4().hex[:8]}"
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    store = JobStore.from_url(REDIS_URL, prefix)
    yield store
    keys = list(store.r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        store.r.delete(*keys)
    store.r.close()


def _student(store, artifacts, version="v1") -> str:
    student = f"student-{uuid.uuid4().hex[:6]}"
    store.register_student(student, "smollm2-135m-instruct")
    store.add_router_version(student, version, artifacts[version][0], {"note": "test"}, activate=True)
    return student


def _expected(artifacts, version, prompts):
    return artifacts[version][1].strengths(prompts)


def _strengths(batch: RoutedBatch) -> np.ndarray:
    return np.array([[r.strengths[t] for t in TEACHERS] for r in batch.results])


def test_service_routes_like_the_library(store, artifacts):
    student = _student(store, artifacts)

    async def go():
        service = RouterService(store.active_router, device="cpu")
        try:
            return await service.route(student, QUERIES, top_k=2)
        finally:
            await service.aclose()

    routed = asyncio.run(go())
    expected = _expected(artifacts, "v1", QUERIES)
    assert routed.version == "v1" and len(routed.results) == len(QUERIES)
    np.testing.assert_allclose(_strengths(routed), expected, atol=1e-5)
    assert [r.teacher for r in routed.results] == [TEACHERS[i] for i in expected.argmax(axis=1)]
    assert [r.teacher for r in routed.results[:2]] == ["mathy", "poet"]
    for r in routed.results:
        assert len(r.top_k) == 2 and r.top_k[0] == r.teacher


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows(store, artifacts, monkeypatch):
    student = _student(store, artifacts)
    loads = []
    original = Router.load
    monkeypatch.setattr(Router, "load", lambda path, **kw: loads.append(path) or original(path, **kw))
    prompts = [QUERIES[i % len(QUERIES)] + f" (variant {i})" for i in range(20)]
    batches: list[int] = []

    async def go():
        service = RouterService(store.active_router, max_wait_ms=50, device="cpu", on_batch=batches.append)
        try:  # 20 first requests at once: one load, few forward passes
            return await asyncio.gather(*(service.route(student, [p]) for p in prompts))
        finally:
            await service.aclose()

    routed = asyncio.run(go())
    assert len(loads) == 1
    assert sum(batches) == 20 and len(batches) < 20, batches
    expected = _expected(artifacts, "v1", prompts)
    for i, r in enumerate(routed):
        assert r.version == "v1" and len(r.results) == 1
        np.testing.assert_allclose(_strengths(r)[0], expected[i], atol=1e-5)


def test_batch_size_cap_and_oversized_requests(store, artifacts):
    student = _student(store, artifacts)
    batches: list[int] = []

    async def go():
        service = RouterService(store.active_router, max_batch_size=4, max_wait_ms=50, device="cpu",
                                on_batch=batches.append)
        try:
            await service.route(student, ["warm up"])
            batches.clear()
            big = [f"What is {i} plus {i}?" for i in range(10)]
            return big, await asyncio.gather(service.route(student, big), *(service.route(student, [q]) for q in QUERIES))
        finally:
            await service.aclose()

    big, (big_routed, *singles) = asyncio.run(go())
    assert max(batches) == 10 and all(b <= 4 for b in batches if b != 10) and sum(batches) == 10 + len(QUERIES)
    np.testing.assert_allclose(_strengths(big_routed), _expected(artifacts, "v1", big), atol=1e-5)
    np.testing.assert_allclose(np.concatenate([_strengths(s) for s in singles]),
                               _expected(artifacts, "v1", QUERIES), atol=1e-5)


def test_batching_off_runs_one_forward_per_request(store, artifacts):
    student = _student(store, artifacts)
    batches: list[int] = []

    async def go():
        service = RouterService(store.active_router, batching=False, max_wait_ms=50, device="cpu",
                                on_batch=batches.append)
        try:
            singles = await asyncio.gather(*(service.route(student, [q]) for q in QUERIES))
            pair = await service.route(student, QUERIES[:2])
            return singles, pair
        finally:
            await service.aclose()

    singles, pair = asyncio.run(go())
    assert batches == [1] * len(QUERIES) + [2]
    np.testing.assert_allclose(np.concatenate([_strengths(s) for s in singles]),
                               _expected(artifacts, "v1", QUERIES), atol=1e-5)
    np.testing.assert_allclose(_strengths(pair), _expected(artifacts, "v1", QUERIES[:2]), atol=1e-5)


def test_a_failed_forward_fails_only_its_batch(store, artifacts, monkeypatch):
    student = _student(store, artifacts)
    real = Router.strengths

    def flaky(router, prompts, **kw):
        if any("BOOM" in p for p in prompts):
            raise RuntimeError("forward failed")
        return real(router, prompts, **kw)

    monkeypatch.setattr(Router, "strengths", flaky)

    async def go():
        service = RouterService(store.active_router, device="cpu")
        try:
            with pytest.raises(RuntimeError, match="forward failed"):
                await service.route(student, ["BOOM"])
            return await service.route(student, QUERIES[:2])  # the collector is still alive
        finally:
            await service.aclose()

    routed = asyncio.run(go())
    np.testing.assert_allclose(_strengths(routed), _expected(artifacts, "v1", QUERIES[:2]), atol=1e-5)


def test_hot_reload_picks_up_a_new_active_version(store, artifacts):
    student = _student(store, artifacts)

    async def go():
        service = RouterService(store.active_router, device="cpu")
        try:
            before = await service.route(student, QUERIES[:2])
            store.add_router_version(student, "v2", artifacts["v2"][0], {}, activate=True)
            after = await service.route(student, QUERIES[:2])
            store.activate_version(student, "v1")  # rolling back is instant: v1 is still loaded
            back = await service.route(student, QUERIES[:2])
            return before, after, back, service.loaded()
        finally:
            await service.aclose()

    before, after, back, loaded = asyncio.run(go())
    assert before.version == "v1" and [r.teacher for r in before.results] == ["mathy", "poet"]
    assert after.version == "v2" and [r.teacher for r in after.results] == ["poet", "mathy"]
    np.testing.assert_allclose(_strengths(after), _expected(artifacts, "v2", QUERIES[:2]), atol=1e-5)
    assert back.version == "v1"
    np.testing.assert_allclose(_strengths(back), _strengths(before), atol=1e-6)
    assert loaded == [(student, "v2"), (student, "v1")]


def test_lru_evicts_beyond_cache_size(store, artifacts):
    a, b, c = (_student(store, artifacts) for _ in range(3))

    async def go():
        service = RouterService(store.active_router, cache_size=2, device="cpu")
        seen = []
        try:
            for s in (a, b, a, c):
                await service.route(s, QUERIES[:1])
                seen.append(service.loaded())
            routed = await service.route(b, QUERIES[:3])  # evicted, loaded again
            seen.append(service.loaded())
            return seen, routed
        finally:
            await service.aclose()

    seen, routed = asyncio.run(go())
    assert seen == [[(a, "v1")], [(a, "v1"), (b, "v1")], [(b, "v1"), (a, "v1")], [(a, "v1"), (c, "v1")],
                    [(c, "v1"), (b, "v1")]]
    np.testing.assert_allclose(_strengths(routed), _expected(artifacts, "v1", QUERIES[:3]), atol=1e-5)


def test_unknown_student_and_broken_artifact(store, artifacts, tmp_path):
    registered = f"student-{uuid.uuid4().hex[:6]}"
    store.register_student(registered, "smollm2-135m-instruct")  # no router trained yet
    broken = f"student-{uuid.uuid4().hex[:6]}"
    store.register_student(broken, "smollm2-135m-instruct")
    store.add_router_version(broken, "v1", str(tmp_path / "missing"), {})

    async def go():
        service = RouterService(store.active_router, device="cpu")
        try:
            with pytest.raises(NoActiveRouter):
                await service.route("nobody-" + uuid.uuid4().hex, ["hi"])
            with pytest.raises(NoActiveRouter):
                await service.route(registered, ["hi"])
            with pytest.raises(RouterUnavailable, match="cannot load router"):
                await service.route(broken, ["hi"])
            assert service.loaded() == []
        finally:
            await service.aclose()

    asyncio.run(go())


def test_client_from_settings():
    local = router_client_from_settings(Settings(), lambda s: None)
    remote = router_client_from_settings(Settings(router_service_url="http://127.0.0.1:1"), lambda s: None)
    assert isinstance(local, LocalRouterClient) and isinstance(remote, HTTPRouterClient)
    assert isinstance(local, RouterClient) and isinstance(remote, RouterClient)
    asyncio.run(local.aclose())
    asyncio.run(remote.aclose())


# ---------------------------------------------------------------------- the standalone server, real HTTP


@pytest.fixture(scope="module")
def server(store):
    settings = Settings(redis_url=REDIS_URL, key_prefix=store.p, device="cpu", precision="fp32",
                        batch_max_wait_ms=20)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("router server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=15)


def test_server_over_http_matches_the_local_service(store, artifacts, server):
    student = _student(store, artifacts)

    async def go():
        remote = HTTPRouterClient(server)
        local = LocalRouterClient(RouterService(store.active_router, device="cpu"))
        try:
            over_http = await asyncio.gather(*(remote.route(student, [q], top_k=2) for q in QUERIES))
            whole = await remote.route(student, QUERIES)
            in_process = await local.route(student, QUERIES)
            with pytest.raises(NoActiveRouter, match="no active router"):
                await remote.route("nobody-" + uuid.uuid4().hex, ["hi"])
            return over_http, whole, in_process
        finally:
            await remote.aclose()
            await local.aclose()

    over_http, whole, in_process = asyncio.run(go())
    assert in_process.version == whole.version == "v1" and all(r.version == "v1" for r in over_http)
    np.testing.assert_allclose(np.concatenate([_strengths(r) for r in over_http]), _strengths(in_process), atol=1e-5)
    np.testing.assert_allclose(_strengths(whole), _strengths(in_process), atol=1e-5)
    assert [r.results[0].teacher for r in over_http] == [r.teacher for r in in_process.results]
    assert all(len(r.results[0].top_k) == 2 for r in over_http)
    assert [(a.teacher, a.top_k) for a in whole.results] == [(b.teacher, b.top_k) for b in in_process.results]


def test_server_errors_and_health(store, artifacts, server):
    with httpx.Client(base_url=server, timeout=30) as client:
        missing = client.post("/route", json={"student_id": "nobody-" + uuid.uuid4().hex, "prompts": ["hi"]})
        assert missing.status_code == 404 and "no active router" in missing.json()["detail"]
        for bad in ({"prompts": ["hi"]}, {"student_id": "x", "prompts": "not a list"},
                    {"student_id": "x", "prompts": []}, {"student_id": "x", "prompts": ["hi"], "top_k": 0}):
            assert client.post("/route", json=bad).status_code == 422, bad
        assert client.post("/route", content=b"{not json", headers={"content-type": "application/json"}
                           ).status_code == 422
        surrogate = client.post("/route", content=b'{"student_id": "x", "prompts": ["ok", "\\ud800 x"]}',
                                headers={"content-type": "application/json"})
        assert surrogate.status_code == 422 and "prompt 1 is" in surrogate.json()["detail"], surrogate.text
        assert "not valid Unicode" in surrogate.json()["detail"]
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
