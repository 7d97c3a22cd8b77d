"""Probes and metrics. The probes are open (orchestrators need no secret); ``/metrics`` counts every
tenant's jobs and routes, so with API keys set it needs an admin key (Prometheus: ``authorization``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from ..deps import MetricsDep, RouterClientDep, StoreDep, require_admin
from ..errors import error_responses
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


@router.get("/metrics", summary="Prometheus metrics (an admin key when API keys are set)", response_class=Response,
            dependencies=[Depends(require_admin)],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401, 403)})
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
