"""Every selection strategy on a small parallel file."""

import numpy as np
import pytest

from services.method.formats import ParallelRecord
from services.method.rewards import combine, mean_per_teacher, nan_argmax
from services.method.strategies import STRATEGIES, StrategyInputs, available_matrix, car_scores, dataset_rows, select

TEACHERS = ["big", "small", "peer"]
RECORDS = [
    ParallelRecord(id=f"p{i}", prompt=f"prompt {i}", responses={t: f"{t} answer {i}" for t in TEACHERS})
    for i in range(4)
]
RECORDS[3].responses.pop("peer")
QUALITY = np.array([[9.0, 5.0, 7.0], [8.0, 6.0, 7.0], [9.0, 4.0, 8.0], [7.0, 5.0, np.nan]])
LEARN = np.array([[-2.0, -0.5, -0.6], [-2.2, -0.4, -0.7], [-1.9, -0.6, -0.5], [-2.0, -0.5, np.nan]])


def inputs(**kw):
    base = dict(teachers=TEACHERS, available=available_matrix(RECORDS, TEACHERS), quality=QUALITY,
                learnability=LEARN, scores=combine(QUALITY, LEARN, 0.4),
                families={"big": "qwen", "small": "llama", "peer": "llama"},
                student_family="llama", seed=1)
    return StrategyInputs(**{**base, **kw})


def names(selection):
    return [TEACHERS[i] if i >= 0 else None for i in selection.choice]


def test_oracle_picks_the_best_combined_reward_per_prompt():
    expected = [TEACHERS[i] for i in nan_argmax(combine(QUALITY, LEARN, 0.4))]
    assert names(select("oracle", inputs())) == expected
    assert names(select("oracle", inputs(scores=combine(QUALITY, None, 0.0)))) == ["big"] * 4


def test_strong_and_family_strong_use_one_teacher():
    strong = select("strong", inputs())
    assert names(strong) == ["big"] * 4 and strong.detail["teacher"] == "big"
    family = select("family_strong", inputs())
    assert family.detail["teacher"] == "peer"  # best mean quality among llama teachers
    assert names(family) == ["peer", "peer", "peer", None] and family.detail["unserved"] == 1
    assert names(select("strong", inputs(strong_teacher="small"))) == ["small"] * 4


def test_car_trades_quality_for_compatibility():
    sel = select("car", inputs())
    means_q, means_nll = mean_per_teacher(QUALITY), mean_per_teacher(-LEARN)
    assert sel.detail["teacher"] == TEACHERS[int(np.argmax(means_q / (1 + means_nll)))] == "peer"


def test_mix_gives_each_prompt_a_uniformly_random_teacher_with_an_answer():
    many = [ParallelRecord(id=f"q{i}", prompt="x", responses={t: t for t in TEACHERS}) for i in range(3000)]
    many[0].responses.pop("big")
    sel = select("mix", StrategyInputs(teachers=TEACHERS, available=available_matrix(many, TEACHERS), seed=3))
    counts = np.bincount(sel.choice, minlength=3)
    assert sel.detail == {"unserved": 0} and TEACHERS[sel.choice[0]] != "big"
    assert np.all(np.abs(counts / len(many) - 1 / 3) < 0.03)  # no quality needed, no teacher favoured
    assert np.array_equal(sel.choice, select("mix", StrategyInputs(
        teachers=TEACHERS, available=available_matrix(many, TEACHERS), seed=3)).choice)


def test_random_is_seeded_and_only_picks_available_teachers():
    runs = [names(select("random", inputs(seed=s))) for s in range(20)]
    assert all(r[3] in ("big", "small") for r in runs)
    assert names(select("random", inputs(seed=5))) == names(select("random", inputs(seed=5)))
    assert len({tuple(r) for r in runs}) > 1


def test_scas_takes_the_lowest_cost_and_persyn_the_highest_strength():
    costs = np.array([[3.0, 1.0, 2.0]] * 4)
    assert names(select("scas", inputs(scas_costs=costs))) == ["small"] * 4
    strengths = np.array([[0.0, 0.0, 1.0]] * 4)
    assert names(select("persyn", inputs(strengths=strengths))) == ["peer", "peer", "peer", "big"]


def test_every_strategy_builds_a_dataset_with_the_chosen_answers():
    extra = dict(scas_costs=np.ones((4, 3)), strengths=np.zeros((4, 3)))
    for strategy in STRATEGIES:
        sel = select(strategy, inputs(**extra))
        rows = dataset_rows(RECORDS, TEACHERS, sel)
        assert len(rows) == 4 - sel.detail["unserved"]
        for row in rows:
            assert row["response"] == RECORDS[int(row["id"][1:])].responses[row["teacher"]]


def test_missing_inputs_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown strategy"):
        select("best", inputs())
    with pytest.raises(ValueError, match="needs strengths"):
        select("persyn", inputs())
    with pytest.raises(ValueError, match="unknown teacher 'gpt'"):
        select("strong", inputs(strong_teacher="gpt"))
    with pytest.raises(ValueError, match="family 'mistral'"):
        select("family_strong", inputs(student_family="mistral"))


def test_car_prefers_compatible_teacher_over_slightly_better_one():
    car = car_scores(np.array([8.0, 7.5]), np.array([2.0, 0.5]))
    assert car.argmax() == 1


def test_car_stays_monotone_when_mean_quality_is_negative():
    # Raw reward-model logits: the paper's ratio would rank NLL 2.0 above NLL 0.5 here.
    car = car_scores(np.array([-2.0, -2.0]), np.array([0.5, 2.0]))
    assert car[0] > car[1]
    q, nll = np.linspace(-3, 3, 13), np.linspace(0, 4, 9)
    grid = car_scores(q[:, None], nll[None, :], beta=0.7)
    assert np.all(np.diff(grid, axis=0) > 0) and np.all(np.diff(grid[q != 0], axis=1) < 0)
    assert np.allclose(grid[q >= 0], q[q >= 0, None] / (1 + 0.7 * nll))  # non-negative: the paper's form


def test_car_excludes_a_teacher_without_statistics_instead_of_scoring_it_zero():
    quality = QUALITY.copy()
    quality[:, 2] = np.nan  # "peer", CAR's pick on complete statistics, was never scored
    sel = select("car", inputs(quality=quality))
    assert sel.detail["teacher"] != "peer" and sel.detail["excluded"] == ["peer"]
    assert set(sel.detail["car"]) == {"big", "small"}
    assert np.isnan(car_scores(np.array([1.0, np.nan]), np.array([0.1, 0.1]))[1])
    with pytest.raises(ValueError, match="no teacher has both"):
        select("car", inputs(quality=np.full_like(QUALITY, np.nan)))
