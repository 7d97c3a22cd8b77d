"""One task per chunk of (prompt, teacher) items: ask the teachers concurrently, keep each answer once.

A chunk (``PERSYN_CHUNK_ITEMS`` items) runs under one lease and reads and writes its answers,
rows and counts in a few pipelined round trips, so the orchestration costs little per item
at 50K prompts. Items a teacher failed transiently are retried as a smaller chunk (same unit,
Celery's countdown); the rest of the chunk is counted at once.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import httpx
from celery.signals import worker_ready

from services.clients.openai_compat import OpenAICompatError
from services.core.generations import StoreUnavailable
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


def _backoff_s(task) -> int:
    """Seconds before a retried chunk runs again: doubling, at most a minute."""
    return min(60, 2 ** task.request.retries)


@app.task(name=GENERATE_TASK, bind=True, max_retries=rt.settings().task_max_retries)
def generate(self, job_id: str, stage: str, unit: str, items: list[list[str]]) -> str:
    pairs = [(p, t) for p, t in items]
    return rt.run_item(job_id, stage, unit, lambda: _generate(self, job_id, stage, unit, pairs),
                       items=[item_key(p, t) for p, t in pairs])


def _generate(task, job_id: str, stage: str, unit: str, pairs: list[tuple[str, str]]) -> str:
    store = rt.store()
    if not store.is_active(job_id):
        return "skipped: job ended"
    keys = [item_key(p, t) for p, t in pairs]
    answers = store.results_for(job_id, "gen", keys)
    spec = store.job_record(job_id)["spec"]
    prompt_ids = list(dict.fromkeys(p for p, _ in pairs))
    prompts = dict(zip(prompt_ids, store.prompts(job_id, prompt_ids)))
    pool = rt.teachers()
    failed: dict[str, str] = {}
    todo = []
    for (p, t), key in zip(pairs, keys):
        if key in answers:
            continue
        if t not in pool:
            failed[key] = f"teacher {t!r} is not in the pool"
        else:
            todo.append((p, t, key))
    retry: list[tuple[str, str]] = []
    if todo:
        store.count_attempts(job_id, [key for _, _, key in todo])
        fresh, retry = _ask(task, job_id, spec, prompts, pool, todo, failed)
        written = store.put_results(job_id, "gen", fresh)
        for teacher in {t for _, t, _ in todo}:
            mine = [fresh[k] for _, t, k in todo if t == teacher and written.get(k)]
            if mine:
                store.add_usage(job_id, teacher,
                                requests=sum(a["n_samples"] - a["n_from_store"] for a in mine),
                                completion_tokens=sum(a["completion_tokens"] - a["completion_tokens_from_store"]
                                                      for a in mine),
                                from_store=sum(a["n_from_store"] for a in mine))
        answers = store.results_for(job_id, "gen", keys)
        if not store.is_active(job_id):  # cancelled while the teachers were answering
            return "skipped: job ended"
    if stage == "generate" and spec.get("strategy", "persyn") not in GENERATE_THEN_SELECT:
        store.put_rows(job_id, [
            {"id": p, "prompt": prompts[p]["prompt"], "response": answers[k]["text"], "teacher": t,
             "verified": answers[k]["verified"], "source": "routed"}
            for (p, t), k in zip(pairs, keys) if k in answers])
    pending = {item_key(p, t) for p, t in retry}
    outcomes = [(k, k in answers, failed.get(k)) for k in keys if k not in pending]
    rt.finish_items(job_id, stage, outcomes, unit=None if retry else unit)
    if retry:
        raise task.retry(args=[job_id, stage, unit, [list(x) for x in retry]],
                         countdown=_backoff_s(task))
    return "done" if not failed else f"done, {len(failed)} failed"


def _ask(task, job_id: str, spec: dict, prompts: dict, pool: dict, todo: list[tuple[str, str, str]],
         failed: dict[str, str]) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """Ask every (prompt, teacher) of ``todo`` concurrently; returns the answers by key and the
    pairs to retry (transient errors while retries are left). Other errors land in ``failed``.
    Requests the generation store has answered before are read from it, not sent."""
    try:
        generations = rt.generations(job_id, spec)
    except StoreUnavailable:
        if task.request.retries < task.max_retries:  # like a teacher that does not answer: the chunk waits
            raise task.retry(countdown=_backoff_s(task)) from None
        raise

    def one(item):
        p, t, _ = item
        teacher = pool[t]
        return answer(teacher, p, prompts[p]["prompt"], prompts[p].get("reference"), seed=spec.get("seed", 0),
                      client=rt.client(teacher.base_url, teacher.model), max_tokens=spec.get("max_tokens"),
                      generations=generations)

    fresh: dict[str, dict] = {}
    retry: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=min(len(todo), rt.settings().chunk_parallel)) as threads:
        futures = [(item, threads.submit(one, item)) for item in todo]
        for (p, t, key), future in futures:
            try:
                fresh[key] = asdict(future.result())
            except Exception as exc:  # noqa: BLE001 - every teacher failure is either retried or recorded
                if _transient(exc) and task.request.retries < task.max_retries:
                    retry.append((p, t))
                else:
                    failed[key] = f"{type(exc).__name__}: {exc}"
    try:
        generations.flush()  # every answer is in the store before a row is written from it
    except StoreUnavailable as exc:  # the answers stay pending; the store's flusher commits them later
        log.warning("job %s: answers not yet in the generation store: %s", job_id, exc)
    return fresh, retry
