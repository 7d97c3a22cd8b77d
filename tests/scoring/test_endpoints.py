"""Scoring and clients against vLLM's protocol (fake_vllm.py, real SmolLM2 numbers) and a REAL
llama.cpp server (DemoPool)."""

import threading

import numpy as np
import pytest
from fake_vllm import FakeVLLM, start_server

from services.clients.openai_compat import OpenAICompatClient, OpenAICompatError
from services.scoring.endpoints import (
    EndpointLearnabilityScorer,
    EndpointRewardScorer,
    TokenMismatchError,
    response_logprobs,
    reward_from_classification,
    reward_from_pooling,
)
from services.scoring.learnability import LearnabilityScorer

STUDENT = "smollm2-student"

# Varied on purpose: multi-byte characters split across tokens, a leading newline, digits,
# a response that begins mid-word, and a long multi-line answer.
ITEMS = [
    ("What is 17 + 25?", "17 + 25 = 42. The answer is 42."),
    ("Say hello in French 🇫🇷", "Bonjour ! 😊 Ça va très bien, merci."),
    ("List two colours.", "\n- red\n- blue"),
    ("Complete the word: unbeliev", "able"),
    ("Explain why the sky is blue in three sentences.",
     "Sunlight is made of many colours. Air molecules scatter short blue wavelengths much more "
     "than red ones (Rayleigh scattering).\nSo wherever we look, scattered blue light reaches our eyes."),
]


@pytest.fixture(scope="module")
def local():
    return LearnabilityScorer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def server():
    fake = FakeVLLM(model=STUDENT)
    url, stop = start_server(fake.app)
    yield fake, url
    stop()


@pytest.fixture
def fake(server):
    """The module's fake server, restored to faithful behaviour after each test."""
    fake, url = server
    yield fake
    fake.tamper_position = None
    fake.pooling_output = "sequence"
    fake.classify_num_classes = 1


# --------------------------------------------------------------------------- learnability

@pytest.mark.parametrize("shape", ["prompt_logprobs", "echo"])
def test_endpoint_learnability_matches_local_scorer(server, local, shape):
    fake, url = server
    scorer = EndpointLearnabilityScorer(url, STUDENT, shape=shape, batch_size=2)
    for i, (prompt, response) in enumerate(ITEMS):
        assert scorer.encode_item(prompt, response, index=i) == local.encode_item(prompt, response, index=i)
    before = fake.received["/v1/completions"]
    remote = scorer.score(ITEMS)
    assert fake.received["/v1/completions"] - before == 3  # 5 items, at most 2 per request
    np.testing.assert_allclose(remote, local.score(ITEMS), atol=1e-3, rtol=0)
    for prompt, response in ITEMS:
        a = scorer.token_logprobs(prompt, response)
        b = local.token_logprobs(prompt, response)
        assert a.shape == b.shape and a.shape[0] > 0
        assert np.abs(a - b).max() < 1e-3  # nats per token
    assert scorer.client.counters()["prompt_tokens"] > 0


def test_echo_with_text_tokens_is_checked_by_text(server, local):
    """A server that ignores return_tokens_as_token_ids sends token strings; they still verify."""
    fake, url = server
    scorer = EndpointLearnabilityScorer(url, STUDENT, shape="echo")
    for prompt, response in ITEMS[:3]:
        p, r = scorer.encode_item(prompt, response)
        data = scorer.client.completions(p + r, max_tokens=1, echo=True, logprobs=0)
        choice = data["choices"][0]
        assert not choice["logprobs"]["tokens"][1].startswith("token_id:")
        lp = response_logprobs(choice, p + r, len(p), scorer.tokenizer)
        assert np.abs(lp - local.token_logprobs(prompt, response)).max() < 1e-3


@pytest.mark.parametrize("shape", ["prompt_logprobs", "echo"])
@pytest.mark.parametrize("position", [-1, 3])  # a response token; a prompt token
def test_token_mismatch_raises(fake, server, shape, position):
    _, url = server
    fake.tamper_position = position
    scorer = EndpointLearnabilityScorer(url, STUDENT, shape=shape)
    with pytest.raises(TokenMismatchError):
        scorer.score(ITEMS[:2])


def test_malformed_completion_choices_raise():
    ids, start = [1, 2, 3, 4], 2
    good = {"prompt_logprobs": [None] + [{str(t): {"logprob": -1.0, "rank": 1}} for t in ids[1:]]}
    assert response_logprobs(good, ids, start).tolist() == [-1.0, -1.0]
    with pytest.raises(TokenMismatchError):  # too few positions
        response_logprobs({"prompt_logprobs": good["prompt_logprobs"][:3]}, ids, start)
    with pytest.raises(TokenMismatchError):  # echoed ids differ
        response_logprobs({"prompt_token_ids": [1, 2, 9, 4], **good}, ids, start)
    echo = {"logprobs": {"tokens": [f"token_id:{t}" for t in ids], "text_offset": [0] * 4,
                         "token_logprobs": [None, -0.5, -0.25, -0.125]}}
    assert response_logprobs(echo, ids, start).tolist() == [-0.25, -0.125]
    echo_short = {"logprobs": {**echo["logprobs"], "token_logprobs": [None, -0.5]}}
    with pytest.raises(TokenMismatchError):  # echo not honoured
        response_logprobs(echo_short, ids, start)
    with pytest.raises(OpenAICompatError):
        response_logprobs({"text": "x"}, ids, start)


