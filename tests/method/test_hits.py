"""Hit@k of chosen teachers against hand-made ground truth."""

import numpy as np
import pytest

from services.method.hits import hit_at_k, in_top_k, random_hit_at_k

nan = float("nan")


def test_hit_at_k_counts_ties_at_the_kth_place_as_hits():
    scores = np.array([[5.0, 4.0, 4.0, 1.0], [1.0, 2.0, 3.0, nan]])
    assert in_top_k(scores, np.array([2, 0]), 2).tolist() == [True, False]
    assert hit_at_k(scores, np.array([0, 2]), 1) == 1.0
    assert hit_at_k(scores, np.array([3, 3]), 3) == 0.0


def test_random_hit_at_k_is_share_of_top_k_among_available():
    scores = np.array([[5.0, 4.0, 4.0, 1.0], [1.0, 2.0, 3.0, nan]])
    # prompt 0: top-2 = {0, 1, 2} of 4; prompt 1: top-2 = {1, 2} of 3
    assert random_hit_at_k(scores, 2) == pytest.approx((3 / 4 + 2 / 3) / 2)
