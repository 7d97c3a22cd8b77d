"""Bradley-Terry training pairs from per-prompt teacher scores (SPEC step 6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