# --------------------------------------------------------------------------- reward

@pytest.fixture(scope="module")
def expected_rewards(server):
    """The fake RM's reward of each item, computed in-process from the same weights."""
    fake, _ = server
    return np.array([fake.reward(fake.render_ids(EndpointRewardScorer.messages(p, r), False))[0]
                     for p, r in ITEMS])


@pytest.mark.parametrize("route,setting", [("pooling", "sequence"), ("pooling", "token"),
                                           ("classify", 1), ("classify", 2)])
@pytest.mark.parametrize("local_template", [False, True])
def test_reward_scorer_parses_pooling_and_classify(fake, server, expected_rewards, route, setting,
                                                   local_template):
    _, url = server
    if route == "pooling":
        fake.pooling_output = setting
    else:
        fake.classify_num_classes = setting
    scorer = EndpointRewardScorer(url, STUDENT, route=route, batch_size=2,
                                  tokenizer_ref="smollm2-135m-instruct" if local_template else None)
    np.testing.assert_allclose(scorer.score(ITEMS), expected_rewards, atol=1e-6, rtol=0)
    assert scorer(*ITEMS[0]) == pytest.approx(expected_rewards[0], abs=1e-6)


def test_reward_shape_parsers():
    assert reward_from_pooling(1.5) == 1.5
    assert reward_from_pooling([-2.0]) == -2.0
    assert reward_from_pooling([[0.1], [0.2], [0.7]]) == 0.7
    for bad in ([1.0, 2.0], [[1.0, 2.0]], [], "x"):
        with pytest.raises(OpenAICompatError):
            reward_from_pooling(bad)
    # requested with use_activation false, /classify's "probs" are logits
    assert reward_from_classification({"probs": [3.0], "num_classes": 1}) == 3.0
    assert reward_from_classification({"probs": [0.5, -0.5], "num_classes": 2}) == -1.0
    with pytest.raises(OpenAICompatError):
        reward_from_classification({"probs": [0.2, 0.3, 0.5]})


# --------------------------------------------------------------------------- client

def test_concurrency_limit_is_shared_per_endpoint():
    fake = FakeVLLM(model="m", chat_latency_s=0.25)
    url, stop = start_server(fake.app)
    try:
        # Three clients of one endpoint: the first sets the limit, the others share it.
        clients = [OpenAICompatClient(url + "/v1", "m", max_concurrency=3) for _ in range(3)]
        errors = []

        def work(client):
            try:
                for _ in range(2):
                    assert client.chat([{"role": "user", "content": "hi"}]).text == "answer to: hi"
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(clients[i % 3],)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert fake.received["/v1/chat/completions"] == 24
        assert fake.max_in_flight["/v1/chat/completions"] == 3  # reached, never exceeded
        snap = clients[0].endpoint.snapshot()
        assert snap["peak_in_flight"] == 3 and snap["in_flight"] == 0
        assert sum(c.counters()["successes"] for c in clients) == 24
    finally:
        stop()


@pytest.fixture(scope="module")
def pool():
    pytest.importorskip("xllamacpp")
    from services.core.models import ModelNotFound
    from services.demo.pool import DemoPool

    try:
        p = DemoPool(n_parallel=4, n_ctx=2048)
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    with p:
        yield p


