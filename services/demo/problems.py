"""The built-in problem set: seeded arithmetic word problems with known integer answers.

These exist so the whole pipeline (calibrate -> route -> generate -> verify) can run
offline against the demo pool. Numbers are kept small so a 135M model gets some of
them right and some wrong, which is what makes per-prompt teacher rankings non-trivial.

Generation is deterministic for a given ``seed`` and *prefix-stable*: the first k
problems of ``make_problems(n, seed)`` are the same for every n >= k. Prompts are
unique within a set. Each problem is a plain dict ``{"id", "prompt", "reference"}``
(the prompt JSONL format read by :func:`services.method.formats.load_prompts`);
:func:`make_problem_specs` also exposes the template name and parameters.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack",
         "Lily", "Max", "Nora", "Omar", "Rosa", "Sam", "Tara", "Leo")
ITEMS = ("apple", "pencil", "book", "cookie", "marble", "sticker", "orange", "card",
         "balloon", "shell")
CONTAINERS = ("box", "bag", "pack", "jar")
VEHICLES = (("car", "kilometers", "kilometers per hour"), ("train", "miles", "miles per hour"),
            ("bike", "kilometers", "kilometers per hour"), ("boat", "miles", "miles per hour"))

INSTRUCTION = "Give the final answer as a single number."


@dataclass(frozen=True)
class ProblemSpec:
    """One generated problem with the parameters it came from."""

    id: str
    template: str
    params: dict
    prompt: str
    answer: int

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "reference": str(self.answer)}


def _shopping(r: random.Random) -> tuple[dict, str, int]:
    p = {"name": r.choice(NAMES), "item": r.choice(ITEMS), "count": r.randint(2, 9),
         "price": r.randint(2, 12)}
    text = (f"{p['name']} buys {p['count']} {p['item']}s. Each {p['item']} costs {p['price']} "
            f"dollars. How many dollars does {p['name']} spend in total?")
    return p, text, p["count"] * p["price"]


def _sharing(r: random.Random) -> tuple[dict, str, int]:
    p = {"name": r.choice(NAMES), "item": r.choice(ITEMS), "friends": r.randint(2, 6),
         "each": r.randint(2, 9)}
    total = p["friends"] * p["each"]
    p["total"] = total
    text = (f"{p['name']} has {total} {p['item']}s and shares them equally among "
            f"{p['friends']} friends. How many {p['item']}s does each friend get?")
    return p, text, p["each"]


def _speed_time(r: random.Random) -> tuple[dict, str, int]:
    vehicle, unit, speed_unit = r.choice(VEHICLES)
    p = {"vehicle": vehicle, "speed": r.randint(2, 12) * 5, "hours": r.randint(2, 6)}
    text = (f"A {vehicle} travels at {p['speed']} {speed_unit} for {p['hours']} hours. "
            f"How many {unit} does it travel?")
    return p, text, p["speed"] * p["hours"]


def _remaining(r: random.Random) -> tuple[dict, str, int]:
    start = r.randint(10, 60)
    p = {"name": r.choice(NAMES), "item": r.choice(ITEMS), "start": start,
         "given": r.randint(1, start - 1)}
    text = (f"{p['name']} had {start} {p['item']}s and gave {p['given']} of them away. "
            f"How many {p['item']}s does {p['name']} have left?")
    return p, text, start - p["given"]


def _packs(r: random.Random) -> tuple[dict, str, int]:
    p = {"name": r.choice(NAMES), "item": r.choice(ITEMS), "container": r.choice(CONTAINERS),
         "start": r.randint(1, 20), "packs": r.randint(2, 5), "per_pack": r.randint(2, 8)}
    text = (f"{p['name']} has {p['start']} {p['item']}s and buys {p['packs']} {p['container']}s "
            f"with {p['per_pack']} {p['item']}s in each {p['container']}. How many {p['item']}s "
            f"does {p['name']} have now?")
    return p, text, p["start"] + p["packs"] * p["per_pack"]


def _change(r: random.Random) -> tuple[dict, str, int]:
    count, price = r.randint(2, 6), r.randint(1, 9)
    bill = next(b for b in (10, 20, 50, 100) if b >= count * price)
    p = {"name": r.choice(NAMES), "item": r.choice(ITEMS), "count": count, "price": price,
         "bill": bill}
    text = (f"{p['name']} buys {count} {p['item']}s at {price} dollars each and pays with a "
            f"{bill} dollar bill. How many dollars of change does {p['name']} get?")
    return p, text, bill - count * price


def _groups_left(r: random.Random) -> tuple[dict, str, int]:
    p = {"item": r.choice(ITEMS), "groups": r.randint(2, 6), "per_group": r.randint(3, 9)}
    p["eaten"] = r.randint(1, p["groups"] * p["per_group"] - 1)
    text = (f"There are {p['groups']} rows of {p['item']}s with {p['per_group']} {p['item']}s "
            f"in each row. {p['eaten']} {p['item']}s are taken away. How many {p['item']}s "
            f"are left?")
    return p, text, p["groups"] * p["per_group"] - p["eaten"]


#: Template name -> generator returning (params, question text, integer answer).
TEMPLATES: dict[str, Callable[[random.Random], tuple[dict, str, int]]] = {
    "shopping": _shopping,
    "sharing": _sharing,
    "speed_time": _speed_time,
    "remaining": _remaining,
    "packs": _packs,           # multi-step: a + b*c
    "change": _change,         # multi-step: bill - a*b
    "groups_left": _groups_left,  # multi-step: a*b - c
}


def problem_id(index: int) -> str:
    """1-based, zero-padded to 4 digits (``arith-0001``); wider numbers just grow."""
    return f"arith-{index:04d}"


def make_problem_specs(n: int, seed: int = 0) -> list[ProblemSpec]:
    """``n`` distinct problems; template i cycles through a seeded shuffle of TEMPLATES."""
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(f"persyn-arith-{seed}")
    names = list(TEMPLATES)
    specs: list[ProblemSpec] = []
    seen: set[str] = set()
    order: list[str] = []
    attempts = 0
    while len(specs) < n:
        if not order:
            order = names[:]
            rng.shuffle(order)
        template = order.pop()
        params, text, answer = TEMPLATES[template](rng)
        prompt = f"{text} {INSTRUCTION}"
        attempts += 1
        if attempts > 50 * (n + 10):
            raise ValueError(f"cannot make {n} distinct problems")
        if prompt in seen:
            continue
        seen.add(prompt)
        specs.append(ProblemSpec(problem_id(len(specs) + 1), template, params, prompt, answer))
    return specs


def make_problems(n: int, seed: int = 0) -> list[dict]:
    """``[{"id": "arith-0001", "prompt": ..., "reference": "42"}, ...]``."""
    return [spec.to_dict() for spec in make_problem_specs(n, seed)]


def write_problems_jsonl(path: str | Path, n: int, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in make_problems(n, seed):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
