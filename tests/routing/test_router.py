"""Routers trained on real parallel responses, with the real MiniLM backbone."""

import json

import numpy as np
import pytest

from services.method.formats import load_parallel, teachers_of
from services.method.hits import best_single_choices, hit_at_k, knn_choices, random_hit_at_k
from services.method.pairs import make_pairs
from services.method.rewards import combine
from services.routing.model import Router
from services.routing.training import (WEIGHT_DECAY_GRID, TrainConfig, prompt_embeddings, split_prompts,
                                       train_router)
from services.scoring.matrices import quality_matrix


@pytest.fixture(scope="module")
def arena(arena_path):
    records = load_parallel(arena_path)
    teachers = teachers_of(records)
    scores = combine(quality_matrix(records, teachers), None, alpha=0.0)
    return records, teachers, scores


@pytest.fixture(scope="module")
def trained(arena, score_cache, tmp_path_factory):
    records, teachers, scores = arena
    train = np.arange(0, 200)
    router, metrics = train_router([records[i].prompt for i in train], teachers, scores[train],
                                   TrainConfig(seed=0), cache=score_cache)
    directory = router.save(tmp_path_factory.mktemp("router") / "r", metrics=metrics)
    return router, metrics, directory


def test_router_beats_random_on_held_out_prompts(arena, trained):
    records, teachers, scores = arena
    router, metrics, _ = trained
    test = np.arange(200, 300)
    chosen = router.strengths([records[i].prompt for i in test]).argmax(axis=1)
    for k in (1, 3):
        assert hit_at_k(scores[test], chosen, k) > random_hit_at_k(scores[test], k) + 0.2
    assert metrics["n_pairs"] == len(make_pairs(scores[:200]))
    assert metrics["val"]["pair_accuracy"] > 0.6


def test_metrics_report_validation_hits_next_to_best_single_and_knn(arena, trained, score_cache):
    records, teachers, scores = arena
    _, metrics, directory = trained
    val = json.loads((directory / "metrics.json").read_text())["val"]
    train, held = split_prompts(200, 0.15, 0)
    assert val["n_prompts"] == len(held) == metrics["n_val_prompts"] == 30
    features = prompt_embeddings(trained[0].encoder, "all-minilm-l6-v2", [r.prompt for r in records[:200]], score_cache)
    for k in (1, 3):
        assert val[f"best_single_hit@{k}"] == hit_at_k(scores[held], best_single_choices(scores[train], len(held)), k)
        assert val[f"knn_hit@{k}"] == hit_at_k(scores[held], knn_choices(features[train], scores[train],
                                                                         features[held], 10), k)
        assert 0.0 <= val[f"hit@{k}"] <= 1.0
    assert metrics["weight_decay"] in WEIGHT_DECAY_GRID
    cv = metrics["cross_validation"]
    assert set(cv["by_weight_decay"]) == {str(l2) for l2 in WEIGHT_DECAY_GRID}
    # one-standard-error rule: the chosen L2 is no smaller than the best one, and within one SE of it
    assert metrics["weight_decay"] >= cv["best"]
    for k in ("hit@1", "hit@3"):
        assert (cv["by_weight_decay"][str(metrics["weight_decay"])][k]
                >= cv["by_weight_decay"][str(cv["best"])][k] - cv["standard_error"][k] - 1e-12)


def test_strong_regularisation_keeps_the_per_teacher_bias(score_cache):
    """L2 shrinks only the prompt-dependent weights: with features that carry no signal and a huge
    L2 the router still routes every prompt to the teacher that wins most often."""
    rng = np.random.default_rng(0)
    prompts = [f"Tell me something about item {i} and colour {c}." for i, c in
               zip(range(40), rng.permutation(["red", "blue", "green", "amber"] * 10))]
    scores = rng.normal(size=(40, 3)) + np.array([0.0, 1.5, 0.0])
    router, metrics = train_router(prompts, ["x", "strong", "y"], scores, TrainConfig(weight_decay=100.0, seed=0),
                                   cache=score_cache)
    assert metrics["weight_decay"] == 100.0
    assert [r.teacher for r in router.route(prompts[:10] + ["An unseen prompt."])] == ["strong"] * 11


