"""Probes and metrics: open without an API key, so orchestrators and Prometheus need no secret."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from ..deps import MetricsDep, RouterClientDep, StoreDep
from ..protocol import Health, Readiness

router = APIRouter(tags=["health"])

@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness: Redis and the router service answer",
            responses={503: {"model": Readiness, "description": "a dependency is down"}})
async def readyz(store: StoreDep, router_client: RouterClientDep):
    checks = {"redis": "ok" if await run_in_threadpool(store.ping) else "no answer to PING",
              "router_service": await router_client.readiness()}
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(Readiness(status="ready" if ready else "not ready", checks=checks).model_dump(),
                        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
