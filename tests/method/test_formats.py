"""Reading and validating the project's file formats."""

import json

import pytest

from services.method.formats import (
    FormatError,
    Teacher,
    dump_teacher_pool,
    import_magpie_zoo,
    load_parallel,
    load_prompts,
    load_teacher_pool,
    teachers_of,
)


def test_arena_parallel_loads_as_it_is(arena_path):
    records = load_parallel(arena_path)
    assert len(records) == 300
    assert len(teachers_of(records)) == 15
    rec = records[0]
    assert rec.id and rec.prompt and isinstance(rec.reference, str) and len(rec.reference) > 20
    assert set(rec.quality) <= set(rec.responses)
    assert sum(v is None for r in records for v in r.quality.values()) == 39


def write(tmp_path, lines, name="in.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_line_is_reported_with_its_number(tmp_path):
    good = json.dumps({"id": "a", "prompt": "p", "responses": {"t": "x"}})
    path = write(tmp_path, [good, "{not json"])
    with pytest.raises(FormatError, match=r"in.jsonl:2: not valid JSON"):
        load_parallel(path)


@pytest.mark.parametrize("row, message", [
    ({"id": "a", "prompt": "p", "responses": {}}, "non-empty object"),
    ({"id": "a", "prompt": "", "responses": {"t": "x"}}, "'prompt'"),
    ({"prompt": "p", "responses": {"t": "x"}}, "missing 'id'"),
    ({"id": "a", "prompt": "p", "responses": {"t": "x"}, "quality": {"u": 1}}, "no response"),
    ({"id": "a", "prompt": "p", "responses": {"t": "x"}, "quality": {"t": "high"}}, "finite number"),
])
def test_bad_rows_are_rejected_with_a_reason(tmp_path, row, message):
    with pytest.raises(FormatError, match=message):
        load_parallel(write(tmp_path, [json.dumps(row)]))


def test_duplicate_ids_and_missing_files_are_errors(tmp_path):
    row = json.dumps({"id": "a", "prompt": "p"})
    with pytest.raises(FormatError, match="duplicate id"):
        load_prompts(write(tmp_path, [row, row]))
    with pytest.raises(FormatError, match="no such file"):
        load_prompts(tmp_path / "nope.jsonl")


def test_teacher_pool_round_trips_and_validates(tmp_path):
    pool = [Teacher("big", "qwen", 72, "http://127.0.0.1:8000/v1", "Qwen2.5-72B-Instruct",
                    {"temperature": 0.7, "max_tokens": 1024}, cost_per_1m_output=1.2),
            Teacher("cot", "deepseek", 7, "http://127.0.0.1:8001/v1", "R1-Distill-7B", long_cot=True)]
    path = dump_teacher_pool(pool, tmp_path / "pool.yaml")
    assert load_teacher_pool(path) == pool
    path.write_text("teachers:\n  - name: a\n    family: f\n")
    with pytest.raises(FormatError, match="missing size_b, base_url, model"):
        load_teacher_pool(path)
    path.write_text("teachers:\n  - {name: a, family: f, size_b: 1, base_url: u, model: m, colour: red}\n")
    with pytest.raises(FormatError, match="unknown field"):
        load_teacher_pool(path)


def test_magpie_zoo_rows_become_parallel_records():
    rows = [{"uuid": "u1", "instruction": "Say hi",
             "Qwen2-72B-Instruct": {"content": "Hi!", "ArmoRM": 0.12},
             "gemma-2-9b-it": {"content": "Hello.", "ArmoRM": 0.10},
             "task_category": "chat"}]
    [rec] = import_magpie_zoo(rows)
    assert rec.id == "u1" and rec.prompt == "Say hi"
    assert rec.responses == {"Qwen2-72B-Instruct": "Hi!", "gemma-2-9b-it": "Hello."}
    assert rec.quality == {"Qwen2-72B-Instruct": 0.12, "gemma-2-9b-it": 0.10}
    with pytest.raises(FormatError, match="uuid"):
        import_magpie_zoo([{"instruction": "x"}])
