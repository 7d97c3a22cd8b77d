"""``problems``, ``export``, ``import-magpie``: files in, files out."""

from __future__ import annotations

from pathlib import Path

from services.cli.common import CLIError, existing_path
from services.method.export import FORMATS


def cmd_problems(args) -> None:
    from services.demo.problems import write_problems_jsonl

    print(write_problems_jsonl(args.out, args.n, seed=args.seed))


def cmd_export(args) -> None:
    from services.method.export import export_dataset
    from services.method.formats import iter_jsonl

    rows = []
    for lineno, obj in iter_jsonl(args.dataset):
        missing = [k for k in ("id", "prompt", "response") if not isinstance(obj.get(k), (str, int))]
        if missing:
            raise CLIError(f"{args.dataset}:{lineno}: missing {', '.join(missing)}")
        rows.append(obj)
    print(export_dataset(rows, args.out, args.format, name=args.name))


def cmd_import_magpie(args) -> None:
    from services.method.formats import import_magpie_zoo, iter_jsonl, write_jsonl

    records = import_magpie_zoo((obj for _, obj in iter_jsonl(args.input)), score_key=args.score_key)
    print(write_jsonl((r.to_json() for r in records), args.out))


def register(sub) -> None:
    p = sub.add_parser("problems", help="write the built-in arithmetic problem set")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_problems)

    p = sub.add_parser("export", help="convert a dataset JSONL to jsonl, sharegpt or alpaca")
    p.add_argument("--dataset", type=existing_path, required=True)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="persyn")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-magpie", help="convert Magpie-Zoo-style rows to parallel-responses JSONL")
    p.add_argument("--input", type=existing_path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--score-key", default=None)
    p.set_defaults(func=cmd_import_magpie)
