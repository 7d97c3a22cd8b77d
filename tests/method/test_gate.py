"""The router publish gate: size floor, then validation Hit@k against every baseline."""

from __future__ import annotations

import numpy as np

from services.method.gate import best_single_teacher, hits_of_choice, publish_gate

FLOOR = {"min_prompts": 10, "min_pairs": 20}


def _gate(**kw):
    args = {"n_prompts": 40, "n_pairs": 80, **FLOOR, "candidate": {"hit@1": 0.6, "hit@3": 0.9},
            "baselines": {"best_single": {"hit@1": 0.5, "hit@3": 0.9}}, "require_validation": True, **kw}
    return publish_gate(**args)


def test_a_router_at_least_as_good_as_every_baseline_passes():
    result = _gate(baselines={"best_single": {"hit@1": 0.6, "hit@3": 0.8}, "previous_router": None})
    assert result.passed and "best-single" in result.reason
    assert result.as_dict()["checks"]["n_pairs"] == 80


def test_too_few_prompts_or_pairs_fail_with_the_setting_to_change():
    small = _gate(n_prompts=2, n_pairs=4)
    assert not small.passed and "PERSYN_ROUTER_MIN_PROMPTS" in small.reason and "only 2" in small.reason
    few_pairs = _gate(n_pairs=5)
    assert not few_pairs.passed and "PERSYN_ROUTER_MIN_PAIRS" in few_pairs.reason


def test_below_best_single_or_the_previous_router_fails_naming_it():
    worse = _gate(baselines={"best_single": {"hit@1": 0.7, "hit@3": 0.9}})
    assert not worse.passed and "hit@1 0.600 is below best-single's 0.700" in worse.reason
    regress = _gate(baselines={"best_single": {"hit@1": 0.5, "hit@3": 0.5},
                               "previous_router": {"hit@1": 0.6, "hit@3": 0.95}})
    assert not regress.passed and "previous-router" in regress.reason and "hit@3" in regress.reason


def test_without_validation_the_gate_fails_unless_the_floor_allows_no_split():
    assert not _gate(candidate=None).passed
    small = _gate(n_prompts=3, n_pairs=4, min_prompts=3, min_pairs=1, candidate=None, require_validation=False)
    assert small.passed and "not compared" in small.reason


def test_best_single_is_the_teacher_with_the_best_mean_and_its_hits():
    train = np.array([[1.0, 0.0, np.nan], [1.0, 0.5, 0.2], [0.0, 1.0, np.nan]])
    assert best_single_teacher(train) == 0
    val = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    assert hits_of_choice(val, np.array([0, 0])) == {"hit@1": 0.5, "hit@3": 1.0}


def test_a_degraded_calibration_never_replaces_an_active_router():
    degraded = "5 calibration item(s) failed; down: 5"
    refused = _gate(degraded=degraded, replaces_active=True)
    assert not refused.passed and "degraded" in refused.reason and refused.checks["degraded"] == degraded
    assert _gate(degraded=degraded, replaces_active=False).passed  # no router to protect: Hit@k decides
