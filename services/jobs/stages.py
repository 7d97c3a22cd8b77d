"""Job orchestration: which stages a job runs, and what each stage fans out.

A job is a sequence of stages; each stage has a fixed item count. Tasks count their
item once (:meth:`JobStore.mark_item`), and the one task that finishes a stage calls
:func:`advance`, which opens the next stage and enqueues its tasks. The flow per kind:

- ``calibrate``: calibration.generate (prompt x teacher) -> calibration.score (prompt)
  -> train (one router version) -> done.
- ``synthesize``: route (one task) -> generate (prompt, its teacher) -> done; for the
  generate-then-select strategies (oracle, scas): generate (prompt x teacher) -> select
  (prompt) -> done.
- ``persyn``: the calibrate stages first when the student has no router (its
  calibration prompts keep their best parallel answer), then the synthesize stages.
"""

from __future__ import annotations

import json
import time

import numpy as np

from services.core.settings import Settings
from services.jobs.store import JobStore
from services.method.formats import teacher_pool_cached

JOB_KINDS = ("calibrate", "synthesize", "persyn")
#: Strategies that need every teacher's answer to every prompt before choosing.
GENERATE_THEN_SELECT = ("oracle", "scas")
#: Strategies that choose from the student's calibration statistics (its active router version).
NEEDS_CALIBRATION = ("persyn", "car", "family_strong", "strong")

GENERATE_TASK = "persyn.generation.generate"
SCORE_TASK = "persyn.scoring.score"
TRAIN_TASK = "persyn.training.train"
ROUTE_TASK = "persyn.training.route"


def enqueue(task: str, args: list, queue: str) -> None:
    """Send a task by name (the gateway never imports worker code)."""
    from services.jobs.celery_app import app

    app.send_task(task, args=args, queue=queue)


def item_key(prompt_id: str, teacher: str) -> str:
    return f"{prompt_id}|{teacher}"


def calibration_sample(prompt_ids: list[str], size: int, seed: int) -> list[str]:
    """Seeded sample of calibration prompts, kept in the job's prompt order."""
    if size >= len(prompt_ids):
        return list(prompt_ids)
    chosen = set(np.random.default_rng(seed).choice(len(prompt_ids), size=size, replace=False).tolist())
    return [pid for i, pid in enumerate(prompt_ids) if i in chosen]


class NeedsCalibration(LookupError):
    """The job's strategy needs the student's calibration (an active router version)."""


def submit_job(store: JobStore, settings: Settings, spec: dict, prompts: list[dict]) -> str:
    """Check what needs the service's state, create the job and start its first stage.

    Raises ValueError for a job that cannot run here and NeedsCalibration when the
    student has no router yet; nothing is created in either case.
    """
    if spec["kind"] not in JOB_KINDS:
        raise ValueError(f"unknown job kind {spec['kind']!r}")
    if settings.teacher_pool is None:
        raise ValueError("no teacher pool is configured (PERSYN_TEACHER_POOL)")
    student = store.get_student(spec["student_id"])
    has_router = student["active_version"] is not None
    strategy = spec.get("strategy", "persyn")
    if spec["kind"] == "synthesize" and strategy in NEEDS_CALIBRATION and not has_router \
            and not (strategy == "strong" and spec.get("strong_teacher")):
        raise NeedsCalibration(f"strategy {strategy!r} needs student {spec['student_id']!r}'s calibration: "
                               "run a calibrate job first (or submit kind 'persyn')")
    calibrate = spec["kind"] == "calibrate" or (spec["kind"] == "persyn" and not has_router)
    scores = calibrate or (spec["kind"] != "calibrate" and strategy in GENERATE_THEN_SELECT)
    if scores and spec.get("alpha", 0.4) < 1 and settings.reward_model is None:
        missing = [p["id"] for p in prompts if p.get("reference") is None]
        if missing:
            raise ValueError(f"prompt {missing[0]!r} has no reference: quality needs references (math-verify) "
                             "or a reward model (PERSYN_REWARD_MODEL)")
    ids = [p["id"] for p in prompts]
    plan = {"calibration": calibration_sample(ids, spec.get("calibration_size", 2500), spec.get("seed", 0))
            if calibrate else []}
    job_id = store.create_job(spec["kind"], {**spec, **plan}, prompts)
    advance(store, job_id, None, settings)
    return job_id


def _start(store: JobStore, settings: Settings, job_id: str, stage: str, items: list[tuple[str, list, str]]) -> None:
    """Open ``stage`` and enqueue its (task, args, queue) items; an empty stage ends at once."""
    if not store.start_stage(job_id, stage, len(items)):
        return  # a redelivered task already opened it
    for task, args, queue in items:
        enqueue(task, args, queue)
    if not items:  # nothing to do: the stage is already finished
        advance(store, job_id, stage, settings)


