"""``persyn eval-harness``: a clear error without the lmeval extra; with it, a real run of the
real student on a local two-item task (no dataset download)."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from services.cli.main import main
from services.method.formats import write_jsonl


def test_without_the_extra_the_command_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError, installed or not
    assert main(["eval-harness", "--model", "smollm2-135m-instruct", "--tasks", "ifeval,gsm8k"]) == 2
    err = capsys.readouterr().err
    assert "lm-evaluation-harness is not installed" in err and ".[lmeval]" in err


def test_bad_harness_options_are_usage_errors(capsys):
    for argv in (["--tasks", ","], ["--tasks", "gsm8k", "--batch-size", "0"], ["--tasks", "gsm8k", "--limit", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["eval-harness", "--model", "smollm2-135m-instruct", *argv])
        assert exit_.value.code == 2
    assert "name at least one task" in capsys.readouterr().err


def test_a_local_task_runs_on_the_student_through_the_harness(tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="the lmeval extra is not installed (pip install -e '.[lmeval]')")
    data = write_jsonl([{"question": "What is 2 + 2?", "answer": "4"},
                        {"question": "What is 3 + 5?", "answer": "8"}], tmp_path / "sums.jsonl")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "sums.yaml").write_text(yaml.safe_dump({
        "task": "persyn_sums", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}))
    out = tmp_path / "results.json"
    assert main(["eval-harness", "--model", "smollm2-135m-instruct", "--tasks", "persyn_sums", "--include-path",
                 str(tasks), "--device", "cpu", "--num-fewshot", "0", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    score = printed["scores"]["persyn_sums"]["exact_match,none"]
    assert 0.0 <= score <= 1.0
    assert json.loads(out.read_text())["results"]["persyn_sums"]["exact_match,none"] == score
