"""The ``persyn`` command: one subcommand per step, and ``pipeline`` for all of them.

Bad input ends with ``persyn: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from services.cli import data, jobs, pipeline, routers, scores, service, student
from services.cli.common import EXIT_USAGE, CLIError
from services.core.models import ModelNotFound
from services.method.formats import FormatError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persyn", description="PerSyn: route each prompt to the teacher this "
                                     "student learns best from, then generate only there.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (pipeline, service, jobs, data, scores, routers, student):
        group.register(sub)
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