def job_teachers(store: JobStore, settings: Settings, job_id: str) -> list:
    if settings.teacher_pool is None:
        raise ValueError("no teacher pool configured (PERSYN_TEACHER_POOL)")
    pool = teacher_pool_cached(settings.teacher_pool)
    names = store.job_record(job_id)["spec"].get("teachers")
    return [t for t in pool if not names or t.name in names]


def advance(store: JobStore, job_id: str, completed: str | None, settings: Settings | None = None) -> None:
    """Open the stage that follows ``completed`` (None: the job's first stage)."""
    settings = settings or Settings.from_env()
    if not store.is_active(job_id):
        return
    job = store.job_record(job_id)
    spec, kind = job["spec"], job["kind"]
    strategy = spec.get("strategy", "persyn")
    calibration = spec.get("calibration", [])
    if completed is None:
        store.set_state(job_id, "running")
        if calibration:
            teachers = [t.name for t in job_teachers(store, settings, job_id)]
            _start(store, settings, job_id, "calibration.generate",
                   [(GENERATE_TASK, [job_id, "calibration.generate", pid, t], "generation")
                    for pid in calibration for t in teachers])
        else:
            _start_synthesis(store, settings, job_id, strategy)
    elif completed == "calibration.generate":
        _start(store, settings, job_id, "calibration.score",
               [(SCORE_TASK, [job_id, "calibration.score", pid], "scoring") for pid in calibration])
    elif completed == "calibration.score":
        _start(store, settings, job_id, "train", [(TRAIN_TASK, [job_id], "training")])
    elif completed == "train":
        if kind == "calibrate":
            store.set_state(job_id, "succeeded")
        else:
            _start_synthesis(store, settings, job_id, strategy)
    elif completed == "route":
        assigned = store.get_results(job_id, "assign")
        _start(store, settings, job_id, "generate",
               [(GENERATE_TASK, [job_id, "generate", pid, a["teacher"]], "generation")
                for pid, a in sorted(assigned.items())])
    elif completed == "generate" and strategy in GENERATE_THEN_SELECT:
        _start(store, settings, job_id, "select",
               [(SCORE_TASK, [job_id, "select", pid], "scoring") for pid in store.unserved_prompt_ids(job_id)])
    elif completed in ("generate", "select"):
        store.set_state(job_id, "succeeded")


def _start_synthesis(store: JobStore, settings: Settings, job_id: str, strategy: str) -> None:
    if strategy in GENERATE_THEN_SELECT:
        teachers = [t.name for t in job_teachers(store, settings, job_id)]
        _start(store, settings, job_id, "generate",
               [(GENERATE_TASK, [job_id, "generate", pid, t], "generation")
                for pid in store.unserved_prompt_ids(job_id) for t in teachers])
    else:
        _start(store, settings, job_id, "route", [(ROUTE_TASK, [job_id], "training")])


def describe_job(store: JobStore, job_id: str, settings: Settings | None = None) -> dict:
    """What ``GET /v1/jobs/{id}`` shows: state, per-stage progress, errors, allocation, usage."""
    job = store.job_record(job_id)
    spec = job["spec"]
    costs = {}
    settings = settings or Settings.from_env()
    if settings.teacher_pool is not None and settings.teacher_pool.exists():
        costs = {t.name: t.cost_per_1m_output for t in teacher_pool_cached(settings.teacher_pool)}
    usage = {t: {**u, "cost": round(u.get("completion_tokens", 0) * costs.get(t, 0.0) / 1e6, 6)}
             for t, u in store.usage(job_id).items()}
    return {
        "id": job_id, "kind": job["kind"], "state": job["state"], "stage": job["stage"] or None,
        "student_id": spec["student_id"], "spec": {k: v for k, v in spec.items() if k != "calibration"},
        "n_prompts": len(store.prompt_ids(job_id)), "n_calibration": len(spec.get("calibration", [])),
        "stages": store.stage_progress(job_id), "errors": store.errors(job_id),
        "allocation": store.allocation(job_id), "usage": usage, "rows": store.row_count(job_id),
        "router_version": job.get("router_version") or None, "error": job.get("error") or None,
        "created": job["created"], "updated": job["updated"],
        "finished": float(job["finished"]) if job.get("finished") else None,
    }


def cancel_job(store: JobStore, job_id: str, settings: Settings | None = None) -> dict:
    """Stop a job: its queued tasks see the state and do nothing; its rows stay downloadable."""
    store.job_record(job_id)
    store.set_state(job_id, "cancelled")
    return describe_job(store, job_id, settings)


def wait_for(store: JobStore, job_id: str, timeout: float, poll: float = 0.5) -> dict:
    """Poll until the job ends (for tests and the CLI); raises TimeoutError."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not store.is_active(job_id):
            return describe_job(store, job_id)
        time.sleep(poll)
    raise TimeoutError(f"job {job_id} still {store.state(job_id)} after {timeout}s: "
                       + json.dumps(store.stage_progress(job_id)))

