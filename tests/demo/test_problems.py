import json
import re

import pytest

from services.demo.problems import TEMPLATES, make_problem_specs, make_problems, write_problems_jsonl


def _recompute(template, p):
    return {
        "shopping": lambda: p["count"] * p["price"],
        "sharing": lambda: p["total"] // p["friends"],
        "speed_time": lambda: p["speed"] * p["hours"],
        "remaining": lambda: p["start"] - p["given"],
        "packs": lambda: p["start"] + p["packs"] * p["per_pack"],
        "change": lambda: p["bill"] - p["count"] * p["price"],
        "groups_left": lambda: p["groups"] * p["per_group"] - p["eaten"],
    }[template]()


def test_deterministic_and_seed_dependent():
    assert make_problems(50, seed=3) == make_problems(50, seed=3)
    assert make_problems(50, seed=3) != make_problems(50, seed=4)


def test_prefix_stable():
    assert make_problems(200, seed=1)[:30] == make_problems(30, seed=1)


def test_ids_and_prompts_unique_and_shape():
    rows = make_problems(500, seed=0)
    assert len({r["id"] for r in rows}) == 500
    assert len({r["prompt"] for r in rows}) == 500
    assert rows[0]["id"] == "arith-0001" and rows[-1]["id"] == "arith-0500"
    for r in rows:
        assert set(r) == {"id", "prompt", "reference"}
        assert re.fullmatch(r"\d+", r["reference"]), r


def test_answers_match_parameters():
    specs = make_problem_specs(700, seed=7)
    assert {s.template for s in specs} == set(TEMPLATES)
    for s in specs:
        assert s.answer == _recompute(s.template, s.params), s
        assert 0 <= s.answer <= 1000
        # every number in the prompt comes from the parameters
        nums = {int(x) for x in re.findall(r"\d+", s.prompt)}
        assert nums <= {v for v in s.params.values() if isinstance(v, int)}, s


def _solve_from_text(prompt):
    """Solve each template from its wording alone (independent of the params)."""
    n = [int(x) for x in re.findall(r"\d+", prompt)]
    if "travels at" in prompt:
        return n[0] * n[1]
    if "shares them equally" in prompt:
        return n[0] // n[1]
    if "gave" in prompt and "away" in prompt:
        return n[0] - n[1]
    if "rows of" in prompt:
        return n[0] * n[1] - n[2]
    if "pays with" in prompt:
        return n[2] - n[0] * n[1]
    if "in each" in prompt:
        return n[0] + n[1] * n[2]
    if "Each" in prompt and "costs" in prompt:
        return n[0] * n[1]
    raise AssertionError(prompt)


def test_answers_match_wording():
    for r in make_problems(300, seed=11):
        assert str(_solve_from_text(r["prompt"])) == r["reference"], r


def test_write_jsonl(tmp_path):
    path = write_problems_jsonl(tmp_path / "p" / "arith.jsonl", 12, seed=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == make_problems(12, seed=2)
    from services.method.formats import load_prompts

    assert [r["id"] for r in load_prompts(path)] == [r["id"] for r in rows]


def test_zero_and_negative():
    assert make_problems(0) == []
    with pytest.raises(ValueError):
        make_problems(-1)
