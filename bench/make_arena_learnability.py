"""Regenerate ``bench/fixtures/arena_learnability.json``: SmolLM2-135M learnability of every answer in
``../shared/data/arena_parallel.jsonl``, computed once with the project's own scorer (fp32, prompt +
response capped at ``--max-length`` tokens by cutting the response tail).

    .venv/bin/python bench/make_arena_learnability.py   # ~1 h on 2 CPU cores; resumes where it stopped

Router benchmarks read the fixture to build the paper's ground truth (alpha = 0.4) without a model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from services.method.formats import load_parallel, teachers_of
from services.scoring.learnability import LearnabilityScorer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "arena_parallel.jsonl"
DEFAULT_OUT = ROOT / "bench" / "fixtures" / "arena_learnability.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--student", default="smollm2-135m-instruct")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=120, help="answers scored between checkpoints")
    args = ap.parse_args()

    records = load_parallel(args.data)
    teachers = teachers_of(records)
    meta = {"student": args.student, "dtype": "float32", "max_length": args.max_length,
            "data": args.data.name, "teachers": teachers}
    fixture = {**meta, "scores": {}}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if all(old.get(k) == v for k, v in meta.items()):
            fixture = old  # resume
    scores: dict[str, dict[str, float | None]] = fixture["scores"]
    todo = [(r, t) for r in records for t in teachers
            if t in r.responses and r.responses[t].strip() and t not in scores.get(r.id, {})]
    for r in records:  # empty or missing answers have no learnability
        for t in teachers:
            if not (t in r.responses and r.responses[t].strip()):
                scores.setdefault(r.id, {})[t] = None
    print(f"{len(todo)} answers to score ({sum(len(v) for v in scores.values())} already in {args.out})", flush=True)
    scorer = LearnabilityScorer(args.student, max_length=args.max_length, device="cpu")
    started = time.time()
    for start in range(0, len(todo), args.chunk):
        chunk = todo[start:start + args.chunk]
        values = scorer.score([(r.prompt, r.responses[t]) for r, t in chunk])
        for (r, t), v in zip(chunk, values):
            scores.setdefault(r.id, {})[t] = round(float(v), 6)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(fixture, indent=0, sort_keys=True))
        tmp.replace(args.out)
        done = start + len(chunk)
        rate = done / (time.time() - started)
        print(f"{done}/{len(todo)} answers, {rate:.2f}/s, eta {(len(todo) - done) / rate / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
