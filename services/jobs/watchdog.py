"""The watchdog: finds items of running stages that nobody is working on and requeues them.

It runs as a daemon thread in every Celery worker's main process (started on ``worker_ready``
by :mod:`services.jobs.celery_app`), so the embedded stack and a cluster get it without an
extra component; a Redis lock lets one pass run at a time across all workers. One pass, per
active job, on its current stage:

- **stalled** items: took a lease that lapsed (their worker died or lost Redis) and are not
  finished: requeued at once;
- **lost** items: nothing waits in the stage's queue, yet items have neither a result nor a
  lease on two passes in a row: requeued (a task message lost before its task took the lease:
  held by a worker that died, or acked while Redis was away);
- a stage that finished without its job moving on (the finishing task lost Redis while
  advancing): advanced.

A requeued item is counted (``redelivered``); after ``PERSYN_MAX_REDELIVERIES`` it fails
with the reason instead, so a job always ends. Requeues are safe: tasks skip work whose
result exists and a live lease keeps a second copy from running the item twice.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from services.core.settings import Settings
from services.jobs.leases import Leases
from services.jobs.store import JobStore

log = logging.getLogger(__name__)


def queue_length(queue: str) -> int:
    """Messages waiting in a Celery queue (every priority list of it).

    Not ``queue_declare(passive=True)``: in kombu 5.7 its existence check ignores the
    ``global_keyprefix`` we use, so it reports every queue missing; the channel's size does not.
    """
    from services.jobs.celery_app import app

    with app.connection_for_read() as conn:
        return int(conn.default_channel._size(queue))


def sweep(store: JobStore, settings: Settings) -> dict[str, int]:
    """One pass over every active job; returns what it did (for logs and tests)."""
    from services.jobs.stages import advance

    leases = Leases(store)
    did = {"redelivered": 0, "given_up": 0, "advanced": 0}
    for job_id in leases.active_jobs():
        if not store.job_exists(job_id) or not store.is_active(job_id):
            leases.forget_job(job_id)
            continue
        progress = store.stage_progress(job_id)
        if not progress:
            continue
        last = progress[-1]
        if last["finished"] is not None:
            if time.time() - last["finished"] > settings.watchdog_interval_s:
                log.warning("job %s: stage %s finished but the job did not move on; advancing", job_id, last["stage"])
                advance(store, job_id, last["stage"], settings)
                did["advanced"] += 1
            continue
        for stage in [s["stage"] for s in progress if s["finished"] is None]:  # routing and generation overlap
            _sweep_stage(store, settings, leases, job_id, stage, did)
    return did


def _sweep_stage(store: JobStore, settings: Settings, leases: Leases, job_id: str, stage: str,
                 did: dict[str, int]) -> None:
    """Requeue the stalled and lost units of one open stage (or give them up)."""
    from services.jobs.stages import enqueue

    flying = sorted(leases.in_flight(job_id, stage))
    landed = leases.finished(job_id, stage, flying)
    leases.drop_in_flight(job_id, stage, sorted(landed))
    flying = [unit for unit in flying if unit not in landed]
    stalled = set(flying) - leases.live(job_id, stage, flying)
    plan: dict = {}
    if not any(queue_length(q) for q in leases.plan_queues(job_id, stage)):
        # nothing left in the queue, yet these have no lease: lost unless about to start, so
        # a unit seen so on two passes in a row is requeued
        plan = leases.plan(job_id, stage)
        done = store.r.smembers(store._k("job", job_id, "stage", stage, "items"))
        waiting = [unit for unit in plan if unit not in done and unit not in stalled]
        unleased = set(waiting) - leases.live(job_id, stage, waiting)
        stalled |= leases.swap_suspects(job_id, stage, unleased)
    if not plan:  # the whole plan is read only when the stage's queues are empty
        plan = leases.plan(job_id, stage, sorted(stalled))
    for unit in sorted(stalled):
        if unit not in plan:
            continue
        task, args, queue = plan[unit]
        if leases.redeliveries(job_id, stage, unit) >= settings.max_redeliveries:
            _give_up(store, leases, settings, job_id, stage, unit, task, args)
            did["given_up"] += 1
            continue
        n = leases.count_redelivery(job_id, stage, unit)
        log.warning("job %s: requeueing %s unit %s (redelivery %d)", job_id, stage, unit, n)
        enqueue(task, args, queue)
        did["redelivered"] += 1


def _give_up(store: JobStore, leases: Leases, settings: Settings, job_id: str, stage: str, unit: str,
             task: str, args: list) -> None:
    """Fail what is left of a unit no worker could finish (its items, a chunk's id with them); a
    routing chunk also fails the generation of its prompts that were never routed, so the job ends."""
    from services.jobs.stages import ROUTE_TASK, finish_items, routing_failure_items, unit_items

    reason = (f"no worker finished this item after {settings.max_redeliveries} redeliveries "
              f"(each lost its lease: worker died or lost Redis)")
    leases.count(job_id, stage, "given_up")
    leases.drop_in_flight(job_id, stage, [unit])
    items = unit_items(unit, task, args)
    finish_items(store, settings, job_id, stage, [(item, False, reason) for item in items],
                 unit=unit if items != [unit] else None)
    if task == ROUTE_TASK:
        assigned = store.results_for(job_id, "assign", args[2])
        unrouted = [pid for pid in args[2] if pid not in assigned]
        if unrouted:
            finish_items(store, settings, job_id, "generate",
                         [(item, False, f"routing: {reason}") for item in routing_failure_items(unrouted)])


def run_forever(settings: Settings, stop: threading.Event) -> None:
    """Sweep every ``watchdog_interval_s`` while holding the cluster-wide pass lock."""
    store = JobStore.from_url(settings.redis_url, settings.key_prefix)
    lock = store._k("watchdog", "lock")
    while not stop.wait(settings.watchdog_interval_s):
        try:
            if store.r.set(lock, "1", nx=True, px=int(settings.watchdog_interval_s * 900)):
                did = sweep(store, settings)
                if any(did.values()):
                    log.warning("watchdog: %s", did)
        except redis.RedisError as exc:
            log.warning("watchdog: Redis unavailable (%s); next pass in %ss", exc, settings.watchdog_interval_s)
        except Exception:  # noqa: BLE001 - the watchdog must outlive any one bad job
            log.exception("watchdog pass failed")


def start(settings: Settings) -> threading.Event:
    """Start the watchdog thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(settings, stop), name="persyn-watchdog", daemon=True).start()
    return stop
