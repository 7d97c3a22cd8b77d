"""One task per (job, prompt): score every teacher's answer and, where due, pick one.

Used for calibration prompts (rewards for router training; in a ``persyn`` job the
prompt also keeps its best answer) and for the ``select`` stage of the
generate-then-select strategies (oracle: best combined reward; scas: lowest cost), and for the
hybrid fallback's ``hybrid.select`` (the better of the routed and the runner-up teacher's answers
by the combined reward replaces the prompt's routed row).
"""

from __future__ import annotations

import numpy as np

from services.jobs import runtime as rt
from services.jobs.celery_app import app
from services.jobs.leases import TRANSIENT_REDIS_ERRORS
from services.jobs.stages import SCORE_TASK, item_key, job_teachers
from services.method.formats import ParallelRecord
from services.method.rewards import combine, nan_argmax
from services.scoring.matrices import ScoredMatrix, learnability_detailed, reward_detailed, scas_cost_matrix
from services.scoring.quality import math_verify_reward


def _quality(prompt: dict, record: list[ParallelRecord], names: list[str]) -> ScoredMatrix:
    texts = [record[0].responses[t] for t in names]
    if prompt.get("reference") is not None:
        values = np.array([[math_verify_reward(t, str(prompt["reference"])) for t in texts]])
        return ScoredMatrix(values, np.zeros_like(values, dtype=bool), {})
    scorer = rt.reward_model()
    if scorer is None:
        raise ValueError(f"prompt {prompt['id']!r} has no reference and no reward model is configured")
    return reward_detailed(record, names, rt.settings().reward_model, scorer=scorer, cache=rt.score_cache())


def compute_scores(job_id: str, stage: str, prompt_id: str) -> dict | None:
    """Rewards of every answered teacher for one prompt (None when no teacher answered).

    An answer a scorer refused (e.g. a server 400) gets no score and its reason under
    ``score_errors``; answers cut to fit a scorer's context are listed under ``truncated``.
    """
    store = rt.store()
    spec = store.job_record(job_id)["spec"]
    [prompt] = store.prompts(job_id, [prompt_id])
    answers = {t.name: store.get_result(job_id, "gen", item_key(prompt_id, t.name))
               for t in job_teachers(store, rt.settings(), job_id)}
    answers = {t: a for t, a in answers.items() if a is not None and a["text"].strip()}
    if not answers:
        return None
    names = list(answers)
    record = [ParallelRecord(id=prompt_id, prompt=prompt["prompt"],
                             responses={t: a["text"] for t, a in answers.items()})]
    alpha = spec.get("alpha", 0.4)
    student = store.get_student(spec["student_id"])
    parts = {}
    if alpha < 1:
        parts["quality"] = _quality(prompt, record, names)
    if alpha > 0:
        parts["learnability"] = learnability_detailed(record, names, student["model"], cache=rt.score_cache(),
                                                      scorer=rt.learnability_scorer(student))
    quality, learn = parts.get("quality"), parts.get("learnability")
    combined = combine(None if quality is None else quality.values,
                       None if learn is None else learn.values, alpha)[0]
    scores = {"teachers": names,
              "quality": None if quality is None else _json_floats(quality.values[0]),
              "learnability": None if learn is None else _json_floats(learn.values[0]),
              "combined": _json_floats(combined),
              "truncated": {part: [names[j] for j in np.flatnonzero(m.truncated[0])] for part, m in parts.items()},
              "score_errors": {f"{part}:{names[j]}": msg for part, m in parts.items()
                               for (_, j), msg in m.errors.items()}}
    if spec.get("strategy") == "scas" and stage == "select":
        scores["scas_cost"] = _json_floats(scas_cost_matrix(
            record, names, student["model"], cache=rt.score_cache(), scorer=rt.scas_scorer(student["model"]))[0])
    return scores


def _json_floats(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: a missing score is null."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _pick(scores: dict, by_cost: bool) -> int:
    """The chosen teacher's index, ignoring answers without a score; -1 when none has one."""
    if by_cost:
        values = -np.array([np.nan if v is None else v for v in scores["scas_cost"]], dtype=float)
    else:
        values = np.array([np.nan if v is None else v for v in scores["combined"]], dtype=float)
    return int(nan_argmax(values[None])[0])


@app.task(name=SCORE_TASK)
def score(job_id: str, stage: str, prompt_id: str) -> str:
    return rt.run_item(job_id, stage, prompt_id, lambda: _score(job_id, stage, prompt_id))


def _score(job_id: str, stage: str, prompt_id: str) -> str:
    store = rt.store()
    if not store.is_active(job_id):
        return "skipped: job ended"
    scores = store.get_result(job_id, "score", prompt_id)
    if scores is None:
        try:
            scores = compute_scores(job_id, stage, prompt_id)
        except TRANSIENT_REDIS_ERRORS:
            raise  # retried by run_item: not a failure of the item
        except Exception as exc:  # noqa: BLE001 - a failed item is recorded and the job goes on
            rt.finish_item(job_id, stage, prompt_id, ok=False, error=f"{type(exc).__name__}: {exc}")
            return "failed"
        if scores is None:
            rt.finish_item(job_id, stage, prompt_id, ok=False, error="no teacher answered this prompt")
            return "failed"
        store.put_result(job_id, "score", prompt_id, scores)
        scores = store.get_result(job_id, "score", prompt_id)
    job = store.job_record(job_id)
    if stage in ("select", "hybrid.select") or job["kind"] == "persyn":
        pick = _pick(scores, by_cost=stage == "select" and job["spec"].get("strategy") == "scas")
        if pick < 0:
            errors = "; ".join(f"{k}: {v}" for k, v in scores.get("score_errors", {}).items())
            rt.finish_item(job_id, stage, prompt_id, ok=False, error=f"no answer could be scored ({errors})")
            return "failed"
        teacher = scores["teachers"][pick]
        answer = store.get_result(job_id, "gen", item_key(prompt_id, teacher))
        [prompt] = store.prompts(job_id, [prompt_id])
        row = {"id": prompt_id, "prompt": prompt["prompt"], "response": answer["text"],
               "teacher": teacher, "verified": answer["verified"],
               "source": {"calibration.score": "calibration", "hybrid.select": "hybrid"}.get(stage, "selected")}
        cut = [part for part, who in scores.get("truncated", {}).items() if teacher in who]
        if cut:
            row["scored_truncated"] = cut  # its score is of the part that fit the scorer's context
        if stage == "hybrid.select":
            store.switch_row(job_id, row)  # the routed teacher's row stays when it won
        else:
            store.put_row(job_id, row)
    rt.finish_item(job_id, stage, prompt_id)
    return "done"
