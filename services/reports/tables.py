"""Plain-text tables for the CLI and benchmarks: router quality and teacher allocation."""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def format_table(rows: dict[str, dict[str, float]], *, key_header: str = "router") -> str:
    columns = list(next(iter(rows.values())).keys())
    width = max(len(key_header), *(len(r) for r in rows))
    lines = [f"{key_header:<{width}}  " + "  ".join(f"{c:>8}" for c in columns)]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{row[c]:>8.3f}" for c in columns))
    return "\n".join(lines)


def allocation(assigned: Sequence[str], teachers: Sequence[str]) -> dict[str, int]:
    """Prompts per teacher, every teacher listed (zero included), in pool order."""
    counts = Counter(assigned)
    unknown = set(counts) - set(teachers)
    if unknown:
        raise ValueError(f"assignments name unknown teacher(s): {', '.join(sorted(unknown))}")
    return {t: counts.get(t, 0) for t in teachers}


def format_allocation(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    width = max(len("teacher"), *(len(t) for t in counts))
    lines = [f"{'teacher':<{width}}  {'prompts':>7}  {'share':>6}"]
    for teacher, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"{teacher:<{width}}  {n:>7}  {n / total:>6.1%}")
    return "\n".join(lines)
