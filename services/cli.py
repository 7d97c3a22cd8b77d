"""The ``persyn`` command: one subcommand per step, and ``pipeline`` for all of them.

Bad input ends with ``persyn: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import method
from .formats import FormatError
from .models import ModelNotFound

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error the CLI reports in one line."""


def _alpha(text: str) -> float:
    try:
        return method.check_alpha(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"alpha must be a number in [0, 1], got {text!r}") from exc


def _existing(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return path


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parallel", type=_existing, required=True, help="parallel-responses JSONL")
    p.add_argument("--alpha", type=_alpha, default=0.4, help="weight of learnability against quality (default 0.4)")
    p.add_argument("--student", default=None,
                   help="student model (HF directory or smollm2-135m-instruct); needed when alpha > 0")
    p.add_argument("--quality", default="file",
                   help="'file' (scores in the JSONL), 'math-verify' (against 'reference'), or a reward-model directory")
    p.add_argument("--normalise", choices=method.NORMALISATIONS, default="zscore")
    p.add_argument("--cache", type=Path, default=None, help="score cache file (default: ~/.cache/persyn)")


def _ground_truth(args, records, teachers, cache):
    from .rewards import learnability_matrix, quality_matrix

    if args.alpha > 0 and not args.student:
        raise CLIError("--student is required when --alpha > 0 (learnability needs the student model)")
    quality = quality_matrix(records, teachers, args.quality, cache=cache) if args.alpha < 1 else None
    learn = learnability_matrix(records, teachers, args.student, cache=cache, progress=True) if args.alpha > 0 else None
    return quality, learn, method.combine(quality, learn, args.alpha, args.normalise)


def _load_parallel(path):
    from .formats import load_parallel, teachers_of

    records = load_parallel(path)
    return records, teachers_of(records)


def cmd_problems(args) -> None:
    from .problems import write_problems_jsonl

    print(write_problems_jsonl(args.out, args.n, seed=args.seed))


def cmd_score(args) -> None:
    from .cache import ScoreCache
    from .formats import write_jsonl

    records, teachers = _load_parallel(args.parallel)
    quality, learn, scores = _ground_truth(args, records, teachers, ScoreCache(args.cache))
    ranking = method.rank_teachers(scores)

    def row_of(matrix, i):
        return None if matrix is None else {t: (None if v != v else float(v)) for t, v in zip(teachers, matrix[i])}

    write_jsonl(({"id": rec.id, "quality": row_of(quality, i), "learnability": row_of(learn, i),
                  "score": row_of(scores, i),
                  "ranking": [teachers[j] for j in ranking[i] if scores[i, j] == scores[i, j]]}
                 for i, rec in enumerate(records)), args.out)
    print(args.out)


def cmd_train_router(args) -> None:
    from .cache import ScoreCache
    from .router_training import TrainConfig, train_router

    records, teachers = _load_parallel(args.parallel)
    cache = ScoreCache(args.cache)
    _, _, scores = _ground_truth(args, records, teachers, cache)
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
    from .formats import load_prompts, write_jsonl
    from .router import Router

    prompts = load_prompts(args.prompts)
    router = Router.load(args.router, device=args.device)
    results = router.route([p["prompt"] for p in prompts], top_k=args.top_k, progress=True)
    write_jsonl(({"id": p["id"], "teacher": r.teacher, "top_k": r.top_k, "strengths": r.strengths}
                 for p, r in zip(prompts, results)), args.out)
    from .evaluate import allocation, format_allocation

    print(format_allocation(allocation([r.teacher for r in results], router.teachers)))
    print(f"wrote {args.out}")


def cmd_evaluate(args) -> None:
    from .cache import ScoreCache
    from .evaluate import format_table, holdout_comparison, plot_router_quality

    records, teachers = _load_parallel(args.parallel)
    cache = ScoreCache(args.cache)
    _, _, scores = _ground_truth(args, records, teachers, cache)
    table = holdout_comparison([r.prompt for r in records], teachers, scores, test_fraction=args.test_fraction,
                               seed=args.seed, backbone=args.backbone, cache=cache)
    print(format_table(table))
    if args.plot:
        print(f"plot: {plot_router_quality(table, args.plot)}")


def cmd_select(args) -> None:
    import numpy as np

    from .cache import ScoreCache
    from .evaluate import allocation, format_allocation
    from .export import export_dataset
    from .rewards import scas_cost_matrix
    from .strategies import StrategyInputs, available_matrix, dataset_rows, select

    records, teachers = _load_parallel(args.parallel)
    cache = ScoreCache(args.cache)
    families, sizes = {}, {}
    if args.pool:
        from .formats import load_teacher_pool

        pool = load_teacher_pool(args.pool)
        families, sizes = {t.name: t.family for t in pool}, {t.name: t.size_b for t in pool}
    quality = learn = scores = strengths = costs = None
    if args.strategy in ("car", "scas") and not args.student:
        raise CLIError(f"strategy {args.strategy} needs --student")
    if args.strategy == "oracle":
        quality, learn, scores = _ground_truth(args, records, teachers, cache)
    elif args.strategy == "car" or (args.strategy in ("strong", "family_strong", "mix") and not args.strong_teacher):
        from .rewards import learnability_matrix, quality_matrix

        quality = quality_matrix(records, teachers, args.quality, cache=cache)
        if args.strategy == "car":
            learn = learnability_matrix(records, teachers, args.student, cache=cache, progress=True)
    if args.strategy == "persyn":
        if not args.router:
            raise CLIError("strategy persyn needs --router DIR")
        from .router import Router

        router = Router.load(args.router)
        unknown = sorted(set(teachers) - set(router.teachers))
        if unknown:
            raise CLIError(f"router {args.router} does not know teacher(s) {', '.join(unknown)}")
        strengths = router.strengths([r.prompt for r in records], progress=True)[
            :, [router.teachers.index(t) for t in teachers]]
    if args.strategy == "scas":
        costs = scas_cost_matrix(records, teachers, args.student, cache=cache, progress=True)
    inputs = StrategyInputs(teachers=teachers, available=available_matrix(records, teachers), quality=quality,
                            learnability=learn, scores=scores, strengths=strengths, scas_costs=costs,
                            families=families, sizes=sizes, student_family=args.student_family,
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


def cmd_export(args) -> None:
    from .export import export_dataset
    from .formats import iter_jsonl

    rows = []
    for lineno, obj in iter_jsonl(args.dataset):
        missing = [k for k in ("id", "prompt", "response") if not isinstance(obj.get(k), (str, int))]
        if missing:
            raise CLIError(f"{args.dataset}:{lineno}: missing {', '.join(missing)}")
        rows.append(obj)
    print(export_dataset(rows, args.out, args.format, name=args.name))


def cmd_import_magpie(args) -> None:
    from .formats import import_magpie_zoo, iter_jsonl, write_jsonl

    records = import_magpie_zoo((obj for _, obj in iter_jsonl(args.input)), score_key=args.score_key)
    print(write_jsonl((r.to_json() for r in records), args.out))


def cmd_pipeline(args) -> None:
    from .pipeline import PipelineConfig, run_pipeline

    run_pipeline(PipelineConfig(
        out_dir=args.out, n_prompts=args.prompts, n_calibration=args.calibration, prompts_file=args.prompts_file,
        pool_file=args.pool, student=args.student or PipelineConfig.student, alpha=args.alpha,
        backbone=args.backbone, max_tokens=args.max_tokens, workers=args.workers, seed=args.seed))


def run_demo_job(base_url: str, out: Path, *, n_prompts: int, n_calibration: int, student_id: str,
                 seed: int) -> dict:
    """A full calibrate -> route -> synthesize job through the REST API, with progress bars."""
    import time

    import httpx
    from tqdm.auto import tqdm

    from .evaluate import format_allocation, plot_allocation
    from .problems import make_problems

    with httpx.Client(base_url=base_url, timeout=60) as client:
        client.post("/v1/students", json={"student_id": student_id, "family": "smollm2"}).raise_for_status()
        response = client.post("/v1/jobs", json={
            "kind": "persyn", "student_id": student_id, "prompts": make_problems(n_prompts, seed=seed),
            "calibration_size": n_calibration, "seed": seed})
        if response.status_code != 202:
            raise CLIError(f"job rejected ({response.status_code}): {response.text}")
        job_id = response.json()["id"]
        print(f"job {job_id} submitted: {n_prompts} prompts, {n_calibration} for calibration")
        bars: dict[str, tqdm] = {}
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            for stage in job["stages"]:  # one bar per stage, closed when the stage finishes
                bar = bars.get(stage["stage"]) or bars.setdefault(
                    stage["stage"], tqdm(total=stage["total"], desc=stage["stage"], unit="item"))
                if not bar.disable:  # tqdm marks a closed bar disabled
                    bar.update(stage["done"] + stage["failed"] - bar.n)
                    if stage["finished"] is not None:
                        bar.close()
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        for bar in bars.values():
            bar.close()
        if job["state"] != "succeeded":
            raise CLIError(f"job {job_id} ended {job['state']}: {job.get('error') or job['errors'][:3]}")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{job_id}.jsonl"
        path.write_bytes(client.get(f"/v1/jobs/{job_id}/dataset", params={"format": "jsonl"}).content)
        teachers = [t["name"] for t in client.get("/v1/teachers").json()]
    counts = {t: job["allocation"].get(t, 0) for t in teachers}
    print(format_allocation(counts))
    plot = plot_allocation(counts, out / f"{job_id}_allocation.png", title="Teacher allocation (demo pool)")
    spent = ", ".join(f"{t}: {u['completion_tokens']} tokens, ${u['cost']:.6f}" for t, u in job["usage"].items())
    print(f"router version {job['router_version']}; teacher usage: {spent}")
    print(f"dataset ({job['rows']} rows): {path}\nallocation plot: {plot}")
    return job


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def cmd_up(args) -> None:
    import signal
    import time

    from .settings import Settings
    from .stack import LocalStack

    settings = Settings.from_env()
    stack = LocalStack(work_dir=args.work_dir, redis_url=settings.redis_url, key_prefix=settings.key_prefix,
                       port=args.port, teacher_pool=args.pool or settings.teacher_pool)
    signal.signal(signal.SIGTERM, _interrupt)
    print("starting Redis (if none answers), the demo teacher pool, three Celery workers and the gateway ...")
    try:
        with stack:
            print(f"gateway: {stack.url}  (OpenAPI docs at {stack.url}/docs; logs in {stack.work_dir / 'logs'})")
            if args.demo_job:
                run_demo_job(stack.url, args.work_dir / "datasets", n_prompts=args.prompts,
                             n_calibration=args.calibration, student_id=args.student, seed=args.seed)
                return
            print("serving; Ctrl-C stops everything started here")
            while all(p.poll() is None for p in [stack.gateway, *stack.workers.values()]):
                time.sleep(1)
            raise CLIError(f"a service process exited; see {stack.work_dir / 'logs'}")
    except KeyboardInterrupt:
        print("stopping ...")


def cmd_router_server(args) -> None:
    from .router_server import main as serve

    serve(["--host", args.host, "--port", str(args.port)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persyn", description="PerSyn: route each prompt to the teacher this "
                                     "student learns best from, then generate only there.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pipeline", help="run the offline Route-then-Generate job end to end")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--prompts", type=int, default=30, help="prompts in the built-in problem set")
    p.add_argument("--calibration", type=int, default=12, help="calibration prompts answered by every teacher")
    p.add_argument("--prompts-file", type=_existing, default=None, help="JSONL with id, prompt, reference")
    p.add_argument("--pool", type=_existing, default=None, help="teacher pool YAML (default: local demo pool)")
    p.add_argument("--student", default=None)
    p.add_argument("--alpha", type=_alpha, default=0.4)
    p.add_argument("--backbone", default="all-minilm-l6-v2")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("up", help="start the embedded service stack (Ctrl-C stops it)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/service"))
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--pool", type=_existing, default=None, help="teacher pool YAML (default: local demo pool)")
    p.add_argument("--demo-job", action="store_true",
                   help="run a full job on the built-in problems through the REST API, then stop")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--calibration", type=int, default=8)
    p.add_argument("--student", default="smollm2-demo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("router-server", help="serve routers as their own process (gateways call it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.set_defaults(func=cmd_router_server)

    p = sub.add_parser("problems", help="write the built-in arithmetic problem set")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_problems)

    p = sub.add_parser("score", help="rewards, normalised scores and rankings per prompt")
    _scoring_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("train-router", help="train a Bradley-Terry router on parallel responses")
    _scoring_args(p)
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
    p.add_argument("--router", type=_existing, required=True)
    p.add_argument("--prompts", type=_existing, required=True, help="JSONL with id and prompt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("evaluate", help="Hit@k of a router against random, best single teacher and kNN")
    _scoring_args(p)
    p.add_argument("--backbone", default="all-minilm-l6-v2")
    p.add_argument("--test-fraction", type=float, default=1 / 3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("select", help="build a dataset from parallel responses with one strategy")
    _scoring_args(p)
    from .export import FORMATS
    from .strategies import STRATEGIES

    p.add_argument("--strategy", choices=STRATEGIES, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--name", default=None)
    p.add_argument("--router", type=_existing, default=None, help="router artifact (strategy persyn)")
    p.add_argument("--pool", type=_existing, default=None, help="teacher pool YAML (families and sizes)")
    p.add_argument("--student-family", default=None)
    p.add_argument("--strong-teacher", default=None)
    p.add_argument("--beta", type=float, default=1.0, help="CAR's weight on student NLL")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("export", help="convert a dataset JSONL to jsonl, sharegpt or alpaca")
    p.add_argument("--dataset", type=_existing, required=True)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="persyn")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-magpie", help="convert Magpie-Zoo-style rows to parallel-responses JSONL")
    p.add_argument("--input", type=_existing, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--score-key", default=None)
    p.set_defaults(func=cmd_import_magpie)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening; weight loading is instant
    try:
        args.func(args)
    except (CLIError, FormatError, ModelNotFound, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"persyn: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
