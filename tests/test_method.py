"""The method's maths on hand-made score matrices."""

import math

import numpy as np
import pytest

from services import method

nan = float("nan")


def test_zscore_per_prompt_uses_population_std_and_zeroes_constant_rows():
    scores = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [2.0, nan, 4.0]])
    z = method.normalise(scores, "zscore")
    s = math.sqrt(2 / 3)
    np.testing.assert_allclose(z[0], [-1 / s, 0.0, 1 / s])
    np.testing.assert_array_equal(z[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(z[2, [0, 2]], [-1.0, 1.0])
    assert math.isnan(z[2, 1])


def test_minmax_maps_each_prompt_to_unit_range():
    z = method.normalise(np.array([[2.0, 4.0, 3.0], [7.0, 7.0, nan]]), "minmax")
    np.testing.assert_allclose(z[0], [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(z[1, :2], [0.0, 0.0])


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="normalisation"):
        method.normalise(np.zeros((1, 2)), "rank")


def test_combine_weights_normalised_rewards_by_alpha():
    q = np.array([[1.0, 3.0]])   # z: [-1, 1]
    l = np.array([[-0.5, -2.0]])  # z: [1, -1]
    np.testing.assert_allclose(method.combine(q, l, 0.4), [[-0.6 + 0.4, 0.6 - 0.4]])
    np.testing.assert_allclose(method.combine(q, None, 0.0), [[-1.0, 1.0]])
    np.testing.assert_allclose(method.combine(None, l, 1.0), [[1.0, -1.0]])
    with pytest.raises(ValueError, match="learnability"):
        method.combine(q, None, 0.4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        method.combine(q, l, 1.5)


def test_pairs_cover_every_unordered_pair_with_b_beats_a_labels():
    scores = np.array([[0.1, 0.9, 0.5]])
    pairs = method.make_pairs(scores)
    got = sorted(zip(pairs.a.tolist(), pairs.b.tolist(), pairs.label.tolist()))
    assert got == [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 0.0)]


def test_ties_and_missing_scores_give_no_pair():
    scores = np.array([[1.0, 1.0, 2.0, nan], [3.0, 3.0, 3.0, 3.0]])
    pairs = method.make_pairs(scores)
    got = sorted(zip(pairs.prompt.tolist(), pairs.a.tolist(), pairs.b.tolist(), pairs.label.tolist()))
    assert got == [(0, 0, 2, 1.0), (0, 1, 2, 1.0)]


def test_pair_count_matches_n_choose_2_per_prompt_without_ties():
    rng = np.random.default_rng(0)
    pairs = method.make_pairs(rng.normal(size=(25, 19)))
    assert len(pairs) == 25 * 19 * 18 // 2


def test_bt_probability_is_sigmoid_of_strength_difference():
    strengths = np.array([[0.0, 2.0], [1.0, 1.0]])
    p = method.bt_probability(strengths, np.array([0, 0]), np.array([1, 1]))
    np.testing.assert_allclose(p, [1 / (1 + math.exp(-2.0)), 0.5])


def test_hit_at_k_counts_ties_at_the_kth_place_as_hits():
    scores = np.array([[5.0, 4.0, 4.0, 1.0], [1.0, 2.0, 3.0, nan]])
    assert method.in_top_k(scores, np.array([2, 0]), 2).tolist() == [True, False]
    assert method.hit_at_k(scores, np.array([0, 2]), 1) == 1.0
    assert method.hit_at_k(scores, np.array([3, 3]), 3) == 0.0


def test_random_hit_at_k_is_share_of_top_k_among_available():
    scores = np.array([[5.0, 4.0, 4.0, 1.0], [1.0, 2.0, 3.0, nan]])
    # prompt 0: top-2 = {0, 1, 2} of 4; prompt 1: top-2 = {1, 2} of 3
    assert method.random_hit_at_k(scores, 2) == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_generation_counts_match_the_spec_example():
    counts = method.generation_counts(50_000, 19, 2_500)
    assert counts == {"generate_then_select": 950_000, "route_then_generate": 95_000}


def test_car_prefers_compatible_teacher_over_slightly_better_one():
    car = method.car_scores(np.array([8.0, 7.5]), np.array([2.0, 0.5]))
    assert car.argmax() == 1


def test_nan_argmax_and_rank_skip_missing():
    scores = np.array([[nan, 1.0, 3.0], [nan, nan, nan]])
    assert method.nan_argmax(scores).tolist() == [2, -1]
    assert method.rank_teachers(scores)[0].tolist() == [2, 1, 0]
