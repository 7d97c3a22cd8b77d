"""One interface for the gateway to reach the router: in-process or over HTTP.

``router_client_from_settings`` picks: ``PERSYN_ROUTER_URL`` set (``settings.router_service_url``)
means the standalone router server (``services.routing.server``) over HTTP, otherwise a
``RouterService`` inside the gateway process.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import httpx

from services.core.settings import Settings
from services.routing.model import RouteResult
from services.routing.service import (
    NoActiveRouter,
    ResolveActive,
    ResolveVersion,
    RoutedBatch,
    RouterService,
    RouterServiceError,
    UnknownRouterVersion,
)

#: How long a readiness probe waits for the remote router service.
PROBE_TIMEOUT_S = 2.0


@runtime_checkable
class RouterClient(Protocol):
    async def route(self, student_id: str, prompts: list[str], top_k: int = 3,
                    version: str | None = None) -> RoutedBatch:
        """Under the student's active router, or its router ``version`` when one is named."""
        ...

    async def readiness(self) -> str:
        """"ok", or why the router cannot serve (for the gateway's /readyz)."""
        ...

    async def aclose(self) -> None: ...


class LocalRouterClient:
    """The router in this process: a thin wrapper around a ``RouterService``."""

    def __init__(self, service: RouterService):
        self.service = service

    async def route(self, student_id: str, prompts: list[str], top_k: int = 3,
                    version: str | None = None) -> RoutedBatch:
        return await self.service.route(student_id, prompts, top_k, version)

    async def readiness(self) -> str:
        return "ok"  # it runs in this process, which is answering

    async def aclose(self) -> None:
        await self.service.aclose()


class HTTPRouterClient:
    """The standalone router server (``POST {base_url}/route``) through one pooled async client.

    404 raises ``NoActiveRouter`` (``UnknownRouterVersion`` for a request that named a version); any
    other failure (an error status, a refused or timed-out connection, a malformed answer) raises
    ``RouterServiceError`` naming the URL and the cause.
    """

    def __init__(self, base_url: str, timeout: float = 30.0, *, max_connections: int = 256,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    async def route(self, student_id: str, prompts: list[str], top_k: int = 3,
                    version: str | None = None) -> RoutedBatch:
        url = f"{self.base_url}/route"
        body = {"student_id": student_id, "prompts": list(prompts), "top_k": top_k}
        if version is not None:
            body["version"] = version
        try:
            response = await self._client.post("/route", json=body)
        except httpx.HTTPError as exc:
            raise RouterServiceError(f"router service {url} unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404 and version is not None:
            raise UnknownRouterVersion(_detail(response) or f"student {student_id!r} has no router version {version!r}")
        if response.status_code == 404:
            raise NoActiveRouter(_detail(response) or f"student {student_id!r} has no active router")
        if response.status_code != 200:
            raise RouterServiceError(
                f"router service {url} answered HTTP {response.status_code}: {_detail(response)}")
        try:
            body = response.json()
            return RoutedBatch(
                version=str(body["version"]),
                results=[RouteResult(teacher=r["teacher"], top_k=list(r["top_k"]),
                                     strengths={k: float(v) for k, v in r["strengths"].items()})
                         for r in body["results"]])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RouterServiceError(f"router service {url} sent a malformed answer: {exc}") from exc

    async def readiness(self) -> str:
        url = f"{self.base_url}/healthz"
        try:
            reply = await self._client.get("/healthz", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return f"{url} unreachable: {exc!r}"
        return "ok" if reply.is_success else f"{url} answered {reply.status_code}"

    async def aclose(self) -> None:
        await self._client.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500]
    return detail if isinstance(detail, str) else str(detail)[:500]


def service_from_settings(settings: Settings, resolve_active: ResolveActive,
                          on_batch: Callable[[int], None] | None = None, *,
                          resolve_version: ResolveVersion | None = None) -> RouterService:
    """A ``RouterService`` configured from settings."""
    return RouterService(resolve_active, resolve_version=resolve_version, cache_size=settings.router_cache_size,
                         max_batch_size=settings.batch_max_size, max_wait_ms=settings.batch_max_wait_ms,
                         batching=settings.router_batching, device=settings.device,
                         precision=settings.precision, on_batch=on_batch)


def router_client_from_settings(settings: Settings, resolve_active: ResolveActive,
                                on_batch: Callable[[int], None] | None = None, *,
                                resolve_version: ResolveVersion | None = None) -> RouterClient:
    """HTTP client when ``settings.router_service_url`` is set, else an in-process service."""
    if settings.router_service_url:
        return HTTPRouterClient(settings.router_service_url)
    return LocalRouterClient(service_from_settings(settings, resolve_active, on_batch,
                                                   resolve_version=resolve_version))
