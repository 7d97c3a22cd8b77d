"""What a job records of its costs (real Redis): calibration output tokens per teacher, the routed
chunks' expected cost summed once however often a chunk is redelivered."""

from __future__ import annotations

import pytest

from services.jobs.pricing import add_routing_cost, calibration_output_tokens, routing_report
from services.jobs.stages import item_key
from services.method.allocation import ChunkRoute


def test_calibration_output_tokens_are_the_mean_per_answer(store):
    job_id = store.create_job("calibrate", {"student_id": "s"}, [{"id": f"p{i}", "prompt": "q"} for i in range(3)])
    store.put_results(job_id, "gen", {
        item_key("p0", "a"): {"completion_tokens": 10, "n_samples": 1},
        item_key("p1", "a"): {"completion_tokens": 30, "n_samples": 4},  # four samples: one answer's tokens
        item_key("p0", "b"): {"completion_tokens": 7, "n_samples": 1},
        item_key("p2", "z"): {"completion_tokens": 99, "n_samples": 1}})  # not a calibration teacher
    assert calibration_output_tokens(store, job_id, ["p0", "p1", "p2"], ["a", "b", "c"]) == {"a": 20.0, "b": 7.0}


def test_a_redelivered_chunk_adds_its_cost_once(store):
    job_id = store.create_job("synthesize", {"student_id": "s"}, [{"id": "p0", "prompt": "q"}])
    assert routing_report(store, job_id, {}, 0.0) is None  # nothing routed yet
    chunk = ChunkRoute(teachers=["a", "b"], cost_usd=[0.5, 0.25], output_tokens=[50.0, 25.0], strength=[0.5, 0.5],
                       free_strength=[0.75, 0.5], free_cost_usd=[1.0, 0.25])
    add_routing_cost(store, job_id, chunk, [True, True])
    add_routing_cost(store, job_id, chunk, [False, False])  # the same chunk again: its writes did not count
    report = routing_report(store, job_id, {"budget_usd": 1.0}, spent_usd=0.7)
    assert report["routed_prompts"] == 2 and report["budget_usd"] == 1.0 and report["spent_usd"] == 0.7
    assert report["expected_cost_usd"] == pytest.approx(0.75)
    assert report["unconstrained_expected_cost_usd"] == pytest.approx(1.25)
    assert report["strength_lost"] == pytest.approx(0.25)
