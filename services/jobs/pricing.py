"""What a job's teacher calls are expected to cost: budgets checked at submit, the routed cost a
job records as it routes, and the priced dry run.

Expected cost per prompt and teacher comes from the student's active router version: its
``calibration_stats.output_tokens`` (mean completion tokens per answer in calibration) times the
pool's ``cost_per_1m_output``. A job's ``budget_usd`` / ``max_output_tokens_total`` bound its routed
generation (not its calibration); routing runs in chunks, and each chunk gets the limits' share of
its prompts (``limit * chunk prompts / routed prompts``), so the chunks' totals never pass the job's.
"""

from __future__ import annotations

import numpy as np

from services.jobs.store import JobStore
from services.method.allocation import ChunkRoute, Limits, MissingCostStats, expected_costs, route_chunk

#: What the routing hash of a job sums over its routed prompts.
ROUTING_FIELDS = ("prompts", "cost_usd", "output_tokens", "strength", "free_strength", "free_cost_usd")


def routing_key(store: JobStore, job_id: str) -> str:
    return store._k("job", job_id, "routing")


def calibration_output_tokens(store: JobStore, job_id: str, calibration: list[str],
                              teachers: list[str]) -> dict[str, float]:
    """Mean completion tokens per calibration answer, per teacher that answered."""
    from services.jobs.stages import item_key

    out = {}
    for teacher in teachers:
        answers = store.results_for(job_id, "gen", [item_key(pid, teacher) for pid in calibration]).values()
        tokens = [a["completion_tokens"] for a in answers if a.get("completion_tokens") is not None]
        if tokens:
            out[teacher] = float(np.mean(tokens))
    return out


def add_routing_cost(store: JobStore, job_id: str, routed: ChunkRoute, fresh: list[bool]) -> None:
    """Add a routed chunk's expected figures to the job's sums, for the prompts this write assigned
    (a redelivered chunk adds nothing twice)."""
    sums = dict.fromkeys(ROUTING_FIELDS, 0.0)
    for i, new in enumerate(fresh):
        if not new:
            continue
        sums["prompts"] += 1
        for name in ROUTING_FIELDS[1:]:
            value = getattr(routed, name)[i]
            if value is not None:
                sums[name] += value
    if not sums["prompts"]:
        return
    pipe = store.r.pipeline(transaction=False)
    for name, value in sums.items():
        pipe.hincrbyfloat(routing_key(store, job_id), name, value)
    pipe.execute()


def routing_report(store: JobStore, job_id: str, spec: dict, spent_usd: float) -> dict | None:
    """What ``GET /v1/jobs/{id}`` says of the routed cost: expected (as routed), spent, and the strength
    the limits cost against the unconstrained route; None before any prompt was routed."""
    raw = store.r.hgetall(routing_key(store, job_id))
    if not raw:
        return None
    sums = {k: float(raw.get(k, 0.0)) for k in ROUTING_FIELDS}
    return {
        "budget_usd": spec.get("budget_usd"), "max_output_tokens_total": spec.get("max_output_tokens_total"),
        "routed_prompts": int(sums["prompts"]), "expected_cost_usd": round(sums["cost_usd"], 6),
        "expected_output_tokens": round(sums["output_tokens"], 1),
        "unconstrained_expected_cost_usd": round(sums["free_cost_usd"], 6),
        "strength": sums["strength"], "unconstrained_strength": sums["free_strength"],
        "strength_lost": sums["free_strength"] - sums["strength"], "spent_usd": round(spent_usd, 6)}


def active_stats(store: JobStore, student_id: str) -> tuple[str, str, dict] | None:
    """(version, artifact path, calibration_stats) of the student's active router, or None."""
    active = store.active_router(student_id)
    if active is None:
        return None
    version, path = active
    entry = next(v for v in store.get_student(student_id)["versions"] if v["version"] == version)
    return version, path, entry["metrics"].get("calibration_stats", {})


class NeedsCostStats(LookupError):
    """Pricing needs the student's calibration statistics (an active router that recorded output tokens)."""


