"""Router training (one version per calibrate job), active calibration sampling and routing of a
job's prompts."""

from __future__ import annotations

import json
import shutil
from functools import lru_cache

import numpy as np

from services.core.settings import DEFAULT_CALIBRATION_SIZE
from services.jobs import runtime as rt
from services.jobs.celery_app import app
from services.jobs.leases import TRANSIENT_REDIS_ERRORS
from services.jobs.pricing import add_routing_cost, calibration_output_tokens
from services.jobs.stages import (
    ROUTE_TASK,
    SAMPLE_TASK,
    TRAIN_TASK,
    conclude,
    enqueue_many,
    job_teachers,
    plan_routed_generation,
    record_calibration,
    routing_failure_items,
)
from services.method.allocation import ChunkRoute, Limits, route_chunk
from services.method.gate import GateResult, best_single_teacher, hits_of_choice, publish_gate
from services.method.hybrid import runner_up
from services.method.kcenter import kcenter_greedy
from services.method.pairs import make_pairs
from services.method.rewards import mean_per_teacher
from services.routing.model import PromptEncoder, Router
from services.routing.training import TrainConfig, prompt_embeddings, split_prompts, train_router

#: Below this many prompts training makes no validation split (services.routing.training.split_prompts).
_MIN_PROMPTS_FOR_VALIDATION = 10


