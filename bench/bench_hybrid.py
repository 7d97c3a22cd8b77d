"""Hybrid fallback on arena: Hit@1 gained per extra generation as the margin grows.

Per seeded split (200 prompts train a frozen MiniLM router, 100 held out; ground truth at alpha 0.4
as in bench_router.py), each held-out prompt whose top-two router strength gap is below the margin
gets its runner-up teacher's answer too, and the better of the two by the combined reward is kept
(``services.method.hybrid.hybrid_choices``, what a job's hybrid.select does with its reward). Two
routers: the service default (L2 by cross-validation with the one-SE rule) and a fixed small L2
(0.1) that leans on the prompt features more. Extra generations = ambiguous prompts; the gain per
extra generation = (hybrid Hit@1 - router Hit@1) x held-out prompts / extra generations.

    python bench/bench_hybrid.py [--seeds 5] [--margins 0,0.1,0.25,0.5,0.75,1,2]
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
from services.method.hits import hits
from services.method.hybrid import hybrid_choices
from services.method.rewards import combine
from services.reports.plots import plot_curves
from services.routing.model import PromptEncoder
from services.routing.training import TrainConfig, prompt_embeddings, train_router

ALPHA = 0.4
N_HELD_OUT = 100
BACKBONE = "all-minilm-l6-v2"
ROUTERS = {"router (CV L2)": None, "router (L2 0.1)": 0.1}


def one_split(prompts, teachers, scores, features, margins, seed, cache) -> dict:
    """{router: {margin: {hit@1, hit@3, extra}}} for one seeded split."""
    order = np.random.default_rng(seed).permutation(len(prompts))
    test, train = np.sort(order[:N_HELD_OUT]), np.sort(order[N_HELD_OUT:])
    out = {}
    for name, l2 in ROUTERS.items():
        router, _ = train_router([prompts[i] for i in train], teachers, scores[train],
                                 TrainConfig(backbone=BACKBONE, seed=seed, device="cpu", weight_decay=l2), cache=cache)
        strengths = router.strengths_from_features(features[test])
        out[name] = {}
        for margin in margins:
            chosen, ambiguous = hybrid_choices(strengths, scores[test], margin)
            out[name][margin] = {**hits(scores[test], chosen), "extra": int(ambiguous.sum())}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--learnability", type=Path, default=LEARNABILITY)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--margins", default="0,0.1,0.25,0.5,0.75,1,2")
    parser.add_argument("--plot", type=Path, default=Path("bench/out/hybrid.png"))
    parser.add_argument("--json", type=Path, default=Path("bench/out/hybrid.json"))
    args = parser.parse_args()
    if not args.data.exists():
        print(f"bench_hybrid: {args.data} not found", file=sys.stderr)
        return 2
    margins = [float(m) for m in args.margins.split(",")]
    if any(m < 0 for m in margins) or 0.0 not in margins:
        print("bench_hybrid: margins must be >= 0 and include 0 (the router alone)", file=sys.stderr)
        return 2
    start = time.time()
    prompts, teachers, quality, learn = load_arena(args.data, args.learnability)
    scores = combine(quality, learn, ALPHA)
    cache = ScoreCache(Path("bench/out/cache.sqlite"))
    features = prompt_embeddings(PromptEncoder(BACKBONE, device="cpu"), BACKBONE, prompts, cache)
    runs = [one_split(prompts, teachers, scores, features, margins, seed, cache) for seed in range(args.seeds)]

    print(f"{len(prompts)} arena prompts x {len(teachers)} teachers, alpha {ALPHA}, {args.seeds} seeds "
          f"({N_HELD_OUT} held out per split), {time.time() - start:.0f}s")
    summary = {}
    for name in ROUTERS:
        print(f"\n{name}\n{'margin':>6}  {'extra gen/prompt':>16}  {'hit@1':>13}  {'hit@3':>13}  "
              f"{'hit@1 gained per extra generation':>33}")
        summary[name] = {}
        for margin in margins:
            cells = [r[name][margin] for r in runs]
            extra = sum(c["extra"] for c in cells)
            gained = sum((c["hit@1"] - r[name][0.0]["hit@1"]) * N_HELD_OUT for c, r in zip(cells, runs))
            summary[name][margin] = {
                **{m: {"mean": float(np.mean([c[m] for c in cells])),
                       "std": float(np.std([c[m] for c in cells], ddof=1))} for m in ("hit@1", "hit@3")},
                "extra_per_prompt": extra / (N_HELD_OUT * len(runs)),
                "hit1_per_extra_generation": gained / extra if extra else None}
            cell = summary[name][margin]
            per = f"{cell['hit1_per_extra_generation']:.3f}" if extra else "-"
            print(f"{margin:>6g}  {cell['extra_per_prompt']:>16.2f}  "
                  + "  ".join(f"{cell[m]['mean']:.3f} +- {cell[m]['std']:.3f}" for m in ("hit@1", "hit@3"))
                  + f"  {per:>33}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": {n: {str(m): c for m, c in s.items()} for n, s in summary.items()},
                                     "runs": [{n: {str(m): c for m, c in r[n].items()} for n in r} for r in runs]},
                                    indent=1))
    plot = plot_curves({n: {m: summary[n][m]["hit@1"] for m in margins} for n in summary}, args.plot,
                       xlabel="hybrid_margin (top-two strength gap)", ylabel="held-out Hit@1",
                       title=f"Hybrid fallback on arena (alpha {ALPHA}, {args.seeds} seeds, mean +- sd)")
    print(f"json: {args.json}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
