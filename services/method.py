"""The method's maths: normalisation, combination, pairs, metrics and selection rules.

Pure numpy, no I/O, so the CLI, the workers and the benchmarks share one definition.
Score matrices are ``[n_prompts, n_teachers]`` float arrays with ``NaN`` where a
teacher has no usable score for a prompt; such a teacher takes no part in that
prompt's ranking, pairs or metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Pairs:
    """Bradley-Terry training pairs: prompt p, teachers a and b, label = 1 if b beats a."""

    prompt: np.ndarray
    a: np.ndarray
    b: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def make_pairs(scores: np.ndarray) -> Pairs:
    """Every unordered teacher pair of every prompt (SPEC step 6).

    A is the lower teacher index, B the higher; z = e_B - e_A. Exact ties and pairs
    with a missing score give no example.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_prompts, n_teachers = scores.shape
    a, b = np.triu_indices(n_teachers, k=1)
    sa, sb = scores[:, a], scores[:, b]
    keep = np.isfinite(sa) & np.isfinite(sb) & (sa != sb)
    prompt_idx = np.broadcast_to(np.arange(n_prompts)[:, None], keep.shape)[keep]
    return Pairs(
        prompt=prompt_idx.astype(np.int64),
        a=np.broadcast_to(a, keep.shape)[keep].astype(np.int64),
        b=np.broadcast_to(b, keep.shape)[keep].astype(np.int64),
        label=(sb > sa)[keep].astype(np.float32),
    )


def bt_probability(strengths: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(B beats A | x) = sigmoid(pi_B(x) - pi_A(x)) for rows of ``strengths``."""
    diff = np.take_along_axis(strengths, b[:, None], 1) - np.take_along_axis(strengths, a[:, None], 1)
    return 1.0 / (1.0 + np.exp(-diff[:, 0]))


# --------------------------------------------------------------------------- metrics

def in_top_k(scores: np.ndarray, chosen: np.ndarray, k: int) -> np.ndarray:
    """Whether each prompt's chosen teacher is in its ground-truth top k.

    Ties at the k-th place count as top k: a teacher whose score equals the k-th best
    score is as good as it. A prompt with no finite score counts as a miss.
    """
    x = np.where(np.isfinite(scores), scores, -np.inf)
    k = min(k, x.shape[1])
    kth = -np.sort(-x, axis=1)[:, k - 1]
    picked = x[np.arange(len(x)), chosen]
    return (picked >= kth) & np.isfinite(picked)


def hit_at_k(scores: np.ndarray, chosen: np.ndarray, k: int) -> float:
    """Share of prompts whose chosen teacher is in the ground-truth top k."""
    return float(in_top_k(scores, np.asarray(chosen), k).mean())


def random_hit_at_k(scores: np.ndarray, k: int) -> float:
    """Expected Hit@k of a uniformly random router over the teachers with a score."""
    x = np.where(np.isfinite(scores), scores, -np.inf)
    k = min(k, x.shape[1])
    kth = -np.sort(-x, axis=1)[:, k - 1]
    n_top = ((x >= kth[:, None]) & np.isfinite(x)).sum(axis=1)
    n_avail = np.isfinite(scores).sum(axis=1)
    return float(np.mean(np.where(n_avail > 0, n_top / np.maximum(n_avail, 1), 0.0)))


def generation_counts(n_prompts: int, n_teachers: int, n_calibration: int) -> dict[str, int]:
    """Generations needed by Generate-then-Select versus Route-then-Generate."""
    n_calibration = min(n_calibration, n_prompts)
    return {
        "generate_then_select": n_prompts * n_teachers,
        "route_then_generate": n_prompts + n_calibration * (n_teachers - 1),
    }


# --------------------------------------------------------------------------- selection rules

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


def car_scores(mean_quality: np.ndarray, mean_nll: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Compatibility-adjusted reward per teacher: quality / (1 + beta * student NLL)."""
    return np.asarray(mean_quality) / (1.0 + beta * np.asarray(mean_nll))


def scas_cost(d_a: float, d_q: float, aa: float, aq: float, lam: float = 0.5) -> float:
    """SCAS learning cost S = (1 - lam) * d_A^2 * AA + lam * d_A * d_Q * AQ (lower is easier)."""
    return (1.0 - lam) * d_a * d_a * aa + lam * d_a * d_q * aq
