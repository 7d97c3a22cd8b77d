import numpy as np
import pytest

from services.method.kcenter import kcenter_greedy


def _clusters(sizes, seed=0):
    """Tight clusters around orthogonal directions: cluster c's rows point along axis c."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for c, size in enumerate(sizes):
        centre = np.eye(len(sizes) + 2)[c] * 5
        rows.append(centre + 0.05 * rng.standard_normal((size, len(sizes) + 2)))
        labels += [c] * size
    return np.vstack(rows), np.array(labels)


def test_one_prompt_from_every_cluster_however_unequal_their_sizes():
    features, labels = _clusters([500, 20, 5, 3])
    for seed in range(5):
        chosen = kcenter_greedy(features, 4, seed=seed)
        assert sorted(labels[chosen]) == [0, 1, 2, 3]
    # a random sample of 4 from the same rows mostly sees only the big cluster
    rng = np.random.default_rng(0)
    covered = [len(set(labels[rng.choice(len(labels), 4, replace=False)])) for _ in range(50)]
    assert np.mean(covered) < 2


def test_each_pick_is_the_row_farthest_from_those_chosen_before():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((60, 5))
    chosen = kcenter_greedy(features, 10, seed=3)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert chosen[0] == np.random.default_rng(3).integers(60)
    for i in range(1, 10):
        nearest = np.min(np.linalg.norm(unit[:, None] - unit[chosen[:i]][None], axis=2), axis=1)
        assert nearest[chosen[i]] == pytest.approx(nearest.max(), abs=1e-5)
    assert len(set(chosen.tolist())) == 10


def test_seeded_and_covers_everything_when_k_reaches_n():
    features = np.random.default_rng(2).standard_normal((30, 4))
    assert kcenter_greedy(features, 7, seed=5).tolist() == kcenter_greedy(features, 7, seed=5).tolist()
    assert kcenter_greedy(features, 7, seed=5).tolist() != kcenter_greedy(features, 7, seed=6).tolist()
    assert kcenter_greedy(features, 30).tolist() == list(range(30))
    duplicates = np.ones((6, 3))
    assert sorted(kcenter_greedy(duplicates, 4).tolist()) == sorted(set(kcenter_greedy(duplicates, 4).tolist()))


@pytest.mark.parametrize("features, k", [(np.ones(5), 2), (np.ones((5, 2)), 0)])
def test_bad_arguments_are_value_errors(features, k):
    with pytest.raises(ValueError):
        kcenter_greedy(features, k)
