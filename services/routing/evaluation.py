"""Held-out router quality: train on part of a parallel set, Hit@k on the rest against baselines."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from services.method.hits import compare_routers, knn_choices
from services.method.rewards import mean_per_teacher, nan_argmax


def holdout_comparison(prompts: Sequence[str], teachers: Sequence[str], scores: np.ndarray, *,
                       test_fraction: float = 1 / 3, seed: int = 0, backbone: str = "all-minilm-l6-v2",
                       knn_k: int = 10, cache=None) -> dict[str, dict[str, float]]:
    """Train a frozen-backbone router on part of the prompts; Hit@k on the rest against baselines.

    Baselines: random (expected value), the best single teacher on the training part
    (highest mean score) and a kNN router on the same embeddings.
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
    best_single = int(nan_argmax(mean_per_teacher(scores[train])[None])[0])
    return compare_routers(scores[test], {
        "best_single": np.full(len(test), best_single),
        f"knn@{knn_k}": knn_choices(features[train], scores[train], features[test], knn_k),
        "persyn": router.strengths_from_features(features[test]).argmax(axis=1),
    })
