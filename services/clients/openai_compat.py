"""A synchronous production client for OpenAI-compatible servers (vLLM, llama.cpp, ...).

``base_url`` follows the OpenAI SDK convention and normally ends in ``/v1``; a bare
``http://host:port`` gets ``/v1`` appended. One client is safe to share between threads.

What keeps a fleet of workers from hurting one endpoint, or one sick endpoint from stalling
the workers, is shared per ``base_url`` in the process (:class:`Endpoint`):

* a concurrency limit (a semaphore held only while a request is on the wire, not while
  backing off), so N worker threads never put more than ``max_concurrency`` requests on
  one server;
* a circuit breaker: ``failure_threshold`` consecutive failed attempts (transport errors,
  timeouts, 5xx) mark the endpoint DOWN for a cooldown that doubles on every failed probe
  (up to ``max_cooldown_s``). While down, a call waits at most ``down_wait_s`` for the
  half-open probe (one call is let through after the cooldown); if the probe is further
  away than that, or fails, the call raises :class:`EndpointDown` at once
  (``retryable=True``, so a Celery task retries later instead of burning its retries).
  429 neither trips nor resets the breaker: the server is alive, just busy.

The first client created for a ``base_url`` sets that endpoint's limits; later clients
with different limits share the existing ones (a warning says so).

Retries: connection errors, timeouts, 408/409/429 and 5xx, at most ``max_retries`` times,
sleeping with exponential backoff and full jitter (``uniform(0, min(max_backoff_s,
backoff_s * 2**attempt))``), never sooner than a ``Retry-After`` header says, and never more
than ``max_total_backoff_s`` in all for one call (a ``Retry-After`` beyond that budget ends
the call with a retryable error). Other 4xx raise :class:`OpenAICompatError` at once.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAICompatError(RuntimeError):
    """A request to an OpenAI-compatible endpoint failed (after retries, if retryable)."""

    def __init__(self, message: str, *, status_code: int | None = None, url: str | None = None,
                 retryable: bool = False):
        super().__init__(message)
        self.status_code = status_code
        self.url = url
        self.retryable = retryable


class EndpointDown(OpenAICompatError):
    """The endpoint's circuit breaker is open: it kept failing, so we do not call it now."""

    def __init__(self, message: str, *, url: str | None = None):
        super().__init__(message, url=url, retryable=True)


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


def normalize_base_url(base_url: str) -> str:
    """Strip trailing slashes; add ``/v1`` when the URL has no path at all."""
    parts = urlsplit(base_url.strip())
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"base_url must look like http://host:port/v1, got {base_url!r}")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")).rstrip("/")


