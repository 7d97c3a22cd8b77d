"""Leases and the health of a job's items, in Redis next to the job (see :mod:`services.jobs.store`).

Every running item (one task run for one job item) holds a lease: a key with a short TTL
(``PERSYN_LEASE_SECONDS``) renewed by a heartbeat thread while the task runs. A task whose
worker dies or loses Redis stops renewing, so its lease expires and the watchdog
(:mod:`services.jobs.watchdog`) requeues the item within seconds, not after the broker's
visibility timeout. A lease is exclusive: a second copy of the task (a redelivery) that
finds it held by a live holder leaves the item to it.

Keys (``J`` = ``P:job:{id}``): ``J:lease:{stage}:{item}`` (holder token, TTL); ``J:inflight:{stage}``
set of items that took a lease and are not known finished; ``J:retrying:{stage}`` items waiting
on a Celery retry; ``J:plan:{stage}`` hash item -> [task, args, queue] (what to requeue) and ``J:plan:{stage}:queues``;
``J:suspects:{stage}`` items the watchdog saw unleased with nothing queued on its last pass;
``J:health:{stage}`` hash of counters (redelivered, redis_retries, given_up); ``J:redeliveries``
hash item -> watchdog requeues;
``J:failures`` hash ``{who}|items`` / ``{who}|error`` (per teacher, or per non-teacher stage);
``P:jobs:active`` set of the jobs the watchdog looks at.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from typing import Iterator

import redis

from services.jobs.store import JobStore

#: Take the lease if it is free or already ours, and note the item in flight.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""
#: Renew a lease we hold, or take it back if it lapsed while nobody else took it (Redis was away).
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
#: Drop or re-time a lease only if it is still ours (PX 0: drop).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('DEL', KEYS[1]) end
return 1
"""

TRANSIENT_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def failure_kind(error: str) -> str:
    """What kind of failure an item's error is, for the per-teacher summary: ``http_<status>``,
    ``timeout``, ``connection``, ``not_verified`` (math rejection sampling found no answer that
    verifies), ``lost`` (no worker finished it), or ``other``."""
    status = re.search(r"HTTP (\d{3})", error)
    if status:
        return f"http_{status.group(1)}"
    lowered = error.lower()
    for kind, marks in (("timeout", ("timeout", "timed out")), ("lost", ("redeliveries",)),
                        ("connection", ("connecterror", "connection", "endpointdown", "circuit")),
                        ("not_verified", ("verif",))):
        if any(mark in lowered for mark in marks):
            return kind
    return "other"


