"""Export files parse and match LLaMA-Factory's dataset_info conventions."""

import json

import pytest

from services.method.export import export_dataset

ROWS = [{"id": "a", "prompt": "What is 2+2?", "response": "4", "teacher": "t1"},
        {"id": "b", "prompt": "Name a colour.", "response": "Blue — like the sky.", "teacher": "t2"}]


def test_jsonl_keeps_every_row(tmp_path):
    path = export_dataset(ROWS, tmp_path, "jsonl", name="demo")
    assert [json.loads(line) for line in path.read_text().splitlines()] == ROWS


def test_sharegpt_file_and_dataset_info(tmp_path):
    path = export_dataset(ROWS, tmp_path, "sharegpt", name="demo")
    data = json.loads(path.read_text())
    assert data[1]["conversations"] == [{"from": "human", "value": "Name a colour."},
                                        {"from": "gpt", "value": "Blue — like the sky."}]
    info = json.loads((tmp_path / "dataset_info.json").read_text())["demo_sharegpt"]
    assert info["file_name"] == path.name and info["formatting"] == "sharegpt"
    assert info["columns"]["messages"] == "conversations"


def test_alpaca_merges_into_existing_dataset_info(tmp_path):
    export_dataset(ROWS, tmp_path, "sharegpt", name="demo")
    path = export_dataset(ROWS, tmp_path, "alpaca", name="demo")
    assert json.loads(path.read_text())[0] == {"instruction": "What is 2+2?", "input": "", "output": "4"}
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"demo_sharegpt", "demo_alpaca"}
    assert info["demo_alpaca"]["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        export_dataset(ROWS, tmp_path, "csv")
