"""What a worker process keeps between tasks: settings, the store, clients and models.

Models load on first use and stay loaded for the life of the worker process.
"""

from __future__ import annotations

from functools import lru_cache

from services.clients.openai_compat import OpenAICompatClient
from services.core.cache import ScoreCache
from services.core.settings import Settings
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


def finish_item(job_id: str, stage: str, item: str, *, ok: bool = True, error: str | None = None) -> None:
    """Count the item; the task that completes its stage starts the next one."""
    from services.jobs.stages import advance

    if store().mark_item(job_id, stage, item, ok=ok, error=error):
        advance(store(), job_id, stage, settings())
