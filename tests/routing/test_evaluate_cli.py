"""``persyn evaluate`` over several alphas and seeded splits, with precomputed learnability."""

import json

import pytest

from services.cli.main import main


def exit_code(argv: list[str]) -> int:
    """What the ``persyn`` process would exit with: argparse errors raise SystemExit, ours return."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def parallel_and_learnability(tmp_path):
    rows = [{"id": f"q{i}", "prompt": (f"What is {i} plus {i + 3}?" if i % 2 else f"Write a line about topic {i}."),
             "responses": {"a": f"Answer {i}.", "b": f"A longer answer {i}.", "c": "No."},
             "quality": {"a": 5 + i % 3, "b": 7 - i % 2, "c": 1}} for i in range(24)]
    parallel = tmp_path / "parallel.jsonl"
    parallel.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    learnability = tmp_path / "learnability.json"
    learnability.write_text(json.dumps({"scores": {r["id"]: {"a": -1.0 - i % 2, "b": -2.0, "c": None}
                                                   for i, r in enumerate(rows)}}))
    return parallel, learnability


def test_evaluate_reports_every_alpha_over_seeded_splits(parallel_and_learnability, tmp_path, capsys):
    parallel, learnability = parallel_and_learnability
    report, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    assert main(["evaluate", "--parallel", str(parallel), "--alpha", "0,0.4", "--learnability", str(learnability),
                 "--seeds", "2", "--cache", str(tmp_path / "c.sqlite"), "--json", str(report),
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "alpha 0: mean and sd over 2 seeded splits" in out and "alpha 0.4:" in out
    result = json.loads(report.read_text())
    assert set(result) == {"alpha 0", "alpha 0.4"}
    for label in result:
        assert len(result[label]["runs"]) == 2
        summary = result[label]["summary"]
        assert set(summary) == {"random", "best_single", "knn@10", "persyn", "oracle"}
        assert summary["oracle"]["hit@1"]["mean"] == 1.0
        assert set(summary["persyn"]["hit@3"]) == {"mean", "std", "min", "max"}
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "0.4"], "--student or --learnability is required"),
    (["--alpha", "0,1.5"], "alpha must be numbers in [0, 1]"),
    (["--alpha", "0", "--seeds", "0"], "--seeds must be at least 1"),
])
def test_evaluate_rejects_bad_arguments(parallel_and_learnability, tmp_path, capsys, extra, message):
    parallel, _ = parallel_and_learnability
    assert exit_code(["evaluate", "--parallel", str(parallel), "--cache", str(tmp_path / "c.sqlite"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_names_the_prompt_missing_from_the_learnability_file(parallel_and_learnability, tmp_path, capsys):
    parallel, _ = parallel_and_learnability
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"scores": {"q0": {"a": -1.0}}}))
    assert main(["evaluate", "--parallel", str(parallel), "--alpha", "0.4", "--learnability", str(partial),
                 "--cache", str(tmp_path / "c.sqlite")]) == 2
    assert "--learnability" in (err := capsys.readouterr().err) and "'q1'" in err
