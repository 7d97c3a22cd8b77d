"""The student loop on the real student (SmolLM2-135M): TRL SFT, grading, the comparison's wiring.

Training and generation are kept to one step and a few tokens: these tests check that the
pieces fit, never how good the student gets (bench/bench_experiment.py measures that).
"""

from __future__ import annotations

import json

import pytest
import yaml

from services.cli.main import main
from services.method.formats import FormatError, write_jsonl
from services.student.evaluation import (EvalResult, EndpointGenerator, LocalGenerator, evaluate, load_eval_set,
                                         mcnemar_p, wilson_interval)
from services.student.training import DistillConfig, build_trainer, load_sft_rows
from tests.conftest import shared_data

ROWS = [{"id": "a", "prompt": "What is 2 + 3?", "response": "2 + 3 = 5. The answer is 5.", "teacher": "t1"},
        {"id": "b", "prompt": "What is 4 * 6?", "response": "4 * 6 = 24. The answer is 24.", "teacher": "t2"},
        {"id": "c", "prompt": "What is 10 - 7?", "response": "10 - 7 = 3. The answer is 3.", "teacher": "t1"}]
PROBLEMS = [{"id": "p1", "question": "What is 2 + 2?", "answer": 4.0},
            {"id": "p2", "question": "Tom has 3 apples and buys 2 more. How many apples?", "answer": "#### 5"}]


def test_wilson_interval_and_mcnemar_match_textbook_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(30, 150)
    assert low < 0.2 < high and high - low < 0.14
    assert mcnemar_p([True] * 5, [True] * 5) == 1.0
    assert mcnemar_p([True] * 10, [False] * 10) == pytest.approx(2 / 1024)
    assert mcnemar_p([True, False] * 4, [False, True] * 4) == 1.0  # 4 vs 4 disagreements: no difference
    with pytest.raises(ValueError):
        mcnemar_p([True], [True, False])


def test_eval_sets_read_svamp_numbers_and_gsm8k_solutions(tmp_path):
    items = load_eval_set(write_jsonl(PROBLEMS, tmp_path / "set.jsonl"))
    assert [(i["prompt"][:7], i["reference"]) for i in items] == [("What is", "4"), ("Tom has", "5")]
    svamp = load_eval_set(shared_data("svamp.jsonl"), limit=3)
    assert len(svamp) == 3 and svamp[0]["reference"] == "51"
    with pytest.raises(FormatError, match="no reference"):
        load_eval_set(write_jsonl([{"question": "x"}], tmp_path / "bad.jsonl"))


def test_loss_falls_on_the_response_tokens_only_under_the_students_chat_template(tmp_path):
    trainer = build_trainer(ROWS[:1], tmp_path, DistillConfig(max_steps=1, progress=False))
    example = trainer.train_dataset[0]
    tokenizer = trainer.processing_class
    ids, mask = example["input_ids"], [label != -100 for label in example["labels"]]
    learned = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    context = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert learned.startswith(ROWS[0]["response"]) and "What is 2 + 3?" not in learned
    assert learned.replace(ROWS[0]["response"], "").strip() == tokenizer.eos_token  # the student learns to stop
    assert context == tokenizer.apply_chat_template([{"role": "user", "content": ROWS[0]["prompt"]}],
                                                    tokenize=False, add_generation_prompt=True)


def test_distill_then_eval_student_from_the_command_line(tmp_path, capsys):
    data = write_jsonl(ROWS, tmp_path / "strong.jsonl")
    out = tmp_path / "run"
    assert main(["distill", "--dataset", str(data), "--out", str(out), "--max-steps", "2", "--batch-size", "2",
                 "--lora", "--save-steps", "1", "--cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["n_rows"] == 3 and len(summary["losses"]) == 2
    assert (out / "training_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model" / "config.json").exists()
    lf = yaml.safe_load((out / "llamafactory" / "train_strong.yaml").read_text())
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert lf["stage"] == "sft" and lf["finetuning_type"] == "lora" and lf["train_on_prompt"] is False
    assert len(json.loads((out / "llamafactory" / info[lf["dataset"]]["file_name"]).read_text())) == 3

    problems = write_jsonl(PROBLEMS, tmp_path / "set.jsonl")
    answers = tmp_path / "answers.jsonl"
    assert main(["eval-student", "--model", str(out / "model"), "--set", str(problems), "--max-new-tokens", "6",
                 "--out", str(answers)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 2 and 0 <= result["correct"] <= 2
    assert result["ci95"][0] <= result["accuracy"] <= result["ci95"][1]
    graded = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [g["reference"] for g in graded] == ["4", "5"] and sum(g["correct"] for g in graded) == result["correct"]


def test_a_local_model_and_its_endpoint_are_graded_alike(tmp_path):
    pytest.importorskip("xllamacpp")
    from services.demo.pool import DemoPool

    items = load_eval_set(write_jsonl(PROBLEMS, tmp_path / "set.jsonl"))
    with DemoPool(n_parallel=2, n_ctx=2048) as pool:
        endpoint = EndpointGenerator(pool.teachers[0].base_url, max_tokens=24, workers=2)
        served = evaluate(endpoint, items)
    local = evaluate(LocalGenerator("smollm2-135m-instruct", batch_size=2, max_new_tokens=24), items)
    for result in (served, local):
        assert isinstance(result, EvalResult) and result.n == 2 and all(a.strip() for a in result.answers)
    assert served.model.endswith(f"({pool.teachers[0].model})")


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    bad = write_jsonl([{"prompt": "x"}], tmp_path / "bad.jsonl")
    assert main(["distill", "--dataset", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "'response' must be a non-empty string" in capsys.readouterr().err
    assert main(["eval-student", "--model", "smollm2-135m-instruct", "--set", str(bad)]) == 2
    assert "no reference answer" in capsys.readouterr().err
    assert main(["experiment", "--parallel", str(bad), "--eval-set", str(bad), "--strategies", "persyn,best"]) == 2
    assert "best" in capsys.readouterr().err
    with pytest.raises(FormatError):
        load_sft_rows(bad)


def test_experiment_wiring_on_real_gsm8k_answers(tmp_path, capsys):
    out = tmp_path / "exp"
    svamp = shared_data("svamp.jsonl")
    assert main(["experiment", "--parallel", str(shared_data("gsm8k_parallel.jsonl")), "--eval-set", str(svamp),
                 "--strategies", "persyn,mix,car", "--train-rows", "6", "--calibration", "4", "--eval-rows", "2",
                 "--max-new-tokens", "4", "--max-steps", "1", "--batch-size", "2", "--no-baseline", "--cpu",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "experiment.json").read_text())
    assert list(summary["runs"]) == ["persyn", "mix", "car"] and summary["router"]["n_calibration"] == 4
    for name, run in summary["runs"].items():
        assert run["steps"] == 1 and run["eval"]["n"] == 2
        assert sum(run["dataset"]["allocation"].values()) == run["dataset"]["rows"] == 6
        rows = [json.loads(line) for line in (out / name / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and not (out / name / "student" / "model").exists()  # models dropped by default
    assert summary["runs"]["persyn"]["p_vs_persyn"] is None and 0 <= summary["runs"]["mix"]["p_vs_persyn"] <= 1
    assert summary["runs"]["car"]["dataset"]["teacher"] in summary["teachers"]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| persyn |" in (out / "experiment.md").read_text() and "| car |" in capsys.readouterr().out
