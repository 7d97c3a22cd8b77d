"""Router training (one version per calibrate job) and routing of a job's prompts."""

from __future__ import annotations

import shutil
from functools import lru_cache

import numpy as np

from services.jobs import runtime as rt
from services.jobs.celery_app import app
from services.jobs.stages import ROUTE_TASK, TRAIN_TASK, job_teachers
from services.method.rewards import mean_per_teacher
from services.method.strategies import StrategyInputs, select
from services.routing.model import Router
from services.routing.training import TrainConfig, train_router


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


@lru_cache(maxsize=4)
def _router(path: str) -> Router:
    """Routers stay loaded for the life of the worker process (a version's artifact never changes)."""
    return Router.load(path, device=rt.settings().device, precision=rt.settings().precision)


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    store, settings = rt.store(), rt.settings()
    if not store.is_active(job_id):
        return "skipped: job ended"
    spec = store.job_record(job_id)["spec"]
    student_id, version = spec["student_id"], f"job-{job_id}"
    known = {v["version"] for v in store.get_student(student_id)["versions"]}
    if version not in known:  # a redelivered task finds the version published and skips training
        teachers = [t.name for t in job_teachers(store, settings, job_id)]
        prompts, mats = _calibration_matrices(job_id, teachers)
        try:
            router, metrics = train_router(
                prompts, teachers, mats["combined"],
                TrainConfig(backbone=settings.router_backbone, seed=spec.get("seed", 0), device=settings.device),
                cache=rt.score_cache(),
                extra_config={"student_id": student_id, "alpha": spec.get("alpha", 0.4), "job_id": job_id})
        except Exception as exc:  # noqa: BLE001 - one item: the job fails with the reason, never hangs
            store.set_state(job_id, "failed", error=f"router training: {type(exc).__name__}: {exc}")
            return "failed"
        metrics["calibration_stats"] = {
            name: dict(zip(teachers, np.nan_to_num(mean_per_teacher(mats[name]), nan=0.0).tolist()))
            for name in ("quality", "learnability") if np.isfinite(mats[name]).any()}
        final = settings.router_dir / student_id / version
        staging = final.with_name(final.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        router.save(staging, metrics=metrics)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)  # publish whole: a router server never sees half a directory
        store.add_router_version(student_id, version, str(final), metrics, activate=True)
    store.update_job(job_id, router_version=version)
    rt.finish_item(job_id, "train", "router")
    return "done"


def _assign(job_id: str, prompts: list[dict]) -> list[str]:
    """Teacher per prompt by the job's strategy."""
    store, settings = rt.store(), rt.settings()
    spec = store.job_record(job_id)["spec"]
    pool = job_teachers(store, settings, job_id)
    names = [t.name for t in pool]
    strategy = spec.get("strategy", "persyn")
    student = store.get_student(spec["student_id"])
    active = store.active_router(spec["student_id"])
    stats, strengths = {}, None
    if active is not None:
        version, path = active
        stats = next(v for v in student["versions"] if v["version"] == version)["metrics"].get("calibration_stats", {})
        if strategy == "persyn":
            router = _router(path)
            missing = [t for t in names if t not in router.teachers]
            if missing:
                raise ValueError(f"router {version} does not know teacher(s) {', '.join(missing)}")
            strengths = router.strengths([p["prompt"] for p in prompts])[:, [router.teachers.index(t) for t in names]]

    def tiled(name):
        if name not in stats:
            return None
        return np.tile([stats[name].get(t, np.nan) for t in names], (len(prompts), 1))

    learn = tiled("learnability")
    selection = select(strategy, StrategyInputs(
        teachers=names, available=np.ones((len(prompts), len(names)), dtype=bool), quality=tiled("quality"),
        learnability=learn, strengths=strengths, families={t.name: t.family for t in pool},
        sizes={t.name: t.size_b for t in pool}, student_family=spec.get("student_family") or student["family"],
        strong_teacher=spec.get("strong_teacher"), seed=spec.get("seed", 0)))
    return [names[i] for i in selection.choice]


@app.task(name=ROUTE_TASK)
def route(job_id: str) -> str:
    store = rt.store()
    if not store.is_active(job_id):
        return "skipped: job ended"
    prompts = store.prompts(job_id, store.unserved_prompt_ids(job_id))
    try:
        teachers = _assign(job_id, prompts) if prompts else []
    except Exception as exc:  # noqa: BLE001 - one item: the job fails with the reason, never hangs
        store.set_state(job_id, "failed", error=f"routing: {type(exc).__name__}: {exc}")
        return "failed"
    for p, t in zip(prompts, teachers):
        store.put_result(job_id, "assign", p["id"], {"teacher": t})
    rt.finish_item(job_id, "route", "all")
    return "done"
