"""Budget-aware routing: one teacher per prompt, the most total utility within an expected cost.

The problem is a multiple-choice knapsack: prompt ``i`` given teacher ``m`` earns ``u[i, m]`` (the
router's strength) and is expected to cost ``c[m]`` (its mean output tokens in calibration times its
price). The Lagrangian relaxation prices cost at ``lam``: each prompt takes
``argmax_m u[i, m] - lam * c[m]``. Each prompt's cost can only fall as ``lam`` grows (compare the two
argmax inequalities at ``lam1 < lam2``), so the total is monotone and a binary search finds the
smallest ``lam`` within the budget. The gap that the jump at that ``lam`` leaves is then filled
greedily: prompts whose choice differs just below ``lam`` take the dearer teacher back, best utility
per extra cost first, while the budget lasts.

Several limits (dollars and tokens) are priced together: ``lam`` multiplies the sum of each cost
over its budget, and a point is within budget when every limit holds. With one limit this is the
exact sweep above; with more, the answer always keeps every limit but may miss a mix that a
multiplier per limit would find.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Steps of the binary search on lam (each halves the bracket).
SEARCH_STEPS = 64


class BudgetInfeasible(ValueError):
    """Even the cheapest teacher for every prompt costs more than the budget."""

    def __init__(self, message: str, cheapest: list[float]):
        super().__init__(message)
        self.cheapest = cheapest


@dataclass
class CurvePoint:
    lam: float
    cost: list[float]  # expected total per limit
    utility: float


@dataclass
class BudgetRoute:
    """The chosen teacher per prompt and what the budget took from the unconstrained route."""

    choice: np.ndarray  # teacher index per prompt
    lam: float  # 0 when the budget does not bind
    cost: list[float]  # expected total per limit
    utility: float
    unconstrained_cost: list[float]
    unconstrained_utility: float
    curve: list[CurvePoint] = field(default_factory=list)  # the sweep's points, by lam

    @property
    def utility_lost(self) -> float:
        return self.unconstrained_utility - self.utility


def _as_costs(costs, n_teachers: int) -> np.ndarray:
    """[n_limits, n_teachers] from one cost vector or several."""
    c = np.atleast_2d(np.asarray(costs, dtype=np.float64))
    if c.shape[1] != n_teachers:
        raise ValueError(f"costs have {c.shape[1]} teachers, the utilities {n_teachers}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("costs must be finite and >= 0")
    return c


def lagrangian_choice(utility: np.ndarray, priced: np.ndarray, lam: float) -> np.ndarray:
    """``argmax_m u[i, m] - lam * priced[m]`` per prompt; ties go to the cheaper teacher."""
    value = utility - lam * priced[None, :] if lam else utility
    best = value.max(axis=1, keepdims=True)
    tied = np.where(value >= best, priced[None, :], np.inf)
    return tied.argmin(axis=1)


def route_within_budget(utility, costs, budgets) -> BudgetRoute:
    """Maximise ``sum_i u[i, choice_i]`` subject to ``sum_i costs[j][choice_i] <= budgets[j]`` for every limit j.

    ``utility``: [n_prompts, n_teachers], finite. ``costs``: per teacher, one vector per limit (expected
    cost of one prompt). ``budgets``: one total per limit, > 0. Raises BudgetInfeasible when even the
    cheapest choice breaks a limit.
    """
    u = np.asarray(utility, dtype=np.float64)
    if u.ndim != 2 or not u.size:
        raise ValueError("utility must be a non-empty [n_prompts, n_teachers] matrix")
    if not np.isfinite(u).all():
        raise ValueError("utility must be finite")
    c = _as_costs(costs, u.shape[1])
    b = np.atleast_1d(np.asarray(budgets, dtype=np.float64))
    if b.shape != (c.shape[0],) or not (b > 0).all():
        raise ValueError(f"one budget > 0 per limit: {c.shape[0]} limit(s), got {b.tolist()}")
    priced = np.minimum((c / b[:, None]).sum(axis=0), 1e300)  # each limit in units of its budget (finite)
    rows = np.arange(u.shape[0])
    curve: dict[float, CurvePoint] = {}

    def evaluate(lam: float) -> tuple[np.ndarray, np.ndarray]:
        choice = lagrangian_choice(u, priced, lam)
        totals = c[:, choice].sum(axis=1)
        curve[lam] = CurvePoint(lam, totals.tolist(), float(u[rows, choice].sum()))
        return choice, totals

    def fits(totals: np.ndarray) -> bool:
        return bool((totals <= b * (1 + 1e-12)).all())

    free, free_totals = evaluate(0.0)
    free_utility = float(u[rows, free].sum())

    def result(choice, lam):
        totals = c[:, choice].sum(axis=1)
        return BudgetRoute(choice, lam, totals.tolist(), float(u[rows, choice].sum()), free_totals.tolist(),
                           free_utility, [curve[k] for k in sorted(curve)])

    if fits(free_totals):
        return result(free, 0.0)
    gaps = np.diff(np.unique(priced))
    spread = float(u.max() - u.min())
    hi = 2.0 * (spread + 1.0) / float(gaps.min()) if gaps.size else 1.0  # past it the cheapest always wins
    cheap, cheap_totals = evaluate(hi)
    if not fits(cheap_totals):
        raise BudgetInfeasible(
            "infeasible budget: the cheapest route expects " + ", ".join(
                f"{t:.6g} against a limit of {lim:.6g}" for t, lim in zip(cheap_totals, b)),
            cheap_totals.tolist())
    lo = 0.0
    below = free
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        if mid <= lo or mid >= hi:
            break
        choice, totals = evaluate(mid)
        if fits(totals):
            hi, cheap, cheap_totals = mid, choice, totals
        else:
            lo, below = mid, choice
    return result(_fill_slack(u, c, b, cheap, below), hi)


def _fill_slack(u: np.ndarray, c: np.ndarray, b: np.ndarray, within: np.ndarray, over: np.ndarray) -> np.ndarray:
    """Give back to prompts the dearer choice they had just over budget, best gain per extra cost first,
    while every limit holds."""
    choice = within.copy()
    rows = np.flatnonzero(within != over)
    if not rows.size:
        return choice
    gain = u[rows, over[rows]] - u[rows, within[rows]]
    extra = c[:, over[rows]] - c[:, within[rows]]  # [n_limits, n_rows]
    weight = (np.maximum(extra, 0) / b[:, None]).sum(axis=0)
    order = np.argsort(-gain / np.maximum(weight, 1e-300), kind="stable")
    slack = b - c[:, within].sum(axis=1)
    for k in order:
        if gain[k] <= 0:
            continue
        if (extra[:, k] <= slack + 1e-12 * b).all():
            choice[rows[k]] = over[rows[k]]
            slack -= extra[:, k]
    return choice


def cost_quality_curve(utility, costs, n_points: int = 40) -> list[CurvePoint]:
    """The Lagrangian route's (cost, utility) over ``n_points`` prices from 0 to where the cheapest
    teacher takes every prompt (one limit), for plots."""
    u = np.asarray(utility, dtype=np.float64)
    c = _as_costs(costs, u.shape[1])[0]
    rows = np.arange(u.shape[0])
    gaps = np.diff(np.unique(c))
    top = 2.0 * (float(u.max() - u.min()) + 1.0) / float(gaps.min()) if gaps.size else 1.0
    lams = np.concatenate([[0.0], np.geomspace(top * 1e-6, top, max(n_points - 1, 1))])
    points = []
    for lam in lams:
        choice = lagrangian_choice(u, c, float(lam))
        points.append(CurvePoint(float(lam), [float(c[choice].sum())], float(u[rows, choice].sum())))
    return points
