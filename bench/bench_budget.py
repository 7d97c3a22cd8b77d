"""Budget-aware routing on real parallel responses: what each budget keeps of the router's choice.

arena_parallel.jsonl (300 prompts x 15 LLMs, GPT-4 judge scores) and the SmolLM2-135M learnability
of bench/fixtures/arena_learnability.json give the ground truth r = 0.6 z(quality) + 0.4 z(learnability)
as in bench/bench_router.py. A MiniLM + Bradley-Terry router (the service's default) is trained on 200
prompts (the "calibration"); each teacher's expected output tokens per prompt is the mean length of its
calibration answers (SmolLM2 tokenizer). On the 100 held-out prompts the Lagrangian budget route
(services.method.budget) is run at fractions of the unconstrained route's expected cost and compared
with the best single teacher that fits the same budget. Realised figures use the held-out answers:
their true r, judge quality and their actual token cost.

Prices: the arena's teachers are not in deploy/teacher_pool.example.yaml, so PRICES below states an
explicit table of $ per 1M output tokens (approximate public list prices of 2023-24 for the API models,
typical hosted-inference prices for the open ones). They only set the scale; the method uses the ratios.

    python bench/bench_budget.py [--plot bench/out/budget_curve.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from services.core.cache import ScoreCache
from services.method.budget import cost_quality_curve, lagrangian_choice, route_within_budget
from services.method.formats import load_parallel, teachers_of
from services.method.rewards import combine
from services.reports.plots import plot_cost_quality
from services.routing.evaluation import score_file_matrix
from services.routing.training import TrainConfig, split_prompts, train_router
from services.scoring.matrices import quality_matrix

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "arena_parallel.jsonl"
LEARNABILITY = ROOT / "bench" / "fixtures" / "arena_learnability.json"
ALPHA = 0.4
#: $ per 1M output tokens (see the module docstring).
PRICES = {
    "gpt-4-0314": 60.0, "gpt-4-1106-preview": 30.0, "gpt-3.5-turbo": 2.0, "gpt-3.5-turbo-1106": 2.0,
    "claude-1": 24.0, "claude-2.1": 24.0, "claude-instant-1": 2.4, "palm-2-chat-bison-001": 1.0,
    "Llama-2-70b-chat": 0.9, "Mixtral-8x7B-Instruct-v0.1": 0.6, "vicuna-33b-v1.3": 0.8, "llama-13b": 0.3,
    "Mistral-7B-Instruct-v0.1": 0.2, "Starling-LM-7B-alpha": 0.2, "openchat_3.5": 0.2,
}
FRACTIONS = (1.0, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05)


def token_counts(records, teachers) -> np.ndarray:
    """[prompt, teacher] output tokens of each answer (SmolLM2's tokenizer), NaN where none."""
    from transformers import AutoTokenizer

    from services.core.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    return np.array([[len(tokenizer(r.responses[t], add_special_tokens=False)["input_ids"])
                      if t in r.responses else np.nan for t in teachers] for r in records], dtype=np.float64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--plot", type=Path, default=Path("bench/out/budget_curve.png"))
    parser.add_argument("--json", type=Path, default=Path("bench/out/budget.json"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"bench_budget: {args.data} not found", file=sys.stderr)
        return 2
    records = load_parallel(args.data)
    teachers = teachers_of(records)
    quality = quality_matrix(records, teachers)
    truth = combine(quality, score_file_matrix(LEARNABILITY, [r.id for r in records], teachers), ALPHA)
    tokens = token_counts(records, teachers)
    prices = np.array([PRICES[t] for t in teachers]) / 1e6
    calib, held = split_prompts(len(records), 1 / 3, args.seed)
    prompts = [r.prompt for r in records]
    router, _ = train_router([prompts[i] for i in calib], teachers, truth[calib], TrainConfig(seed=args.seed),
                             cache=ScoreCache(Path("bench/out/cache.sqlite")))
    strengths = router.strengths([prompts[i] for i in held])[:, [router.teachers.index(t) for t in teachers]]
    mean_tokens = np.nanmean(tokens[calib], axis=0)  # what calibration_stats.output_tokens holds
    per_prompt_usd = mean_tokens * prices
    rows = np.arange(len(held))
    h_truth, h_quality, h_tokens = truth[held], quality[held], tokens[held]
    train_mean = np.nanmean(truth[calib], axis=0)

    def realised(choice):
        """Mean true r, mean judge quality and actual $ of the held-out answers chosen."""
        return (float(np.nanmean(h_truth[rows, choice])), float(np.nanmean(h_quality[rows, choice])),
                float(np.nansum(h_tokens[rows, choice] * prices[choice])))

    free = route_within_budget(strengths, per_prompt_usd, 1e12)
    table = []
    for fraction in FRACTIONS:
        budget = fraction * free.cost[0]
        start = time.perf_counter()
        route = route_within_budget(strengths, per_prompt_usd, budget)
        seconds = time.perf_counter() - start
        r, q, actual = realised(route.choice)
        fits = [m for m in range(len(teachers)) if per_prompt_usd[m] * len(held) <= budget]
        single = max(fits, key=lambda m: train_mean[m])
        s_r, s_q, s_actual = realised(np.full(len(held), single))
        table.append({"fraction": fraction, "budget_usd": budget, "expected_usd": route.cost[0],
                      "actual_usd": actual, "strength": route.utility, "strength_lost": route.utility_lost,
                      "lam": route.lam, "true_r": r, "judge_quality": q, "teachers_used": int(len(set(route.choice))),
                      "single": teachers[single], "single_true_r": s_r, "single_judge_quality": s_q,
                      "single_actual_usd": s_actual, "route_ms": 1e3 * seconds})
    curve = cost_quality_curve(strengths, per_prompt_usd, n_points=60)
    points = [(p.cost[0], realised(lagrangian_choice(strengths, per_prompt_usd, p.lam))[0]) for p in curve]
    singles = {teachers[m]: (float(per_prompt_usd[m] * len(held)), realised(np.full(len(held), m))[0])
               for m in np.argsort(-train_mean)[:5]}
    cheapest = int(per_prompt_usd.argmin())
    singles.setdefault(teachers[cheapest], (float(per_prompt_usd[cheapest] * len(held)),
                                            realised(np.full(len(held), cheapest))[0]))

    big = np.random.default_rng(1).dirichlet(np.ones(15), size=50_000)
    start = time.perf_counter()
    route_within_budget(big, per_prompt_usd, 0.3 * route_within_budget(big, per_prompt_usd, 1e12).cost[0])
    scale_s = time.perf_counter() - start

    print(f"{len(records)} prompts x {len(teachers)} teachers; router trained on {len(calib)}, "
          f"{len(held)} held out; alpha {ALPHA}")
    print("expected output tokens per prompt (calibration mean): "
          + ", ".join(f"{t} {mean_tokens[i]:.0f}" for i, t in enumerate(teachers)))
    print(f"\n{'budget':>8} {'expected$':>10} {'actual$':>9} {'strength':>9} {'lost':>6} {'true r':>7} "
          f"{'judge':>6} {'used':>4} | {'best single that fits':<26} {'true r':>7} {'judge':>6} {'actual$':>8}")
    for row in table:
        print(f"{row['fraction']:>7.0%} {row['expected_usd']:>10.4f} {row['actual_usd']:>9.4f} "
              f"{row['strength']:>9.2f} {row['strength_lost']:>6.2f} {row['true_r']:>7.3f} {row['judge_quality']:>6.2f} "
              f"{row['teachers_used']:>4} | {row['single']:<26} {row['single_true_r']:>7.3f} "
              f"{row['single_judge_quality']:>6.2f} {row['single_actual_usd']:>8.4f}")
    print(f"\nbudget route of 50,000 prompts x 15 teachers at 30% of the unconstrained cost: {scale_s:.2f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"table": table, "curve": points, "singles": singles,
                                     "mean_tokens": dict(zip(teachers, mean_tokens.tolist())),
                                     "scale_50k_s": scale_s}, indent=1))
    plot = plot_cost_quality({"budget route (Lagrangian sweep)": points}, args.plot, marks=singles,
                             xlabel=f"expected cost of {len(held)} held-out prompts ($)",
                             ylabel="mean true r of the chosen answers",
                             title="Cost-quality: budgeted PerSyn routing vs single teachers (arena)")
    print(f"json: {args.json}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
