"""One task per (job, prompt): score every teacher's answer and, where due, pick one.

Used for calibration prompts (rewards for router training; in a ``persyn`` job the
prompt also keeps its best answer) and for the ``select`` stage of the
generate-then-select strategies (oracle: best combined reward; scas: lowest cost).
"""

from __future__ import annotations

import numpy as np

from services.jobs import runtime as rt
from services.jobs.celery_app import app
from services.jobs.stages import SCORE_TASK, item_key, job_teachers
from services.method.formats import ParallelRecord
from services.method.rewards import combine
from services.scoring.matrices import learnability_matrix, scas_cost_matrix
from services.scoring.quality import math_verify_reward


def _quality(prompt: dict, texts: list[str]) -> list[float]:
    if prompt.get("reference") is not None:
        return [math_verify_reward(t, str(prompt["reference"])) for t in texts]
    scorer = rt.reward_model()
    if scorer is None:
        raise ValueError(f"prompt {prompt['id']!r} has no reference and no reward model is configured")
    return [float(v) for v in scorer.score([(prompt["prompt"], t) for t in texts])]


def compute_scores(job_id: str, stage: str, prompt_id: str) -> dict | None:
    """Rewards of every answered teacher for one prompt (None when no teacher answered)."""
    store = rt.store()
    spec = store.job_record(job_id)["spec"]
    [prompt] = store.prompts(job_id, [prompt_id])
    answers = {t.name: store.get_result(job_id, "gen", item_key(prompt_id, t.name))
               for t in job_teachers(store, rt.settings(), job_id)}
    answers = {t: a for t, a in answers.items() if a is not None and a["text"].strip()}
    if not answers:
        return None
    names, texts = list(answers), [a["text"] for a in answers.values()]
    record = [ParallelRecord(id=prompt_id, prompt=prompt["prompt"], responses=dict(zip(names, texts)))]
    alpha = spec.get("alpha", 0.4)
    student = store.get_student(spec["student_id"])
    quality = _quality(prompt, texts) if alpha < 1 else None
    learn = None
    if alpha > 0:
        learn = learnability_matrix(record, names, student["model"], cache=rt.score_cache(),
                                    scorer=rt.learnability_scorer(student))[0].tolist()
    combined = combine(None if quality is None else np.array([quality]),
                              None if learn is None else np.array([learn]), alpha)[0]
    scores = {"teachers": names, "quality": quality, "learnability": learn, "combined": combined.tolist()}
    if spec.get("strategy") == "scas" and stage == "select":
        scores["scas_cost"] = scas_cost_matrix(record, names, student["model"], cache=rt.score_cache(),
                                               scorer=rt.scas_scorer(student["model"]))[0].tolist()
    return scores


@app.task(name=SCORE_TASK)
def score(job_id: str, stage: str, prompt_id: str) -> str:
    store = rt.store()
    if not store.is_active(job_id):
        return "skipped: job ended"
    scores = store.get_result(job_id, "score", prompt_id)
    if scores is None:
        try:
            scores = compute_scores(job_id, stage, prompt_id)
        except Exception as exc:  # noqa: BLE001 - a failed item is recorded and the job goes on
            rt.finish_item(job_id, stage, prompt_id, ok=False, error=f"{type(exc).__name__}: {exc}")
            return "failed"
        if scores is None:
            rt.finish_item(job_id, stage, prompt_id, ok=False, error="no teacher answered this prompt")
            return "failed"
        store.put_result(job_id, "score", prompt_id, scores)
        scores = store.get_result(job_id, "score", prompt_id)
    job = store.job_record(job_id)
    if stage == "select" or job["kind"] == "persyn":
        if stage == "select" and job["spec"].get("strategy") == "scas":
            pick = int(np.argmin(scores["scas_cost"]))
        else:
            pick = int(np.argmax(scores["combined"]))
        teacher = scores["teachers"][pick]
        answer = store.get_result(job_id, "gen", item_key(prompt_id, teacher))
        [prompt] = store.prompts(job_id, [prompt_id])
        store.put_row(job_id, {"id": prompt_id, "prompt": prompt["prompt"], "response": answer["text"],
                               "teacher": teacher, "verified": answer["verified"],
                               "source": "calibration" if stage == "calibration.score" else "selected"})
    rt.finish_item(job_id, stage, prompt_id)
    return "done"
