"""Gateway fixtures: real Redis under a private prefix, a teacher pool file, a tiny real router."""

from __future__ import annotations

from uuid import uuid4

import numpy as np
import pytest
import yaml

import services.jobs.stages
from gateway_support import MATHS, POEMS, REDIS_URL, TEACHERS
from services.jobs.store import JobStore
from services.routing.training import TrainConfig, train_router


@pytest.fixture(scope="module")
def store():
    prefix = f"test-gw-{uuid4().hex[:8]}"
    store = JobStore.from_url(REDIS_URL, prefix)
    if not store.ping():
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield store
    keys = list(store.r.scan_iter(f"{prefix}:*"))
    if keys:
        store.r.delete(*keys)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.yaml"
    path.write_text(yaml.safe_dump({"teachers": [
        {"name": name, "family": family, "size_b": size, "base_url": "http://127.0.0.1:9/v1", "model": name,
         "cost_per_1m_output": 1.5} for name, family, size in
        (("mathy", "qwen", 7), ("poet", "llama", 8), ("middle", "qwen", 1.5))]}))
    return path


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    """A tiny real router: 'mathy' wins on sums, 'poet' on poems."""
    scores = np.array([[1.0, 0.0, 0.5]] * len(MATHS) + [[0.0, 1.0, 0.5]] * len(POEMS))
    router, metrics = train_router(MATHS + POEMS, TEACHERS, scores, TrainConfig(seed=0))
    return router.save(tmp_path_factory.mktemp("router") / "v1", metrics=metrics)


@pytest.fixture
def enqueued(monkeypatch, pool_file):
    """No workers consume these tests' queues: record the sends instead of making them."""
    sent = []
    monkeypatch.setattr(services.jobs.stages, "enqueue_many", lambda messages: sent.extend(messages))
    monkeypatch.setenv("PERSYN_TEACHER_POOL", str(pool_file))  # for job-layer code that reads the environment
    return sent
