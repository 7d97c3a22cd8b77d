"""Selection strategies: which teacher's answer each prompt gets (PerSyn and baselines).

Each rule takes precomputed matrices (see :mod:`services.scoring.matrices`) and returns one
teacher index per prompt, or -1 where no teacher can serve it. Strategies that pick
one teacher for the whole set (strong, family_strong, car) report which in ``detail``.
Mix is the paper's (appendix A.6): every prompt gets a uniformly random teacher's answer,
drawn among the teachers that have one; ``random`` is the same draw under the name the
service uses for its floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from services.method.formats import ParallelRecord
from services.method.rewards import mean_per_teacher, nan_argmax

STRATEGIES = ("persyn", "oracle", "strong", "family_strong", "mix", "car", "random", "scas")


@dataclass
class StrategyInputs:
    """What the strategies may need; each uses only its own fields."""

    teachers: list[str]
    available: np.ndarray  # [n_prompts, n_teachers] bool: teacher has a response
    quality: np.ndarray | None = None  # raw r_q
    learnability: np.ndarray | None = None  # raw r_l (mean log-prob per token)
    scores: np.ndarray | None = None  # combined, normalised r
    strengths: np.ndarray | None = None  # router pi(x), for persyn
    scas_costs: np.ndarray | None = None
    families: dict[str, str] = field(default_factory=dict)
    student_family: str | None = None
    strong_teacher: str | None = None  # overrides "highest mean quality"
    car_beta: float = 1.0
    seed: int = 0


@dataclass
class Selection:
    strategy: str
    choice: np.ndarray  # teacher index per prompt, -1 = none
    detail: dict


def _need(inputs: StrategyInputs, name: str, strategy: str) -> np.ndarray:
    value = getattr(inputs, name)
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs {name.replace('_', ' ')}")
    return value


def _teacher_index(inputs: StrategyInputs, name: str) -> int:
    if name not in inputs.teachers:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(inputs.teachers)}")
    return inputs.teachers.index(name)


def _strongest(inputs: StrategyInputs, strategy: str, among: Sequence[int] | None = None) -> int:
    if inputs.strong_teacher and among is None:
        return _teacher_index(inputs, inputs.strong_teacher)
    means = mean_per_teacher(_need(inputs, "quality", strategy))
    if among is not None:
        means = np.where(np.isin(np.arange(len(means)), among), means, np.nan)
    best = nan_argmax(means[None])[0]
    if best < 0:
        raise ValueError(f"strategy {strategy!r}: no teacher has a quality score")
    return int(best)


def _single(inputs: StrategyInputs, idx: int) -> np.ndarray:
    return np.where(inputs.available[:, idx], idx, -1)


def _masked_argmax(values: np.ndarray, available: np.ndarray) -> np.ndarray:
    return nan_argmax(np.where(available, values, np.nan))


def select(strategy: str, inputs: StrategyInputs) -> Selection:
    """Apply one strategy; raises ValueError for an unknown strategy or missing inputs."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    avail = inputs.available
    rng = np.random.default_rng(inputs.seed)
    detail: dict = {}
    if strategy == "persyn":
        choice = _masked_argmax(_need(inputs, "strengths", strategy), avail)
    elif strategy == "oracle":
        choice = _masked_argmax(_need(inputs, "scores", strategy), avail)
    elif strategy == "strong":
        idx = _strongest(inputs, strategy)
        choice, detail["teacher"] = _single(inputs, idx), inputs.teachers[idx]
    elif strategy == "family_strong":
        if not inputs.student_family:
            raise ValueError("strategy 'family_strong' needs the student's family")
        members = [i for i, t in enumerate(inputs.teachers) if inputs.families.get(t) == inputs.student_family]
        if not members:
            raise ValueError(f"no teacher of family {inputs.student_family!r} in the pool")
        idx = _strongest(inputs, strategy, among=members)
        choice, detail["teacher"] = _single(inputs, idx), inputs.teachers[idx]
    elif strategy == "car":
        quality = _need(inputs, "quality", strategy)
        nll = -_need(inputs, "learnability", strategy)
        car = car_scores(mean_per_teacher(quality), mean_per_teacher(nll), inputs.car_beta)
        excluded = [t for t, c in zip(inputs.teachers, car) if not np.isfinite(c)]
        if len(excluded) == len(inputs.teachers):
            raise ValueError("strategy 'car': no teacher has both a quality and a learnability statistic")
        idx = int(nan_argmax(car[None])[0])
        choice = _single(inputs, idx)
        detail.update(teacher=inputs.teachers[idx], excluded=excluded,
                      car={t: float(c) for t, c in zip(inputs.teachers, car) if np.isfinite(c)})
    elif strategy in ("mix", "random"):
        noise = np.where(avail, rng.random(avail.shape), np.nan)
        choice = nan_argmax(noise)
    else:  # scas: lowest learning cost
        costs = _need(inputs, "scas_costs", strategy)
        choice = _masked_argmax(-costs, avail)
    detail["unserved"] = int((choice < 0).sum())
    return Selection(strategy, choice.astype(np.int64), detail)


def available_matrix(records: Sequence[ParallelRecord], teachers: Sequence[str]) -> np.ndarray:
    return np.array([[t in rec.responses for t in teachers] for rec in records], dtype=bool)


def dataset_rows(records: Sequence[ParallelRecord], teachers: Sequence[str], selection: Selection) -> list[dict]:
    """One row per served prompt: id, prompt, the chosen teacher and its response."""
    rows = []
    for rec, idx in zip(records, selection.choice):
        if idx < 0:
            continue
        teacher = teachers[idx]
        rows.append({"id": rec.id, "prompt": rec.prompt, "response": rec.responses[teacher], "teacher": teacher})
    return rows


def car_scores(mean_quality: np.ndarray, mean_nll: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Compatibility-adjusted reward per teacher: q / (1 + beta * NLL) for q >= 0, else q * (1 + beta * NLL).

    The paper's ratio only ranks lower NLL higher when q >= 0; for negative mean quality
    (raw reward-model logits often are) it would flip, so there the penalty multiplies
    instead. Both branches meet at 0, rise with q and fall with NLL, and non-negative
    qualities (accuracies) keep the paper's form unchanged. A teacher without either
    statistic (NaN) scores NaN: excluded from the argmax, never 0.
    """
    if beta < 0:
        raise ValueError(f"CAR beta must be >= 0, got {beta}")
    quality = np.asarray(mean_quality, dtype=np.float64)
    penalty = 1.0 + beta * np.asarray(mean_nll, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(quality >= 0, quality / penalty, quality * penalty)


def scas_cost(d_a: float, d_q: float, aa: float, aq: float, lam: float = 0.5) -> float:
    """SCAS learning cost S = (1 - lam) * d_A^2 * AA + lam * d_A * d_Q * AQ (lower is easier)."""
    return (1.0 - lam) * d_a * d_a * aa + lam * d_a * d_q * aq