class Leases:
    """The reliability state of jobs in one store (same Redis, same key prefix)."""

    def __init__(self, store: JobStore):
        self.store = store
        self.r = store.r
        self._acquire = self.r.register_script(_ACQUIRE)
        self._renew = self.r.register_script(_RENEW)
        self._release = self.r.register_script(_RELEASE)

    def _j(self, job_id: str, *parts: str) -> str:
        return self.store._k("job", job_id, *parts)

    # ------------------------------------------------------------------ plans and active jobs

    def record_plan(self, job_id: str, stage: str, items: list[tuple[str, str, list, str]]) -> None:
        """What each item of ``stage`` runs, (item, task, args, queue), so the watchdog can requeue it."""
        key = self._j(job_id, "plan", stage)
        pipe = self.r.pipeline()
        for start in range(0, len(items), 1000):
            pipe.hset(key, mapping={item: json.dumps([task, args, queue])
                                    for item, task, args, queue in items[start:start + 1000]})
        if items:
            pipe.sadd(self._j(job_id, "plan", stage, "queues"), *{queue for *_, queue in items})
        pipe.sadd(self.store._k("jobs", "active"), job_id)
        pipe.execute()

    def planned(self, job_id: str, stage: str, item: str) -> bool:
        """Whether ``item`` is in the stage's current plan (every task is planned before it is sent)."""
        return bool(self.r.hexists(self._j(job_id, "plan", stage), item))

    def plan_queues(self, job_id: str, stage: str) -> set[str]:
        return set(self.r.smembers(self._j(job_id, "plan", stage, "queues")))

    def plan(self, job_id: str, stage: str, items: list[str] | None = None) -> dict[str, tuple[str, list, str]]:
        key = self._j(job_id, "plan", stage)
        if items is None:
            raw = self.r.hgetall(key)
        else:
            raw = dict(zip(items, self.r.hmget(key, items))) if items else {}
        return {item: tuple(json.loads(v)) for item, v in raw.items() if v}

    def active_jobs(self) -> list[str]:
        return sorted(self.r.smembers(self.store._k("jobs", "active")))

    def forget_job(self, job_id: str) -> None:
        """The job ended: the watchdog stops looking at it (its counters stay for ``GET /v1/jobs``)."""
        self.r.srem(self.store._k("jobs", "active"), job_id)

    # ------------------------------------------------------------------ leases

    def acquire(self, job_id: str, stage: str, item: str, token: str, lease_s: float) -> bool:
        return bool(self._acquire(keys=[self._j(job_id, "lease", stage, item), self._j(job_id, "inflight", stage)],
                                  args=[token, int(lease_s * 1000), item]))

    def renew(self, job_id: str, stage: str, item: str, token: str, lease_s: float) -> bool:
        return bool(self._renew(keys=[self._j(job_id, "lease", stage, item)], args=[token, int(lease_s * 1000)]))

    def release(self, job_id: str, stage: str, item: str, token: str, *, keep_s: float = 0.0) -> None:
        """Drop our lease (``keep_s`` > 0: keep it that long, e.g. while a Celery retry waits)."""
        self._release(keys=[self._j(job_id, "lease", stage, item)], args=[token, int(keep_s * 1000)])

    def settle(self, job_id: str, stage: str, item: str) -> None:
        """The task ran to its end: the item is no longer in flight nor retrying."""
        pipe = self.r.pipeline()
        pipe.srem(self._j(job_id, "inflight", stage), item)
        pipe.srem(self._j(job_id, "retrying", stage), item)
        pipe.execute()

    def mark_retrying(self, job_id: str, stage: str, item: str) -> None:
        self.r.sadd(self._j(job_id, "retrying", stage), item)

    def finished(self, job_id: str, stage: str, items: list[str]) -> set[str]:
        """The items of ``items`` the stage has counted (done or failed)."""
        if not items:
            return set()
        flags = self.r.smismember(self.store._k("job", job_id, "stage", stage, "items"), items)
        return {item for item, flag in zip(items, flags) if flag}

    def live(self, job_id: str, stage: str, items: list[str]) -> set[str]:
        """The items of ``items`` whose lease is held now."""
        if not items:
            return set()
        pipe = self.r.pipeline()
        for item in items:
            pipe.exists(self._j(job_id, "lease", stage, item))
        return {item for item, alive in zip(items, pipe.execute()) if alive}

    def in_flight(self, job_id: str, stage: str) -> set[str]:
        return set(self.r.smembers(self._j(job_id, "inflight", stage)))

    def drop_in_flight(self, job_id: str, stage: str, items: list[str]) -> None:
        if items:
            self.r.srem(self._j(job_id, "inflight", stage), *items)

    def swap_suspects(self, job_id: str, stage: str, suspects: set[str]) -> set[str]:
        """Remember ``suspects`` (unleased, unfinished, none queued) for the next pass; returns those
        that were suspects on the previous pass too."""
        key = self._j(job_id, "suspects", stage)
        pipe = self.r.pipeline()
        pipe.smembers(key)
        pipe.delete(key)
        if suspects:
            pipe.sadd(key, *suspects)
        return set(pipe.execute()[0]) & suspects

    # ------------------------------------------------------------------ counters

    def count(self, job_id: str, stage: str, field: str, n: int = 1) -> None:
        self.r.hincrby(self._j(job_id, "health", stage), field, n)

    def count_redelivery(self, job_id: str, stage: str, item: str) -> int:
        """One watchdog requeue of ``item``; returns how many it has had."""
        pipe = self.r.pipeline()
        pipe.hincrby(self._j(job_id, "redeliveries"), f"{stage}|{item}", 1)
        pipe.hincrby(self._j(job_id, "health", stage), "redelivered", 1)
        pipe.srem(self._j(job_id, "inflight", stage), item)
        return int(pipe.execute()[0])

    def redeliveries(self, job_id: str, stage: str, item: str) -> int:
        return int(self.r.hget(self._j(job_id, "redeliveries"), f"{stage}|{item}") or 0)

    def count_failure(self, job_id: str, who: str, error: str) -> None:
        """A failed item of ``who`` (a teacher, or ``stage:NAME`` for items of no one teacher), counted
        also by the kind of its error (:func:`failure_kind`)."""
        pipe = self.r.pipeline()
        pipe.hincrby(self._j(job_id, "failures"), f"{who}|items", 1)
        pipe.hincrby(self._j(job_id, "failures"), f"{who}|kind:{failure_kind(error)}", 1)
        pipe.hsetnx(self._j(job_id, "failures"), f"{who}|error", error)
        pipe.execute()

    def failures(self, job_id: str) -> dict[str, dict]:
        """``{who: {"items": n, "error": first reason, "kinds": {kind: n}}}``."""
        out: dict[str, dict] = {}
        for field, value in self.r.hgetall(self._j(job_id, "failures")).items():
            who, name = field.rsplit("|", 1)
            entry = out.setdefault(who, {"kinds": {}})
            if name.startswith("kind:"):
                entry["kinds"][name[5:]] = int(value)
            else:
                entry[name] = int(value) if name == "items" else value
        return out

    def stage_health(self, job_id: str, stage: str) -> dict[str, int]:
        """What ``GET /v1/jobs/{id}`` shows per stage: items running under a live lease, stalled
        (took a lease that lapsed, not finished: the watchdog will requeue them), waiting on a
        retry, requeued by the watchdog, Redis errors retried inside tasks, given up."""
        flying = sorted(self.in_flight(job_id, stage))
        flying = sorted(set(flying) - self.finished(job_id, stage, flying))
        alive = self.live(job_id, stage, flying)
        retrying = sorted(self.r.smembers(self._j(job_id, "retrying", stage)))
        retrying = set(retrying) - self.finished(job_id, stage, retrying)
        counters = {k: int(v) for k, v in self.r.hgetall(self._j(job_id, "health", stage)).items()}
        return {"in_flight": len(alive - retrying), "stalled": len(set(flying) - alive),
                "retrying": len(retrying), "redelivered": counters.get("redelivered", 0),
                "redis_retries": counters.get("redis_retries", 0), "given_up": counters.get("given_up", 0)}


