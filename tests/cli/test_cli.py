"""The persyn command: the documented subcommands and every user-error path (exit 2)."""

import json
import subprocess
import sys

import pytest

from services.cli.main import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True, text=True)


@pytest.fixture()
def small_parallel(tmp_path):
    path = tmp_path / "parallel.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Explain topic {i} briefly.",
             "responses": {"a": f"Short answer {i}.", "b": f"A longer answer about topic {i}.", "c": "I don't know."},
             "quality": {"a": 5 + i % 3, "b": 7 - i % 2, "c": 1}} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_train_router_then_route_writes_one_line_per_prompt(small_parallel, tmp_path, capsys):
    out = tmp_path / "router"
    assert main(["train-router", "--parallel", str(small_parallel), "--alpha", "0", "--out", str(out),
                 "--cache", str(tmp_path / "c.sqlite")]) == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "x1", "prompt": "Explain topic 99 briefly."}\n{"id": 7, "prompt": "Hello"}\n')
    assert main(["route", "--router", str(out), "--prompts", str(prompts), "--out", str(tmp_path / "r.jsonl")]) == 0
    lines = [json.loads(l) for l in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [l["id"] for l in lines] == ["x1", "7"]
    for line in lines:
        assert line["teacher"] in ("a", "b", "c") and set(line["strengths"]) == {"a", "b", "c"}
        assert line["teacher"] == max(line["strengths"], key=line["strengths"].get)
        assert line["teacher"] != "c"  # the teacher that always loses is never routed to


def test_select_and_export_write_datasets(small_parallel, tmp_path):
    assert main(["select", "--strategy", "strong", "--parallel", str(small_parallel), "--alpha", "0",
                 "--format", "sharegpt", "--out", str(tmp_path / "ds")]) == 0
    data = json.loads((tmp_path / "ds" / "strong_sharegpt.json").read_text())
    assert len(data) == 12
    assert json.loads((tmp_path / "ds" / "dataset_info.json").read_text())["strong_sharegpt"]


@pytest.mark.parametrize("args, message", [
    (["train-router", "--parallel", "missing.jsonl", "--alpha", "0", "--out", "r"], "no such file"),
    (["train-router", "--parallel", "{parallel}", "--alpha", "1.5", "--out", "r"], "alpha must be a number in [0, 1]"),
    (["train-router", "--parallel", "{parallel}", "--alpha", "-0.1", "--out", "r"], "alpha must be"),
    (["train-router", "--parallel", "{parallel}", "--alpha", "0.4", "--out", "r"], "--student is required"),
    (["train-router", "--parallel", "{bad}", "--alpha", "0", "--out", "r"], "bad.jsonl:2: not valid JSON"),
    (["train-router", "--parallel", "{empty}", "--alpha", "0", "--out", "r"], "'responses' must be a non-empty"),
    (["select", "--strategy", "strong", "--strong-teacher", "gpt-9", "--parallel", "{parallel}",
      "--alpha", "0", "--out", "d"], "unknown teacher 'gpt-9'"),
    (["select", "--strategy", "best", "--parallel", "{parallel}", "--out", "d"], "invalid choice: 'best'"),
    (["route", "--router", "{parallel_dir}", "--prompts", "{parallel}", "--out", "o.jsonl"], "not a router artifact"),
])
def test_user_errors_exit_2_with_a_clear_message(small_parallel, tmp_path, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(small_parallel.read_text().splitlines()[0] + "\n{oops\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": "e", "prompt": "p", "responses": {}}\n')
    values = {"parallel": small_parallel, "bad": bad, "empty": empty, "parallel_dir": tmp_path}
    result = run_cli(*[a.format(**values) for a in args])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_route_rejects_unknown_teacher_in_persyn_strategy(small_parallel, tmp_path):
    out = tmp_path / "router"
    assert main(["train-router", "--parallel", str(small_parallel), "--alpha", "0", "--out", str(out),
                 "--cache", str(tmp_path / "c.sqlite")]) == 0
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "z", "prompt": "p", "responses": {"a": "x", "zeta": "y"}}\n')
    result = run_cli("select", "--strategy", "persyn", "--router", out, "--parallel", other, "--out", tmp_path / "d")
    assert result.returncode == 2 and "does not know teacher(s) zeta" in result.stderr


def test_score_writes_normalised_scores_and_rankings(small_parallel, tmp_path):
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--parallel", str(small_parallel), "--alpha", "0", "--normalise", "minmax",
                 "--out", str(out)]) == 0
    first = json.loads(out.read_text().splitlines()[0])  # quality a=5, b=7, c=1
    assert first["ranking"] == ["b", "a", "c"] and first["learnability"] is None
    assert first["score"] == {"a": pytest.approx(4 / 6), "b": 1.0, "c": 0.0}


def test_evaluate_prints_hit_at_k_for_every_router_and_plots(small_parallel, tmp_path, capsys):
    plot = tmp_path / "quality.png"
    assert main(["evaluate", "--parallel", str(small_parallel), "--alpha", "0", "--plot", str(plot),
                 "--cache", str(tmp_path / "c.sqlite")]) == 0
    table = capsys.readouterr().out
    for name in ("random", "best_single", "knn@10", "persyn"):
        assert name in table
    assert plot.stat().st_size > 1000


def test_import_magpie_then_export_alpaca(tmp_path):
    magpie = tmp_path / "magpie.jsonl"
    magpie.write_text(json.dumps({"uuid": "u1", "instruction": "Say hi",
                                  "m1": {"content": "Hi!", "ArmoRM": 0.2}, "m2": {"content": "Hey", "ArmoRM": 0.1}}) + "\n")
    parallel = tmp_path / "parallel.jsonl"
    assert main(["import-magpie", "--input", str(magpie), "--out", str(parallel)]) == 0
    assert json.loads(parallel.read_text())["quality"] == {"m1": 0.2, "m2": 0.1}
    assert main(["select", "--strategy", "oracle", "--parallel", str(parallel), "--alpha", "0",
                 "--out", str(tmp_path / "ds")]) == 0
    assert main(["export", "--dataset", str(tmp_path / "ds" / "oracle.jsonl"), "--format", "alpaca",
                 "--out", str(tmp_path / "lf")]) == 0
    assert json.loads((tmp_path / "lf" / "persyn_alpaca.json").read_text()) == [
        {"instruction": "Say hi", "input": "", "output": "Hi!"}]


def test_pipeline_refuses_a_pool_whose_teacher_does_not_answer(tmp_path):
    pool = tmp_path / "pool.yaml"
    pool.write_text("teachers:\n  - {name: gone, family: x, size_b: 7, base_url: 'http://127.0.0.1:9/v1', model: m}\n")
    result = run_cli("pipeline", "--pool", pool, "--prompts", 4, "--calibration", 2, "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert "persyn: error:" in result.stderr and "127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
