"""Normalising and combining rewards on hand-made score matrices."""

import math

import numpy as np
import pytest

from services.method.rewards import combine, nan_argmax, normalise, rank_teachers

nan = float("nan")


def test_zscore_per_prompt_uses_population_std_and_zeroes_constant_rows():
    scores = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [2.0, nan, 4.0]])
    z = normalise(scores, "zscore")
    s = math.sqrt(2 / 3)
    np.testing.assert_allclose(z[0], [-1 / s, 0.0, 1 / s])
    np.testing.assert_array_equal(z[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(z[2, [0, 2]], [-1.0, 1.0])
    assert math.isnan(z[2, 1])


def test_minmax_maps_each_prompt_to_unit_range():
    z = normalise(np.array([[2.0, 4.0, 3.0], [7.0, 7.0, nan]]), "minmax")
    np.testing.assert_allclose(z[0], [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(z[1, :2], [0.0, 0.0])


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="normalisation"):
        normalise(np.zeros((1, 2)), "rank")


def test_combine_weights_normalised_rewards_by_alpha():
    q = np.array([[1.0, 3.0]])   # z: [-1, 1]
    l = np.array([[-0.5, -2.0]])  # z: [1, -1]
    np.testing.assert_allclose(combine(q, l, 0.4), [[-0.6 + 0.4, 0.6 - 0.4]])
    np.testing.assert_allclose(combine(q, None, 0.0), [[-1.0, 1.0]])
    np.testing.assert_allclose(combine(None, l, 1.0), [[1.0, -1.0]])
    with pytest.raises(ValueError, match="learnability"):
        combine(q, None, 0.4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        combine(q, l, 1.5)


def test_nan_argmax_and_rank_skip_missing():
    scores = np.array([[nan, 1.0, 3.0], [nan, nan, nan]])
    assert nan_argmax(scores).tolist() == [2, -1]
    assert rank_teachers(scores)[0].tolist() == [2, 1, 0]
