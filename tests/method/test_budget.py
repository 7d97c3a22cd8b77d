"""Budget-aware routing maths: the Lagrangian sweep, the budget, the infeasible case."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.method.budget import (
    BudgetInfeasible,
    cost_quality_curve,
    lagrangian_choice,
    route_within_budget,
)

RNG = np.random.default_rng(0)
UTILITY = RNG.dirichlet(np.ones(4), size=200)  # strengths: each row sums to 1
COST = np.array([4.0, 1.0, 2.5, 0.5])  # expected $ per prompt


def test_cost_falls_as_the_price_of_cost_rises():
    totals = [COST[lagrangian_choice(UTILITY, COST, lam)].sum() for lam in np.linspace(0, 2, 80)]
    assert all(a >= b for a, b in itertools.pairwise(totals))
    assert totals[0] > totals[-1] == pytest.approx(0.5 * len(UTILITY))  # from argmax to all-cheapest


@pytest.mark.parametrize("budget", [110.0, 200.0, 300.0, 380.0])
def test_the_budget_is_respected_and_the_route_beats_the_cheapest(budget):
    route = route_within_budget(UTILITY, COST, budget)
    rows = np.arange(len(UTILITY))
    assert route.cost[0] == pytest.approx(COST[route.choice].sum())
    assert route.cost[0] <= budget + 1e-9
    assert route.utility == pytest.approx(UTILITY[rows, route.choice].sum())
    assert route.lam > 0 and route.utility_lost > 0
    cheapest = UTILITY[:, 3].sum()
    assert route.utility > cheapest
    assert route.cost[0] > 0.9 * budget  # the slack left by the jump at lam is filled
    lams = [p.lam for p in route.curve]
    assert lams == sorted(lams) and lams[0] == 0.0


def test_more_budget_never_buys_less_utility():
    utilities = [route_within_budget(UTILITY, COST, b).utility for b in (110, 150, 200, 300, 400, 600)]
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(utilities))


def test_a_large_budget_leaves_the_route_unconstrained():
    route = route_within_budget(UTILITY, COST, 1e9)
    assert route.lam == 0.0 and route.utility_lost == 0.0
    assert (route.choice == UTILITY.argmax(axis=1)).all()


def test_small_problems_reach_the_exact_optimum_within_a_hair():
    u = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.8, 0.2]])
    c = np.array([3.0, 1.0])
    for budget in (4.0, 6.0, 8.0, 10.0):
        best = max(u[np.arange(4), list(ch)].sum() for ch in itertools.product(range(2), repeat=4)
                   if c[list(ch)].sum() <= budget)
        assert route_within_budget(u, c, budget).utility == pytest.approx(best)


def test_an_infeasible_budget_says_what_the_cheapest_route_costs():
    with pytest.raises(BudgetInfeasible, match="infeasible budget: the cheapest route expects 100 against a limit"):
        route_within_budget(UTILITY, COST, 99.0)


def test_two_limits_hold_together():
    tokens = np.array([400.0, 900.0, 300.0, 100.0])  # the dear teacher is short, the cheap one terse
    route = route_within_budget(UTILITY, [COST, tokens], [300.0, 60_000.0])
    assert route.cost[0] <= 300 and route.cost[1] <= 60_000
    assert route.cost[0] == pytest.approx(COST[route.choice].sum())


@pytest.mark.parametrize("costs, budgets, words", [
    (COST[:3], 10.0, "costs have 3 teachers"),
    (-COST, 10.0, "finite and >= 0"),
    (COST, 0.0, "one budget > 0 per limit"),
])
def test_bad_inputs_are_refused(costs, budgets, words):
    with pytest.raises(ValueError, match=words):
        route_within_budget(UTILITY, costs, budgets)


def test_the_curve_runs_from_the_argmax_to_the_cheapest():
    curve = cost_quality_curve(UTILITY, COST, n_points=30)
    assert len(curve) == 30
    assert curve[0].utility == pytest.approx(UTILITY.max(axis=1).sum())
    assert curve[-1].cost[0] == pytest.approx(0.5 * len(UTILITY))
    costs = [p.cost[0] for p in curve]
    assert all(a >= b for a, b in itertools.pairwise(costs))
