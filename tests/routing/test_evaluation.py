"""Held-out comparison over seeded splits, its summary, and the precomputed learnability file."""

import json
from pathlib import Path

import numpy as np
import pytest

from services.method.hits import compare_routers, summarise_runs
from services.routing.evaluation import score_file_matrix, seeded_comparison

FIXTURE = Path(__file__).resolve().parents[2] / "bench" / "fixtures" / "arena_learnability.json"


def test_compare_routers_adds_random_and_oracle():
    scores = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, np.nan], [0.2, 0.2, 0.9]])
    table = compare_routers(scores, {"first": np.zeros(3, dtype=int)})
    assert table["oracle"] == {"hit@1": 1.0, "hit@3": 1.0}
    assert table["first"]["hit@1"] == pytest.approx(1 / 3)
    assert list(table) == ["random", "first", "oracle"]


def test_summary_has_mean_and_sample_spread():
    runs = [{"r": {"hit@1": 0.2}}, {"r": {"hit@1": 0.4}}, {"r": {"hit@1": 0.6}}]
    cell = summarise_runs(runs)["r"]["hit@1"]
    assert cell == pytest.approx({"mean": 0.4, "std": 0.2, "min": 0.2, "max": 0.6})


def test_seeded_comparison_runs_every_split(score_cache):
    maths = [f"What is {a} plus {b}?" for a, b in zip(range(12), range(30, 42))]
    poems = [f"Write a poem about the {w}." for w in
             ("sea", "moon", "rain", "snow", "city", "river", "stars", "wind", "night", "dawn", "hill", "lake")]
    scores = np.array([[1.0, 0.0, 0.5]] * 12 + [[0.0, 1.0, 0.5]] * 12)
    result = seeded_comparison(maths + poems, ["mathy", "poet", "middle"], scores, seeds=[0, 1], cache=score_cache)
    assert result["seeds"] == [0, 1] and len(result["runs"]) == 2
    assert set(result["summary"]) == {"random", "best_single", "knn@10", "persyn", "oracle"}
    # maths and poems are easy to tell apart: the router beats any single teacher on every split
    for run in result["runs"]:
        assert run["persyn"]["hit@1"] > run["best_single"]["hit@1"]


def test_learnability_file_loads_as_a_matrix(tmp_path):
    teachers = json.loads(FIXTURE.read_text())["teachers"]
    ids = list(json.loads(FIXTURE.read_text())["scores"])[:3]
    matrix = score_file_matrix(FIXTURE, ids, teachers)
    assert matrix.shape == (3, len(teachers)) and np.isfinite(matrix).mean() > 0.9
    small = tmp_path / "l.json"
    small.write_text(json.dumps({"scores": {"a": {"t1": -1.5, "t2": None}}}))
    np.testing.assert_array_equal(score_file_matrix(small, ["a"], ["t1", "t2"]), [[-1.5, np.nan]])
    with pytest.raises(ValueError, match="'b'"):
        score_file_matrix(small, ["a", "b"], ["t1", "t2"])
