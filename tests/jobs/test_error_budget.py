"""The error budget: a job whose failed share passes ``max_error_rate`` stops early, ``failed``, with
a summary by teacher and kind of error (real Redis, no workers)."""

from __future__ import annotations

import pytest

from services.core.settings import Settings
from services.jobs.leases import Leases, failure_kind
from services.jobs.stages import ERROR_BUDGET_MIN_ITEMS, check_error_budget, describe_job


@pytest.mark.parametrize("error, kind", [
    ("OpenAICompatError: POST http://t/v1/chat/completions -> HTTP 503: overloaded", "http_503"),
    ("ReadTimeout: timed out", "timeout"),
    ("EndpointDown: http://t/v1 is down (circuit open)", "connection"),
    ("no worker finished this item after 3 redeliveries (each lost its lease)", "lost"),
    ("ValueError: something else", "other"),
])
def test_failure_kinds(error, kind):
    assert failure_kind(error) == kind


def _job(store, n_prompts: int, rate: float) -> str:
    prompts = [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(n_prompts)]
    job_id = store.create_job("synthesize", {"student_id": "s", "strategy": "random", "max_error_rate": rate},
                              prompts)
    store.set_state(job_id, "running")
    store.start_stage(job_id, "generate", n_prompts)
    return job_id


def _finish(store, job_id: str, ok: list[int], failed: list[int]) -> None:
    leases = Leases(store)
    for i in failed:
        leases.count_failure(job_id, "down", "OpenAICompatError: POST http://t -> HTTP 503: overloaded")
    store.put_rows(job_id, [{"id": f"p{i}", "prompt": "q", "response": "r", "teacher": "up"} for i in ok])
    store.mark_items(job_id, "generate", [(f"p{i}|up", True, None) for i in ok]
                     + [(f"p{i}|down", False, "HTTP 503") for i in failed])


def test_a_job_past_its_error_budget_stops_failed_with_a_summary(store):
    settings = Settings(key_prefix=store.p)
    job_id = _job(store, 100, rate=0.25)
    _finish(store, job_id, ok=list(range(10)), failed=list(range(10, 19)))
    assert not check_error_budget(store, job_id, "generate", settings)  # 19 finished: too few to judge
    _finish(store, job_id, ok=[], failed=[19, 20])
    assert check_error_budget(store, job_id, "generate", settings)  # 11 of 21 failed > 25%
    job = describe_job(store, job_id, settings)
    assert job["state"] == "failed" and job["rows"] == 10  # stopped, and what it made stays downloadable
    assert job["error"].startswith("stopped early: 11 of 21 generate items failed, more than the job's "
                                   "max_error_rate 0.25")
    assert "down: 11 (http_503 11; first: " in job["error"]
    assert job["failures"]["down"]["kinds"] == {"http_503": 11}


def test_a_job_within_its_budget_goes_on(store):
    settings = Settings(key_prefix=store.p)
    job_id = _job(store, 100, rate=0.5)
    _finish(store, job_id, ok=list(range(ERROR_BUDGET_MIN_ITEMS)), failed=list(range(20, 40)))
    assert not check_error_budget(store, job_id, "generate", settings)  # exactly half: within
    assert store.state(job_id) == "running"
