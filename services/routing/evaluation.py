"""Held-out router quality: train on part of a parallel set, Hit@k on the rest against baselines,
over several seeded splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from services.method.hits import best_single_choices, compare_routers, knn_choices, summarise_runs


def holdout_comparison(prompts: Sequence[str], teachers: Sequence[str], scores: np.ndarray, *,
                       test_fraction: float = 1 / 3, seed: int = 0, backbone: str = "all-minilm-l6-v2",
                       knn_k: int = 10, cache=None) -> dict[str, dict[str, float]]:
    """Train a frozen-backbone router on part of the prompts; Hit@k on the rest against baselines.

    Baselines: random (expected value), the best single teacher on the training part
    (highest mean score), a kNN router on the same embeddings, and the oracle.
    """
    from services.routing.training import TrainConfig, prompt_embeddings, train_router

    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test fraction must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_test = max(1, int(round(len(prompts) * test_fraction)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    router, _ = train_router([prompts[i] for i in train], teachers, scores[train],
                             TrainConfig(backbone=backbone, seed=seed), cache=cache)
    features = prompt_embeddings(router.encoder, backbone, prompts, cache)
    return compare_routers(scores[test], {
        "best_single": best_single_choices(scores[train], len(test)),
        f"knn@{knn_k}": knn_choices(features[train], scores[train], features[test], knn_k),
        "persyn": router.strengths_from_features(features[test]).argmax(axis=1),
    })


def seeded_comparison(prompts: Sequence[str], teachers: Sequence[str], scores: np.ndarray, *,
                      seeds: Sequence[int] = range(5), **kwargs) -> dict:
    """``holdout_comparison`` over several seeded splits: every run, and mean/spread per router."""
    runs = [holdout_comparison(prompts, teachers, scores, seed=s, **kwargs) for s in seeds]
    return {"seeds": list(seeds), "runs": runs, "summary": summarise_runs(runs)}


def score_file_matrix(path: str | Path, record_ids: Sequence[str], teachers: Sequence[str]) -> np.ndarray:
    """A precomputed per-answer score file (``{"scores": {id: {teacher: value | null}}}``, as
    ``bench/make_arena_learnability.py`` writes) as a ``[n_prompts, n_teachers]`` matrix, NaN where
    missing; every prompt must be in the file."""
    table = json.loads(Path(path).read_text())["scores"]
    missing = [i for i in record_ids if i not in table]
    if missing:
        raise ValueError(f"{path} has no scores for prompt id {missing[0]!r} ({len(missing)} missing)")
    return np.array([[np.nan if table[i].get(t) is None else float(table[i][t]) for t in teachers]
                     for i in record_ids], dtype=np.float64)
