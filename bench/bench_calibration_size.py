"""Active calibration: held-out router Hit@k against calibration size, random sample vs greedy k-center.

The arena prompts (300 x 15 LLMs; ground truth at alpha 0.4 as in bench_router.py) are split per seed
into 100 held-out prompts and a pool of 200. From the pool, each sampler picks ``size`` calibration
prompts the way a calibration job does (``services.jobs.stages.calibration_sample`` for random,
``services.method.kcenter.kcenter_greedy`` on the frozen MiniLM embeddings for kcenter, both seeded),
a frozen-backbone router trains on them alone, and routes the held-out prompts; a kNN router
(k = 10) on the same calibration shows what coverage gives a router that does use the prompt's
neighbourhood. The best single teacher of the random calibration is the floor. Mean and sample sd
over the seeds, and the paired kcenter - random difference per size.

    python bench/bench_calibration_size.py [--seeds 5] [--sizes 25,50,100,150,200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from bench_router import DATA, LEARNABILITY, load_arena

from services.core.cache import ScoreCache
from services.jobs.stages import calibration_sample
from services.method.hits import best_single_choices, hits, knn_choices
from services.method.kcenter import kcenter_greedy
from services.method.rewards import combine
from services.reports.plots import plot_curves
from services.routing.model import PromptEncoder
from services.routing.training import TrainConfig, prompt_embeddings, train_router

ALPHA = 0.4
N_HELD_OUT = 100
BACKBONE = "all-minilm-l6-v2"
KNN_K = 10


def calibration(sampler: str, pool: np.ndarray, features: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The pool indices a calibration of ``size`` keeps under ``sampler``."""
    if sampler == "kcenter":
        return pool[np.sort(kcenter_greedy(features[pool], size, seed))]
    return pool[calibration_sample(len(pool), size, seed)]


def one_split(prompts, teachers, scores, features, sizes, seed, cache) -> dict:
    """{curve: {size: {hit@1, hit@3}}} for one seeded split."""
    order = np.random.default_rng(seed).permutation(len(prompts))
    test, pool = np.sort(order[:N_HELD_OUT]), np.sort(order[N_HELD_OUT:])
    out: dict = {"router, random": {}, "router, kcenter": {}, f"knn@{KNN_K}, random": {},
                 f"knn@{KNN_K}, kcenter": {}, "best single, random": {}}
    for size in sizes:
        for sampler in ("random", "kcenter"):
            chosen = calibration(sampler, pool, features, size, seed)
            router, _ = train_router([prompts[i] for i in chosen], teachers, scores[chosen],
                                     TrainConfig(backbone=BACKBONE, seed=seed, device="cpu"), cache=cache)
            picks = router.strengths_from_features(features[test]).argmax(axis=1)
            out[f"router, {sampler}"][size] = hits(scores[test], picks)
            out[f"knn@{KNN_K}, {sampler}"][size] = hits(scores[test], knn_choices(
                features[chosen], scores[chosen], features[test], min(KNN_K, size)))
            if sampler == "random":
                out["best single, random"][size] = hits(
                    scores[test], best_single_choices(scores[chosen], len(test)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--learnability", type=Path, default=LEARNABILITY)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="25,50,100,150,200")
    parser.add_argument("--plot", type=Path, default=Path("bench/out/calibration_size.png"))
    parser.add_argument("--json", type=Path, default=Path("bench/out/calibration_size.json"))
    args = parser.parse_args()
    if not args.data.exists():
        print(f"bench_calibration_size: {args.data} not found", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 2 <= s <= 200 for s in sizes):
        print("bench_calibration_size: sizes must be in [2, 200] (the pool)", file=sys.stderr)
        return 2
    start = time.time()
    prompts, teachers, quality, learn = load_arena(args.data, args.learnability)
    scores = combine(quality, learn, ALPHA)
    cache = ScoreCache(Path("bench/out/cache.sqlite"))
    features = prompt_embeddings(PromptEncoder(BACKBONE, device="cpu"), BACKBONE, prompts, cache)
    runs = [one_split(prompts, teachers, scores, features, sizes, seed, cache) for seed in range(args.seeds)]

    summary = {curve: {size: {m: {"mean": float(np.mean([r[curve][size][m] for r in runs])),
                                  "std": float(np.std([r[curve][size][m] for r in runs], ddof=1))}
                              for m in ("hit@1", "hit@3")} for size in sizes} for curve in runs[0]}
    print(f"{len(prompts)} arena prompts x {len(teachers)} teachers, alpha {ALPHA}, {args.seeds} seeds "
          f"({N_HELD_OUT} held out, calibration from a pool of {len(prompts) - N_HELD_OUT}), "
          f"{time.time() - start:.0f}s")
    for metric in ("hit@3", "hit@1"):
        print(f"\n{metric} by calibration size; last columns: paired kcenter - random (router, kNN)")
        print(f"{'size':>5}  " + "  ".join(f"{c[:20]:>20}" for c in summary))
        for size in sizes:
            paired = []
            for a, b in (("router, kcenter", "router, random"), (f"knn@{KNN_K}, kcenter", f"knn@{KNN_K}, random")):
                d = [r[a][size][metric] - r[b][size][metric] for r in runs]
                paired.append(f"{np.mean(d):+.3f} (>= {sum(x >= 0 for x in d)}/{len(d)})")
            print(f"{size:>5}  " + "  ".join(f"{summary[c][size][metric]['mean']:.3f} +- "
                                             f"{summary[c][size][metric]['std']:.3f}".rjust(20) for c in summary)
                  + "   " + "   ".join(paired))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    plot = plot_curves({c: {s: summary[c][s]["hit@3"] for s in sizes} for c in summary}, args.plot,
                       xlabel="calibration prompts", ylabel="held-out Hit@3",
                       title=f"Active calibration on arena (alpha {ALPHA}, {args.seeds} seeds, mean +- sd)",
                       dashed=("best single, random",))
    print(f"json: {args.json}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
