"""An on-disk cache so a rerun recomputes no reward or embedding it already has.

Keys hash everything the value depends on (e.g. student, teacher, prompt, response),
so a changed input can never hit a stale entry. SQLite in WAL mode lets several
processes share one file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from services.core.settings import CACHE_DIR


def cache_key(*parts: str) -> str:
    """A stable key for the parts, safe against ambiguous concatenation."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class ScoreCache:
    """Key -> bytes store, with helpers for floats and float32 vectors."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else CACHE_DIR / "scores.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT k, v FROM kv WHERE k IN ({marks})", chunk).fetchall())
        return found

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", list(items))
            self._db.commit()

    def get_floats(self, keys: Sequence[str]) -> dict[str, float]:
        return {k: float(np.frombuffer(v, dtype=np.float64)[0]) for k, v in self.get_many(keys).items()}

    def put_floats(self, items: dict[str, float]) -> None:
        self.put_many((k, np.float64(v).tobytes()) for k, v in items.items())

    def get_vectors(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: np.frombuffer(v, dtype=np.float32) for k, v in self.get_many(keys).items()}

    def put_vectors(self, items: dict[str, np.ndarray]) -> None:
        self.put_many((k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items())

    def close(self) -> None:
        self._db.close()


def cached_compute(cache: ScoreCache | None, keys: Sequence[str], compute, *, vectors: bool = False):
    """Values for ``keys``, computing only the missing ones with ``compute(indices)``.

    ``compute`` gets the indices of the missing keys and returns their values in order.
    Returns a list aligned with ``keys``.
    """
    if cache is None:
        return list(compute(list(range(len(keys)))))
    have = cache.get_vectors(keys) if vectors else cache.get_floats(keys)
    missing = [i for i, k in enumerate(keys) if k not in have]
    if missing:
        fresh = dict(zip((keys[i] for i in missing), compute(missing)))
        (cache.put_vectors if vectors else cache.put_floats)(fresh)
        have.update(fresh)
    return [have[k] for k in keys]
