"""Reward matrices over parallel responses, with every score cached on disk.

Each function returns ``[n_prompts, n_teachers]`` with ``NaN`` where a teacher has no
response (or no usable score) for a prompt. Cache keys hold everything a score
depends on: the scorer, the teacher, the prompt and the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from services.core.cache import ScoreCache, cache_key, cached_compute
from services.method.formats import ParallelRecord
from services.method.strategies import scas_cost

#: Quality sources: scores in the file, math-verify against the reference, or a reward model.
QUALITY_FILE = "file"
QUALITY_MATH_VERIFY = "math-verify"


def _cells(records: Sequence[ParallelRecord], teachers: Sequence[str]) -> list[tuple[int, int, str, str]]:
    """(row, column, prompt, response) for every teacher response present."""
    return [(i, j, rec.prompt, rec.responses[t])
            for i, rec in enumerate(records) for j, t in enumerate(teachers) if t in rec.responses]


def _fill(records, teachers, cells, values) -> np.ndarray:
    out = np.full((len(records), len(teachers)), np.nan)
    for (i, j, _, _), v in zip(cells, values):
        out[i, j] = v
    return out


def _cached_matrix(records, teachers, scorer_id: str, score_items: Callable, cache: ScoreCache | None):
    cells = _cells(records, teachers)
    keys = [cache_key(scorer_id, teachers[j], prompt, response) for _, j, prompt, response in cells]
    values = cached_compute(cache, keys, lambda idx: score_items([cells[k][2:] for k in idx]))
    return _fill(records, teachers, cells, values)


def quality_matrix(records: Sequence[ParallelRecord], teachers: Sequence[str], source: str = QUALITY_FILE,
                   *, cache: ScoreCache | None = None, progress: bool = False) -> np.ndarray:
    """r_q per response: from the file, from math-verify, or from a local reward model."""
    if source == QUALITY_FILE:
        missing = [rec.id for rec in records if rec.quality is None]
        if missing:
            raise ValueError(f"--quality file needs a 'quality' object on every line; missing for id {missing[0]!r}")
        out = np.full((len(records), len(teachers)), np.nan)
        for i, rec in enumerate(records):
            for j, t in enumerate(teachers):
                v = rec.quality.get(t)
                out[i, j] = np.nan if v is None or t not in rec.responses else v
        return out
    if source == QUALITY_MATH_VERIFY:
        from services.scoring.quality import math_verify_reward

        missing = [rec.id for rec in records if rec.reference is None]
        if missing:
            raise ValueError(f"math-verify quality needs a 'reference' on every line; missing for id {missing[0]!r}")
        cells = _cells(records, teachers)
        return _fill(records, teachers, cells,
                     [math_verify_reward(resp, records[i].reference) for i, _, _, resp in cells])
    from services.scoring.scorers import reward_scorer

    scorer = reward_scorer(source)
    return _cached_matrix(records, teachers, f"quality:rm:{source}",
                          lambda items: scorer.score(items, progress=progress), cache)


@dataclass
class ScoredMatrix:
    """A reward matrix with, per cell, whether its input was truncated and why it has no score."""

    values: np.ndarray
    truncated: np.ndarray
    errors: dict[tuple[int, int], str]


def _cached_detailed(records, teachers, scorer_id: str, score_detailed: Callable,
                     cache: ScoreCache | None) -> ScoredMatrix:
    """Like :func:`_cached_matrix` for a scorer that flags truncation and refuses single items:
    flags are cached beside the values; refused items are not cached, so a later run retries them."""
    cells = _cells(records, teachers)
    keys = [cache_key(scorer_id, teachers[j], prompt, response) for _, j, prompt, response in cells]
    flag_keys = [cache_key("truncated", k) for k in keys]
    have = cache.get_floats(keys + flag_keys) if cache is not None else {}
    missing = [k for k, key in enumerate(keys) if key not in have]
    errors: dict[tuple[int, int], str] = {}
    if missing:
        batch = score_detailed([cells[k][2:] for k in missing])
        fresh: dict[str, float] = {}
        for pos, k in enumerate(missing):
            if pos in batch.errors:
                errors[cells[k][:2]] = batch.errors[pos]
                have[keys[k]] = np.nan
                continue
            fresh[keys[k]] = float(batch.values[pos])
            fresh[flag_keys[k]] = float(batch.truncated[pos])
        if cache is not None and fresh:
            cache.put_floats(fresh)
        have.update(fresh)
    values = _fill(records, teachers, cells, [have[k] for k in keys])
    truncated = _fill(records, teachers, cells, [have.get(k, 0.0) for k in flag_keys]) == 1.0
    return ScoredMatrix(values, truncated, errors)


def student_scorer_id(kind: str, student: str, precision: str | None) -> str:
    """The cache-key prefix of a student's scores: a bf16 score is never served for an fp32 request
    (``precision`` None: an endpoint's scores, in the server's own dtype)."""
    return f"{kind}:{student}" if precision is None else f"{kind}:{student}@{precision}"


def _precision(scorer, requested: str) -> str | None:
    """The precision the scores will be computed in: the given scorer's, else that of a local
    student loaded with ``requested`` (known without loading it)."""
    if scorer is not None:
        return scorer.precision
    from services.scoring.learnability import student_precision

    return student_precision(requested)


def learnability_matrix(records: Sequence[ParallelRecord], teachers: Sequence[str], student: str, *,
                        cache: ScoreCache | None = None, progress: bool = False, scorer=None,
                        precision: str = "fp32") -> np.ndarray:
    """r_l per response: the student's mean log-probability per response token (``precision`` for
    the student loaded here when no ``scorer`` is given)."""
    for rec in records:
        empty = [t for t in teachers if t in rec.responses and not rec.responses[t].strip()]
        if empty:
            raise ValueError(f"prompt {rec.id!r}: teacher {empty[0]!r} has an empty response; "
                             "learnability needs at least one response token")
    def score(items):
        nonlocal scorer
        if scorer is None:  # load the student only when something is not cached
            from services.scoring.scorers import learnability_scorer

            scorer = learnability_scorer(student, precision=precision)
        return scorer.score(items, progress=progress)

    key = student_scorer_id("learnability", student, _precision(scorer, precision))
    return _cached_matrix(records, teachers, key, score, cache)


def learnability_detailed(records: Sequence[ParallelRecord], teachers: Sequence[str], student: str, *,
                          scorer, cache: ScoreCache | None = None) -> ScoredMatrix:
    """:func:`learnability_matrix` with truncation flags and per-item refusals (workers use this:
    one answer the scorer cannot take costs only its own score)."""
    return _cached_detailed(records, teachers, student_scorer_id("learnability", student, scorer.precision),
                            scorer.score_detailed, cache)


def reward_detailed(records: Sequence[ParallelRecord], teachers: Sequence[str], scorer_id: str, *,
                    scorer, cache: ScoreCache | None = None) -> ScoredMatrix:
    """Reward-model quality with truncation flags and per-item refusals."""
    return _cached_detailed(records, teachers, f"quality:rm:{scorer_id}", scorer.score_detailed, cache)


def scas_cost_matrix(records: Sequence[ParallelRecord], teachers: Sequence[str], student: str, *,
                     lam: float = 0.5, cache: ScoreCache | None = None, progress: bool = False,
                     scorer=None, precision: str = "fp32") -> np.ndarray:
    """SCAS learning cost per response (lower = easier for this student to learn)."""
    def score(items):
        nonlocal scorer
        if scorer is None:
            from services.scoring.scas import SCASScorer

            scorer = SCASScorer(student, precision=precision)
        return [scas_cost(f.d_a, f.d_q, f.aa, f.aq, lam) for f in scorer.features_many(items, progress=progress)]

    key = f"{student_scorer_id('scas', student, _precision(scorer, precision))}:{lam}"
    return _cached_matrix(records, teachers, key, score, cache)

