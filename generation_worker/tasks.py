"""One task per (job, prompt, teacher): ask the teacher, keep the answer once."""

from __future__ import annotations

import logging
from dataclasses import asdict

import httpx
from celery.signals import worker_ready

from services.clients.openai_compat import OpenAICompatError
from services.jobs import runtime as rt
from services.jobs.celery_app import app
from services.jobs.stages import GENERATE_TASK, GENERATE_THEN_SELECT, item_key
from services.synthesis.teachers import answer, check_teachers

log = logging.getLogger(__name__)


@worker_ready.connect
def _check_teachers(**_) -> None:
    """Say at startup which teachers do not answer; their tasks will retry, then fail cleanly."""
    try:
        check_teachers(rt.teachers().values())
    except Exception as exc:  # noqa: BLE001 - a warning, not a reason to stop the worker
        log.warning("teacher health check failed: %s", exc)


def _transient(exc: Exception) -> bool:
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)) or (
        isinstance(exc, OpenAICompatError) and exc.retryable)


@app.task(name=GENERATE_TASK, bind=True, max_retries=rt.settings().task_max_retries)
def generate(self, job_id: str, stage: str, prompt_id: str, teacher_name: str) -> str:
    store = rt.store()
    if not store.is_active(job_id):
        return "skipped: job ended"
    key = item_key(prompt_id, teacher_name)
    result = store.get_result(job_id, "gen", key)
    spec = store.job_record(job_id)["spec"]
    [prompt] = store.prompts(job_id, [prompt_id])
    if result is None:
        try:
            teacher = rt.teachers()[teacher_name]
            store.count_attempt(job_id, key)
            reply = answer(teacher, prompt_id, prompt["prompt"], prompt.get("reference"),
                           seed=spec.get("seed", 0), client=rt.client(teacher.base_url, teacher.model),
                           max_tokens=spec.get("max_tokens"))
        except Exception as exc:  # noqa: BLE001 - every failure is either retried or recorded
            if _transient(exc) and self.request.retries < self.max_retries:
                raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries))
            rt.finish_item(job_id, stage, key, ok=False, error=f"{type(exc).__name__}: {exc}")
            return "failed"
        if store.put_result(job_id, "gen", key, asdict(reply)):
            store.add_usage(job_id, teacher_name, requests=reply.n_samples,
                            completion_tokens=reply.completion_tokens)
        result = store.get_result(job_id, "gen", key)
        if not store.is_active(job_id):  # cancelled while the teacher was answering
            return "skipped: job ended"
    if stage == "generate" and spec.get("strategy", "persyn") not in GENERATE_THEN_SELECT:
        store.put_row(job_id, {"id": prompt_id, "prompt": prompt["prompt"], "response": result["text"],
                               "teacher": teacher_name, "verified": result["verified"], "source": "routed"})
    rt.finish_item(job_id, stage, key)
    return "done"
