"""File formats: the teacher pool (YAML), parallel responses and prompts (JSONL).

Readers validate as they go and raise :class:`FormatError` naming the file and line,
so the CLI can print one clear message instead of a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml


class FormatError(ValueError):
    """Input that does not follow one of our formats; the message says where."""


@dataclass
class Teacher:
    """One teacher LLM behind an OpenAI-compatible endpoint."""

    name: str
    family: str
    size_b: float
    base_url: str
    model: str
    sampling: dict = field(default_factory=dict)
    cost_per_1m_output: float = 0.0
    long_cot: bool = False
    system_prompt: str | None = None


@dataclass
class ParallelRecord:
    """One prompt with every teacher's answer (the calibration unit).

    ``quality`` maps teacher -> score, ``None`` where the score is missing (that
    teacher then takes no part in this prompt's ranking).
    """

    id: str
    prompt: str
    responses: dict[str, str]
    reference: str | None = None
    quality: dict[str, float | None] | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "responses": self.responses}
        if self.reference is not None:
            row["reference"] = self.reference
        if self.quality is not None:
            row["quality"] = self.quality
        return row


# --------------------------------------------------------------------------- teacher pool

_TEACHER_REQUIRED = ("name", "family", "size_b", "base_url", "model")


def load_teacher_pool(path: str | Path) -> list[Teacher]:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FormatError(f"{path}: not valid YAML: {exc}") from exc
    entries = doc.get("teachers") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise FormatError(f"{path}: expected a top-level 'teachers:' list with at least one entry")
    known = set(Teacher.__dataclass_fields__)
    teachers: list[Teacher] = []
    for i, entry in enumerate(entries):
        where = f"{path}: teachers[{i}]"
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: expected a mapping")
        missing = [k for k in _TEACHER_REQUIRED if k not in entry]
        if missing:
            raise FormatError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise FormatError(f"{where}: unknown field(s) {', '.join(unknown)}")
        try:
            entry = {**entry, "size_b": float(entry["size_b"]),
                     "cost_per_1m_output": float(entry.get("cost_per_1m_output", 0.0))}
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{where}: size_b and cost_per_1m_output must be numbers") from exc
        if not isinstance(entry.get("sampling", {}), dict):
            raise FormatError(f"{where}: sampling must be a mapping")
        teachers.append(Teacher(**entry))
    names = [t.name for t in teachers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FormatError(f"{path}: duplicate teacher name(s) {', '.join(dupes)}")
    return teachers


def teacher_pool_cached(path: str | Path) -> list[Teacher]:
    """The pool, re-read only when the file changes (jobs and workers consult it per task)."""
    path = Path(path)
    return _teacher_pool_at(str(path), path.stat().st_mtime_ns if path.exists() else -1)


@lru_cache(maxsize=8)
def _teacher_pool_at(path: str, mtime_ns: int) -> list[Teacher]:
    return load_teacher_pool(path)


def dump_teacher_pool(teachers: Iterable[Teacher], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"teachers": [asdict(t) for t in teachers]}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- JSONL

def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; bad JSON names its line."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise FormatError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _reference_text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if "output" not in value:
            raise FormatError(f"{where}: reference object needs an 'output' field")
        value = value["output"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise FormatError(f"{where}: reference must be a string, a number or {{output}}")
    return value


def _quality(value: Any, teachers: Iterable[str], where: str) -> dict[str, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FormatError(f"{where}: quality must be an object {{teacher: number or null}}")
    teachers = set(teachers)
    out: dict[str, float | None] = {}
    for name, score in value.items():
        if name not in teachers:
            raise FormatError(f"{where}: quality names teacher {name!r} with no response")
        if score is None:
            out[name] = None
        elif isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score):
            out[name] = float(score)
        else:
            raise FormatError(f"{where}: quality[{name!r}] must be a finite number or null")
    return out


def parse_parallel_row(obj: dict, where: str) -> ParallelRecord:
    rid = obj.get("id", obj.get("question_id"))
    if rid is None or not isinstance(rid, (str, int)):
        raise FormatError(f"{where}: missing 'id'")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise FormatError(f"{where}: 'prompt' must be a non-empty string")
    responses = obj.get("responses")
    if not isinstance(responses, dict) or not responses:
        raise FormatError(f"{where}: 'responses' must be a non-empty object {{teacher: text}}")
    for name, text in responses.items():
        if not isinstance(text, str):
            raise FormatError(f"{where}: responses[{name!r}] must be a string")
    return ParallelRecord(
        id=str(rid),
        prompt=prompt,
        responses=dict(responses),
        reference=_reference_text(obj.get("reference"), where),
        quality=_quality(obj.get("quality"), responses, where),
    )


def load_parallel(path: str | Path) -> list[ParallelRecord]:
    """Read a parallel-responses JSONL (``arena_parallel.jsonl`` loads as it is)."""
    records: list[ParallelRecord] = []
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        rec = parse_parallel_row(obj, f"{path}:{lineno}")
        if rec.id in seen:
            raise FormatError(f"{path}:{lineno}: duplicate id {rec.id!r}")
        seen.add(rec.id)
        records.append(rec)
    if not records:
        raise FormatError(f"{path}: no records")
    return records


def load_prompts(path: str | Path) -> list[dict]:
    """Read any JSONL with ``id`` and ``prompt`` (other fields kept, e.g. ``reference``)."""
    rows: list[dict] = []
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        rid, prompt = obj.get("id"), obj.get("prompt")
        if rid is None or not isinstance(rid, (str, int)):
            raise FormatError(f"{path}:{lineno}: missing 'id'")
        if not isinstance(prompt, str) or not prompt.strip():
            raise FormatError(f"{path}:{lineno}: 'prompt' must be a non-empty string")
        if str(rid) in seen:
            raise FormatError(f"{path}:{lineno}: duplicate id {rid!r}")
        seen.add(str(rid))
        rows.append({**obj, "id": str(rid)})
    if not rows:
        raise FormatError(f"{path}: no prompts")
    return rows


def teachers_of(records: Iterable[ParallelRecord]) -> list[str]:
    """Teacher names in first-seen order across records."""
    names: dict[str, None] = {}
    for rec in records:
        for name in rec.responses:
            names.setdefault(name, None)
    return list(names)


# --------------------------------------------------------------------------- Magpie-Zoo import

def import_magpie_zoo(rows: Iterable[dict], *, score_key: str | None = None) -> list[ParallelRecord]:
    """Turn Magpie-100K-Generator-Zoo-style rows into parallel records.

    Each row has ``uuid``, ``instruction`` and one column per model holding
    ``{"content": ..., <reward-model score fields>}``. ``score_key`` picks the score
    field; by default the first numeric field other than ``content`` is used.
    """
    records = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        if "uuid" not in row or not isinstance(row.get("instruction"), str):
            raise FormatError(f"{where}: Magpie rows need 'uuid' and 'instruction'")
        responses: dict[str, str] = {}
        quality: dict[str, float | None] = {}
        for col, cell in row.items():
            if not (isinstance(cell, dict) and isinstance(cell.get("content"), str)):
                continue
            responses[col] = cell["content"]
            keys = [score_key] if score_key else [
                k for k, v in cell.items()
                if k != "content" and isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            score = cell.get(keys[0]) if keys else None
            quality[col] = float(score) if isinstance(score, (int, float)) else None
        if not responses:
            raise FormatError(f"{where}: no model columns with 'content'")
        records.append(ParallelRecord(
            id=str(row["uuid"]), prompt=row["instruction"], responses=responses,
            quality=quality if any(v is not None for v in quality.values()) else None,
        ))
    return records
