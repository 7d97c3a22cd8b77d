"""Job orchestration: which stages a job runs, and what each stage fans out.

A job is a sequence of stages; each stage has a fixed item count. Tasks count their
item once (:meth:`JobStore.mark_item`), and the one task that finishes a stage calls
:func:`advance`, which opens the next stage and enqueues its tasks. The flow per kind:

- ``calibrate``: calibration.generate (prompt x teacher) -> calibration.score (prompt)
  -> train (one router version) -> done. With ``calibration_sampler`` ``kcenter`` a first
  calibration.sample stage (one task on the training queue) embeds every prompt with the router
  backbone and picks the calibration prompts by greedy k-center: too slow for the gateway at
  submit time on a large job, while the random sample is chosen there.
- ``synthesize``: route and generate together: each routing task takes a chunk of prompts
  (``PERSYN_ROUTE_CHUNK_PROMPTS``) and enqueues the generation of its prompts as soon as they
  are routed (prompt, its teacher) -> done; for the generate-then-select strategies (oracle,
  scas): generate (prompt x teacher) -> select (prompt) -> done.

Generation runs in chunks: one task, one lease and a few pipelined Redis round trips for
``PERSYN_CHUNK_ITEMS`` prompt-teacher items (its teachers asked concurrently). Progress is
counted per item; a chunk's id joins its stage's item set uncounted when the chunk is done, so
the watchdog sees it finished.
- ``hybrid_margin`` (strategy persyn): once generate ends, hybrid.generate asks the runner-up teacher
  of each prompt the routing found ambiguous (top-two strength gap below the margin; recorded with
  its assignment) -> hybrid.select (prompt) scores both answers and keeps the better by the combined
  reward in the prompt's row -> done. Until then the row holds the routed teacher's answer.
- ``persyn``: the calibrate stages first when the student has no router (its
  calibration prompts keep their best parallel answer), then the synthesize stages.
"""

from __future__ import annotations

import json
import time

import numpy as np

from services.core.settings import DEFAULT_CALIBRATION_SIZE, DEFAULT_MAX_ERROR_RATE, DEFAULT_TENANT, Settings
from services.jobs.distill import DISTILL_KIND, advance_distill, distill_progress
from services.jobs.leases import Leases
from services.jobs.store import RESUMABLE, JobStore, StagedPrompts
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
SAMPLE_TASK = "persyn.training.sample_calibration"


def enqueue(task: str, args: list, queue: str) -> None:
    """Send a task by name (the gateway never imports worker code)."""
    enqueue_many([(task, args, queue)])


def enqueue_many(messages: list[tuple[str, list, str]]) -> None:
    """Send many tasks over one broker connection."""
    from services.jobs.celery_app import app

    with app.producer_or_acquire() as producer:
        for task, args, queue in messages:
            app.send_task(task, args=args, queue=queue, producer=producer)


def generation_units(job_id: str, stage: str, pairs: list[tuple[str, str]], size: int,
                     tag: str) -> list[tuple[str, str, list, str]]:
    """(unit, task, args, queue) per chunk of ``size`` (prompt, teacher) pairs; ``tag`` makes unit ids
    unique in the stage."""
    return [(f"{tag}{i // size:05d}", GENERATE_TASK, [job_id, stage, f"{tag}{i // size:05d}",
                                                      [list(x) for x in pairs[i:i + size]]], "generation")
            for i in range(0, len(pairs), size)]


def run_tag(job: dict) -> str:
    """Prefix of the unit ids a run of the job plans: none for its first run, ``R{n}`` for its n-th
    resume, so a task left queued from an earlier run is not in the current plan and does nothing."""
    run = int(job.get("run") or 0)
    return f"R{run}" if run else ""


