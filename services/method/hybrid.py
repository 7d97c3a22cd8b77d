"""Hybrid fallback: where the router cannot tell its top two teachers apart, ask both.

A prompt whose top-two Bradley-Terry strength gap is below ``margin`` is ambiguous: the router
gives its best teacher a win probability below sigmoid(margin) against the runner-up. Such a
prompt gets both teachers' answers, and the better by the combined reward is kept, at one extra
generation per ambiguous prompt.
"""

from __future__ import annotations

import numpy as np

from services.method.rewards import nan_argmax


def runner_up(strengths: np.ndarray, margin: float) -> np.ndarray:
    """Per prompt, the index of the second-strongest teacher where the top-two gap of ``strengths``
    ``[n_prompts, n_teachers]`` is below ``margin``, else -1 (the router's pick stands alone).
    The order is argmax-stable, as the router's own choice is."""
    x = np.asarray(strengths, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"strengths must be [n_prompts, n_teachers], got shape {x.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if x.shape[1] < 2:
        return np.full(len(x), -1)
    order = np.argsort(-x, axis=1, kind="stable")
    rows = np.arange(len(x))
    gap = x[rows, order[:, 0]] - x[rows, order[:, 1]]
    return np.where(gap < margin, order[:, 1], -1)


def hybrid_choices(strengths: np.ndarray, rewards: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(chosen teacher per prompt, which prompts were ambiguous): the router's argmax, or for an
    ambiguous prompt the better of its top two by ``rewards`` (a missing reward never wins)."""
    x = np.asarray(strengths, dtype=np.float64)
    first = x.argmax(axis=1)
    second = runner_up(x, margin)
    ambiguous = second >= 0
    rows = np.flatnonzero(ambiguous)
    pair = np.stack([first[rows], second[rows]], axis=1)
    better = nan_argmax(np.asarray(rewards, dtype=np.float64)[rows[:, None], pair])
    chosen = first.copy()
    chosen[rows] = pair[np.arange(len(rows)), np.maximum(better, 0)]
    return chosen, ambiguous
