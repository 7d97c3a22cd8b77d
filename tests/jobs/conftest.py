"""A job store on the real Redis with a key prefix of its own, removed afterwards."""

from __future__ import annotations

import uuid

import pytest

from services.jobs.store import JobStore

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def store():
    prefix = f"test-jobs-{uuid.uuid4().hex[:8]}"
    store = JobStore.from_url(REDIS_URL, prefix)
    if not store.ping():
        pytest.skip("no Redis at 127.0.0.1:6379")
    yield store
    for key in store.r.scan_iter(f"{prefix}:*"):
        store.r.delete(key)