def test_client_against_llama_cpp(pool):
    with OpenAICompatClient(pool.base_url, pool.model, max_concurrency=2) as client:
        assert pool.model in client.check_health()
        res = client.chat([{"role": "user", "content": "What is 2 + 2?"}], max_tokens=12,
                          temperature=0.0, seed=1)
        assert res.text.strip() and res.prompt_tokens > 0 and 0 < res.completion_tokens <= 12
        raw = client.completions("The capital of France is", max_tokens=4, temperature=0.0)
        assert raw["choices"][0]["text"]
        counts = client.counters()
        assert counts["requests"] == counts["successes"] == 3 and counts["failures"] == 0
        assert counts["completion_tokens"] >= res.completion_tokens + 1

        threads = [threading.Thread(target=client.chat, args=([{"role": "user", "content": f"Count to {i}."}],),
                                    kwargs={"max_tokens": 8}) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.endpoint.snapshot()["peak_in_flight"] == 2
        assert client.counters()["successes"] == 9
    with pytest.raises(OpenAICompatError, match="does not serve"):
        OpenAICompatClient(pool.base_url, "no-such-model").check_health()


@pytest.mark.parametrize("route", ["pooling", "classify"])
def test_the_fake_squashes_rewards_as_vllm_does_unless_told_not_to(fake, server, expected_rewards, route):
    """vLLM applies the classifier's sigmoid by default on both routes; the scorer asks for raw logits."""
    _, url = server
    client = OpenAICompatClient(url + "/v1", STUDENT)
    ids = [fake.render_ids(EndpointRewardScorer.messages(p, r), False) for p, r in ITEMS]
    default = client.post_json("/" + route, {"model": STUDENT, "input": ids})["data"]
    squashed = [d["data"][0] if route == "pooling" else d["probs"][0] for d in default]
    np.testing.assert_allclose(squashed, 1 / (1 + np.exp(-expected_rewards)), atol=1e-6)
    assert all(0 < v < 1 for v in squashed)
    scorer = EndpointRewardScorer(url, STUDENT, route=route)
    np.testing.assert_allclose(scorer.score(ITEMS), expected_rewards, atol=1e-6, rtol=0)
    assert fake.log[-1].route == "/" + route


@pytest.fixture
def short_context(fake):
    """The fake server with a 64-token context, restored afterwards."""
    fake.max_model_len = 64
    yield fake
    fake.max_model_len = 2048


def test_learnability_truncates_to_the_servers_context_like_the_local_scorer(short_context, server, local):
    _, url = server
    scorer = EndpointLearnabilityScorer(url, STUDENT, batch_size=2)
    assert scorer.max_length == 63  # the context less the one generated token
    local.max_length = 63
    try:
        want = local.score_detailed(ITEMS)
    finally:
        local.max_length = None
    got = scorer.score_detailed(ITEMS)
    assert not got.errors
    assert got.truncated == want.truncated and any(got.truncated) and not all(got.truncated)
    np.testing.assert_allclose(got.values, want.values, atol=1e-3, rtol=0)


def test_a_refused_item_costs_only_its_own_score(short_context, server, local):
    _, url = server
    scorer = EndpointLearnabilityScorer(url, STUDENT, batch_size=5, max_length=10_000)  # more than it takes
    long_ones = [i for i, (p, r) in enumerate(ITEMS) if sum(map(len, scorer.encode_item(p, r))) + 1 > 64]
    assert 0 < len(long_ones) < len(ITEMS)
    got = scorer.score_detailed(ITEMS)
    assert sorted(got.errors) == long_ones and all("maximum context length" in e for e in got.errors.values())
    short = [i for i in range(len(ITEMS)) if i not in long_ones]
    np.testing.assert_allclose(got.values[short], local.score([ITEMS[i] for i in short]), atol=1e-3, rtol=0)
    assert np.isnan(got.values[long_ones]).all()
    with pytest.raises(OpenAICompatError, match="not scored"):
        scorer.score(ITEMS)


@pytest.mark.parametrize("local_template", [False, True])
def test_reward_inputs_keep_their_end_when_longer_than_the_context(short_context, server, local_template):
    fake, url = server
    scorer = EndpointRewardScorer(url, STUDENT, batch_size=3,
                                  tokenizer_ref="smollm2-135m-instruct" if local_template else None)
    got = scorer.score_detailed(ITEMS)
    ids = [fake.render_ids(EndpointRewardScorer.messages(p, r), False) for p, r in ITEMS]
    assert not got.errors and got.truncated == [len(x) > 64 for x in ids] and any(got.truncated)
    np.testing.assert_allclose(got.values, [fake.reward(x[-64:])[0] for x in ids], atol=1e-6, rtol=0)


def test_worker_matrices_keep_truncation_flags_and_retry_refused_items(short_context, server, tmp_path):
    """What the scoring worker calls: flags survive the cache; a refused answer is not cached as NaN."""
    from services.core.cache import ScoreCache
    from services.method.formats import ParallelRecord
    from services.scoring.matrices import learnability_detailed

    fake, url = server
    teachers = [f"t{i}" for i in range(len(ITEMS))]
    records = [ParallelRecord(id="p", prompt=ITEMS[0][0], responses={t: r for t, (_, r) in zip(teachers, ITEMS)})]
    cache = ScoreCache(tmp_path / "scores.sqlite")
    truncating = EndpointLearnabilityScorer(url, STUDENT, batch_size=5)
    first = learnability_detailed(records, teachers, "s", scorer=truncating, cache=cache)
    assert not first.errors and first.truncated.any() and np.isfinite(first.values).all()
    before = fake.received["/v1/completions"]
    again = learnability_detailed(records, teachers, "s", scorer=truncating, cache=cache)
    assert fake.received["/v1/completions"] == before  # all from the cache, flags included
    assert (again.truncated == first.truncated).all()

    refusing = EndpointLearnabilityScorer(url, STUDENT, batch_size=5, max_length=10_000)
    other = tmp_path / "other.sqlite"
    got = learnability_detailed(records, teachers, "s", scorer=refusing, cache=ScoreCache(other))
    refused = [j for (_, j) in got.errors]
    assert refused and np.isnan(got.values[0, refused]).all()
    assert np.isfinite(np.delete(got.values[0], refused)).all()
    before = fake.received["/v1/completions"]
    learnability_detailed(records, teachers, "s", scorer=refusing, cache=ScoreCache(other))
    assert fake.received["/v1/completions"] - before == len(refused)  # only the refused ones are asked again
