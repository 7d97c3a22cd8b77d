"""The generation store: every teacher answer the service obtained, kept so none is paid for twice.

An entry is one chat completion, content-addressed (:func:`generation_key`): the key hashes the
teacher as served (endpoint and model), the exact messages and every decoding parameter sent,
the seed included, so k seeded samples stay k distinct answers. The job that made an entry is
kept with it: a job that asks for fresh answers (``cache: false``) still reads back its own, so a
redelivered chunk of that job pays nothing twice either.

It lives outside Redis, so it survives a Redis flush and the restart of every process:
``sqlite:///PATH`` (one host: the embedded stack, docker-compose; WAL lets the workers of the host
share the file) or ``postgresql://...`` (a cluster, whose worker pods share no disk). It is bounded
by a size (the least recently used entries go first) and an age.

Writes are batched: an answer joins the process's pending batch at once (reads in the process see
it), and a flusher thread commits the batch every :data:`FLUSH_S` in one transaction; the worker
calls :meth:`GenerationStore.flush` before it writes any row from those answers. A worker killed
outright loses at most that last fraction of a second of answers.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import atexit
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

#: Writes between two checks of the store's bounds (each check sums the stored sizes).
EVICT_EVERY = 1000
#: A check that finds the store too big evicts down to this share of its bound.
EVICT_TO = 0.9
#: How long opening the store waits for another process that is creating it.
PREPARE_S = 30.0
#: Seconds between two commits of the pending answers (and the most a killed worker can lose).
FLUSH_S = 0.05
#: A pending batch this big is committed at once.
FLUSH_ITEMS = 256
#: A read marks an entry used only if its last use is older than this: recency for eviction,
#: without a write on every read.
TOUCH_S = 3600.0


def generation_key(base_url: str, model: str, messages: Sequence[dict], params: dict[str, Any]) -> str:
    """What one chat completion depends on, hashed: endpoint, served model, messages, decoding
    parameters (``None`` values are not sent, so they are not part of the key)."""
    sent = {k: v for k, v in params.items() if v is not None}
    text = json.dumps({"base_url": base_url.rstrip("/"), "model": model, "messages": list(messages),
                       "params": sent}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class GenerationStore:
    """Key -> answer (a JSON object), shared by every worker; thread-safe within a process."""

    def __init__(self, url: str, *, max_bytes: int, max_age_s: float):
        self.url = url
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._writes = 0
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=60, isolation_level=None)
            self._mark = "?"
            self._upsert = "INSERT OR REPLACE INTO generations (k, v, job, size, created, used) VALUES (?, ?, ?, ?, ?, ?)"
        elif url.startswith(("postgresql://", "postgres://")):
            self._db = self._connect_postgres()
            self._mark = "%s"
            self._upsert = ("INSERT INTO generations (k, v, job, size, created, used) VALUES (%s, %s, %s, %s, %s, %s) "
                            "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, job = EXCLUDED.job, size = EXCLUDED.size, "
                            "created = EXCLUDED.created, used = EXCLUDED.used")
        else:
            raise ValueError(f"generation store must be sqlite:///PATH or postgresql://..., got {url.split(':')[0]!r}")
        self._postgres = self._mark == "%s"
        self._in_transaction = False
        self._pending: dict[str, tuple] = {}
        self._wake = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None
        deadline = time.monotonic() + PREPARE_S
        while True:  # the worker processes of a host open a new file at the same moment: one wins, the rest wait
            try:
                with self._lock:
                    self._prepare()
                break
            except _database_errors() as exc:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"generation store: {type(exc).__name__}: {exc}") from exc
                time.sleep(0.1)

    def _prepare(self) -> None:
        if not self._postgres:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash loses nothing
        self._execute("CREATE TABLE IF NOT EXISTS generations (k TEXT PRIMARY KEY, v TEXT NOT NULL, "
                      "job TEXT NOT NULL, size INTEGER NOT NULL, created DOUBLE PRECISION NOT NULL, "
                      "used DOUBLE PRECISION NOT NULL)")
        self._execute("CREATE INDEX IF NOT EXISTS generations_used ON generations (used)")

    def _connect_postgres(self):
        import psycopg

        db = psycopg.connect(self.url, autocommit=True)
        # a commit lost to a server crash costs one request more, never a wrong answer
        db.execute("SET synchronous_commit = off")
        return db

    def _reconnect_if_lost(self) -> bool:
        """Open the PostgreSQL connection again when it was lost (server restart, failover, an idle
        connection dropped): a worker process keeps its store for life. True if it was lost."""
        if self._postgres and self._db.closed:
            self._db = self._connect_postgres()
            return True
        return False

    def _execute(self, sql: str, args: Sequence = ()) -> list[tuple]:
        if self._in_transaction:  # a lost connection fails the whole transaction: flush retries it
            return self._run(sql, args)
        self._reconnect_if_lost()
        try:
            return self._run(sql, args)
        except Exception:
            if not self._reconnect_if_lost():  # the statement failed on a live connection: its own error
                raise
            return self._run(sql, args)

    def _run(self, sql: str, args: Sequence) -> list[tuple]:
        cursor = self._db.execute(sql.replace("?", self._mark), tuple(args))
        return cursor.fetchall() if cursor.description else []

    @contextmanager
    def _transaction(self):
        if isinstance(self._db, sqlite3.Connection):
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        else:
            self._reconnect_if_lost()
            self._in_transaction = True
            try:
                with self._db.transaction():
                    yield
            finally:
                self._in_transaction = False

    def get(self, key: str, *, job: str | None = None) -> dict | None:
        """The answer stored under ``key`` (with ``job``: only one that job made), or None."""
        return self.get_many([key], job=job).get(key)

    def get_many(self, keys: Sequence[str], *, job: str | None = None) -> dict[str, dict]:
        """The stored answers among ``keys`` younger than the age bound; marks them used."""
        found: dict[str, dict] = {}
        now = time.time()
        with self._lock:
            for key in keys:
                row = self._pending.get(key)
                if row is not None and (job is None or row[2] == job):
                    found[key] = json.loads(row[1])
            keys = [k for k in keys if k not in found]
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT k, v, used FROM generations WHERE k IN ({marks}) AND created >= ?"
                args = [*chunk, now - self.max_age_s]
                if job is not None:
                    sql += " AND job = ?"
                    args.append(job)
                rows = self._execute(sql, args)
                found.update((k, json.loads(v)) for k, v, _ in rows)
                stale = [k for k, _, used in rows if used < now - TOUCH_S]
                if stale:
                    self._execute(f"UPDATE generations SET used = ? WHERE k IN ({','.join('?' * len(stale))})",
                                  [now, *stale])
        return found

    def put(self, key: str, value: dict, *, job: str) -> None:
        """Keep one answer (a later answer under the same key replaces it: a job asked for fresh ones);
        committed within :data:`FLUSH_S`, or by :meth:`flush`."""
        text = json.dumps(value, ensure_ascii=False)
        now = time.time()
        with self._lock:
            self._pending[key] = (key, text, job, len(text.encode()), now, now)
            full = len(self._pending) >= FLUSH_ITEMS
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, name="generation-store", daemon=True)
                self._flusher.start()
                atexit.register(self.flush)
        if full:
            self.flush()
        else:
            self._wake.set()

    def flush(self) -> None:
        """Commit the pending answers in one transaction."""
        with self._lock:
            if not self._pending:
                return
            rows, self._pending = list(self._pending.values()), {}
            try:
                self._commit(rows)
            except Exception:
                try:
                    if not self._reconnect_if_lost():
                        raise
                    self._commit(rows)  # the connection was lost: once more on a new one
                except Exception:
                    self._pending = {row[0]: row for row in rows}  # kept for the next flush
                    raise
            before = self._writes
            self._writes += len(rows)
            due = before // EVICT_EVERY != self._writes // EVICT_EVERY
        if due:
            self.evict()

    def _commit(self, rows: list[tuple]) -> None:
        with self._transaction():
            for row in rows:
                self._execute(self._upsert, row)

    def _flush_forever(self) -> None:
        while not self._closed:
            self._wake.wait()
            time.sleep(FLUSH_S)  # gather what arrives meanwhile into the same commit
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - kept pending; the next flush (or the task's own) retries
                pass

    def evict(self) -> int:
        """Drop entries past the age bound, then the least recently used while the store is over its
        size bound (down to :data:`EVICT_TO` of it); returns how many went."""
        self.flush()
        with self._lock:
            before = self._count()
            self._execute("DELETE FROM generations WHERE created < ?", [time.time() - self.max_age_s])
            size = self._size()
            if size > self.max_bytes:
                excess = size - int(self.max_bytes * EVICT_TO)
                # the oldest-used entries whose sizes add up to the excess
                rows = self._execute("SELECT k, size FROM generations ORDER BY used, k")
                victims, freed = [], 0
                for key, n in rows:
                    if freed >= excess:
                        break
                    victims.append(key)
                    freed += n
                for start in range(0, len(victims), 500):
                    chunk = victims[start:start + 500]
                    self._execute(f"DELETE FROM generations WHERE k IN ({','.join('?' * len(chunk))})", chunk)
            return before - self._count()

    def _count(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM generations")[0][0])

    def _size(self) -> int:
        return int(self._execute("SELECT COALESCE(SUM(size), 0) FROM generations")[0][0])

    def stats(self) -> dict[str, int]:
        """Entries and stored bytes now."""
        self.flush()
        with self._lock:
            return {"entries": self._count(), "bytes": self._size()}

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._wake.set()
        with self._lock:
            self._db.close()


class StoreUnavailable(ConnectionError):
    """The generation store did not answer (its database is down or restarting): a ConnectionError,
    so the generation task retries the item as it does when a teacher does not answer."""


def _database_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    try:
        import psycopg

        errors += (psycopg.Error,)
    except ImportError:
        pass
    return errors


@contextmanager
def _unavailable_as_connection_error():
    try:
        yield
    except _database_errors() as exc:
        raise StoreUnavailable(f"generation store: {type(exc).__name__}: {exc}") from exc


class JobGenerations:
    """What one job may read from and adds to the store: everything (``reuse``), or, for a job that
    asked for fresh answers, only the answers it made itself. Database errors surface as
    :class:`StoreUnavailable`."""

    def __init__(self, store: GenerationStore, job_id: str, *, reuse: bool = True):
        self.store = store
        self.job_id = job_id
        self.reuse = reuse

    def get(self, key: str) -> dict | None:
        with _unavailable_as_connection_error():
            return self.store.get(key, job=None if self.reuse else self.job_id)

    def put(self, key: str, value: dict) -> None:
        with _unavailable_as_connection_error():
            self.store.put(key, value, job=self.job_id)

    def flush(self) -> None:
        with _unavailable_as_connection_error():
            self.store.flush()
