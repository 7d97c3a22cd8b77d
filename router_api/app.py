"""The gateway application: ``uvicorn --factory router_api.app:create_app``.

Everything stateful (settings, Redis store, router client, metrics) lives on ``app.state``
and reaches the routes through :mod:`router_api.deps`, so tests inject their own.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

import services
from services.core.settings import Settings
from services.jobs.store import JobStore
from services.method.formats import load_teacher_pool
from services.routing.client import router_client_from_settings

from . import errors
from .deps import authenticate
from .metrics import GatewayMetrics
from .routes import distill, health, jobs, routing, students, teachers

TAGS = [
    {"name": "routing", "description": "Each prompt's teacher for a student (PerSyn's Bradley-Terry router)."},
    {"name": "students", "description": "Students and their router versions."},
    {"name": "teachers", "description": "The teacher pool."},
    {"name": "jobs",
     "description": "Calibration, synthesis and distill jobs, their progress, datasets and trained students."},
    {"name": "health", "description": "Probes (no API key) and Prometheus metrics (an admin key)."},
]


def create_app(settings: Settings | None = None, *, store: JobStore | None = None, router_client=None) -> FastAPI:
    """Build the gateway; ``store`` and ``router_client`` default to ones made from ``settings``.

    An injected router client belongs to the caller, who closes it; one made here is closed on shutdown.
    """
    settings = settings or Settings.from_env()
    own_store = store is None
    store = store or JobStore.from_url(settings.redis_url, settings.key_prefix)
    metrics = GatewayMetrics(store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        client = router_client
        if client is None:
            client = router_client_from_settings(settings, store.active_router, on_batch=metrics.observe_batch,
                                                 resolve_version=store.router_version)
        app.state.router_client = client
        try:
            yield
        finally:
            if router_client is None:
                await client.aclose()
            if own_store:
                store.r.close()

    app = FastAPI(title="PerSyn gateway", version=services.__version__, openapi_tags=TAGS, lifespan=lifespan,
                  description="Router-as-a-service for multi-teacher distillation: route prompts to the teacher "
                              "each student learns best from, and run calibration and synthesis jobs.")
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    app.state.teachers = load_teacher_pool(settings.teacher_pool) if settings.teacher_pool else []
    app.state.router_client = router_client
    errors.install(app)

    secured = [Depends(authenticate)]
    for module in (routing, students, teachers, jobs, distill):
        app.include_router(module.router, prefix="/v1", dependencies=secured)
    app.include_router(health.router)
    return app
