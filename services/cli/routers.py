"""``train-router``, ``route``, ``evaluate``: the router offline."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli.common import add_scoring_args, existing_path, ground_truth, load_parallel_file


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


def cmd_evaluate(args) -> None:
    from services.core.cache import ScoreCache
    from services.reports.plots import plot_router_quality
    from services.reports.tables import format_table
    from services.routing.evaluation import holdout_comparison

    records, teachers = load_parallel_file(args.parallel)
    cache = ScoreCache(args.cache)
    _, _, scores = ground_truth(args, records, teachers, cache)
    table = holdout_comparison([r.prompt for r in records], teachers, scores, test_fraction=args.test_fraction,
                               seed=args.seed, backbone=args.backbone, cache=cache)
    print(format_table(table))
    if args.plot:
        print(f"plot: {plot_router_quality(table, args.plot)}")


def register(sub) -> None:
    p = sub.add_parser("train-router", help="train a Bradley-Terry router on parallel responses")
    add_scoring_args(p)
    p.add_argument("--out", type=Path, required=True, help="artifact directory")
    p.add_argument("--backbone", default="all-minilm-l6-v2")
    p.add_argument("--mode", choices=("frozen", "finetune"), default="frozen")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--weight-decay", type=float, default=None, help="default: chosen on validation")
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

    p = sub.add_parser("evaluate", help="Hit@k of a router against random, best single teacher and kNN")
    add_scoring_args(p)
    p.add_argument("--backbone", default="all-minilm-l6-v2")
    p.add_argument("--test-fraction", type=float, default=1 / 3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart here")
    p.set_defaults(func=cmd_evaluate)
