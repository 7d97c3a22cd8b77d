"""``train-router``, ``route``, ``evaluate``: the router offline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.cli.common import CLIError, add_scoring_args, existing_path, ground_truth, load_parallel_file
from services.method.rewards import NORMALISATIONS, check_alpha


def cmd_train_router(args) -> None:
    from services.core.cache import ScoreCache
    from services.routing.training import TrainConfig, train_router

    records, teachers = load_parallel_file(args.parallel)
    cache = ScoreCache(args.cache)
    _, _, scores = ground_truth(args, records, teachers, cache)
    config = TrainConfig(backbone=args.backbone, mode=args.mode, val_fraction=args.val_fraction,
                         weight_decay=args.weight_decay, epochs=args.epochs, seed=args.seed, device=args.device)
    router, metrics = train_router([r.prompt for r in records], teachers, scores, config, cache=cache,
                                   progress=True, extra_config={
                                       "student": args.student, "alpha": args.alpha,
                                       "normalisation": args.normalise, "quality": args.quality})
    router.save(args.out, metrics=metrics, save_backbone=args.mode == "finetune")
    print(json.dumps({"router": str(args.out), **{k: metrics[k] for k in ("n_prompts", "n_pairs")},
                      "val": metrics.get("val")}, indent=1))


def cmd_route(args) -> None:
    from services.method.formats import load_prompts, write_jsonl
    from services.routing.model import Router

    prompts = load_prompts(args.prompts)
    router = Router.load(args.router, device=args.device)
    results = router.route([p["prompt"] for p in prompts], top_k=args.top_k, progress=True)
    write_jsonl(({"id": p["id"], "teacher": r.teacher, "top_k": r.top_k, "strengths": r.strengths}
                 for p, r in zip(prompts, results)), args.out)
    from services.reports.tables import allocation, format_allocation

    print(format_allocation(allocation([r.teacher for r in results], router.teachers)))
    print(f"wrote {args.out}")


def alpha_list(text: str) -> list[float]:
    try:
        values = [check_alpha(float(a)) for a in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"alpha must be numbers in [0, 1] separated by commas, got {text!r}") from exc
    return values


def summary_rows(summary: dict) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each router's Hit@k as table columns."""
    return {name: {col: cell[stat] for metric, cell in metrics.items()
                   for col, stat in ((metric, "mean"), (metric.replace("hit", "sd"), "std"))}
            for name, metrics in summary.items()}


def cmd_evaluate(args) -> None:
    from services.core.cache import ScoreCache
    from services.method.rewards import combine
    from services.reports.plots import plot_router_quality
    from services.reports.tables import format_table
    from services.routing.evaluation import score_file_matrix, seeded_comparison
    from services.scoring.matrices import learnability_matrix, quality_matrix

    if args.seeds < 1:
        raise CLIError("--seeds must be at least 1")
    if not 0.0 < args.test_fraction < 1.0:
        raise CLIError("--test-fraction must be in (0, 1)")
    records, teachers = load_parallel_file(args.parallel)
    cache = ScoreCache(args.cache)
    needs_learnability = any(a > 0 for a in args.alpha)
    if needs_learnability and not (args.student or args.learnability):
        raise CLIError("--student or --learnability is required when an --alpha is > 0")
    quality = quality_matrix(records, teachers, args.quality, cache=cache) if min(args.alpha) < 1 else None
    learn = None
    if needs_learnability and args.learnability:
        try:
            learn = score_file_matrix(args.learnability, [r.id for r in records], teachers)
        except (ValueError, KeyError) as exc:
            raise CLIError(f"--learnability: {exc}") from exc
    elif needs_learnability:
        learn = learnability_matrix(records, teachers, args.student, cache=cache, progress=True)
    prompts = [r.prompt for r in records]
    summaries, report = {}, {}
    for alpha in args.alpha:
        scores = combine(quality, learn, alpha, args.normalise)
        result = seeded_comparison(prompts, teachers, scores, seeds=range(args.seed, args.seed + args.seeds),
                                   test_fraction=args.test_fraction, backbone=args.backbone, cache=cache)
        label = f"alpha {alpha:g}"
        summaries[label], report[label] = result["summary"], result
        print(f"{label}: mean and sd over {args.seeds} seeded splits ({len(records)} prompts, "
              f"{args.test_fraction:.2f} held out)")
        print(format_table(summary_rows(result["summary"])) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"json: {args.json}")
    if args.plot:
        print(f"plot: {plot_router_quality(summaries, args.plot)}")


def register(sub) -> None:
    p = sub.add_parser("train-router", help="train a Bradley-Terry router on parallel responses")
    add_scoring_args(p)
    p.add_argument("--out", type=Path, required=True, help="artifact directory")
    p.add_argument("--backbone", default="all-minilm-l6-v2")
    p.add_argument("--mode", choices=("frozen", "finetune"), default="frozen")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 on the head's prompt-dependent weights (default: chosen by cross-validated Hit@3 and Hit@1)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_router)

    p = sub.add_parser("route", help="route prompts with a trained router")
    p.add_argument("--router", type=existing_path, required=True)
    p.add_argument("--prompts", type=existing_path, required=True, help="JSONL with id and prompt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("evaluate", help="held-out Hit@k of a router against random, best single teacher, kNN "
                                         "and oracle, over seeded splits")
    p.add_argument("--parallel", type=existing_path, required=True, help="parallel-responses JSONL")
    p.add_argument("--alpha", type=alpha_list, default=[0.0, 0.4],
                   help="ground truths to evaluate, comma-separated weights of learnability (default 0,0.4)")
    p.add_argument("--student", default=None, help="student model for learnability (when an alpha > 0)")
    p.add_argument("--learnability", type=existing_path, default=None,
                   help="precomputed learnability per answer instead of --student "
                        "(JSON {scores: {id: {teacher: value}}}, e.g. bench/fixtures/arena_learnability.json)")
    p.add_argument("--quality", default="file",
                   help="'file' (scores in the JSONL), 'math-verify' (against 'reference'), or a reward-model directory")
    p.add_argument("--normalise", choices=NORMALISATIONS, default="zscore")
    p.add_argument("--cache", type=Path, default=None, help="score cache file (default: ~/.cache/persyn)")
    p.add_argument("--backbone", default="all-minilm-l6-v2")
    p.add_argument("--test-fraction", type=float, default=1 / 3)
    p.add_argument("--seed", type=int, default=0, help="first split seed")
    p.add_argument("--seeds", type=int, default=5, help="number of seeded splits (default 5)")
    p.add_argument("--json", type=Path, default=None, help="write every split's figures and the summary here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart here")
    p.set_defaults(func=cmd_evaluate)
