"""What a worker process keeps between tasks: settings, the store, clients and models, and
how a task runs one item (under its lease, through transient Redis errors).

Models load on first use and stay loaded for the life of the worker process.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache
from typing import Callable

from services.clients.openai_compat import OpenAICompatClient
from services.core.cache import ScoreCache
from services.core.generations import GenerationStore, JobGenerations
from services.core.settings import Settings
from services.jobs import leases as lease_lib
from services.jobs.store import JobStore
from services.method.formats import Teacher, teacher_pool_cached
from services.scoring import scorers


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


@lru_cache(maxsize=1)
def store() -> JobStore:
    s = settings()
    return JobStore.from_url(s.redis_url, s.key_prefix)


@lru_cache(maxsize=1)
def score_cache() -> ScoreCache:
    s = settings()
    return ScoreCache(s.data_dir / "scores.sqlite")


@lru_cache(maxsize=1)
def generation_store() -> GenerationStore:
    s = settings()
    return GenerationStore(s.generation_store_url, max_bytes=s.generation_store_max_mb << 20,
                           max_age_s=s.generation_store_max_age_s)


def generations(job_id: str, spec: dict) -> JobGenerations:
    """The generation store as job ``job_id`` sees it (``cache: false``: only its own answers)."""
    return JobGenerations(generation_store(), job_id, reuse=spec.get("cache", True))


def teachers() -> dict[str, Teacher]:
    pool = settings().teacher_pool
    if pool is None:
        raise ValueError("no teacher pool configured (PERSYN_TEACHER_POOL)")
    return {t.name: t for t in teacher_pool_cached(pool)}


@lru_cache(maxsize=64)
def client(base_url: str, model: str) -> OpenAICompatClient:
    return OpenAICompatClient(base_url, model)


def learnability_scorer(student: dict):
    """The student's log-prob scorer: its vLLM endpoint when registered with one, else local weights."""
    return _learnability_scorer(student["model"], student.get("endpoint"), student.get("endpoint_model"))


@lru_cache(maxsize=4)
def _learnability_scorer(model_ref: str, endpoint: str | None, endpoint_model: str | None):
    return scorers.learnability_scorer(model_ref, endpoint=endpoint, endpoint_model=endpoint_model,
                                       device=settings().device, precision=settings().precision)


@lru_cache(maxsize=2)
def scas_scorer(model_ref: str):
    from services.scoring.scas import SCASScorer

    return SCASScorer(model_ref, device=settings().device, precision=settings().precision)


@lru_cache(maxsize=1)
def reward_model():
    """Raw reward scorer (``PERSYN_REWARD_MODEL``, on ``PERSYN_REWARD_MODEL_URL`` when set), or None."""
    s = settings()
    if s.reward_model is None:
        return None
    return scorers.reward_scorer(s.reward_model, endpoint=s.reward_model_url, device=s.device)


log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def leases() -> lease_lib.Leases:
    return lease_lib.Leases(store())


def finish_item(job_id: str, stage: str, item: str, *, ok: bool = True, error: str | None = None) -> None:
    """Count one item (see :func:`services.jobs.stages.finish_items`)."""
    finish_items(job_id, stage, [(item, ok, error)])


def finish_items(job_id: str, stage: str, outcomes: list[tuple[str, bool, str | None]], *,
                 unit: str | None = None) -> None:
    """Count finished items with this worker's store and settings."""
    from services.jobs.stages import finish_items as count

    count(store(), settings(), job_id, stage, outcomes, unit=unit)


def run_item(job_id: str, stage: str, item: str, body: Callable[[], str], *,
             items: list[str] | None = None) -> str:
    """Run one item's task body under its lease, retrying the whole body through Redis errors.

    The body is idempotent (it skips work whose result exists), so rerunning it after Redis
    came back is safe. Past ``PERSYN_REDIS_RETRY_S`` the error is raised: Celery acks the
    message, and the lapsed lease (or the item missing from an empty queue) brings the watchdog
    to requeue it, so no item is acked and forgotten. Any other error the body did not handle
    fails the item with that error (requeueing would only meet it again). ``items``: what the
    unit ``item`` counts when it is a chunk (default: itself).
    """
    from celery import current_task
    from celery.exceptions import Retry

    s = settings()
    token = (current_task.request.id if current_task else None) or uuid.uuid4().hex
    deadline = time.monotonic() + s.redis_retry_s
    delay, retried = 0.2, 0
    while True:
        try:
            if not leases().planned(job_id, stage, item):
                return "skipped: not in the job's current plan (a task of an earlier run)"
            with lease_lib.hold(leases(), job_id, stage, item, token, s.lease_s, Retry) as held:
                outcome = body() if held else "skipped: another worker holds the item"
            if retried:
                leases().count(job_id, stage, "redis_retries", retried)
            return outcome
        except Retry:
            raise  # a transient teacher error: Celery runs the task again after its countdown
        except lease_lib.TRANSIENT_REDIS_ERRORS as exc:
            retried += 1
            if time.monotonic() + delay > deadline:
                log.error("job %s %s %s: Redis unavailable for %ss (%s); the watchdog will requeue it",
                          job_id, stage, item, s.redis_retry_s, exc)
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails its item, with the reason, once
            log.exception("job %s %s %s failed", job_id, stage, item)
            reason = f"{type(exc).__name__}: {exc}"
            if items is None:
                finish_item(job_id, stage, item, ok=False, error=reason)
            else:
                finish_items(job_id, stage, [(i, False, reason) for i in items], unit=item)
            return "failed"