# --------------------------------------------------------------------------- per-endpoint state

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Endpoint:
    """Concurrency limit and circuit breaker shared by every client of one base_url."""

    def __init__(self, base_url: str, *, max_concurrency: int, failure_threshold: int,
                 cooldown_s: float, max_cooldown_s: float):
        if max_concurrency < 1 or failure_threshold < 1:
            raise ValueError("max_concurrency and failure_threshold must be >= 1")
        self.base_url = base_url
        self.max_concurrency = int(max_concurrency)
        self.failure_threshold = int(failure_threshold)
        self.cooldown_s = float(cooldown_s)
        self.max_cooldown_s = float(max_cooldown_s)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._cond = threading.Condition()
        self.state = CLOSED
        self.consecutive_failures = 0
        self.times_opened = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._current_cooldown = self.cooldown_s
        self._retry_at = 0.0  # monotonic time when an OPEN breaker lets one probe through

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the endpoint's concurrency slots for the duration of one request."""
        with self._slots:
            with self._cond:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                with self._cond:
                    self.in_flight -= 1

    def admit(self, max_wait_s: float) -> bool:
        """Wait until a request may go out; True if this caller is the half-open probe.

        Raises :class:`EndpointDown` when the breaker stays open longer than ``max_wait_s``.
        """
        deadline = time.monotonic() + max_wait_s
        with self._cond:
            while True:
                if self.state == CLOSED:
                    return False
                now = time.monotonic()
                if self.state == OPEN and now >= self._retry_at:
                    self.state = HALF_OPEN
                    return True
                # OPEN: wake at the probe time; HALF_OPEN: wait for the probe's verdict.
                wake = self._retry_at if self.state == OPEN else deadline
                if wake > deadline or now >= deadline:
                    raise EndpointDown(
                        f"{self.base_url} is marked down after {self.consecutive_failures} "
                        f"consecutive failures; next probe in {max(0.0, self._retry_at - now):.1f}s",
                        url=self.base_url)
                self._cond.wait(timeout=max(0.0, wake - now))

    def record(self, ok: bool | None, probe: bool) -> None:
        """Feed one attempt's outcome to the breaker (``None``: neutral, e.g. 429)."""
        with self._cond:
            if ok is None:
                if probe and self.state == HALF_OPEN:
                    self.state = OPEN  # let the next caller probe at once
                    self._retry_at = time.monotonic()
            elif ok:
                if self.state != CLOSED:
                    log.info("endpoint %s is back up", self.base_url)
                self.state = CLOSED
                self.consecutive_failures = 0
                self._current_cooldown = self.cooldown_s
            else:
                self.consecutive_failures += 1
                if probe and self.state == HALF_OPEN:
                    self._current_cooldown = min(self.max_cooldown_s, self._current_cooldown * 2)
                    self._open()
                elif self.state == CLOSED and self.consecutive_failures >= self.failure_threshold:
                    self._open()
            self._cond.notify_all()

    def _open(self) -> None:
        self.state = OPEN
        self.times_opened += 1
        self._retry_at = time.monotonic() + self._current_cooldown
        log.warning("endpoint %s marked DOWN after %d consecutive failures; probing in %.1fs",
                    self.base_url, self.consecutive_failures, self._current_cooldown)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {"state": self.state, "consecutive_failures": self.consecutive_failures,
                    "times_opened": self.times_opened, "in_flight": self.in_flight,
                    "peak_in_flight": self.peak_in_flight, "max_concurrency": self.max_concurrency}


_ENDPOINTS: dict[str, Endpoint] = {}
_ENDPOINTS_LOCK = threading.Lock()


def endpoint_for(base_url: str, **limits: Any) -> Endpoint:
    """The process-wide :class:`Endpoint` of ``base_url`` (created with ``limits`` if new)."""
    key = normalize_base_url(base_url)
    with _ENDPOINTS_LOCK:
        ep = _ENDPOINTS.get(key)
        if ep is None:
            ep = _ENDPOINTS[key] = Endpoint(key, **limits)
        elif any(getattr(ep, k) != v for k, v in limits.items()):
            log.warning("endpoint %s already configured (%s); ignoring %s", key,
                        {k: getattr(ep, k) for k in limits}, limits)
        return ep


def _reset_endpoints_after_fork() -> None:
    # A forked worker must not inherit the parent's in-flight counts or held locks.
    global _ENDPOINTS_LOCK
    _ENDPOINTS.clear()
    _ENDPOINTS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_endpoints_after_fork)


# --------------------------------------------------------------------------- client

_COUNTERS = ("calls", "successes", "failures", "requests", "retries", "rejected_down",
             "timeouts", "transport_errors", "http_429", "http_5xx",
             "prompt_tokens", "completion_tokens", "backoff_s")


