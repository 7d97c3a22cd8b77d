"""The client and the generation pool against a failing, slow endpoint (fake_vllm.py faults)."""

import email.utils
import threading
import time
from collections import defaultdict

import httpx
import pytest
from fake_vllm import FakeVLLM, Faults, start_server

import services.synthesis.teachers as generation
from services.clients.openai_compat import EndpointDown, OpenAICompatClient, OpenAICompatError
from services.method.formats import Teacher
from services.synthesis.teachers import GeneratedAnswer, generate_many

CHAT = "/v1/chat/completions"
CLIENT_TIMEOUT_S = 1.5
MAX_RETRIES = 6
SEED = 0


@pytest.fixture
def flaky():
    """30% of chat requests fail (500, or 429 with Retry-After half the time), 10% stall
    past the client timeout."""
    fake = FakeVLLM(model="fake-teacher", faults=Faults(fail_rate=0.3, delay_rate=0.1,
                                                        delay_s=4.0, retry_after_s=1, seed=SEED))
    url, stop = start_server(fake.app)
    yield fake, url
    stop()


def test_generation_batch_survives_faults(flaky, monkeypatch):
    fake, url = flaky
    clients = []

    def client_for(teacher, timeout=120.0):
        # The breaker is tested on its own below; here it must not interfere.
        client = OpenAICompatClient(teacher.base_url, teacher.model, timeout=CLIENT_TIMEOUT_S,
                                    max_retries=MAX_RETRIES, backoff_s=0.05, max_backoff_s=0.5,
                                    max_total_backoff_s=30.0, failure_threshold=1000)
        clients.append(client)
        return client

    monkeypatch.setattr(generation, "client_for", client_for)
    teachers = [Teacher(name=f"teacher-{i}", family="fake", size_b=1.0, base_url=url + "/v1",
                        model="fake-teacher", sampling={"max_tokens": 16}) for i in range(2)]
    jobs = [(t, f"p{j}", f"question {j} for {t.name}", None) for t in teachers for j in range(20)]
    t0 = time.monotonic()
    out = generate_many(jobs, max_workers=8, progress=False, return_exceptions=True)
    elapsed = time.monotonic() - t0

    # Nothing lost, nothing duplicated, nothing mixed up.
    assert list(out) == [(pid, t.name) for t, pid, _, _ in jobs]
    failed = {k: v for k, v in out.items() if not isinstance(v, GeneratedAnswer)}
    assert not failed, failed
    for (t, pid, prompt, _) in jobs:
        assert out[(pid, t.name)].text == f"answer to: {prompt}"

    # Server side: one body per job; its attempts are failures until exactly one success.
    records = [r for r in fake.log if r.route == CHAT]
    by_job = defaultdict(list)
    for r in records:
        by_job[r.key].append(r)
    assert len(by_job) == len(jobs)
    for attempts in by_job.values():
        outcomes = [r.outcome for r in sorted(attempts, key=lambda r: r.nth)]
        assert outcomes[-1] == "ok" and outcomes.count("ok") == 1, outcomes
        assert len(outcomes) <= MAX_RETRIES + 1
        for prev, nxt in zip(attempts, attempts[1:]):  # Retry-After honoured
            if prev.retry_after is not None:
                assert nxt.arrived - prev.arrived >= prev.retry_after - 0.02
    kinds = {k: sum(r.outcome == k for r in records) for k in ("ok", "http_500", "http_429", "delayed")}
    retry_after_sent = sum(r.retry_after is not None for r in records)
    assert kinds["http_500"] and kinds["http_429"] and kinds["delayed"] and retry_after_sent

    # Client side agrees with the server.
    [client] = clients  # one client per (base_url, model)
    c = client.counters()
    assert c["calls"] == c["successes"] == len(jobs) and c["failures"] == 0
    assert c["requests"] == len(records) == kinds["ok"] + c["retries"]
    assert c["retries"] == kinds["http_500"] + kinds["http_429"] + kinds["delayed"]
    assert (c["http_5xx"], c["http_429"], c["timeouts"]) == (
        kinds["http_500"], kinds["http_429"], kinds["delayed"])
    assert c["rejected_down"] == 0
    print(f"\nfault injection: {len(jobs)} jobs in {elapsed:.1f}s; server saw {len(records)} requests "
          f"({kinds['ok']} ok, {kinds['http_500']} x 500, {kinds['http_429']} x 429 "
          f"[{retry_after_sent} with Retry-After], {kinds['delayed']} stalled past the timeout); "
          f"client: {c['retries']} retries, {c['backoff_s']:.1f}s backing off, "
          f"max attempts per job {max(len(a) for a in by_job.values())} (bound {MAX_RETRIES + 1})")


def _chat(client, text="hi"):
    return client.chat([{"role": "user", "content": text}], max_tokens=4)


