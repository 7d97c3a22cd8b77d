"""Active calibration: choose prompts that cover the prompt space (greedy k-center).

Greedy farthest-point selection (Gonzalez 1985) is a 2-approximation of the k-center problem:
after a seeded first pick, each next prompt is the one farthest from every prompt chosen so far,
so a calibration of k prompts spreads over the embedding space instead of following its densest
regions as a random sample does.
"""

from __future__ import annotations

import numpy as np

#: How calibration prompts are chosen (JobSpec ``calibration_sampler``).
CALIBRATION_SAMPLERS = ("random", "kcenter")


def kcenter_greedy(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` rows of ``features`` ``[n, d]`` by greedy k-center, in the order chosen.

    Rows are compared by cosine distance (each is L2-normalised first, so a prompt's length
    does not make it far). The first row is drawn with ``seed``; ties go to the lowest index.
    ``k >= n`` returns every row.
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be [n, d], got shape {x.shape}")
    n = len(x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        return np.arange(n)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = np.random.default_rng(seed).integers(n)
    # squared distance to the nearest chosen row: |a - b|^2 = 2 - 2 a.b for unit rows
    nearest = np.maximum(2.0 - 2.0 * (x @ x[chosen[0]]), 0.0)
    for i in range(1, k):
        nearest[chosen[i - 1]] = -1.0  # a chosen row is never chosen again (even among duplicates)
        chosen[i] = int(np.argmax(nearest))
        np.minimum(nearest, np.maximum(2.0 - 2.0 * (x @ x[chosen[i]]), 0.0), out=nearest)
    return chosen
