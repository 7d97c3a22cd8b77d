"""``pipeline``: the offline Route-then-Generate job end to end."""

from __future__ import annotations

from pathlib import Path

from services.cli.common import alpha_arg, existing_path, positive_int


def cmd_pipeline(args) -> None:
    from services.synthesis.pipeline import PipelineConfig, run_pipeline

    run_pipeline(PipelineConfig(
        out_dir=args.out, n_prompts=args.prompts, n_calibration=args.calibration, prompts_file=args.prompts_file,
        pool_file=args.pool, student=args.student or PipelineConfig.student, alpha=args.alpha,
        backbone=args.backbone, router_mode=args.router_mode, max_tokens=args.max_tokens, workers=args.workers, seed=args.seed))


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="run the offline Route-then-Generate job end to end")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--prompts", type=int, default=30, help="prompts in the built-in problem set")
    p.add_argument("--calibration", type=int, default=12, help="calibration prompts answered by every teacher")
    p.add_argument("--prompts-file", type=existing_path, default=None, help="JSONL with id, prompt, reference")
    p.add_argument("--pool", type=existing_path, default=None, help="teacher pool YAML (default: local demo pool)")
    p.add_argument("--student", default=None)
    p.add_argument("--alpha", type=alpha_arg, default=0.4)
    p.add_argument("--backbone", default="all-minilm-l6-v2")
    p.add_argument("--router-mode", choices=("frozen", "finetune"), default="frozen",
                   help="finetune trains the backbone with the head (the paper's router; slow on a CPU)")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help="answer limit for every teacher (default: each teacher's own max_tokens)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pipeline)
