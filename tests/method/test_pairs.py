"""Bradley-Terry pairs and probabilities on hand-made score matrices."""

import math

import numpy as np

from services.method.pairs import bt_probability, make_pairs

nan = float("nan")


def test_pairs_cover_every_unordered_pair_with_b_beats_a_labels():
    scores = np.array([[0.1, 0.9, 0.5]])
    pairs = make_pairs(scores)
    got = sorted(zip(pairs.a.tolist(), pairs.b.tolist(), pairs.label.tolist()))
    assert got == [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 0.0)]


def test_ties_and_missing_scores_give_no_pair():
    scores = np.array([[1.0, 1.0, 2.0, nan], [3.0, 3.0, 3.0, 3.0]])
    pairs = make_pairs(scores)
    got = sorted(zip(pairs.prompt.tolist(), pairs.a.tolist(), pairs.b.tolist(), pairs.label.tolist()))
    assert got == [(0, 0, 2, 1.0), (0, 1, 2, 1.0)]


def test_pair_count_matches_n_choose_2_per_prompt_without_ties():
    rng = np.random.default_rng(0)
    pairs = make_pairs(rng.normal(size=(25, 19)))
    assert len(pairs) == 25 * 19 * 18 // 2


def test_bt_probability_is_sigmoid_of_strength_difference():
    strengths = np.array([[0.0, 2.0], [1.0, 1.0]])
    p = bt_probability(strengths, np.array([0, 0]), np.array([1, 1]))
    np.testing.assert_allclose(p, [1 / (1 + math.exp(-2.0)), 0.5])