def _calibration_matrices(job_id: str, teachers: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Prompts and [prompt, teacher] matrices (combined, quality, learnability) of the scored prompts."""
    store = rt.store()
    scored = store.get_results(job_id, "score")
    ids = [pid for pid in store.job_record(job_id)["spec"]["calibration"] if pid in scored]
    mats = {name: np.full((len(ids), len(teachers)), np.nan) for name in ("combined", "quality", "learnability")}
    for i, pid in enumerate(ids):
        s = scored[pid]
        for name, matrix in mats.items():
            if s.get(name) is None:
                continue
            for t, v in zip(s["teachers"], s[name]):
                matrix[i, teachers.index(t)] = v
    return [p["prompt"] for p in store.prompts(job_id, ids)], mats


def train_config(spec: dict, settings) -> TrainConfig:
    """The router training a calibrate job asked for (mode, backbone), on the worker's device."""
    return TrainConfig(backbone=spec.get("router_backbone") or settings.router_backbone,
                       mode=spec.get("router_mode") or "frozen", seed=spec.get("seed", 0), device=settings.device)


@lru_cache(maxsize=4)
def _router(path: str) -> Router:
    """Routers stay loaded for the life of the worker process (a version's artifact never changes)."""
    return Router.load(path, device=rt.settings().device, precision=rt.settings().precision)


@lru_cache(maxsize=2)
def _encoder(backbone: str) -> PromptEncoder:
    """The frozen backbone that embeds prompts for active calibration (loaded once per worker)."""
    return PromptEncoder(backbone, max_length=TrainConfig.max_length, device=rt.settings().device)


@app.task(name=SAMPLE_TASK)
def sample_calibration(job_id: str) -> str:
    return rt.run_item(job_id, "calibration.sample", "sample", lambda: _sample_calibration(job_id))


def _sample_calibration(job_id: str) -> str:
    """Embed every prompt of the job with its router backbone (through the embedding cache, which
    training then reads) and keep ``calibration_size`` of them by greedy k-center."""
    store, settings = rt.store(), rt.settings()
    if not store.is_active(job_id):
        return "skipped: job ended"
    spec = store.job_record(job_id)["spec"]
    if spec.get("calibration_pending"):  # a redelivered task finds the calibration chosen
        prompts = store.prompts(job_id)
        backbone = train_config(spec, settings).backbone
        try:
            features = prompt_embeddings(_encoder(backbone), backbone, [p["prompt"] for p in prompts],
                                         rt.score_cache())
        except TRANSIENT_REDIS_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - one item: the job ends with the reason, never hangs
            conclude(store, job_id, error=f"calibration sampling: {type(exc).__name__}: {exc}", settings=settings)
            return "failed"
        size = spec.get("calibration_size", DEFAULT_CALIBRATION_SIZE)
        chosen = set(kcenter_greedy(features, size, spec.get("seed", 0)).tolist())
        record_calibration(store, job_id, [p["id"] for i, p in enumerate(prompts) if i in chosen])
    rt.finish_item(job_id, "calibration.sample", "sample")
    return "done"


def _previous_hits(student_id: str, teachers: list[str], val_prompts: list[str],
                   val_scores: np.ndarray) -> dict | None:
    """Hit@k of the student's active router on the new validation prompts (its own stored
    validation Hit@k when it does not know every teacher); None without an active router."""
    store = rt.store()
    active = store.active_router(student_id)
    if active is None:
        return None
    version, path = active
    previous = _router(path)
    if len(val_prompts) and set(teachers) <= set(previous.teachers):
        strengths = previous.strengths(val_prompts)[:, [previous.teachers.index(t) for t in teachers]]
        return hits_of_choice(val_scores, strengths.argmax(axis=1))
    entry = next(v for v in store.get_student(student_id)["versions"] if v["version"] == version)
    val = entry["metrics"].get("val")
    return {k: val[k] for k in ("hit@1", "hit@3") if k in val} if val else None


def _degraded(job_id: str) -> str | None:
    """What failed in the job's calibration stages, or None."""
    failed = sum(s["failed"] for s in rt.store().stage_progress(job_id) if s["stage"].startswith("calibration."))
    if not failed:
        return None
    who = ", ".join(f"{w}: {f.get('items', 0)}" for w, f in sorted(rt.leases().failures(job_id).items()))
    return f"{failed} calibration item(s) failed; {who}"


def _gate(job_id: str, student_id: str, teachers: list[str], prompts: list[str], combined: np.ndarray,
          metrics: dict, config: TrainConfig) -> GateResult:
    """The publish gate on this calibration (:mod:`services.method.gate`)."""
    settings = rt.settings()
    train_idx, val_idx = split_prompts(len(prompts), config.val_fraction, config.seed)
    val = metrics.get("val") or {}
    candidate = {k: val[k] for k in ("hit@1", "hit@3") if k in val} or None
    baselines = {"best_single": None, "previous_router": None}
    if len(val_idx) and candidate is not None:
        given = val.get("best_single")
        baselines["best_single"] = (
            {k: given[k] for k in ("hit@1", "hit@3") if k in given} if isinstance(given, dict) and given
            else hits_of_choice(combined[val_idx], np.full(len(val_idx), best_single_teacher(combined[train_idx]))))
        baselines["previous_router"] = _previous_hits(student_id, teachers, [prompts[i] for i in val_idx],
                                                      combined[val_idx])
    return publish_gate(n_prompts=len(prompts), n_pairs=len(make_pairs(combined)),
                        min_prompts=settings.router_min_prompts, min_pairs=settings.router_min_pairs,
                        candidate=candidate, baselines=baselines,
                        require_validation=len(prompts) >= _MIN_PROMPTS_FOR_VALIDATION,
                        degraded=_degraded(job_id), replaces_active=rt.store().active_router(student_id) is not None)


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    return rt.run_item(job_id, "train", "router", lambda: _train(job_id))


def _train(job_id: str) -> str:
    store, settings = rt.store(), rt.settings()
    if not store.is_active(job_id):
        return "skipped: job ended"
    job = store.job_record(job_id)
    spec = job["spec"]
    student_id, version = spec["student_id"], f"job-{job_id}" + (f"-r{job['run']}" if job.get("run") else "")
    known = {v["version"] for v in store.get_student(student_id)["versions"]}
    if version not in known:  # a redelivered task finds the version published and skips training
        teachers = [t.name for t in job_teachers(store, settings, job_id)]
        prompts, mats = _calibration_matrices(job_id, teachers)
        config = train_config(spec, settings)
        try:
            router, metrics = train_router(
                prompts, teachers, mats["combined"], config, cache=rt.score_cache(),
                extra_config={"student_id": student_id, "alpha": spec.get("alpha", 0.4), "job_id": job_id})
            gate = _gate(job_id, student_id, teachers, prompts, mats["combined"], metrics, config)
        except TRANSIENT_REDIS_ERRORS:
            raise  # retried by run_item
        except Exception as exc:  # noqa: BLE001 - one item: the job ends with the reason, never hangs
            conclude(store, job_id, error=f"router training: {type(exc).__name__}: {exc}", settings=settings)
            return "failed"
        metrics["calibration_stats"] = {
            name: {t: v for t, v in zip(teachers, mean_per_teacher(mats[name]).tolist()) if np.isfinite(v)}
            for name in ("quality", "learnability") if np.isfinite(mats[name]).any()}
        tokens = calibration_output_tokens(store, job_id, spec["calibration"], teachers)
        if tokens:  # what one routed prompt is expected to cost (budgets, dry runs)
            metrics["calibration_stats"]["output_tokens"] = tokens
        metrics["gate"] = {**gate.as_dict(), "best_single_teacher": teachers[best_single_teacher(mats["combined"])]}
        final = settings.router_dir / student_id / version
        staging = final.with_name(final.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        router.save(staging, metrics=metrics)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)  # publish whole: a router server never sees half a directory
        store.add_router_version(student_id, version, str(final), metrics, activate=gate.passed)
    entry = next(v for v in store.get_student(student_id)["versions"] if v["version"] == version)
    store.update_job(job_id, router_version=version, router_gate=json.dumps(entry["metrics"].get("gate")))
    rt.finish_item(job_id, "train", "router")
    return "done"


def _assign(job_id: str, prompts: list[dict]) -> tuple[ChunkRoute, list[str | None]]:
    """Teacher per prompt by the job's strategy, within the chunk's share of the job's budget, and with
    ``hybrid_margin`` the runner-up teacher of each prompt the router cannot separate from its top
    teacher (None elsewhere)."""
    store, settings = rt.store(), rt.settings()
    job = store.job_record(job_id)
    spec = job["spec"]
    pool = job_teachers(store, settings, job_id)
    names = [t.name for t in pool]
    strategy = spec.get("strategy", "persyn")
    student = store.get_student(spec["student_id"])
    active = store.active_router(spec["student_id"])
    stats, strengths = {}, None
    gate = json.loads(job.get("router_gate") or "null")
    if strategy == "persyn" and active is None and gate and not gate["activated"]:
        # this job's calibration trained a router the gate refused: its best single teacher serves instead
        strategy, spec = "strong", {**spec, "strong_teacher": gate["best_single_teacher"]}
    if active is not None:
        version, path = active
        stats = next(v for v in student["versions"] if v["version"] == version)["metrics"].get("calibration_stats", {})
        if strategy == "persyn":
            router = _router(path)
            missing = [t for t in names if t not in router.teachers]
            if missing:
                raise ValueError(f"router {version} does not know teacher(s) {', '.join(missing)}")
            strengths = router.strengths([p["prompt"] for p in prompts])[:, [router.teachers.index(t) for t in names]]
    limits = Limits.of(spec) if strategy == "persyn" else Limits()
    n_routed = int(job.get("n_routed") or store.prompt_count(job_id))
    routed = route_chunk(strategy, names, len(prompts), strengths=strengths, stats=stats,
                         prices={t.name: t.cost_per_1m_output for t in pool},
                         limits=limits.share(len(prompts) / max(n_routed, 1)),
                         families={t.name: t.family for t in pool},
                         student_family=spec.get("student_family") or student["family"],
                         strong_teacher=spec.get("strong_teacher"), seed=spec.get("seed", 0))
    seconds: list[str | None] = [None] * len(prompts)
    if strengths is not None and spec.get("hybrid_margin"):
        seconds = [names[i] if i >= 0 else None for i in runner_up(strengths, spec["hybrid_margin"])]
    return routed, seconds


@app.task(name=ROUTE_TASK)
def route(job_id: str, unit: str, prompt_ids: list[str]) -> str:
    return rt.run_item(job_id, "route", unit, lambda: _route(job_id, unit, prompt_ids))


def _route(job_id: str, unit: str, prompt_ids: list[str]) -> str:
    """Route one chunk of prompts, then start their generation at once."""
    store, settings = rt.store(), rt.settings()
    if not store.is_active(job_id):
        return "skipped: job ended"
    assigned = store.results_for(job_id, "assign", prompt_ids)
    todo = [pid for pid in prompt_ids if pid not in assigned]
    if todo:
        prompts = store.prompts(job_id, todo)
        try:
            routed, seconds = _assign(job_id, prompts)
        except TRANSIENT_REDIS_ERRORS:
            raise  # retried by run_item
        except Exception as exc:  # noqa: BLE001 - the chunk's prompts fail with the reason, the job goes on
            reason = f"routing: {type(exc).__name__}: {exc}"
            rt.finish_item(job_id, "route", unit, ok=False, error=reason)
            rt.finish_items(job_id, "generate", [(item, False, reason) for item in routing_failure_items(todo)])
            return "failed"
        written = store.put_results(job_id, "assign", {
            p["id"]: {"teacher": t, **({"second": s} if s else {})}
            for p, t, s in zip(prompts, routed.teachers, seconds)})
        add_routing_cost(store, job_id, routed, [written[p["id"]] for p in prompts])
        assigned = store.results_for(job_id, "assign", prompt_ids)
    messages = plan_routed_generation(store, settings, job_id, unit,
                                      [(pid, assigned[pid]["teacher"]) for pid in prompt_ids])
    rt.finish_item(job_id, "route", unit)
    enqueue_many(messages)
    return "done"