def chunk_size(n_items: int, settings: Settings) -> int:
    """Items per generation task for a stage (or a routed chunk) of ``n_items``: at least
    ``PERSYN_MIN_CHUNKS`` tasks, so every worker process gets work and progress moves, and at most
    ``PERSYN_CHUNK_ITEMS`` items in one, which a big stage fills."""
    return max(1, min(settings.chunk_items, -(-n_items // settings.min_chunks)))


def unit_items(unit: str, task: str, args: list) -> list[str]:
    """The items a planned unit counts: a generation chunk its (prompt, teacher) items, others themselves."""
    if task == GENERATE_TASK:
        return [item_key(p, t) for p, t in args[3]]
    return [unit]


def item_key(prompt_id: str, teacher: str) -> str:
    return f"{prompt_id}|{teacher}"


def calibration_sample(n_prompts: int, size: int, seed: int) -> list[int]:
    """Seeded sample of calibration prompts: their positions in the job's order, ascending."""
    if size >= n_prompts:
        return list(range(n_prompts))
    return sorted(np.random.default_rng(seed).choice(n_prompts, size=size, replace=False).tolist())


class NeedsCalibration(LookupError):
    """The job's strategy needs the student's calibration (an active router version)."""


def submit_job(store: JobStore, settings: Settings, spec: dict, prompts: StagedPrompts, *,
               owner: str = DEFAULT_TENANT) -> str:
    """Check what needs the service's state, register the job whose prompts were staged (all
    written, ids unique) and start its first stage.

    Raises what :func:`check_job` raises; the job is not registered then (and the staged prompts
    go when the caller's ``with`` block ends on the error).
    """
    calibrate = check_job(store, settings, spec, prompts.count, prompts.first_unreferenced)
    size = spec.get("calibration_size", DEFAULT_CALIBRATION_SIZE)
    if not calibrate:
        plan = {"calibration": []}
    elif spec.get("calibration_sampler", "random") == "kcenter" and size < prompts.count:
        plan = {"calibration": [], "calibration_pending": True}  # picked by the calibration.sample stage
    else:
        positions = calibration_sample(prompts.count, size, spec.get("seed", 0))
        plan = {"calibration": store.prompt_ids_at(prompts.job_id, positions)}
    prompts.register(spec["kind"], {**spec, **plan}, owner=owner)
    advance(store, prompts.job_id, None, settings)
    return prompts.job_id


def check_job(store: JobStore, settings: Settings, spec: dict, n_prompts: int,
              first_unreferenced: str | None) -> bool:
    """Whether the job of ``n_prompts`` prompts (the first without a reference: ``first_unreferenced``)
    can run here (reads only); returns whether it calibrates first.

    Raises ValueError for a job that cannot run here, NeedsCalibration when the student has no
    router yet and :class:`services.jobs.pricing.NeedsCostStats` for limits its router cannot price.
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
    from services.jobs.pricing import check_limits

    check_limits(store, spec, n_prompts, teacher_pool_cached(settings.teacher_pool))
    calibrate = spec["kind"] == "calibrate" or (spec["kind"] == "persyn" and not has_router)
    scores = calibrate or (spec["kind"] != "calibrate" and (strategy in GENERATE_THEN_SELECT
                                                            or bool(spec.get("hybrid_margin"))))
    if scores and spec.get("alpha", 0.4) < 1 and settings.reward_model is None and first_unreferenced is not None:
        raise ValueError(f"prompt {first_unreferenced!r} has no reference: quality needs references "
                         "(math-verify) or a reward model (PERSYN_REWARD_MODEL)")
    return calibrate


def _start(store: JobStore, settings: Settings, job_id: str, stage: str,
           units: list[tuple[str, str, list, str]], total: int | None = None) -> None:
    """Open ``stage`` with ``total`` items (default: one per unit) and enqueue its (unit, task, args,
    queue) units; an empty stage ends at once.

    The plan is written first, so the watchdog can requeue any unit whose message never
    made it (the enqueuing task lost Redis half-way)."""
    Leases(store).record_plan(job_id, stage, units)
    if not store.start_stage(job_id, stage, len(units) if total is None else total):
        return  # a redelivered task already opened it
    enqueue_many([(task, args, queue) for _, task, args, queue in units])
    if not units:  # nothing to do: the stage is already finished
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
    if kind == DISTILL_KIND:
        advance_distill(store, settings, job_id, completed)
        return
    strategy = spec.get("strategy", "persyn")
    calibration = spec.get("calibration", [])
    if completed is None:
        store.set_state(job_id, "running")
        # a resumed persyn job whose calibration trained its router goes on with the synthesis
        if calibration and kind == "persyn" and job.get("router_version"):
            _start_synthesis(store, settings, job_id, strategy)
        elif spec.get("calibration_pending"):
            _start(store, settings, job_id, "calibration.sample",
                   [("sample", SAMPLE_TASK, [job_id], "training")])
        elif calibration:
            _start_calibration(store, settings, job_id, calibration)
        else:
            _start_synthesis(store, settings, job_id, strategy)
    elif completed == "calibration.sample":
        if calibration:
            _start_calibration(store, settings, job_id, calibration)
        else:  # the sampling failed: the job cannot calibrate
            conclude(store, job_id, settings=settings)
    elif completed == "calibration.generate":
        _start(store, settings, job_id, "calibration.score",
               [(pid, SCORE_TASK, [job_id, "calibration.score", pid], "scoring") for pid in calibration])
    elif completed == "calibration.score":
        _start(store, settings, job_id, "train", [("router", TRAIN_TASK, [job_id], "training")])
    elif completed == "train":
        if kind == "calibrate":
            conclude(store, job_id, settings=settings)
        else:
            _start_synthesis(store, settings, job_id, strategy)
    elif completed == "route":
        pass  # each routing chunk started the generation of its prompts; the generate stage ends the job
    elif completed == "generate" and strategy in GENERATE_THEN_SELECT:
        _start(store, settings, job_id, "select",
               [(pid, SCORE_TASK, [job_id, "select", pid], "scoring") for pid in store.unserved_prompt_ids(job_id)])
    elif completed == "generate" and spec.get("hybrid_margin"):
        pairs = _runner_ups(store, job_id)
        _start(store, settings, job_id, "hybrid.generate",
               generation_units(job_id, "hybrid.generate", pairs, chunk_size(len(pairs), settings),
                                f"{run_tag(job)}h"),
               total=len(pairs))
    elif completed == "hybrid.generate":
        _start(store, settings, job_id, "hybrid.select",
               [(pid, SCORE_TASK, [job_id, "hybrid.select", pid], "scoring") for pid, _ in _runner_ups(store, job_id)])
    elif completed in ("generate", "select", "hybrid.select"):
        conclude(store, job_id, settings=settings)


def _runner_ups(store: JobStore, job_id: str) -> list[tuple[str, str]]:
    """(prompt, runner-up teacher) of the prompts routing found ambiguous, in the job's order."""
    order = store.prompt_ids(job_id)
    assigned = store.results_for(job_id, "assign", order)
    return [(pid, assigned[pid]["second"]) for pid in order if assigned.get(pid, {}).get("second")]


def _start_calibration(store: JobStore, settings: Settings, job_id: str, calibration: list[str]) -> None:
    teachers = [t.name for t in job_teachers(store, settings, job_id)]
    pairs = [(pid, t) for pid in calibration for t in teachers]
    _start(store, settings, job_id, "calibration.generate",
           generation_units(job_id, "calibration.generate", pairs, chunk_size(len(pairs), settings),
                            f"{run_tag(store.job_record(job_id))}c"), total=len(pairs))


def record_calibration(store: JobStore, job_id: str, calibration: list[str]) -> None:
    """Write the calibration prompts a calibration.sample stage chose into the job's plan."""
    spec = store.job_record(job_id)["spec"]
    store.update_job(job_id, spec=json.dumps({**spec, "calibration": calibration, "calibration_pending": False}))


def _start_synthesis(store: JobStore, settings: Settings, job_id: str, strategy: str) -> None:
    prompt_ids = store.unserved_prompt_ids(job_id)
    tag = run_tag(store.job_record(job_id))
    if strategy in GENERATE_THEN_SELECT:
        teachers = [t.name for t in job_teachers(store, settings, job_id)]
        pairs = [(pid, t) for pid in prompt_ids for t in teachers]
        _start(store, settings, job_id, "generate",
               generation_units(job_id, "generate", pairs, chunk_size(len(pairs), settings), f"{tag}g"),
               total=len(pairs))
        return
    size = settings.route_chunk_prompts
    units = [(f"{tag}r{i // size:05d}", ROUTE_TASK, [job_id, f"{tag}r{i // size:05d}", prompt_ids[i:i + size]],
              "training") for i in range(0, len(prompt_ids), size)]
    leases = Leases(store)
    leases.record_plan(job_id, "route", units)
    leases.record_plan(job_id, "generate", [])
    # generate is filled as the routing chunks finish
    if not store.start_stages(job_id, [("route", len(units)), ("generate", len(prompt_ids))]):
        return  # a redelivered task already opened them
    store.update_job(job_id, n_routed=len(prompt_ids))  # the prompts a budget is shared over
    enqueue_many([(task, args, queue) for _, task, args, queue in units])
    if not units:
        conclude(store, job_id, settings=settings)


def plan_routed_generation(store: JobStore, settings: Settings, job_id: str, route_unit: str,
                           assigned: list[tuple[str, str]]) -> list[tuple[str, list, str]]:
    """Plan the generation of one routing chunk's (prompt, teacher) pairs; returns the messages to
    send once the chunk is counted (planned first, so the watchdog finds any that never left)."""
    units = generation_units(job_id, "generate", assigned, chunk_size(len(assigned), settings), f"{route_unit}-")
    Leases(store).record_plan(job_id, "generate", units)
    return [(task, args, queue) for _, task, args, queue in units]


def routing_failure_items(prompt_ids: list[str]) -> list[str]:
    """The generate-stage items that stand for prompts whose routing failed (counted failed, so
    the generate stage still ends)."""
    return [item_key(pid, UNROUTED) for pid in prompt_ids]


#: The "teacher" of a generate item whose prompt could not be routed.
UNROUTED = "(unrouted)"


def failure_owner(stage: str, item: str) -> str:
    """Whom a failed item is put down to: its teacher for generation items, else its stage."""
    if stage.endswith("generate") and "|" in item:
        teacher = item.rsplit("|", 1)[1]
        return "stage:route" if teacher == UNROUTED else teacher
    return f"stage:{stage}"


def finish_items(store: JobStore, settings: Settings, job_id: str, stage: str,
                 outcomes: list[tuple[str, bool, str | None]], *, unit: str | None = None) -> None:
    """Count finished items (item, ok, error), each once, in a few round trips: failures also under
    their owner and kind, before the items, so the job never ends without its reasons. The call that
    completes the stage advances the job; one that counts failures checks the error budget.
    ``unit`` (a chunk's id) is recorded as finished with them."""
    failed = [(item, error) for item, ok, error in outcomes if not ok]
    if failed:
        leases = Leases(store)
        seen = store.r.smismember(store._k("job", job_id, "stage", stage, "items"), [item for item, _ in failed])
        for (item, error), already in zip(failed, seen):
            if not already:
                leases.count_failure(job_id, failure_owner(stage, item), error or "failed")
    completed, _ = store.mark_items(job_id, stage, outcomes, unit=unit)
    if completed:
        advance(store, job_id, stage, settings)
    elif failed:
        check_error_budget(store, job_id, stage, settings)


#: A job's error budget is judged once a stage has this many finished items.
ERROR_BUDGET_MIN_ITEMS = 20


def check_error_budget(store: JobStore, job_id: str, stage: str, settings: Settings) -> bool:
    """Stop the job, ``failed`` with its failure summary, once the failed share of ``stage``'s
    finished items passes the job's ``max_error_rate``; its queued tasks then do nothing and the rows
    it has stay downloadable. True if this call stopped it."""
    done, failed = (int(x or 0) for x in store.r.hmget(store._k("job", job_id, "stage", stage), "done", "failed"))
    finished = done + failed
    if finished < ERROR_BUDGET_MIN_ITEMS or not store.is_active(job_id):
        return False
    rate = store.job_record(job_id)["spec"].get("max_error_rate", DEFAULT_MAX_ERROR_RATE)
    if failed <= rate * finished:
        return False
    conclude(store, job_id, settings=settings, stopped=(
        f"stopped early: {failed} of {finished} {stage} items failed, more than the job's "
        f"max_error_rate {rate:g}"))
    return True


def conclude(store: JobStore, job_id: str, *, error: str | None = None, settings: Settings | None = None,
             stopped: str | None = None) -> str:
    """End the job in the state its output earns; returns the state.

    ``succeeded``: every prompt has its row (a calibrate job: its router was trained; a distill
    job: its model was published) and no item failed; ``partial``: some output, with the reasons; ``failed``: no output, or
    ``stopped`` (the reason it was stopped early: its error budget). The reasons name each
    teacher (or stage) whose items failed, with its first error and the count of each kind.
    """
    job = store.job_record(job_id)
    leases = Leases(store)
    reasons = [r for r in (stopped, error) if r]
    if job["kind"] == "calibrate":
        produced = bool(job.get("router_version"))
    elif job["kind"] == DISTILL_KIND:
        produced = bool(job.get("distill_model"))
    else:
        n, rows = store.prompt_count(job_id), store.row_count(job_id)
        produced = rows > 0
        if rows < n:
            reasons.append(f"{n - rows} of {n} prompts have no row")
    n_failed = sum(s["failed"] for s in store.stage_progress(job_id))
    if n_failed:
        by_who = "; ".join(
            f"{who}: {f.get('items', 0)} ({', '.join(f'{k} {n}' for k, n in sorted(f['kinds'].items()))}; "
            f"first: {f.get('error', 'failed')})" for who, f in sorted(leases.failures(job_id).items()))
        reasons.append(f"{n_failed} item(s) failed: {by_who}")
    state = "succeeded" if not reasons else "partial" if produced and not stopped else "failed"
    store.set_state(job_id, state, error="; ".join(reasons) if reasons else None)
    leases.forget_job(job_id)
    expire_finished(store, job_id, settings or Settings.from_env())
    return state


def _job_keys(store: JobStore, job_id: str) -> dict[str, list[str]]:
    """The job's Redis keys by what they hold: ``answers`` (answers, scores, routes: kept while they may
    serve a resume), ``run`` (plans and leases of the current run), ``progress`` (the run's stages,
    errors and failures, shown with the job) and ``record`` (the record, prompts and dataset)."""
    def j(*parts: str) -> str:
        return store._k("job", job_id, *parts)

    keys = {"answers": [j("results", kind) for kind in ("gen", "score", "assign")] + [j("attempts")],
            "run": [j("redeliveries")], "progress": [j("stages"), j("errors"), j("failures")],
            "record": [j()] + [j(part) for part in ("prompts", "order", "rows", "alloc", "usage", "routing")]}
    for stage in store.r.lrange(j("stages"), 0, -1):
        keys["run"] += [j("stage", stage, "items"), j("plan", stage, "queues")]
        keys["run"] += [j(part, stage) for part in ("plan", "inflight", "retrying", "suspects")]
        keys["progress"] += [j("stage", stage), j("health", stage)]
    return keys


def expire_finished(store: JobStore, job_id: str, settings: Settings) -> None:
    """A job that ended keeps its working state (answers, scores, plans, leases) for
    ``job_working_ttl_s`` and its record, progress and dataset for ``job_retention_s``; then
    nothing of it is left in Redis."""
    keys = _job_keys(store, job_id)
    working = keys["answers"] + keys["run"]
    retained = keys["record"] + keys["progress"]
    pipe = store.r.pipeline(transaction=False)
    for key in working:
        pipe.expire(key, settings.job_working_ttl_s)
    for key in retained:
        pipe.expire(key, settings.job_retention_s)
    # the job index forgets jobs past their retention, and goes itself when no job ended for that long
    pipe.zremrangebyscore(store._k("jobs"), "-inf", time.time() - settings.job_retention_s)
    pipe.expire(store._k("jobs"), settings.job_retention_s)
    pipe.execute()


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
    from services.jobs.pricing import routing_report

    leases = Leases(store)
    stages = [{**s, **leases.stage_health(job_id, s["stage"])} for s in store.stage_progress(job_id)]
    running = [s["stage"] for s in stages if s["finished"] is None]
    return {
        "id": job_id, "kind": job["kind"], "state": job["state"],
        "stage": (running[0] if running else job["stage"]) or None,
        "student_id": spec["student_id"],
        "spec": {k: v for k, v in spec.items() if k not in ("calibration", "calibration_pending")},
        "n_prompts": store.prompt_count(job_id), "n_calibration": len(spec.get("calibration", [])),
        "stages": stages, "errors": store.errors(job_id), "failures": leases.failures(job_id),
        "allocation": store.allocation(job_id), "usage": usage, "rows": store.row_count(job_id),
        "routing_cost": routing_report(store, job_id, spec, sum(u["cost"] for u in usage.values())),
        "router_version": job.get("router_version") or None,
        "resumes": int(job.get("run") or 0), "resumed_prompts": int(job.get("resumed_prompts") or 0),
        "generations": {"requested": sum(u.get("requests", 0) for u in usage.values()),
                        "from_store": sum(u.get("from_store", 0) for u in usage.values())},
        "router_gate": json.loads(job["router_gate"]) if job.get("router_gate") else None,
        "training": distill_progress(job) if job["kind"] == DISTILL_KIND else None,
        "hybrid": _hybrid_summary(spec, job, stages),
        "error": job.get("error") or None,
        "created": job["created"], "updated": job["updated"],
        "finished": float(job["finished"]) if job.get("finished") else None,
    }


def _hybrid_summary(spec: dict, job: dict, stages: list[dict]) -> dict | None:
    """The hybrid fallback's cost and effect so far, for a job that asked for it."""
    if not spec.get("hybrid_margin"):
        return None
    extra = next((s["total"] for s in stages if s["stage"] == "hybrid.generate"), 0)
    return {"margin": spec["hybrid_margin"], "prompts": extra, "extra_generations": extra,
            "switched": int(job.get("hybrid_switched") or 0)}


def cancel_job(store: JobStore, job_id: str, settings: Settings | None = None) -> dict:
    """Stop a job: its queued tasks see the state and do nothing; its rows stay downloadable."""
    store.job_record(job_id)
    if store.set_state(job_id, "cancelled"):
        Leases(store).forget_job(job_id)
        expire_finished(store, job_id, settings or Settings.from_env())
    return describe_job(store, job_id, settings)


class NotResumable(ValueError):
    """Only a job that ended without all its output (partial, failed, cancelled) can be resumed."""


def resume_job(store: JobStore, job_id: str, settings: Settings | None = None) -> dict:
    """Run again only what an ended job lacks, keeping every row it has.

    The job reopens in one step (a second resume at the same time gets NotResumable); the state of
    its last run (stages, plans, failures, errors) is dropped, and its answers, scores and routes
    are kept, without their expiry. Its stages then open as for a new job, over the prompts
    without a row only; generations come from the job's own answers or the generation store, so
    no teacher is asked again for what it already answered. Scores are recomputed (from the score
    cache), because a prompt's set of answers may have grown.
    """
    settings = settings or Settings.from_env()
    state = store.state(job_id)  # NotFound for an unknown job
    keys = _job_keys(store, job_id) if state in RESUMABLE else None
    run = store.reopen(job_id) if keys is not None else state
    if isinstance(run, str):  # not resumable, or another resume reopened it first
        raise NotResumable(f"job {job_id} is {run}: only a {', '.join(RESUMABLE[:-1])} or "
                           f"{RESUMABLE[-1]} job can be resumed")
    job = store.job_record(job_id)
    if job["kind"] == "calibrate":
        missing = len(job["spec"].get("calibration", [])) - len(store.results_for(
            job_id, "score", job["spec"].get("calibration", [])))
    else:
        missing = store.prompt_count(job_id) - store.row_count(job_id)
    pipe = store.r.pipeline(transaction=False)
    pipe.delete(*keys["run"], *keys["progress"], store._k("job", job_id, "results", "score"))
    for key in keys["answers"] + keys["record"]:
        pipe.persist(key)
    pipe.hincrby(store._k("job", job_id), "resumed_prompts", missing)
    pipe.execute()
    advance(store, job_id, None, settings)
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

