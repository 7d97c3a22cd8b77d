"""Normalising and combining the two rewards (SPEC steps 4-5), and per-teacher summaries.

Pure numpy, no I/O, so the CLI, the workers and the benchmarks share one definition.
Score matrices are ``[n_prompts, n_teachers]`` float arrays with ``NaN`` where a
teacher has no usable score for a prompt; such a teacher takes no part in that
prompt's ranking, pairs or metrics.
"""

from __future__ import annotations

import numpy as np

NORMALISATIONS = ("zscore", "minmax")


def check_alpha(alpha: float) -> float:
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def normalise(scores: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Normalise each prompt's scores across its teachers (SPEC step 4).

    z-score uses the population standard deviation; min-max maps to [0, 1]. A row
    whose finite values are all equal (or that has a single finite value) gets 0.
    """
    if method not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {method!r}")
    x = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(x)
    count = finite.sum(axis=1, keepdims=True)
    safe = np.where(finite, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "zscore":
            mean = safe.sum(axis=1, keepdims=True) / np.maximum(count, 1)
            var = (np.where(finite, x - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / np.maximum(count, 1)
            centre, scale = mean, np.sqrt(var)
        else:
            lo = np.where(finite, x, np.inf).min(axis=1, keepdims=True)
            hi = np.where(finite, x, -np.inf).max(axis=1, keepdims=True)
            centre, scale = lo, hi - lo
        constant = ~(scale > 1e-12)
        out = (x - centre) / np.where(constant, 1.0, scale)
    out = np.where(constant, 0.0, out)
    return np.where(finite, out, np.nan)


def combine(quality: np.ndarray | None, learnability: np.ndarray | None, alpha: float,
            method: str = "zscore") -> np.ndarray:
    """r = (1 - alpha) * norm(r_q) + alpha * norm(r_l) (SPEC steps 4-5).

    With alpha 0 learnability is not needed, with alpha 1 quality is not needed.
    Where either needed reward is missing the combined score is missing.
    """
    alpha = check_alpha(alpha)
    if alpha < 1.0 and quality is None:
        raise ValueError("quality scores are required when alpha < 1")
    if alpha > 0.0 and learnability is None:
        raise ValueError("learnability scores are required when alpha > 0")
    parts = []
    if alpha < 1.0:
        parts.append((1.0 - alpha) * normalise(quality, method))
    if alpha > 0.0:
        parts.append(alpha * normalise(learnability, method))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def rank_teachers(scores: np.ndarray) -> np.ndarray:
    """Per prompt, teacher indices from best to worst (missing ones last, stable on ties)."""
    x = np.where(np.isfinite(scores), scores, -np.inf)
    return np.argsort(-x, axis=1, kind="stable")


def nan_argmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise argmax ignoring NaN (first index on ties); -1 for all-NaN rows."""
    x = np.where(np.isfinite(scores), scores, -np.inf)
    idx = x.argmax(axis=1)
    return np.where(np.isfinite(scores).any(axis=1), idx, -1)


def mean_per_teacher(scores: np.ndarray) -> np.ndarray:
    """Mean over prompts of each teacher's score, ignoring missing values."""
    x = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(x)
    total = np.where(finite, x, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
