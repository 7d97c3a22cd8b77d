"""``score`` and ``select``: rewards and rankings of a parallel file, and a dataset by one strategy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.cli.common import (CLIError, add_scoring_args, existing_path, ground_truth, load_parallel_file,
                                 precision_of)
from services.method.export import FORMATS
from services.method.rewards import rank_teachers
from services.method.strategies import STRATEGIES


def cmd_score(args) -> None:
    from services.core.cache import ScoreCache
    from services.method.formats import write_jsonl

    records, teachers = load_parallel_file(args.parallel)
    quality, learn, scores = ground_truth(args, records, teachers, ScoreCache(args.cache))
    ranking = rank_teachers(scores)

    def row_of(matrix, i):
        return None if matrix is None else {t: (None if v != v else float(v)) for t, v in zip(teachers, matrix[i])}

    write_jsonl(({"id": rec.id, "quality": row_of(quality, i), "learnability": row_of(learn, i),
                  "score": row_of(scores, i),
                  "ranking": [teachers[j] for j in ranking[i] if scores[i, j] == scores[i, j]]}
                 for i, rec in enumerate(records)), args.out)
    print(args.out)


def cmd_select(args) -> None:
    import numpy as np

    from services.core.cache import ScoreCache
    from services.method.export import export_dataset
    from services.method.strategies import StrategyInputs, available_matrix, dataset_rows, select
    from services.reports.tables import allocation, format_allocation
    from services.scoring.matrices import scas_cost_matrix

    records, teachers = load_parallel_file(args.parallel)
    cache = ScoreCache(args.cache)
    families = {}
    if args.pool:
        from services.method.formats import load_teacher_pool

        families = {t.name: t.family for t in load_teacher_pool(args.pool)}
    quality = learn = scores = strengths = costs = None
    if args.strategy in ("car", "scas") and not args.student:
        raise CLIError(f"strategy {args.strategy} needs --student")
    if args.strategy == "oracle":
        quality, learn, scores = ground_truth(args, records, teachers, cache)
    elif args.strategy == "car" or (args.strategy in ("strong", "family_strong") and not args.strong_teacher):
        from services.scoring.matrices import learnability_matrix, quality_matrix

        quality = quality_matrix(records, teachers, args.quality, cache=cache)
        if args.strategy == "car":
            learn = learnability_matrix(records, teachers, args.student, cache=cache, progress=True,
                                        precision=precision_of(args))
    if args.strategy == "persyn":
        if not args.router:
            raise CLIError("strategy persyn needs --router DIR")
        from services.routing.model import Router

        router = Router.load(args.router, precision=precision_of(args))
        unknown = sorted(set(teachers) - set(router.teachers))
        if unknown:
            raise CLIError(f"router {args.router} does not know teacher(s) {', '.join(unknown)}")
        strengths = router.strengths([r.prompt for r in records], progress=True)[
            :, [router.teachers.index(t) for t in teachers]]
    if args.strategy == "scas":
        costs = scas_cost_matrix(records, teachers, args.student, cache=cache, progress=True,
                                 precision=precision_of(args))
    inputs = StrategyInputs(teachers=teachers, available=available_matrix(records, teachers), quality=quality,
                            learnability=learn, scores=scores, strengths=strengths, scas_costs=costs,
                            families=families, student_family=args.student_family,
                            strong_teacher=args.strong_teacher, car_beta=args.beta, seed=args.seed)
    selection = select(args.strategy, inputs)
    rows = dataset_rows(records, teachers, selection)
    path = export_dataset(rows, args.out, args.format, name=args.name or args.strategy)
    print(format_allocation(allocation([r["teacher"] for r in rows], teachers)))
    extra = {k: v for k, v in selection.detail.items() if k != "car"}
    print(json.dumps({"strategy": args.strategy, "rows": len(rows), **extra, "file": str(path)}))
    if np.any(selection.choice < 0):
        print(f"warning: {selection.detail['unserved']} prompt(s) had no answer from the chosen teacher",
              file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("score", help="rewards, normalised scores and rankings per prompt")
    add_scoring_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("select", help="build a dataset from parallel responses with one strategy")
    add_scoring_args(p)
    p.add_argument("--strategy", choices=STRATEGIES, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--name", default=None)
    p.add_argument("--router", type=existing_path, default=None, help="router artifact (strategy persyn)")
    p.add_argument("--pool", type=existing_path, default=None, help="teacher pool YAML (teacher families, for family_strong)")
    p.add_argument("--student-family", default=None)
    p.add_argument("--strong-teacher", default=None)
    p.add_argument("--beta", type=float, default=1.0, help="CAR's weight on student NLL")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_select)