def test_circuit_breaker_fails_fast_then_recovers():
    fake = FakeVLLM(model="m", faults=Faults(fail_rate=1.0, statuses=(500,)))
    url, stop = start_server(fake.app)
    try:
        client = OpenAICompatClient(url + "/v1", "m", max_retries=1, backoff_s=0.01,
                                    failure_threshold=3, cooldown_s=0.5, down_wait_s=0.0)
        with pytest.raises(OpenAICompatError) as ei:
            _chat(client)
        assert ei.value.status_code == 500 and not isinstance(ei.value, EndpointDown)
        with pytest.raises(EndpointDown):  # third failure trips it; the retry is refused
            _chat(client)
        assert fake.received[CHAT] == 3
        assert client.endpoint.snapshot()["state"] == "open"

        # While down: fast, retryable failures that never reach the server.
        for _ in range(20):
            t0 = time.monotonic()
            with pytest.raises(EndpointDown) as ei:
                _chat(client)
            assert time.monotonic() - t0 < 0.05
            assert ei.value.retryable
        assert fake.received[CHAT] == 3
        assert client.counters()["rejected_down"] == 21

        # Healed: after the cooldown one call probes, succeeds and closes the breaker.
        fake.faults.fail_rate = 0.0
        time.sleep(0.6)
        assert _chat(client).text == "answer to: hi"
        assert client.endpoint.snapshot()["state"] == "closed"
        assert _chat(client, "again").text == "answer to: again"
        assert fake.received[CHAT] == 5
    finally:
        stop()


def test_callers_wait_for_the_probe_and_cooldown_doubles():
    fake = FakeVLLM(model="m", faults=Faults(fail_rate=1.0, statuses=(503,)))
    url, stop = start_server(fake.app)
    try:
        client = OpenAICompatClient(url + "/v1", "m", max_retries=0, failure_threshold=2,
                                    cooldown_s=0.4, down_wait_s=3.0)
        for _ in range(2):
            with pytest.raises(OpenAICompatError):
                _chat(client)
        assert client.endpoint.snapshot()["times_opened"] == 1
        # This call waits out the cooldown, is the probe, and fails: open again for 0.8 s.
        t0 = time.monotonic()
        with pytest.raises(OpenAICompatError) as ei:
            _chat(client)
        assert ei.value.status_code == 503 and 0.3 < time.monotonic() - t0 < 2.0
        assert client.endpoint.snapshot()["times_opened"] == 2

        fake.faults.fail_rate = 0.0
        results, errors = [], []

        def call(i):
            try:
                results.append(_chat(client, f"q{i}").text)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t0 = time.monotonic()
        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        waited = time.monotonic() - t0
        assert not errors and sorted(results) == [f"answer to: q{i}" for i in range(4)]
        assert 0.5 < waited < 3.0  # they waited for the doubled cooldown, then the probe
        assert fake.received[CHAT] == 3 + 4
        assert client.endpoint.snapshot()["state"] == "closed"
    finally:
        stop()


# --------------------------------------------------------------------------- retry rules, no server

def _mock_client(host, handler, **kw):
    client = OpenAICompatClient(f"http://{host}", "m", **kw)
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    return client


_OK = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
       "usage": {"prompt_tokens": 2, "completion_tokens": 1}}


@pytest.mark.parametrize("header", ["0.4", "date"])
def test_retry_after_is_honoured(header):
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        if len(calls) == 1:
            value = header if header != "date" else email.utils.formatdate(time.time() + 1.2, usegmt=True)
            return httpx.Response(429, headers={"Retry-After": value})
        return httpx.Response(200, json=_OK)

    client = _mock_client(f"mock-retry-after-{header}", handler, backoff_s=0.001)
    assert _chat(client).text == "ok"
    # An HTTP date has 1 s resolution: 1.2 s ahead is at least 0.2 s.
    assert calls[1] - calls[0] >= (0.4 if header == "0.4" else 0.2) - 0.01
    c = client.counters()
    assert (c["requests"], c["retries"], c["http_429"], c["successes"]) == (2, 1, 1, 1)


def test_retry_budget_bounds_backoff():
    calls = []
    client = _mock_client("mock-budget", lambda r: calls.append(r) or httpx.Response(503),
                          max_retries=100, backoff_s=0.1, max_backoff_s=0.2,
                          max_total_backoff_s=0.5, failure_threshold=1000)
    t0 = time.monotonic()
    with pytest.raises(OpenAICompatError) as ei:
        _chat(client)
    assert ei.value.retryable and time.monotonic() - t0 < 1.5
    c = client.counters()
    assert c["backoff_s"] <= 0.5 + 1e-9 and c["failures"] == 1 and 1 < len(calls) < 100

    far = _mock_client("mock-far", lambda r: httpx.Response(429, headers={"Retry-After": "60"}),
                       max_total_backoff_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(OpenAICompatError, match="Retry-After") as ei:
        _chat(far)
    assert ei.value.retryable and ei.value.status_code == 429 and time.monotonic() - t0 < 0.5


def test_timeouts_and_refused_connections_are_retried():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        if len(calls) == 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=_OK)

    client = _mock_client("mock-transport", handler, backoff_s=0.001)
    assert _chat(client).text == "ok"
    c = client.counters()
    assert (c["timeouts"], c["transport_errors"], c["retries"]) == (1, 1, 2)
    assert client.endpoint.snapshot()["consecutive_failures"] == 0
