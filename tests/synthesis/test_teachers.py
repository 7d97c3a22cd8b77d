"""Generation against a REAL embedded llama.cpp server (xllamacpp + SmolLM2-135M GGUF)."""

import dataclasses
import random
import socket
import time

import httpx
import pytest

from services.clients.openai_compat import ChatResult, OpenAICompatClient, OpenAICompatError, normalize_base_url
from services.demo.problems import make_problems
from services.method.formats import Teacher, load_teacher_pool
from services.scoring.quality import math_verify_reward

pytest.importorskip("xllamacpp")
from services.demo.pool import DEMO_MODEL_ALIAS, DemoPool, write_demo_pool_yaml  # noqa: E402
from services.synthesis.teachers import (  # noqa: E402
    GeneratedAnswer,
    answer,
    build_messages,
    generate,
    generate_many,
    generate_math,
    math_samples_for,
)

MAX_TOKENS = 48


def _small(t: Teacher, max_tokens: int = MAX_TOKENS) -> Teacher:
    return dataclasses.replace(t, sampling={**t.sampling, "max_tokens": max_tokens})


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def pool():
    from services.core.models import ModelNotFound

    try:
        p = DemoPool(n_parallel=4, n_ctx=4096)
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    with p:
        yield p
    assert not p.running


@pytest.fixture(scope="module")
def teachers(pool):
    return [_small(t) for t in pool.teachers]


def test_pool_is_labelled_demo(pool):
    names = [t.name for t in pool.teachers]
    assert names == ["demo-careful", "demo-verbose", "demo-creative"]
    assert {t.family for t in pool.teachers} == {"smollm2", "demo-other"}
    assert all(t.base_url == pool.base_url and t.base_url.endswith("/v1") for t in pool.teachers)
    temps = [t.sampling["temperature"] for t in pool.teachers]
    assert len(set(temps)) == 3


def test_models_and_health(pool):
    with OpenAICompatClient(pool.base_url, pool.model) as client:
        assert client.health()
        assert DEMO_MODEL_ALIAS in client.models()
    r = httpx.get(pool.base_url + "/models", timeout=5)
    assert r.status_code == 200


def test_each_teacher_answers(teachers):
    prompt = make_problems(1, seed=0)[0]["prompt"]
    with OpenAICompatClient(teachers[0].base_url, teachers[0].model) as client:
        for t in teachers:
            [res] = generate(t, prompt, client=client, seed=1)
            assert isinstance(res, ChatResult)
            assert res.text.strip(), t.name
            assert res.prompt_tokens > 0 and 0 < res.completion_tokens <= MAX_TOKENS
            assert res.finish_reason in ("stop", "length")


def test_system_prompt_reaches_the_model(pool):
    careful, _, creative = pool.teachers
    assert build_messages(careful, "q")[0]["role"] == "system"
    assert [m["role"] for m in build_messages(creative, "q")] == ["user"]
    with OpenAICompatClient(pool.base_url, pool.model) as client:
        a = generate(careful, "Hi", client=client, sampling={"max_tokens": 4})[0]
        b = generate(creative, "Hi", client=client, sampling={"max_tokens": 4})[0]
    assert a.prompt_tokens > b.prompt_tokens + 10  # the system prompt was sent


def test_max_tokens_respected_and_n(teachers):
    t = _small(teachers[1], max_tokens=5)
    res = generate(t, "Write a long story about a dragon.", n=3, seed=7)
    assert len(res) == 3
    for r in res:
        assert 0 < r.completion_tokens <= 5
        assert r.finish_reason == "length"


def test_answer_decodes_non_math_greedily_and_honours_the_jobs_max_tokens(pool):
    creative = next(t for t in pool.teachers if t.name == "demo-creative")  # temperature 1.0 by default
    prompt = "Describe the sea in two sentences."
    texts = {answer(creative, "sea", prompt, None, seed=s, max_tokens=12).text for s in range(3)}
    assert len(texts) == 1  # different seeds, one answer: greedy
    short = answer(creative, "sea", prompt, None, max_tokens=3)
    assert 0 < short.completion_tokens <= 3 and short.finish_reason == "length"
    math = answer(creative, "m", "What is 17 * 23? Think step by step.", "391", max_tokens=4)
    assert math.n_samples == 4 and 0 < math.completion_tokens <= 4 * 4


def test_math_samples_for():
    base = Teacher(name="x", family="f", size_b=7, base_url="http://h/v1", model="m", sampling={})
    assert math_samples_for(base) == 4
    assert math_samples_for(dataclasses.replace(base, size_b=72)) == 2
    assert math_samples_for(dataclasses.replace(base, size_b=405)) == 2
    assert math_samples_for(dataclasses.replace(base, long_cot=True)) == 2


