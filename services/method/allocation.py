"""Which teacher each prompt of a routing chunk gets, and what it is expected to cost.

One function for the training worker (the real route) and the gateway (a dry run), so a dry
run's allocation is the one the job then routes. Expected cost of a prompt given teacher m: m's mean
output tokens per answer in the student's calibration times m's price per output token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.method.budget import route_within_budget
from services.method.strategies import StrategyInputs, select


class MissingCostStats(LookupError):
    """The calibration statistics have no output tokens for some teacher (a router trained before they were kept)."""


@dataclass(frozen=True)
class Limits:
    """A job's limits on its routed generation; None: no limit."""

    budget_usd: float | None = None
    max_output_tokens_total: float | None = None

    @classmethod
    def of(cls, spec: dict) -> "Limits":
        return cls(spec.get("budget_usd"), spec.get("max_output_tokens_total"))

    def __bool__(self) -> bool:
        return self.budget_usd is not None or self.max_output_tokens_total is not None

    def share(self, fraction: float) -> "Limits":
        """The part of the limits a chunk holding ``fraction`` of the routed prompts gets."""
        return Limits(*(None if x is None else x * fraction for x in (self.budget_usd, self.max_output_tokens_total)))


def expected_costs(names: list[str], stats: dict, prices: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(output tokens, dollars) one prompt is expected to cost, per teacher, from ``calibration_stats``."""
    tokens = stats.get("output_tokens") or {}
    missing = [t for t in names if t not in tokens]
    if missing:
        raise MissingCostStats(f"the student's calibration has no output-token statistics for "
                               f"{', '.join(missing)}: run a calibrate job (routers trained before "
                               "they were recorded lack them)")
    out = np.array([float(tokens[t]) for t in names])
    return out, out * np.array([prices.get(t, 0.0) for t in names]) / 1e6


@dataclass
class ChunkRoute:
    teachers: list[str]
    cost_usd: list[float | None]  # expected, per prompt (None without token statistics)
    output_tokens: list[float | None]
    strength: list[float | None]  # the chosen teacher's strength (persyn)
    free_strength: list[float | None]  # the best strength, what the route would take without limits
    free_cost_usd: list[float | None]  # expected cost of that unconstrained choice


def route_chunk(strategy: str, names: list[str], n_prompts: int, *, strengths: np.ndarray | None, stats: dict,
                prices: dict[str, float], limits: Limits = Limits(), families: dict[str, str] | None = None,
                student_family: str | None = None, strong_teacher: str | None = None,
                seed: int = 0) -> ChunkRoute:
    """Teachers for one chunk of ``n_prompts`` prompts. ``limits``: this chunk's share of the job's limits,
    applied to the router's strengths (persyn only; raises BudgetInfeasible when the cheapest route breaks
    them, MissingCostStats without token statistics)."""
    try:
        tokens, usd = expected_costs(names, stats, prices)
    except MissingCostStats:
        if limits:
            raise
        tokens = usd = None
    if limits:
        if strategy != "persyn" or strengths is None:
            raise ValueError("a budget applies to the persyn strategy's routed strengths")
        costs, budgets = [], []
        for cost, limit in ((usd, limits.budget_usd), (tokens, limits.max_output_tokens_total)):
            if limit is not None:
                costs.append(cost)
                budgets.append(limit)
        choice = route_within_budget(strengths, costs, budgets).choice
    else:
        def tiled(name):
            if name not in stats:
                return None
            return np.tile([stats[name].get(t, np.nan) for t in names], (n_prompts, 1))

        choice = select(strategy, StrategyInputs(
            teachers=names, available=np.ones((n_prompts, len(names)), dtype=bool), quality=tiled("quality"),
            learnability=tiled("learnability"), strengths=strengths, families=families or {},
            student_family=student_family, strong_teacher=strong_teacher, seed=seed)).choice
    rows = np.arange(n_prompts)
    free = strengths.argmax(axis=1) if strengths is not None else None

    def per_prompt(values, idx):
        return [None] * n_prompts if values is None or idx is None else [float(values[i]) for i in idx]

    return ChunkRoute(
        teachers=[names[i] for i in choice], cost_usd=per_prompt(usd, choice), output_tokens=per_prompt(tokens, choice),
        strength=per_prompt(None if strengths is None else strengths[rows, choice], rows),
        free_strength=per_prompt(None if strengths is None else strengths[rows, free], rows),
        free_cost_usd=per_prompt(usd, free))
