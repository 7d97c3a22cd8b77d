"""SCASScorer features on the real SmolLM2 student, checked against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from services.scoring.scas import SCASFeatures, SCASScorer

PROMPT = "What is 7 times 6?"
FLUENT = "7 times 6 is 42."
GARBLED = "Sky forty cheese 7 under lamp twelve."


@pytest.fixture(scope="module")
def scorer() -> SCASScorer:
    return SCASScorer("smollm2-135m-instruct", device="cpu")


def test_features_are_finite_and_bounded(scorer):
    f = scorer.features(PROMPT, FLUENT)
    assert isinstance(f, SCASFeatures)
    assert all(math.isfinite(v) for v in (f.d_a, f.d_q, f.aa, f.aq))
    assert f.d_a > 0 and f.d_q > 0
    assert -1.0 <= f.aq <= 1.0
    assert 0.0 <= f.aa <= 1.0 + 1e-9  # a squared norm of a mean of unit vectors


def test_features_equal_brute_force(scorer):
    ids, q_pos, a_pos = scorer._layout(PROMPT, FLUENT)
    tok = scorer.tokenizer
    # The answer positions cover exactly the answer text; prompt positions the prompt text.
    assert tok.decode([ids[j] for j in a_pos]) == FLUENT
    assert tok.decode([ids[j] for j in q_pos]) == PROMPT

    captured = []
    layer = scorer.model.model.layers[-1].mlp.up_proj
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0].double()))
    with torch.no_grad():
        logits = scorer.model(input_ids=torch.tensor([ids])).logits[0]
    handle.remove()
    up = captured[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    d_a = -sum(float(logprobs[j - 1, ids[j]]) for j in a_pos) / len(a_pos)
    d_q = -sum(float(logprobs[j - 1, ids[j]]) for j in q_pos) / len(q_pos)

    def cos(i, j):
        return float(torch.dot(up[i], up[j]) / (up[i].norm() * up[j].norm()))

    aa = sum(cos(i, j) for i in a_pos for j in a_pos) / len(a_pos) ** 2
    aq = sum(cos(i, j) for i in a_pos for j in q_pos) / (len(a_pos) * len(q_pos))
    f = scorer.features(PROMPT, FLUENT)
    assert f.d_a == pytest.approx(d_a, abs=1e-4)
    assert f.d_q == pytest.approx(d_q, abs=1e-4)
    assert f.aa == pytest.approx(aa, abs=1e-5)
    assert f.aq == pytest.approx(aq, abs=1e-5)


def test_fluent_answer_has_lower_cost(scorer):
    try:
        from services.method.strategies import scas_cost
    except ImportError:  # the lead's module may not be merged yet

        def scas_cost(d_a, d_q, aa, aq, lam=0.5):
            return (1 - lam) * d_a**2 * aa + lam * d_a * d_q * aq

    fluent, garbled = scorer.features_many([(PROMPT, FLUENT), (PROMPT, GARBLED)])
    assert fluent.d_q == pytest.approx(garbled.d_q)  # causal: the prompt does not see the answer
    cost = [scas_cost(f.d_a, f.d_q, f.aa, f.aq, lam=0.5) for f in (fluent, garbled)]
    assert cost[0] < cost[1]