def test_generate_math(teachers):
    prob = make_problems(3, seed=0)[2]
    t = teachers[0]
    ans = generate_math(t, prob["prompt"], prob["reference"], rng=random.Random(0))
    assert isinstance(ans, GeneratedAnswer)
    assert ans.n_samples == math_samples_for(t) == 4
    assert 0 <= ans.n_correct <= ans.n_samples
    assert ans.verified == (ans.n_correct > 0)
    assert ans.text.strip()
    assert math_verify_reward(ans.text, prob["reference"]) == (1.0 if ans.verified else 0.0)
    assert 0 < ans.completion_tokens <= 4 * MAX_TOKENS


def test_generate_math_large_teacher_draws_two(teachers):
    big = dataclasses.replace(teachers[2], size_b=72.0)
    ans = generate_math(big, "What is 2 + 3?", "5", rng=random.Random(1))
    assert ans.n_samples == 2 and 0 <= ans.n_correct <= 2


def test_generate_many(teachers):
    probs = make_problems(2, seed=5)
    jobs = [(_small(t, 32), p["id"], p["prompt"], p["reference"]) for t in teachers for p in probs]
    jobs.append((teachers[1], "free-1", "Name a colour.", None))
    t0 = time.monotonic()
    out = generate_many(jobs, max_workers=4, progress=False)
    assert list(out) == [(j[1], j[0].name) for j in jobs]
    for (pid, name), ans in out.items():
        assert isinstance(ans, GeneratedAnswer) and ans.text.strip()
        if pid == "free-1":
            assert (ans.n_samples, ans.checked, ans.verified) == (1, False, False)
        else:
            assert ans.n_samples == 4 and ans.verified == (ans.n_correct > 0)
    assert time.monotonic() - t0 < 120
    with pytest.raises(ValueError):
        generate_many(jobs + jobs[:1], progress=False)


def test_generate_many_errors(teachers):
    dead = dataclasses.replace(teachers[0], name="dead", base_url="http://127.0.0.1:9/v1")
    jobs = [(teachers[0], "a", "Say hi.", None), (dead, "a", "Say hi.", None)]
    import services.synthesis.teachers as gen

    orig = gen.client_for
    gen.client_for = lambda t, timeout=120.0: OpenAICompatClient(
        t.base_url, t.model, timeout=timeout, max_retries=0)
    try:
        out = generate_many(jobs, progress=False, return_exceptions=True)
        assert isinstance(out[("a", "dead")], OpenAICompatError)
        assert isinstance(out[("a", teachers[0].name)], GeneratedAnswer)
        with pytest.raises(OpenAICompatError):
            generate_many(jobs, progress=False)
    finally:
        gen.client_for = orig


def test_yaml_roundtrip(pool, tmp_path):
    path = write_demo_pool_yaml(pool, tmp_path / "pool.yaml")
    assert load_teacher_pool(path) == pool.teachers


def test_server_stops_on_exit():
    with DemoPool(n_parallel=1, n_ctx=512) as p:
        host, port = "127.0.0.1", p.port
        assert _port_open(host, port)
        assert OpenAICompatClient(p.base_url, p.model).health()
    assert not p.running
    time.sleep(0.2)
    assert not _port_open(host, port)
    p.stop()  # idempotent
    with pytest.raises(OpenAICompatError):
        OpenAICompatClient(p.base_url, p.model, max_retries=0).models()


# --------------------------------------------------------------------------- client, no server

def _mock_client(handler, **kw):
    client = OpenAICompatClient("http://mock", "m", backoff_s=0.01, **kw)
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    return client


def test_client_retries_then_succeeds():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json={"choices": [{"message": {"content": "hi"},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    res = _mock_client(handler).chat([{"role": "user", "content": "x"}], temperature=0.5,
                                     top_p=None)
    assert res == ChatResult("hi", 3, 1, "stop")
    assert len(calls) == 3
    import json

    body = json.loads(calls[-1].content)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "x"}],
                    "temperature": 0.5}
    assert str(calls[-1].url) == "http://mock/v1/chat/completions"


def test_client_errors():
    client = _mock_client(lambda r: httpx.Response(400, json={"error": {"message": "bad"}}))
    with pytest.raises(OpenAICompatError) as ei:
        client.chat([{"role": "user", "content": "x"}])
    assert ei.value.status_code == 400 and not ei.value.retryable and "bad" in str(ei.value)
    calls = []
    client = _mock_client(lambda r: calls.append(r) or httpx.Response(429), max_retries=2)
    with pytest.raises(OpenAICompatError) as ei:
        client.models()
    assert ei.value.status_code == 429 and ei.value.retryable and len(calls) == 3
    client = _mock_client(lambda r: httpx.Response(200, text="not json"))
    with pytest.raises(OpenAICompatError):
        client.chat([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError):
        client.chat([], n=2)


def test_normalize_base_url():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://gw/openai/v1") == "https://gw/openai/v1"
    with pytest.raises(ValueError):
        normalize_base_url("localhost:8000")
