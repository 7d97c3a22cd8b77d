"""Router quality on real parallel responses: PerSyn router vs random, best single teacher, kNN.

arena_parallel.jsonl (300 prompts x 15 LLMs, GPT-4 judge scores), quality only (alpha 0),
fixed seed, 2/3 of the prompts train the router, 1/3 are held out. Also repeats the
comparison over further seeds, since 100 held-out prompts leave a few points of noise.

    python bench/bench_router.py [--seeds 5] [--plot bench/out/router_quality.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from services.core.cache import ScoreCache
from services.method.formats import load_parallel, teachers_of
from services.method.rewards import combine
from services.reports.plots import plot_router_quality
from services.reports.tables import format_table
from services.routing.evaluation import holdout_comparison
from services.scoring.matrices import quality_matrix

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena_parallel.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=5, help="extra splits to average over")
    parser.add_argument("--plot", type=Path, default=Path("bench/out/router_quality.png"))
    args = parser.parse_args()
    if not args.data.exists():
        print(f"bench_router: {args.data} not found", file=sys.stderr)
        return 2
    records = load_parallel(args.data)
    teachers = teachers_of(records)
    scores = combine(quality_matrix(records, teachers), None, alpha=0.0)
    cache = ScoreCache(Path("bench/out/cache.sqlite"))
    prompts = [r.prompt for r in records]

    start = time.time()
    table = holdout_comparison(prompts, teachers, scores, seed=0, cache=cache)
    print(f"arena_parallel: {len(records)} prompts, {len(teachers)} teachers, seed 0, "
          f"held out {round(len(records) / 3)} ({time.time() - start:.1f}s)")
    print(format_table(table))
    for name in ("best_single", "knn@10"):
        print("persyn / " + name + ": " + ", ".join(
            f"{k} {table['persyn'][k] / table[name][k]:.3f}" for k in table["persyn"]))
    print(f"plot: {plot_router_quality(table, args.plot)}")

    if args.seeds > 1:
        runs = [holdout_comparison(prompts, teachers, scores, seed=s, cache=cache) for s in range(args.seeds)]
        mean = {name: {k: float(np.mean([r[name][k] for r in runs])) for k in table[name]} for name in table}
        print(f"\nmean over seeds 0..{args.seeds - 1}:")
        print(format_table(mean))
        for k in table["persyn"]:
            wins = {n: sum(r["persyn"][k] >= r[n][k] for r in runs) for n in ("best_single", "knn@10")}
            print(f"splits where persyn {k} >= baseline: " + ", ".join(f"{n} {w}/{args.seeds}" for n, w in wins.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
