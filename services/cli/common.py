"""What the subcommands share: the one-line user error, argument types, loading and scoring a parallel file."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.method.rewards import NORMALISATIONS, check_alpha, combine

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error the CLI reports in one line."""


def alpha_arg(text: str) -> float:
    try:
        return check_alpha(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"alpha must be a number in [0, 1], got {text!r}") from exc


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return path


def precision_arg(text: str) -> str:
    from services.core.settings import parse_precision

    try:
        return parse_precision(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def precision_of(args) -> str:
    """``--precision``, else the ``PERSYN_PRECISION`` setting (default auto)."""
    from services.core.settings import Settings

    return args.precision or Settings.from_env().precision


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parallel", type=existing_path, required=True, help="parallel-responses JSONL")
    p.add_argument("--alpha", type=alpha_arg, default=0.4, help="weight of learnability against quality (default 0.4)")
    p.add_argument("--student", default=None,
                   help="student model (HF directory or smollm2-135m-instruct); needed when alpha > 0")
    p.add_argument("--quality", default="file",
                   help="'file' (scores in the JSONL), 'math-verify' (against 'reference'), or a reward-model directory")
    p.add_argument("--normalise", choices=NORMALISATIONS, default="zscore")
    p.add_argument("--cache", type=Path, default=None, help="score cache file (default: ~/.cache/persyn)")
    p.add_argument("--precision", type=precision_arg, default=None,
                   help="student (and router encoder) precision: auto, fp32, bf16, fp16 "
                        "(default: PERSYN_PRECISION, else auto = bf16 where the hardware has it)")


def ground_truth(args, records, teachers, cache):
    from services.scoring.matrices import learnability_matrix, quality_matrix

    if args.alpha > 0 and not args.student:
        raise CLIError("--student is required when --alpha > 0 (learnability needs the student model)")
    quality = quality_matrix(records, teachers, args.quality, cache=cache) if args.alpha < 1 else None
    learn = (learnability_matrix(records, teachers, args.student, cache=cache, progress=True,
                                 precision=precision_of(args)) if args.alpha > 0 else None)
    return quality, learn, combine(quality, learn, args.alpha, args.normalise)


def load_parallel_file(path):
    from services.method.formats import load_parallel, teachers_of

    records = load_parallel(path)
    return records, teachers_of(records)