class OpenAICompatClient:
    """Chat, completions and raw JSON routes of one (endpoint, model), with retries.

    Timeouts: ``connect_timeout`` to open a connection, ``timeout`` for each read/write
    (and for waiting on a pooled connection). Counters (:meth:`counters`) are per client.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 3, backoff_s: float = 0.5, *,
                 connect_timeout: float = 5.0, max_backoff_s: float = 20.0,
                 max_total_backoff_s: float = 60.0, max_concurrency: int = 16,
                 failure_threshold: int = 5, cooldown_s: float = 5.0, max_cooldown_s: float = 60.0,
                 down_wait_s: float = 10.0):
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_total_backoff_s = float(max_total_backoff_s)
        self.down_wait_s = float(down_wait_s)
        self.endpoint = endpoint_for(self.base_url, max_concurrency=max_concurrency,
                                     failure_threshold=failure_threshold, cooldown_s=cooldown_s,
                                     max_cooldown_s=max_cooldown_s)
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
            limits=httpx.Limits(max_connections=max(max_concurrency, 1),
                                max_keepalive_connections=max(max_concurrency, 1)),
            headers=headers)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._counts_lock = threading.Lock()
        self._rng = random.Random()

    # ------------------------------------------------------------------ plumbing
    @property
    def server_root(self) -> str:
        """The URL without its ``/v1`` suffix (where vLLM serves ``/health``, ``/pooling``...)."""
        root = self.base_url
        return root[: -len("/v1")] if root.endswith("/v1") else root

    def counters(self) -> dict[str, float]:
        """A snapshot of this client's counters.

        ``requests`` = HTTP attempts sent, ``retries`` = attempts beyond each call's first,
        ``failures`` = calls that raised, ``rejected_down`` = calls or retries refused
        because the endpoint was down.
        """
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, **deltas: float) -> None:
        with self._counts_lock:
            for k, v in deltas.items():
                self._counts[k] += v

    def _backoff(self, attempt: int) -> float:
        with self._counts_lock:
            u = self._rng.random()
        return u * min(self.max_backoff_s, self.backoff_s * (2 ** attempt))

    def _request(self, method: str, url: str, json: Any = None) -> httpx.Response:
        """One call: attempts with retries, through the endpoint's breaker and semaphore."""
        self._count(calls=1)
        attempt = 0
        slept = 0.0
        try:
            while True:
                try:
                    probe = self.endpoint.admit(self.down_wait_s)
                except EndpointDown:
                    self._count(rejected_down=1)
                    raise
                self._count(requests=1, retries=1 if attempt else 0)
                retry_after = None
                try:
                    with self.endpoint.slot():
                        resp = self._http.request(method, url, json=json)
                except httpx.TransportError as exc:  # connect/read errors and timeouts
                    self.endpoint.record(False, probe)
                    timed_out = isinstance(exc, httpx.TimeoutException)
                    self._count(timeouts=int(timed_out), transport_errors=int(not timed_out))
                    error = OpenAICompatError(
                        f"{method} {url} failed on attempt {attempt + 1}: "
                        f"{type(exc).__name__}: {exc}", url=url, retryable=True)
                    error.__cause__ = exc
                except BaseException:
                    # Not the endpoint's fault; never leave a half-open breaker waiting on it.
                    self.endpoint.record(None, probe)
                    raise
                else:
                    status = resp.status_code
                    self.endpoint.record(None if status == 429 else status < 500, probe)
                    if status < 400:
                        self._count(successes=1)
                        return resp
                    self._count(http_429=int(status == 429), http_5xx=int(status >= 500))
                    error = OpenAICompatError(
                        f"{method} {url} -> HTTP {status}: {_error_text(resp)}",
                        status_code=status, url=url, retryable=status in RETRY_STATUS)
                    if not error.retryable:
                        raise error
                    retry_after = _retry_after_s(resp)
                if attempt >= self.max_retries:
                    raise error
                delay = self._backoff(attempt)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                    if slept + retry_after > self.max_total_backoff_s:
                        raise OpenAICompatError(
                            f"{error} (Retry-After {retry_after:g}s exceeds the retry budget)",
                            status_code=error.status_code, url=url, retryable=True) from error
                delay = min(delay, self.max_total_backoff_s - slept)
                if delay <= 0 and slept >= self.max_total_backoff_s:
                    raise error
                time.sleep(delay)
                slept += delay
                self._count(backoff_s=delay)
                attempt += 1
        except BaseException:
            self._count(failures=1)
            raise

    def _url(self, path: str) -> str:
        return self.server_root + "/" + path.lstrip("/")

    def _json(self, resp: httpx.Response, url: str) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise OpenAICompatError(f"{url}: response is not JSON: {resp.text[:300]!r}",
                                    status_code=resp.status_code, url=url) from exc

    def _count_usage(self, data: Any) -> dict:
        usage = (data.get("usage") if isinstance(data, dict) else None) or {}
        self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0))
        return usage

    # ------------------------------------------------------------------ API
    def chat(self, messages: Sequence[dict], **sampling: Any) -> ChatResult:
        """One chat completion. Sampling keys (temperature, top_p, max_tokens, seed, stop,
        ...) are passed through; ``None`` values are dropped and ``n`` is not supported."""
        if sampling.pop("n", 1) not in (None, 1):
            raise ValueError("n > 1 is not supported; call chat() once per sample")
        body = {"model": self.model, "messages": list(messages),
                **{k: v for k, v in sampling.items() if v is not None}}
        url = f"{self.base_url}/chat/completions"
        resp = self._request("POST", url, json=body)
        try:
            data = resp.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
            usage = self._count_usage(data)
            return ChatResult(
                text=message.get("content") or "",
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason=choice.get("finish_reason"),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise OpenAICompatError(f"POST {url}: unexpected response {resp.text[:300]!r}",
                                    status_code=resp.status_code, url=url) from exc

    def completions(self, prompt: str | list, **params: Any) -> dict:
        """Raw JSON of ``/v1/completions``. ``prompt`` may be text, token ids, or a batch of
        either (vLLM); ``None`` params are dropped. Usage is added to the counters."""
        body = {"model": self.model, "prompt": prompt,
                **{k: v for k, v in params.items() if v is not None}}
        url = f"{self.base_url}/completions"
        data = self._json(self._request("POST", url, json=body), url)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise OpenAICompatError(f"POST {url}: no 'choices' in {str(data)[:300]!r}", url=url)
        self._count_usage(data)
        return data

    def post_json(self, path: str, body: dict) -> Any:
        """POST ``body`` to ``path`` under the server root (``/pooling``, ``/classify``,
        ``/tokenize``, ``/v1/...``), with the same retries; returns the parsed JSON."""
        url = self._url(path)
        data = self._json(self._request("POST", url, json=body), url)
        self._count_usage(data)
        return data

    def models(self) -> list[str]:
        return [m["id"] for m in self._model_cards()]

    def max_model_len(self) -> int | None:
        """The context length the server reports for this client's model (vLLM's
        ``/v1/models`` carries ``max_model_len``), or None when it does not say."""
        for card in self._model_cards():
            if card.get("id") == self.model and isinstance(card.get("max_model_len"), int):
                return card["max_model_len"]
        return None

    def _model_cards(self) -> list[dict]:
        url = f"{self.base_url}/models"
        resp = self._request("GET", url)
        try:
            cards = resp.json()["data"]
            if not all(isinstance(card, dict) and isinstance(card.get("id"), str) for card in cards):
                raise TypeError("a model card without an id")
            return cards
        except (ValueError, KeyError, TypeError) as exc:
            raise OpenAICompatError(f"GET {url}: unexpected response {resp.text[:300]!r}",
                                    status_code=resp.status_code, url=url) from exc

    def check_health(self) -> list[str]:
        """Startup check: ``/v1/models`` answers and serves this client's model.

        Returns the served model ids; raises :class:`OpenAICompatError` with the reason.
        """
        served = self.models()
        if self.model not in served:
            raise OpenAICompatError(f"{self.base_url} does not serve model {self.model!r} "
                                    f"(it serves {served})", url=f"{self.base_url}/models")
        return served

    def health(self) -> bool:
        """True if the server answers ``/health`` (or, failing that, ``/v1/models``) with 2xx.
        A single quick probe each, outside the retry and breaker machinery."""
        for url in (f"{self.server_root}/health", f"{self.base_url}/models"):
            try:
                if self._http.get(url, timeout=5.0).status_code < 300:
                    return True
            except httpx.HTTPError:
                continue
        return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "OpenAICompatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAICompatClient({self.base_url!r}, model={self.model!r})"


def _retry_after_s(resp: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    except ValueError:
        return resp.text[:500]
