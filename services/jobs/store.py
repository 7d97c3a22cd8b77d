"""Job, student and dataset state in Redis.

Every write a task makes lands on a deterministic key, so a redelivered task changes
nothing: results are set with ``SETNX`` semantics, dataset rows with ``HSETNX`` (exactly
one row per prompt), and a stage's progress counts each item once (a Lua script adds
the item to the stage's set and counts it only if it was new). The caller that
completes a stage is told so, exactly once, and advances the job.

Key layout (``P`` = key prefix): ``P:students`` set; ``P:student:{id}`` hash and
``P:student:{id}:versions`` hash; ``P:jobs`` sorted set; ``P:job:{id}`` hash and
``P:job:{id}:{prompts,order,stage:NAME,stage:NAME:items,stages,errors,results:KIND,
rows,alloc,usage,attempts}``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator

import redis

from services.core.settings import DEFAULT_TENANT

JOB_STATES = ("queued", "running", "succeeded", "partial", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "partial", "failed", "cancelled"})
#: The ended states a job can be resumed from (it lacks output).
RESUMABLE = ("partial", "failed", "cancelled")

#: Count many items at once (ARGV: now, unit or "", then item, outcome pairs); returns
#: {completed, new_1, ..., new_n}: whether this call completed the stage, and which items were new.
#: A non-empty unit (a chunk task's id) joins the stage's set uncounted, so the watchdog sees it finished.
_MARK_ITEMS = """
local new = {0}
for i = 3, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    new[#new + 1] = 1
  else
    new[#new + 1] = 0
  end
end
if ARGV[2] ~= '' then redis.call('SADD', KEYS[1], ARGV[2]) end
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local seen = tonumber(redis.call('HGET', KEYS[2], 'done') or '0') + tonumber(redis.call('HGET', KEYS[2], 'failed') or '0')
if seen >= total and redis.call('HSETNX', KEYS[2], 'finished', ARGV[1]) == 1 then new[1] = 1 end
return new
"""


#: Register a student unless another tenant owns the id (a record without an owner predates tenancy
#: and only an admin may touch it). KEYS: student hash, students set. ARGV: owner, "1" for an admin,
#: now, id, then field/value pairs. The owner and created time of an existing student are kept.
_REGISTER_STUDENT = """
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and ARGV[2] ~= '1' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if not exists then redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'created', ARGV[3]) end
redis.call('HSET', KEYS[1], 'id', ARGV[4], unpack(ARGV, 5))
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""

#: Open several stages at once, or none if the first exists (a redelivered task). KEYS: job hash,
#: stages list, then each stage's hash; ARGV: now, then (name, total) per stage.
_START_STAGES = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
for i = 3, #KEYS do
  local name, total = ARGV[2 * (i - 3) + 2], ARGV[2 * (i - 3) + 3]
  redis.call('HSET', KEYS[i], 'total', total, 'done', 0, 'failed', 0, 'started', ARGV[1])
  if tonumber(total) == 0 then redis.call('HSET', KEYS[i], 'finished', ARGV[1]) end
  redis.call('RPUSH', KEYS[2], name)
end
redis.call('HSET', KEYS[1], 'stage', ARGV[#ARGV - 1], 'updated', ARGV[1])
return 1
"""


#: Reopen an ended job for a resume, if its state allows. KEYS: job hash; ARGV: now, then the resumable
#: states. Returns the run number the resume starts (1, 2, ...), or the job's state when it cannot.
_REOPEN = """
local state = redis.call('HGET', KEYS[1], 'state')
for i = 2, #ARGV do
  if state == ARGV[i] then
    local run = redis.call('HINCRBY', KEYS[1], 'run', 1)
    redis.call('HSET', KEYS[1], 'state', 'queued', 'stage', '', 'error', '', 'updated', ARGV[1],
               'resumed_from', state)
    redis.call('HDEL', KEYS[1], 'finished')
    return run
  end
end
return state or ''
"""

#: Add prompts to a job being created. KEYS: prompts hash, order list; ARGV: ttl, then (id, JSON) pairs.
#: A new id is stored and joins the order; a repeated one is left out. Returns 1 (new) or 0 per prompt.
#: Both keys expire in ttl seconds (each batch renews them) until the job is registered.
_ADD_PROMPTS = """
local added = {}
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    added[#added + 1] = 1
  else
    added[#added + 1] = 0
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return added
"""

#: How long the prompts of a job still being submitted outlive the last batch written, so a gateway that
#: dies half-way through an upload leaves nothing behind for good.
STAGED_PROMPTS_TTL_S = 3600
#: Prompts per Redis round trip while a job's prompts are written.
PROMPT_BATCH = 1000


class NotFound(KeyError):
    """An unknown student, router version or job."""


class IdTaken(LookupError):
    """A student id another tenant already uses (ids are global)."""


def _now() -> float:
    return round(time.time(), 3)


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str = "persyn"):
        self.r = client
        self.p = prefix
        self._mark_items = client.register_script(_MARK_ITEMS)
        self._start_stages = client.register_script(_START_STAGES)
        self._add_prompts = client.register_script(_ADD_PROMPTS)

    @classmethod
    def from_url(cls, url: str, prefix: str = "persyn") -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix)

    def _k(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # ------------------------------------------------------------------ students

    def register_student(self, student_id: str, model: str, family: str | None = None, *,
                         endpoint: str | None = None, endpoint_model: str | None = None,
                         owner: str = DEFAULT_TENANT, admin: bool = True) -> dict:
        """``model`` is the student's weights (its tokenizer always); with ``endpoint`` its
        log-probs come from that OpenAI-compatible server (vLLM) serving ``endpoint_model``.

        A new student belongs to ``owner``; registering again updates it, unless it belongs to
        another tenant and the caller is no ``admin``: then ``IdTaken``, and nothing changes.
        """
        fields = {"model": model, "family": family or "", "endpoint": endpoint or "",
                  "endpoint_model": endpoint_model or ""}
        registered = self.r.register_script(_REGISTER_STUDENT)(
            keys=[self._k("student", student_id), self._k("students")],
            args=[owner, "1" if admin else "0", _now(), student_id, *(x for kv in fields.items() for x in kv)])
        if not registered:
            raise IdTaken(f"student id {student_id!r} is taken: choose another")
        return self.get_student(student_id)

    def get_student(self, student_id: str) -> dict:
        data = self.r.hgetall(self._k("student", student_id))
        if not data:
            raise NotFound(f"unknown student {student_id!r}")
        versions = [json.loads(v) for v in self.r.hvals(self._k("student", student_id, "versions"))]
        versions.sort(key=lambda v: v["created"])
        return {"id": data["id"], "model": data["model"], "family": data["family"] or None,
                "endpoint": data.get("endpoint") or None, "endpoint_model": data.get("endpoint_model") or None,
                "created": float(data["created"]), "active_version": data.get("active_version") or None,
                "versions": versions, "ab": json.loads(data["ab"]) if data.get("ab") else None}

    def owner(self, kind: str, record_id: str) -> str | None:
        """The tenant owning a ``student`` or ``job`` (None: made before tenancy); NotFound if unknown."""
        record_id_field, owner = self.r.hmget(self._k(kind, record_id), "id", "owner")
        if record_id_field is None:
            raise NotFound(f"unknown {kind} {record_id!r}")
        return owner

    def list_students(self) -> list[str]:
        return sorted(self.r.smembers(self._k("students")))

    def add_router_version(self, student_id: str, version: str, path: str, metrics: dict | None = None,
                           *, activate: bool = True) -> dict:
        self.get_student(student_id)
        entry = {"version": version, "path": path, "created": _now(), "metrics": metrics or {}}
        self.r.hsetnx(self._k("student", student_id, "versions"), version, json.dumps(entry))
        if activate:
            self.activate_version(student_id, version)
        return entry

    def activate_version(self, student_id: str, version: str) -> None:
        self.get_student(student_id)
        if not self.r.hexists(self._k("student", student_id, "versions"), version):
            raise NotFound(f"student {student_id!r} has no router version {version!r}")
        self.r.hset(self._k("student", student_id), "active_version", version)

    def router_version(self, student_id: str, version: str) -> tuple[str, str] | None:
        """(version, artifact path) of one router version of the student, or None."""
        entry = self.r.hget(self._k("student", student_id, "versions"), version)
        return (version, json.loads(entry)["path"]) if entry else None

    def set_ab_split(self, student_id: str, version_a: str, version_b: str, share_b: float) -> None:
        """Split the student's routing requests between two of its versions (``share_b`` to B);
        NotFound for an unknown student or version."""
        self.get_student(student_id)
        for version in (version_a, version_b):
            if self.router_version(student_id, version) is None:
                raise NotFound(f"student {student_id!r} has no router version {version!r}")
        self.r.hset(self._k("student", student_id), "ab", json.dumps(
            {"version_a": version_a, "version_b": version_b, "share_b": share_b}))

    def clear_ab_split(self, student_id: str) -> None:
        self.get_student(student_id)
        self.r.hdel(self._k("student", student_id), "ab")

    def ab_split(self, student_id: str) -> dict | None:
        """The student's A/B split ``{version_a, version_b, share_b}``, or None."""
        raw = self.r.hget(self._k("student", student_id), "ab")
        return json.loads(raw) if raw else None

    def active_router(self, student_id: str) -> tuple[str, str] | None:
        """(version, artifact path) of the student's active router, or None."""
        version = self.r.hget(self._k("student", student_id), "active_version")
        if not version:
            return None
        entry = json.loads(self.r.hget(self._k("student", student_id, "versions"), version))
        return version, entry["path"]

    # ------------------------------------------------------------------ jobs

    def create_job(self, kind: str, spec: dict, prompts: list[dict], *, owner: str = DEFAULT_TENANT) -> str:
        """A new job of tenant ``owner`` with these prompts (ids unique): staged, then registered."""
        with StagedPrompts(self) as staged:
            for prompt in prompts:
                staged.add(prompt)
            staged.flush()
            if staged.duplicate:
                raise ValueError(f"duplicate prompt id {staged.duplicate[1]!r}")
            staged.register(kind, spec, owner=owner)
        return staged.job_id

    def add_prompts(self, job_id: str, prompts: list[dict]) -> list[bool]:
        """Write prompts of a job not yet registered; False for an id the job already has (that prompt is
        left out). Its keys expire unless :meth:`register_job` comes within ``STAGED_PROMPTS_TTL_S``."""
        args = [STAGED_PROMPTS_TTL_S]
        for p in prompts:
            args += [p["id"], json.dumps(p)]
        keys = [self._k("job", job_id, "prompts"), self._k("job", job_id, "order")]
        return [bool(new) for new in self._add_prompts(keys=keys, args=args)]

    def prompt_position(self, job_id: str, prompt_id: str) -> int | None:
        """Where ``prompt_id`` stands in the job's order (0-based), None if absent."""
        return self.r.lpos(self._k("job", job_id, "order"), prompt_id)

    def register_job(self, job_id: str, kind: str, spec: dict, n_prompts: int, *,
                     owner: str = DEFAULT_TENANT) -> None:
        """Make a job whose prompts :meth:`add_prompts` wrote visible, its record and index entry in one
        transaction, its prompts kept for good."""
        now = _now()
        pipe = self.r.pipeline()
        pipe.hset(self._k("job", job_id), mapping={
            "id": job_id, "kind": kind, "state": "queued", "stage": "", "spec": json.dumps(spec), "owner": owner,
            "n_prompts": n_prompts, "created": now, "updated": now, "error": ""})
        pipe.persist(self._k("job", job_id, "prompts"))
        pipe.persist(self._k("job", job_id, "order"))
        pipe.zadd(self._k("jobs"), {job_id: now})
        pipe.execute()

    def discard_prompts(self, job_id: str) -> None:
        """Delete the prompts of a job that was never registered."""
        self.r.delete(self._k("job", job_id, "prompts"), self._k("job", job_id, "order"))

    def job_exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self._k("job", job_id)))

    def job_record(self, job_id: str) -> dict:
        data = self.r.hgetall(self._k("job", job_id))
        if not data:
            raise NotFound(f"unknown job {job_id!r}")
        return {**data, "spec": json.loads(data["spec"]), "created": float(data["created"]),
                "updated": float(data["updated"])}

    def prompt_ids(self, job_id: str) -> list[str]:
        return self.r.lrange(self._k("job", job_id, "order"), 0, -1)

    def prompt_ids_at(self, job_id: str, positions: list[int], batch: int = 2000) -> list[str]:
        """The ids at ascending ``positions`` of the job's order, read ``batch`` at a time."""
        out: list[str] = []
        start, window = 0, []
        for position in positions:
            if not start <= position < start + len(window):
                start, window = position, self.r.lrange(self._k("job", job_id, "order"), position,
                                                        position + batch - 1)
            out.append(window[position - start])
        return out

    def prompt_count(self, job_id: str) -> int:
        return int(self.r.llen(self._k("job", job_id, "order")))

    def prompts(self, job_id: str, ids: list[str] | None = None) -> list[dict]:
        ids = self.prompt_ids(job_id) if ids is None else ids
        if not ids:
            return []
        return [json.loads(v) for v in self.r.hmget(self._k("job", job_id, "prompts"), ids)]

    def update_job(self, job_id: str, **fields: Any) -> None:
        self.r.hset(self._k("job", job_id), mapping={**{k: v for k, v in fields.items()}, "updated": _now()})

    def set_state(self, job_id: str, state: str, *, error: str | None = None) -> bool:
        """Move to ``state`` unless the job already ended; returns whether it moved."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        current = self.r.hget(self._k("job", job_id), "state")
        if current is None:
            raise NotFound(f"unknown job {job_id!r}")
        if current in TERMINAL:
            return False
        fields: dict[str, Any] = {"state": state}
        if error is not None:
            fields["error"] = error
        if state in TERMINAL:
            fields["finished"] = _now()
        self.update_job(job_id, **fields)
        return True

    def reopen(self, job_id: str) -> int | str:
        """Move a ``partial``, ``failed`` or ``cancelled`` job back to ``queued`` for a resume, in one
        step; returns the number of the run that starts (1 for the first resume), or the job's state
        (a str) when it is not resumable. NotFound for an unknown job."""
        outcome = self.r.register_script(_REOPEN)(keys=[self._k("job", job_id)], args=[_now(), *RESUMABLE])
        if outcome == "":
            raise NotFound(f"unknown job {job_id!r}")
        return outcome if isinstance(outcome, str) else int(outcome)

    def state(self, job_id: str) -> str:
        state = self.r.hget(self._k("job", job_id), "state")
        if state is None:
            raise NotFound(f"unknown job {job_id!r}")
        return state

    def is_active(self, job_id: str) -> bool:
        return self.r.hget(self._k("job", job_id), "state") not in TERMINAL

    # ------------------------------------------------------------------ stages and items

    def start_stage(self, job_id: str, stage: str, total: int) -> bool:
        """Open a stage with ``total`` items; False if it was already opened (redelivery)."""
        key = self._k("job", job_id, "stage", stage)
        if not self.r.hsetnx(key, "total", total):
            return False
        now = _now()
        self.r.hset(key, mapping={"done": 0, "failed": 0, "started": now, **({"finished": now} if total == 0 else {})})
        self.r.rpush(self._k("job", job_id, "stages"), stage)
        self.update_job(job_id, stage=stage)
        return True

    def start_stages(self, job_id: str, stages: list[tuple[str, int]]) -> bool:
        """Open stages that run side by side (routing and generation) in one step, so no crash can
        leave one open without the other; False if they were already opened (redelivery)."""
        args: list = [_now()]
        for name, total in stages:
            args += [name, total]
        keys = [self._k("job", job_id), self._k("job", job_id, "stages")]
        keys += [self._k("job", job_id, "stage", name) for name, _ in stages]
        return bool(self._start_stages(keys=keys, args=args))

    def mark_item(self, job_id: str, stage: str, item: str, *, ok: bool = True, error: str | None = None) -> bool:
        """Count one finished item once; True for the single call that completes the stage."""
        return self.mark_items(job_id, stage, [(item, ok, error)])[0]

    def mark_items(self, job_id: str, stage: str, outcomes: list[tuple[str, bool, str | None]], *,
                   unit: str | None = None) -> tuple[bool, list[bool]]:
        """Count many finished items (item, ok, error) in one round trip, each once; returns whether
        this call completed the stage, and which items it counted (False: counted before).
        ``unit``: the chunk these items came in, recorded as finished for the watchdog."""
        args: list = [_now(), unit or ""]
        for item, ok, _ in outcomes:
            args += [item, "done" if ok else "failed"]
        completed, *new = self._mark_items(keys=[self._k("job", job_id, "stage", stage, "items"),
                                                 self._k("job", job_id, "stage", stage)], args=args)
        errors = [json.dumps({"stage": stage, "item": item, "error": error or "failed", "at": _now()})
                  for (item, ok, error), fresh in zip(outcomes, new) if fresh and not ok]
        if errors:
            self.r.rpush(self._k("job", job_id, "errors"), *errors)
        return completed == 1, [bool(x) for x in new]

    def stage_progress(self, job_id: str) -> list[dict]:
        out = []
        for stage in self.r.lrange(self._k("job", job_id, "stages"), 0, -1):
            h = self.r.hgetall(self._k("job", job_id, "stage", stage))
            started, finished = float(h.get("started", 0)), h.get("finished")
            out.append({"stage": stage, "total": int(h.get("total", 0)), "done": int(h.get("done", 0)),
                        "failed": int(h.get("failed", 0)), "started": started,
                        "finished": float(finished) if finished else None,
                        "seconds": round((float(finished) if finished else time.time()) - started, 3)})
        return out

    def errors(self, job_id: str, limit: int = 100) -> list[dict]:
        return [json.loads(e) for e in self.r.lrange(self._k("job", job_id, "errors"), 0, limit - 1)]

    def record_error(self, job_id: str, stage: str, item: str, error: str) -> None:
        self.r.rpush(self._k("job", job_id, "errors"),
                     json.dumps({"stage": stage, "item": item, "error": error, "at": _now()}))

    # ------------------------------------------------------------------ results, rows, usage

    def put_result(self, job_id: str, kind: str, key: str, value: dict) -> bool:
        """Store once; a second write of the same key is ignored (returns False)."""
        return bool(self.r.hsetnx(self._k("job", job_id, "results", kind), key, json.dumps(value)))

    def get_result(self, job_id: str, kind: str, key: str) -> dict | None:
        raw = self.r.hget(self._k("job", job_id, "results", kind), key)
        return json.loads(raw) if raw else None

    def put_results(self, job_id: str, kind: str, values: dict[str, dict]) -> dict[str, bool]:
        """:meth:`put_result` for many keys in one round trip; key -> whether this write counted."""
        if not values:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for key, value in values.items():
            pipe.hsetnx(self._k("job", job_id, "results", kind), key, json.dumps(value))
        return {key: bool(x) for key, x in zip(values, pipe.execute())}

    def results_for(self, job_id: str, kind: str, keys: list[str]) -> dict[str, dict]:
        """The stored results among ``keys`` (missing ones are left out)."""
        if not keys:
            return {}
        raw = self.r.hmget(self._k("job", job_id, "results", kind), keys)
        return {k: json.loads(v) for k, v in zip(keys, raw) if v}

    def get_results(self, job_id: str, kind: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.r.hgetall(self._k("job", job_id, "results", kind)).items()}

    def put_row(self, job_id: str, row: dict) -> bool:
        """The dataset row of one prompt; only the first write counts (one row per prompt)."""
        return self.put_rows(job_id, [row]) == 1

    def put_rows(self, job_id: str, rows: list[dict]) -> int:
        """:meth:`put_row` for many rows in two round trips; returns how many were new."""
        if not rows:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for row in rows:
            pipe.hsetnx(self._k("job", job_id, "rows"), row["id"], json.dumps(row, ensure_ascii=False))
        fresh = [row for row, new in zip(rows, pipe.execute()) if new]
        counts: dict[str, int] = {}
        for row in fresh:
            counts[row["teacher"]] = counts.get(row["teacher"], 0) + 1
        if counts:
            pipe = self.r.pipeline(transaction=False)
            for teacher, n in counts.items():
                pipe.hincrby(self._k("job", job_id, "alloc"), teacher, n)
            pipe.execute()
        return len(fresh)

    def switch_row(self, job_id: str, row: dict) -> bool:
        """Put ``row`` in place of its prompt's row when it is another teacher's (the allocation follows,
        and the job's ``hybrid_switched`` counts it), in one transaction; False when nothing changed,
        so a redelivered call counts nothing twice."""
        rows, alloc = self._k("job", job_id, "rows"), self._k("job", job_id, "alloc")
        old = self.r.hget(rows, row["id"])
        previous = json.loads(old)["teacher"] if old else None
        if previous == row["teacher"]:
            return False
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(rows, row["id"], json.dumps(row, ensure_ascii=False))
        if previous is not None:
            pipe.hincrby(alloc, previous, -1)
            pipe.hincrby(self._k("job", job_id), "hybrid_switched", 1)
        pipe.hincrby(alloc, row["teacher"], 1)
        pipe.execute()
        return True

    def unserved_prompt_ids(self, job_id: str) -> list[str]:
        """Prompts without a dataset row yet, in the job's order."""
        served = set(self.r.hkeys(self._k("job", job_id, "rows")))
        return [pid for pid in self.prompt_ids(job_id) if pid not in served]

    def row_count(self, job_id: str) -> int:
        return int(self.r.hlen(self._k("job", job_id, "rows")))

    def iter_rows(self, job_id: str, batch: int = 2000) -> Iterator[dict]:
        """Rows in the job's prompt order (prompts without a row yet are skipped)."""
        for raw in self.iter_raw_rows(job_id, batch):
            yield json.loads(raw)

    def iter_raw_rows(self, job_id: str, batch: int = 2000) -> Iterator[str]:
        """:meth:`iter_rows` as stored (one JSON text each), reading ``batch`` prompts at a time."""
        start = 0
        while ids := self.r.lrange(self._k("job", job_id, "order"), start, start + batch - 1):
            start += batch
            for raw in self.r.hmget(self._k("job", job_id, "rows"), ids):
                if raw:
                    yield raw

    def allocation(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self._k("job", job_id, "alloc")).items()}

    def add_usage(self, job_id: str, teacher: str, *, requests: int, completion_tokens: int,
                  from_store: int = 0) -> None:
        """What a teacher was asked (requests, completion tokens: paid for now) and how many of the
        job's samples the generation store answered instead (``from_store``: paid for before)."""
        key = self._k("job", job_id, "usage")
        pipe = self.r.pipeline()
        pipe.hincrby(key, f"{teacher}|requests", requests)
        pipe.hincrby(key, f"{teacher}|completion_tokens", completion_tokens)
        pipe.hincrby(key, f"{teacher}|from_store", from_store)
        pipe.execute()

    def usage(self, job_id: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for field, value in self.r.hgetall(self._k("job", job_id, "usage")).items():
            teacher, name = field.rsplit("|", 1)
            out.setdefault(teacher, {})[name] = int(value)
        return out

    def count_attempts(self, job_id: str, items: list[str]) -> None:
        """:meth:`count_attempt` for many items in one round trip."""
        if items:
            pipe = self.r.pipeline(transaction=False)
            for item in items:
                pipe.hincrby(self._k("job", job_id, "attempts"), item, 1)
            pipe.execute()

    def attempts(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self._k("job", job_id, "attempts")).items()}

    def list_jobs(self, limit: int = 50) -> list[str]:
        return self.r.zrevrange(self._k("jobs"), 0, limit - 1)


class StagedPrompts:
    """A new job's prompts, written to Redis ``PROMPT_BATCH`` at a time as they arrive, under a job id
    nobody sees until :meth:`JobStore.register_job`: memory stays flat in the number of prompts.

    Used as a context manager: leaving it on an error before the job is registered deletes what was
    written (and what a lost connection kept from deleting expires with ``STAGED_PROMPTS_TTL_S``).
    Repeated ids are noted, not raised, so a caller can name the line that holds one once all is read.
    """

    def __init__(self, store: JobStore):
        self.store = store
        self.job_id = uuid.uuid4().hex[:16]
        self.count = 0  # prompts added, repeats included (the next id-less prompt's position is count + 1)
        self.first_unreferenced: str | None = None  # id of the first prompt without a reference
        self.duplicate: tuple[int, str] | None = None  # (0-based position, id) of the first repeated id
        self._pending: list[dict] = []
        self.registered = False

    def add(self, prompt: dict) -> None:
        if self.first_unreferenced is None and prompt.get("reference") is None:
            self.first_unreferenced = prompt["id"]
        self._pending.append(prompt)
        self.count += 1
        if len(self._pending) >= PROMPT_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        first = self.count - len(self._pending)
        added = self.store.add_prompts(self.job_id, self._pending)
        if self.duplicate is None and not all(added):
            i = added.index(False)
            self.duplicate = (first + i, self._pending[i]["id"])
        self._pending = []

    def first_position(self, prompt_id: str) -> int:
        """Where an id first occurs (0-based); before the first repeat, the order holds every prompt."""
        return self.store.prompt_position(self.job_id, prompt_id)

    def register(self, kind: str, spec: dict, *, owner: str = DEFAULT_TENANT) -> None:
        """Make the job visible with every prompt added (none pending, no repeat)."""
        assert not self._pending and self.duplicate is None, "flush and check for repeats first"
        self.store.register_job(self.job_id, kind, spec, self.count, owner=owner)
        self.registered = True

    def __enter__(self) -> "StagedPrompts":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Prompts never registered (a rejected upload, a dry run) are deleted at once."""
        if not self.registered:
            try:
                self.store.discard_prompts(self.job_id)
            except redis.RedisError:
                pass  # the keys expire on their own
