"""A small synchronous client for OpenAI-compatible servers (vLLM, llama.cpp, ...).

``base_url`` follows the OpenAI SDK convention and normally ends in ``/v1``; a bare
``http://host:port`` gets ``/v1`` appended. Connection errors, timeouts, 429 and 5xx
are retried a few times with exponential backoff; everything else raises
:class:`OpenAICompatError` at once. One client is safe to share between threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAICompatError(RuntimeError):
    """A request to an OpenAI-compatible endpoint failed (after retries, if retryable)."""

    def __init__(self, message: str, *, status_code: int | None = None, url: str | None = None,
                 retryable: bool = False):
        super().__init__(message)
        self.status_code = status_code
        self.url = url
        self.retryable = retryable


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


class OpenAICompatClient:
    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 3, backoff_s: float = 0.5):
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
                                  headers=headers)

    # ------------------------------------------------------------------ plumbing
    @property
    def server_root(self) -> str:
        """The URL without its ``/v1`` suffix (where vLLM and llama.cpp serve ``/health``)."""
        root = self.base_url
        return root[: -len("/v1")] if root.endswith("/v1") else root

    def _request(self, method: str, url: str, json: Any = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = self._http.request(method, url, json=json)
            except httpx.TransportError as exc:  # connect/read errors and timeouts
                if attempt >= self.max_retries:
                    raise OpenAICompatError(
                        f"{method} {url} failed after {attempt + 1} attempt(s): "
                        f"{type(exc).__name__}: {exc}", url=url, retryable=True) from exc
            else:
                if resp.status_code < 400:
                    return resp
                retryable = resp.status_code in RETRY_STATUS
                if not retryable or attempt >= self.max_retries:
                    raise OpenAICompatError(
                        f"{method} {url} -> HTTP {resp.status_code}: {_error_text(resp)}",
                        status_code=resp.status_code, url=url, retryable=retryable)
            time.sleep(self.backoff_s * (2 ** attempt))
            attempt += 1

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
            usage = data.get("usage") or {}
            return ChatResult(
                text=message.get("content") or "",
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason=choice.get("finish_reason"),
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise OpenAICompatError(f"POST {url}: unexpected response {resp.text[:300]!r}",
                                    status_code=resp.status_code, url=url) from exc

    def models(self) -> list[str]:
        url = f"{self.base_url}/models"
        resp = self._request("GET", url)
        try:
            return [m["id"] for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise OpenAICompatError(f"GET {url}: unexpected response {resp.text[:300]!r}",
                                    status_code=resp.status_code, url=url) from exc

    def health(self) -> bool:
        """True if the server answers ``/health`` (or, failing that, ``/v1/models``) with 2xx."""
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


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    except ValueError:
        return resp.text[:500]