def check_limits(store: JobStore, spec: dict, n_prompts: int, pool: list) -> None:
    """At submit: limits only where a router's strengths are routed, and a budget the cheapest route can
    meet when the student's calibration already says what the teachers cost.

    ValueError (422) for limits the job cannot use or cannot meet; NeedsCostStats (409) when the active
    router has no output-token statistics. A persyn job that calibrates first learns its costs there: an
    infeasible budget then fails its routing chunks with the reason (its calibration rows stay).
    """
    limits = Limits.of(spec)
    if not limits:
        return
    if spec["kind"] == "calibrate":
        raise ValueError("budget_usd and max_output_tokens_total bound routed generation: "
                         "a synthesize or persyn job")
    if spec.get("strategy", "persyn") != "persyn":
        raise ValueError(f"budget_usd and max_output_tokens_total apply to the persyn strategy "
                         f"(the router's strengths), not {spec['strategy']!r}")
    found = active_stats(store, spec["student_id"])
    if found is None:
        return
    names = [t.name for t in pool if not spec.get("teachers") or t.name in spec["teachers"]]
    try:
        tokens, usd = expected_costs(names, found[2], {t.name: t.cost_per_1m_output for t in pool})
    except MissingCostStats as exc:
        raise NeedsCostStats(str(exc)) from exc
    for name, per_prompt, limit in (("budget_usd", usd, limits.budget_usd),
                                    ("max_output_tokens_total", tokens, limits.max_output_tokens_total)):
        if limit is not None and per_prompt.min() * n_prompts > limit:
            cheapest = names[int(per_prompt.argmin())]
            raise ValueError(f"infeasible {name} {limit:g}: even the cheapest teacher, {cheapest}, for all "
                             f"{n_prompts} prompts is expected to need {per_prompt.min() * n_prompts:.6g}")


def dry_run(spec: dict, pool: list, stats: dict, strengths: np.ndarray | None, n_prompts: int, chunk: int,
            student_family: str | None) -> dict:
    """The priced plan of a job: per teacher the prompts it would get, expected output tokens and dollars,
    the total, and Generate-then-Select's price for the same prompts (a calibrate job: its calibration
    sample, every teacher). Routes chunk by chunk as
    the training worker does (same chunks, same shares of the limits, same seeds), so the allocation is
    the one the job would route. Raises NeedsCostStats without output-token statistics."""
    from services.jobs.stages import GENERATE_THEN_SELECT

    teachers = [t for t in pool if not spec.get("teachers") or t.name in spec["teachers"]]
    names = [t.name for t in teachers]
    prices = {t.name: t.cost_per_1m_output for t in teachers}
    try:
        tokens, usd = expected_costs(names, stats, prices)
    except MissingCostStats as exc:
        raise NeedsCostStats(str(exc)) from exc
    strategy = spec.get("strategy", "persyn")
    limits = Limits.of(spec)
    per = {t: {"prompts": 0, "output_tokens": 0.0, "cost_usd": 0.0} for t in names}
    gts = {"generations": n_prompts * len(names), "output_tokens": float(tokens.sum() * n_prompts),
           "cost_usd": float(usd.sum() * n_prompts)}
    routing = None
    if spec["kind"] == "calibrate" or strategy in GENERATE_THEN_SELECT:  # every teacher answers each prompt
        n = min(spec.get("calibration_size", n_prompts), n_prompts) if spec["kind"] == "calibrate" else n_prompts
        for i, t in enumerate(names):
            per[t] = {"prompts": n, "output_tokens": float(tokens[i] * n), "cost_usd": float(usd[i] * n)}
    else:
        sums = dict.fromkeys(ROUTING_FIELDS[1:], 0.0)
        for start in range(0, n_prompts, chunk):
            size = min(chunk, n_prompts - start)
            routed = route_chunk(strategy, names, size,
                                 strengths=None if strengths is None else strengths[start:start + size],
                                 stats=stats, prices=prices, limits=limits.share(size / n_prompts),
                                 families={t.name: t.family for t in teachers}, student_family=student_family,
                                 strong_teacher=spec.get("strong_teacher"), seed=spec.get("seed", 0))
            for t, c, o in zip(routed.teachers, routed.cost_usd, routed.output_tokens):
                per[t]["prompts"] += 1
                per[t]["output_tokens"] += o
                per[t]["cost_usd"] += c
            for name in sums:
                sums[name] += sum(v for v in getattr(routed, name) if v is not None)
        if strengths is not None:
            routing = {"budget_usd": limits.budget_usd, "max_output_tokens_total": limits.max_output_tokens_total,
                       "strength": sums["strength"], "unconstrained_strength": sums["free_strength"],
                       "strength_lost": sums["free_strength"] - sums["strength"],
                       "unconstrained_cost_usd": sums["free_cost_usd"]}
    return {
        "dry_run": True, "kind": spec["kind"], "student_id": spec["student_id"], "strategy": strategy,
        "n_prompts": n_prompts, "teachers": per,
        "total": {"prompts": sum(v["prompts"] for v in per.values()),
                  "output_tokens": sum(v["output_tokens"] for v in per.values()),
                  "cost_usd": sum(v["cost_usd"] for v in per.values())},
        "generate_then_select": gts, "routing": routing}