class Heartbeat:
    """Renews one lease every third of its TTL on a daemon thread until stopped."""

    def __init__(self, leases: Leases, job_id: str, stage: str, item: str, token: str, lease_s: float):
        self.args = (job_id, stage, item, token, lease_s)
        self.leases = leases
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{item}", daemon=True)

    def _run(self) -> None:
        period = max(0.2, self.args[-1] / 3)
        while not self._stop.wait(period):
            try:
                self.leases.renew(*self.args)
            except redis.RedisError:
                pass  # Redis away: the lease may lapse; the task's own Redis calls retry or fail

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@contextmanager
def hold(leases: Leases, job_id: str, stage: str, item: str, token: str, lease_s: float,
         retry_exception: type[BaseException] | None = None) -> Iterator[bool]:
    """Hold the item's lease while the block runs; yields False when a live holder has it.

    Leaving normally settles the item; an exception drops the lease at once, so the watchdog
    requeues the item on its next pass, except ``retry_exception`` (Celery's Retry, whose
    ``when`` is the countdown): then the lease is kept until the retry should have started.
    """
    if not leases.acquire(job_id, stage, item, token, lease_s):
        yield False
        return
    with Heartbeat(leases, job_id, stage, item, token, lease_s):
        try:
            yield True
        except BaseException as exc:
            try:
                if retry_exception is not None and isinstance(exc, retry_exception):
                    when = getattr(exc, "when", None)
                    countdown = float(when) if isinstance(when, (int, float)) else 0.0
                    leases.mark_retrying(job_id, stage, item)
                    leases.release(job_id, stage, item, token, keep_s=countdown + 3 * lease_s)
                else:
                    leases.release(job_id, stage, item, token)
            except redis.RedisError:
                pass  # the lease lapses by itself
            raise
    leases.release(job_id, stage, item, token)
    leases.settle(job_id, stage, item)
