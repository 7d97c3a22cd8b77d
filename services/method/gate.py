"""The router publish gate: whether a newly trained router may become the student's active one.

A calibration degraded by a teacher down or failed items can still train a router; the gate
keeps it from replacing a good one. It passes a router only with enough scored prompts and
Bradley-Terry pairs, and a validation Hit@k not below that of every baseline measured on the
same validation prompts (the best single teacher, the previous active router); a calibration
with failed items never replaces an active router at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.method.hits import hit_at_k

KS = (1, 3)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    checks: dict

    def as_dict(self) -> dict:
        return {"activated": self.passed, "reason": self.reason, "checks": self.checks}


def best_single_teacher(train_scores: np.ndarray) -> int:
    """The teacher with the highest mean score over the training prompts (missing scores ignored)."""
    with np.errstate(all="ignore"):
        means = np.nanmean(np.where(np.isfinite(train_scores), train_scores, np.nan), axis=0)
    return int(np.nanargmax(np.where(np.isfinite(means), means, -np.inf)))


def hits_of_choice(scores: np.ndarray, chosen: np.ndarray) -> dict[str, float]:
    """Hit@1 and Hit@3 of a per-prompt teacher choice against the prompts' scores."""
    return {f"hit@{k}": hit_at_k(scores, np.asarray(chosen), k) for k in KS}


def publish_gate(*, n_prompts: int, n_pairs: int, min_prompts: int, min_pairs: int,
                 candidate: dict | None, baselines: dict[str, dict | None],
                 require_validation: bool, degraded: str | None = None, replaces_active: bool = False) -> GateResult:
    """Decide activation. ``candidate`` and each baseline are ``{"hit@1", "hit@3"}`` on the same
    validation prompts (a baseline of None is not compared); ``candidate`` is None when there was no
    validation split, which fails the gate when ``require_validation``. ``degraded`` says what failed
    in the calibration; such a router never replaces an active one (``replaces_active``)."""
    checks = {"n_prompts": n_prompts, "min_prompts": min_prompts, "n_pairs": n_pairs, "min_pairs": min_pairs,
              "val": candidate, **{name: value for name, value in baselines.items() if value is not None},
              **({"degraded": degraded} if degraded else {})}
    if degraded and replaces_active:
        return GateResult(False, f"the calibration was degraded ({degraded}); the active router stays", checks)
    if n_prompts < min_prompts:
        return GateResult(False, f"only {n_prompts} scored calibration prompts; at least {min_prompts} needed "
                                 "(PERSYN_ROUTER_MIN_PROMPTS)", checks)
    if n_pairs < min_pairs:
        return GateResult(False, f"only {n_pairs} training pairs; at least {min_pairs} needed "
                                 "(PERSYN_ROUTER_MIN_PAIRS)", checks)
    if candidate is None:
        if require_validation:
            return GateResult(False, "no validation Hit@k (no validation prompt has a pair)", checks)
        return GateResult(True, "passed the size floor; too few prompts for a validation split, "
                                "so Hit@k was not compared", checks)
    for name, baseline in baselines.items():
        if baseline is None:
            continue
        for metric in (f"hit@{k}" for k in KS):
            got, floor = candidate.get(metric), baseline.get(metric)
            if got is None or floor is None or not np.isfinite(floor):
                continue
            if not np.isfinite(got) or got < floor - 1e-9:
                return GateResult(False, f"validation {metric} {got:.3f} is below {name.replace('_', '-')}'s "
                                         f"{floor:.3f} on the same prompts", checks)
    return GateResult(True, "validation Hit@k at least that of " +
                      (", ".join(n.replace("_", "-") for n, b in baselines.items() if b is not None) or "no baseline"),
                      checks)
