"""The offline pipeline end to end: demo pool on loopback, real student and router backbone."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from services.core.cache import ScoreCache
from services.method.costs import generation_counts
from services.method.formats import load_parallel
from services.method.rewards import combine, nan_argmax
from services.scoring.matrices import learnability_matrix, quality_matrix
from services.synthesis.pipeline import PipelineConfig, run_pipeline


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    summary = run_pipeline(PipelineConfig(out_dir=out, n_prompts=6, n_calibration=3, max_tokens=48,
                                          workers=3, progress=False))
    return out, summary


def test_dataset_has_exactly_one_row_per_prompt(run):
    out, summary = run
    rows = [json.loads(line) for line in (out / "dataset" / "persyn.jsonl").read_text().splitlines()]
    assert len(rows) == summary["n_prompts"] == 6
    assert len({r["id"] for r in rows}) == 6
    assert sum(r["source"] == "calibration" for r in rows) == 3
    assert all(r["response"] and r["teacher"] in summary["teachers"] for r in rows)
    assert sum(summary["allocation"].values()) == 6
    assert json.loads((out / "dataset" / "persyn_sharegpt.json").read_text())[0]["conversations"]


def test_calibration_prompts_keep_their_best_answer_by_the_combined_reward(run):
    out, summary = run
    records = load_parallel(out / "calibration_parallel.jsonl")
    teachers = summary["teachers"]
    quality = quality_matrix(records, teachers, "file")
    # Learnability comes back from the run's score cache (the pipeline scores in fp32): nothing is
    # recomputed, or the stand-in scorer, which cannot score, would raise.
    learn = learnability_matrix(records, teachers, "smollm2-135m-instruct",
                                cache=ScoreCache(out / "scores.sqlite"), scorer=SimpleNamespace(precision="fp32"))
    best = nan_argmax(combine(quality, learn, summary["alpha"]))
    rows = {r["id"]: r for r in map(json.loads, (out / "dataset" / "persyn.jsonl").read_text().splitlines())}
    for rec, b in zip(records, best):
        assert set(rec.responses) == set(teachers)
        assert rows[rec.id]["teacher"] == teachers[b]
        assert rows[rec.id]["response"] == rec.responses[teachers[b]]


def test_generation_counts_and_artifacts(run):
    out, summary = run
    assert summary["generations"] == generation_counts(6, 3, 3) == {
        "generate_then_select": 18, "route_then_generate": 12}
    assert (out / "allocation.png").stat().st_size > 1000
    assert (out / "router" / "router.safetensors").exists()
    assert 0.0 <= summary["verified_share"] <= 1.0
    assert np.isfinite(summary["samples_drawn"]) and summary["samples_drawn"] >= 12


def test_prompts_file_without_references_is_rejected(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Say hi"}\n')
    with pytest.raises(ValueError, match="needs a 'reference'"):
        run_pipeline(PipelineConfig(out_dir=tmp_path / "o", prompts_file=prompts))
