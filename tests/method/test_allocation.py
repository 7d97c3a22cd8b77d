"""A routing chunk's teachers and expected costs (shared by the worker and the dry run)."""

from __future__ import annotations

import numpy as np
import pytest

from services.method.allocation import Limits, MissingCostStats, route_chunk
from services.method.budget import BudgetInfeasible

NAMES = ["dear", "cheap"]
STATS = {"output_tokens": {"dear": 1000.0, "cheap": 100.0}}
PRICES = {"dear": 10.0, "cheap": 1.0}  # per prompt: $0.01 and $0.0001
STRENGTHS = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.55, 0.45]])


def test_without_limits_the_route_is_the_argmax_priced():
    routed = route_chunk("persyn", NAMES, 4, strengths=STRENGTHS, stats=STATS, prices=PRICES)
    assert routed.teachers == ["dear"] * 4
    assert routed.cost_usd == pytest.approx([0.01] * 4) and routed.output_tokens == [1000.0] * 4
    assert routed.strength == routed.free_strength


def test_a_budget_keeps_the_dear_teacher_where_it_leads_most():
    routed = route_chunk("persyn", NAMES, 4, strengths=STRENGTHS, stats=STATS, prices=PRICES,
                         limits=Limits(budget_usd=0.021))
    assert routed.teachers == ["dear", "cheap", "dear", "cheap"]
    assert sum(routed.cost_usd) <= 0.021 and sum(routed.free_strength) > sum(routed.strength)
    tokens = route_chunk("persyn", NAMES, 4, strengths=STRENGTHS, stats=STATS, prices=PRICES,
                         limits=Limits(max_output_tokens_total=1300))
    assert tokens.teachers == ["dear", "cheap", "cheap", "cheap"]


def test_limits_are_shared_by_the_chunks_prompts():
    assert Limits(10.0, 400).share(0.25) == Limits(2.5, 100.0)
    assert not Limits() and Limits.of({"budget_usd": 1.0})


def test_what_a_budget_cannot_use_is_refused():
    with pytest.raises(BudgetInfeasible):
        route_chunk("persyn", NAMES, 4, strengths=STRENGTHS, stats=STATS, prices=PRICES, limits=Limits(1e-4))
    with pytest.raises(MissingCostStats, match="no output-token statistics for dear, cheap"):
        route_chunk("persyn", NAMES, 4, strengths=STRENGTHS, stats={}, prices=PRICES, limits=Limits(1.0))
    with pytest.raises(ValueError, match="persyn strategy"):
        route_chunk("mix", NAMES, 4, strengths=None, stats=STATS, prices=PRICES, limits=Limits(1.0))


def test_strategies_without_token_statistics_still_route():
    routed = route_chunk("mix", NAMES, 4, strengths=None, stats={}, prices=PRICES, seed=3)
    assert len(routed.teachers) == 4 and routed.cost_usd == [None] * 4 and routed.strength == [None] * 4
