"""Router quality: Hit@k against the ground-truth ranking, the baseline routers' choices, and
the summary of many seeded splits."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from services.method.rewards import mean_per_teacher, nan_argmax

HIT_KS = (1, 3)


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


def hits(scores: np.ndarray, chosen: np.ndarray, prefix: str = "") -> dict[str, float]:
    """``{prefix + "hit@k": ...}`` for every k of HIT_KS."""
    return {f"{prefix}hit@{k}": hit_at_k(scores, chosen, k) for k in HIT_KS}


def random_hit_at_k(scores: np.ndarray, k: int) -> float:
    """Expected Hit@k of a uniformly random router over the teachers with a score."""
    x = np.where(np.isfinite(scores), scores, -np.inf)
    k = min(k, x.shape[1])
    kth = -np.sort(-x, axis=1)[:, k - 1]
    n_top = ((x >= kth[:, None]) & np.isfinite(x)).sum(axis=1)
    n_avail = np.isfinite(scores).sum(axis=1)
    return float(np.mean(np.where(n_avail > 0, n_top / np.maximum(n_avail, 1), 0.0)))


def best_single_choices(train_scores: np.ndarray, n_prompts: int) -> np.ndarray:
    """The best single teacher (highest mean training score) for every prompt."""
    return np.full(n_prompts, int(nan_argmax(mean_per_teacher(train_scores)[None])[0]))


def knn_mean_scores(train_features: np.ndarray, train_scores: np.ndarray, test_features: np.ndarray,
                    k: int = 10) -> np.ndarray:
    """Each test prompt's mean score per teacher over its k most similar (cosine) training prompts."""
    a = train_features / np.linalg.norm(train_features, axis=1, keepdims=True).clip(1e-12)
    b = test_features / np.linalg.norm(test_features, axis=1, keepdims=True).clip(1e-12)
    k = min(k, len(a))
    neighbours = np.argsort(-(b @ a.T), axis=1)[:, :k]
    return np.stack([mean_per_teacher(train_scores[idx]) for idx in neighbours])


def knn_choices(train_features: np.ndarray, train_scores: np.ndarray, test_features: np.ndarray,
                k: int = 10) -> np.ndarray:
    """kNN router: the teacher with the best mean score over the k most similar training prompts."""
    return nan_argmax(knn_mean_scores(train_features, train_scores, test_features, k))


def compare_routers(test_scores: np.ndarray, choices: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Hit@k of each named set of choices, plus the expected Hit@k of a random router and the
    oracle's (the ground-truth best teacher: 1 unless a prompt has no score)."""
    table = {"random": {f"hit@{k}": random_hit_at_k(test_scores, k) for k in HIT_KS}}
    for name, chosen in choices.items():
        table[name] = hits(test_scores, chosen)
    table["oracle"] = hits(test_scores, np.maximum(nan_argmax(test_scores), 0))
    return table


def summarise_runs(runs: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, sample standard deviation, min and max of every router's metrics over seeded splits."""
    out: dict = {}
    for name in runs[0]:
        out[name] = {}
        for metric in runs[0][name]:
            values = np.array([run[name][metric] for run in runs], dtype=np.float64)
            out[name][metric] = {"mean": float(values.mean()),
                                 "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                 "min": float(values.min()), "max": float(values.max())}
    return out