def test_artifact_loads_and_routes_like_the_trained_router(arena, trained):
    records, teachers, _ = arena
    router, _, directory = trained
    assert {p.name for p in directory.iterdir()} >= {"config.json", "teachers.json", "router.safetensors",
                                                     "metrics.json"}
    assert json.loads((directory / "teachers.json").read_text()) == teachers
    loaded = Router.load(directory)
    prompts = [r.prompt for r in records[250:260]]
    np.testing.assert_allclose(loaded.strengths(prompts), router.strengths(prompts), atol=1e-5)
    [result] = loaded.route(prompts[:1], top_k=3)
    assert result.teacher == result.top_k[0] == max(result.strengths, key=result.strengths.get)
    assert len(result.top_k) == 3 and set(result.strengths) == set(teachers)


def test_frozen_training_is_seeded(arena, score_cache):
    records, teachers, scores = arena
    prompts = [r.prompt for r in records[:60]]
    a, _ = train_router(prompts, teachers, scores[:60], TrainConfig(seed=3), cache=score_cache)
    b, _ = train_router(prompts, teachers, scores[:60], TrainConfig(seed=3), cache=score_cache)
    features = prompt_embeddings(a.encoder, "all-minilm-l6-v2", prompts[:5], score_cache)
    np.testing.assert_allclose(a.strengths_from_features(features), b.strengths_from_features(features))


def test_router_learns_a_prompt_dependent_preference(score_cache):
    """Teacher 'mathy' wins on arithmetic prompts, 'poet' on poems: the head must learn it."""
    maths = [f"What is {a} plus {b}? Show the sum." for a, b in zip(range(3, 33), range(40, 70))]
    poems = [f"Write a short poem about the {w}." for w in
             ("sea", "moon", "forest", "rain", "winter", "city", "river", "mountain", "desert", "garden",
              "stars", "autumn", "snow", "sun", "wind", "night", "spring", "ocean", "clouds", "dawn")]
    prompts = maths + poems
    scores = np.array([[1.0, 0.0, 0.5]] * len(maths) + [[0.0, 1.0, 0.5]] * len(poems))
    router, _ = train_router(prompts, ["mathy", "poet", "middle"], scores, TrainConfig(seed=0), cache=score_cache)
    routed = router.route(["What is 12 plus 30?", "Write a short poem about the lake."])
    assert [r.teacher for r in routed] == ["mathy", "poet"]


def test_finetune_mode_trains_the_backbone_and_saves_it(tmp_path):
    prompts = [f"Question number {i}: what is {i} times 2?" for i in range(12)]
    scores = np.array([[float(i % 2), 1.0 - i % 2] for i in range(12)])
    router, metrics = train_router(prompts, ["a", "b"], scores, TrainConfig(mode="finetune", epochs=1,
                                                                            batch_prompts=4, seed=0))
    # the publish gate reads the same validation keys in both modes
    assert {"hit@1", "hit@3", "best_single_hit@1", "best_single_hit@3", "knn_hit@1", "knn_hit@3"} <= set(metrics["val"])
    directory = router.save(tmp_path / "ft", metrics=metrics, save_backbone=True)
    assert (directory / "backbone" / "config.json").exists()
    loaded = Router.load(directory)
    np.testing.assert_allclose(loaded.strengths(prompts[:3]), router.strengths(prompts[:3]), atol=1e-4)


def test_training_rejects_inputs_without_pairs():
    with pytest.raises(ValueError, match="no training pairs"):
        train_router(["a", "b"], ["t1", "t2"], np.ones((2, 2)))
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="lora")
