"""How much disk the generation store takes per answer, from real teacher answers (docs/deploy.md sizing).

    .venv/bin/python bench/bench_store_size.py

Stores every answer of ``../shared/data/arena_parallel.jsonl`` (300 chat prompts x 15 models) and of
``gsm8k_parallel.jsonl`` (1319 math problems x 2 models) as the workers do (``GenerationStore.put``,
one key per request), once in SQLite and once in the local PostgreSQL when it answers
(``--postgres``, trust auth; a database of its own, dropped afterwards). It prints, per data set and
backend: the mean answer JSON size (what ``PERSYN_GENERATION_STORE_MAX_MB`` counts) and the bytes on
disk per entry (SQLite: the file after a WAL checkpoint; PostgreSQL: ``pg_total_relation_size``,
table, TOAST and indexes), and what 50K prompts x 19 teachers would take.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.generations import GenerationStore, generation_key  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: The sizing example of docs/deploy.md.
PROMPTS, TEACHERS, CALIBRATION = 50_000, 19, 2500


def answers(name: str) -> list[tuple[str, dict]]:
    """(key, stored value) of every answer in a parallel-answers file, as a worker would store it."""
    out = []
    for line in (DATA / name).read_text().splitlines():
        row = json.loads(line)
        messages = [{"role": "user", "content": row["prompt"]}]
        for model, text in row["responses"].items():
            key = generation_key("http://teacher:8000/v1", model, messages, {"temperature": 0.7, "max_tokens": 4096})
            out.append((key, {"text": text, "prompt_tokens": len(row["prompt"]) // 4,
                              "completion_tokens": len(text) // 4, "finish_reason": "stop"}))
    return out


def fill(url: str, items: list[tuple[str, dict]]) -> GenerationStore:
    store = GenerationStore(url, max_bytes=1 << 40, max_age_s=1e9)
    for key, value in items:
        store.put(key, value, job=f"job-{uuid.uuid4().hex[:12]}")
    store.flush()
    return store


def sqlite_bytes(items) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = fill(f"sqlite:///{tmp}/generations.sqlite", items)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counted = store.stats()["bytes"]
        on_disk = sum(p.stat().st_size for p in Path(tmp).iterdir())
        store._db.close()
    return counted, on_disk


def postgres_bytes(admin_url: str, items) -> tuple[int, int] | None:
    import psycopg

    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL skipped: {exc}".strip(), file=sys.stderr)
        return None
    name = f"persyn_size_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        store = fill(admin_url.rsplit("/", 1)[0] + f"/{name}", items)
        store._db.execute("VACUUM ANALYZE generations")
        counted = store.stats()["bytes"]
        on_disk = store._db.execute("SELECT pg_total_relation_size('generations')").fetchone()[0]
        store._db.close()
        return counted, on_disk
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--postgres", default=os.environ.get("PERSYN_BENCH_POSTGRES",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = ap.parse_args()
    print(f"{'data':<22} {'backend':<11} {'entries':>8} {'answer B':>9} {'disk B':>8} {'disk/answer':>11}")
    for name in ("arena_parallel.jsonl", "gsm8k_parallel.jsonl"):
        items = answers(name)
        for backend, measure in (("sqlite", lambda: sqlite_bytes(items)),
                                 ("postgresql", lambda: postgres_bytes(args.postgres, items))):
            got = measure()
            if got is None:
                continue
            counted, on_disk = got
            n = len(items)
            per_disk = on_disk / n
            print(f"{name:<22} {backend:<11} {n:>8} {counted / n:>9.0f} {per_disk:>8.0f} {on_disk / counted:>11.2f}")
            routed = PROMPTS + CALIBRATION * (TEACHERS - 1)
            print(f"{'':<22} {'':<11} 50K x {TEACHERS}: Route-then-Generate ({routed} answers) "
                  f"{routed * per_disk / 1e6:.0f} MB, every teacher on every prompt "
                  f"({PROMPTS * TEACHERS} answers) {PROMPTS * TEACHERS * per_disk / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
