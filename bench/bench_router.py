"""Router quality on real parallel responses: PerSyn routers vs random, best single teacher, kNN, oracle.

arena_parallel.jsonl (300 prompts x 15 LLMs, GPT-4 judge scores) with the paper's ground truth
r = (1 - alpha) z(quality) + alpha z(learnability), SmolLM2-135M learnability read from
bench/fixtures/arena_learnability.json (bench/make_arena_learnability.py regenerates it). Over
seeded splits, 2/3 of the prompts train each router and 1/3 are held out; mean and sample sd.
Routers: the frozen MiniLM encoder (mean pool) and the student itself, SmolLM2-135M, as a frozen
decoder backbone (last-token pool), each with the Bradley-Terry head (L2 chosen by
cross-validated Hit@3) and a kNN router on the same embeddings.

    python bench/bench_router.py [--seeds 5] [--alphas 0,0.4] [--plot bench/out/router_quality.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from services.core.cache import ScoreCache
from services.method.formats import load_parallel, teachers_of
from services.method.rewards import combine
from services.reports.plots import plot_router_quality
from services.routing.evaluation import score_file_matrix, seeded_comparison
from services.scoring.matrices import quality_matrix

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "arena_parallel.jsonl"
LEARNABILITY = ROOT / "bench" / "fixtures" / "arena_learnability.json"
BACKBONES = {"minilm": "all-minilm-l6-v2", "smollm2": "smollm2-135m-instruct"}
#: Mean Hit@3 margin the router must have over best single and kNN at alpha 0.4 (issue 10).
TARGET_MARGIN = 0.03


def load_arena(data: Path = DATA, learnability: Path = LEARNABILITY):
    """The arena prompts, their teachers and the [prompt, teacher] quality and learnability matrices."""
    records = load_parallel(data)
    teachers = teachers_of(records)
    return ([r.prompt for r in records], teachers, quality_matrix(records, teachers),
            score_file_matrix(learnability, [r.id for r in records], teachers))


def compare(prompts, teachers, scores, seeds, cache) -> tuple[dict, dict]:
    """Every router's summary (shared baselines once) and the per-split runs, keyed by router."""
    summary, runs = {}, {}
    for tag, backbone in BACKBONES.items():
        result = seeded_comparison(prompts, teachers, scores, seeds=seeds, backbone=backbone, cache=cache)
        for name in result["summary"]:
            key = name if name in ("random", "best_single", "oracle") else f"{name}:{tag}"
            summary.setdefault(key, result["summary"][name])
            runs.setdefault(key, [run[name] for run in result["runs"]])
    order = ["random", "best_single"] + [k for k in summary if ":" in k] + ["oracle"]
    return {k: summary[k] for k in order}, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--learnability", type=Path, default=LEARNABILITY)
    parser.add_argument("--seeds", type=int, default=5, help="seeded splits to average over")
    parser.add_argument("--alphas", default="0,0.4")
    parser.add_argument("--plot", type=Path, default=Path("bench/out/router_quality.png"))
    parser.add_argument("--json", type=Path, default=Path("bench/out/router_quality.json"))
    args = parser.parse_args()
    if not args.data.exists():
        print(f"bench_router: {args.data} not found", file=sys.stderr)
        return 2
    prompts, teachers, quality, learn = load_arena(args.data, args.learnability)
    cache = ScoreCache(Path("bench/out/cache.sqlite"))
    seeds = range(args.seeds)

    summaries, report = {}, {}
    for alpha in (float(a) for a in args.alphas.split(",")):
        start = time.time()
        summary, runs = compare(prompts, teachers, combine(quality, learn, alpha), seeds, cache)
        label = f"alpha {alpha:g}"
        summaries[label], report[label] = summary, {"summary": summary, "runs": runs}
        print(f"\n{label}: {len(prompts)} prompts x {len(teachers)} teachers, {args.seeds} splits "
              f"(200 train / 100 held out), {time.time() - start:.0f}s")
        print(f"{'router':<16}  {'hit@1':>13}  {'hit@3':>13}")
        for name, cell in summary.items():
            print(f"{name:<16}  " + "  ".join(f"{cell[m]['mean']:.3f} +- {cell[m]['std']:.3f}" for m in cell))
        for tag in BACKBONES:
            ours = runs[f"persyn:{tag}"]
            for base in ("best_single", f"knn@10:{tag}"):
                diffs = {m: [o[m] - b[m] for o, b in zip(ours, runs[base])] for m in ours[0]}
                print(f"persyn:{tag} - {base}: " + ", ".join(
                    f"{m} {np.mean(d):+.3f} (>= on {sum(x >= 0 for x in d)}/{len(d)} splits)"
                    for m, d in diffs.items()))
        if alpha == 0.4:
            for tag in BACKBONES:
                margin = summary[f"persyn:{tag}"]["hit@3"]["mean"] - max(
                    summary["best_single"]["hit@3"]["mean"], summary[f"knn@10:{tag}"]["hit@3"]["mean"])
                print(f"target persyn:{tag} mean hit@3 >= max(best single, kNN) + {TARGET_MARGIN}: "
                      f"margin {margin:+.3f} -> {'met' if margin >= TARGET_MARGIN else 'NOT met'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\njson: {args.json}\nplot: {plot_router_quality(summaries, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
