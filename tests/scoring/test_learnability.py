"""LearnabilityScorer against a plain full-logits reference, on the real SmolLM2 student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.method.formats import ParallelRecord
from services.scoring.learnability import LearnabilityScorer, pack_batches
from services.scoring.matrices import learnability_matrix

ITEMS = [
    ("What is 2+3?", "2+3 = 5."),
    (
        "Write a short paragraph about rivers.",
        "Rivers carry water from the mountains to the sea. Along the way they shape valleys, feed "
        "farms and cities, and give homes to fish, birds and plants. Many old towns were built on "
        "their banks because rivers offered water, food and an easy way to travel.",
    ),
    ("Hi", "Hello!"),
    ("Name a prime number larger than ten.", "Thirteen is a prime number larger than ten."),
]


@pytest.fixture(scope="module")
def scorer() -> LearnabilityScorer:
    return LearnabilityScorer("smollm2-135m-instruct", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def bf16_scorer() -> LearnabilityScorer:
    return LearnabilityScorer("smollm2-135m-instruct", device="cpu", precision="bf16")


def reference_score(scorer: LearnabilityScorer, prompt: str, response: str) -> float:
    """Full forward, full-vocab log_softmax, response tokens summed one by one."""
    tok = scorer.tokenizer
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(scorer.model(input_ids=ids).logits[0].double(), dim=-1)
    total = 0.0
    for k, token in enumerate(response_ids):
        t = len(prompt_ids) + k
        total += float(logprobs[t - 1, token])
    return total / len(response_ids)


def test_matches_full_logits_reference(scorer):
    prompt, response = ITEMS[1]
    expected = reference_score(scorer, prompt, response)
    assert scorer.score([(prompt, response)])[0] == pytest.approx(expected, abs=1e-4)
    assert scorer.token_logprobs(prompt, response).mean() == pytest.approx(expected, abs=1e-4)


def test_batched_equals_one_at_a_time_in_order(scorer, monkeypatch):
    batched = scorer.score(ITEMS)
    monkeypatch.setattr(scorer, "max_batch_tokens", 1)  # every example in its own batch
    single = scorer.score(ITEMS)
    assert batched.dtype == np.float64 and batched.shape == (len(ITEMS),)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    for i, item in enumerate(ITEMS):
        assert batched[i] == pytest.approx(scorer.token_logprobs(*item).mean(), abs=1e-4)


def test_empty_response_raises_with_index(scorer):
    with pytest.raises(ValueError, match="item 1"):
        scorer.score([ITEMS[0], ("What is 2+3?", "")])


def test_max_length_truncates_response_tail(scorer, monkeypatch):
    prompt, response = ITEMS[1]
    full = scorer.token_logprobs(prompt, response)
    rendered = scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    n_prompt = len(scorer.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(scorer, "max_length", n_prompt + 5)
    np.testing.assert_allclose(scorer.token_logprobs(prompt, response), full[:5], atol=1e-4)
    monkeypatch.setattr(scorer, "max_length", n_prompt)
    with pytest.raises(ValueError, match="no room"):
        scorer.score([(prompt, response)])


def test_fluent_answer_beats_word_salad(scorer):
    fluent, salad = scorer.score(
        [("What is 2+3?", "2+3 = 5."), ("What is 2+3?", "lamp orbit velvet cactus")]
    )
    assert fluent > salad


def test_pack_batches_sorted_within_budget():
    lengths = [5, 300, 40, 41, 7, 120, 1000]
    batches = pack_batches(lengths, max_batch_tokens=128)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128


def test_bf16_scores_are_close_to_fp32_but_not_the_same(scorer, bf16_scorer):
    assert bf16_scorer.model.dtype == torch.bfloat16 and bf16_scorer.precision == "bf16"
    pairs = [ITEMS[1], ITEMS[3]]  # bf16 error averages out over tokens: 7-token answers can be off by 0.03
    full, reduced = scorer.score(pairs), bf16_scorer.score(pairs)
    assert reduced.dtype == np.float64
    np.testing.assert_allclose(reduced, full, atol=0.02)  # the benchmark's target, nats per token
    assert not np.array_equal(reduced, full)


def test_score_cache_keeps_precisions_apart(scorer, bf16_scorer, score_cache):
    records = [ParallelRecord(id="p1", prompt=ITEMS[1][0], responses={"a": ITEMS[1][1], "b": ITEMS[3][1]})]
    full = learnability_matrix(records, ["a", "b"], "smollm2-135m-instruct", cache=score_cache, scorer=scorer)
    reduced = learnability_matrix(records, ["a", "b"], "smollm2-135m-instruct", cache=score_cache,
                                  scorer=bf16_scorer)
    assert not np.array_equal(full, reduced)  # the bf16 run was not served the fp32 scores
    pairs = [(ITEMS[1][0], ITEMS[1][1]), (ITEMS[1][0], ITEMS[3][1])]
    np.testing.assert_array_equal(reduced, bf16_scorer.score(pairs)[None])
    for precision, expected in (("fp32", full), ("bf16", reduced)):  # no scorer: each from its own keys
        again = learnability_matrix(records, ["a", "b"], "smollm2-135m-instruct", cache=score_cache,
                                    precision=precision)
        np.testing.assert_array_equal(again, expected)
