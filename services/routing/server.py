"""The router service as its own process (``persyn router-server``; ``PERSYN_ROUTER_URL`` points the
gateway at it).

    POST /route   {"student_id": str, "prompts": [str], "top_k": int = 3, "version": str | null}
                  -> {"version": str, "results": [{"teacher", "top_k", "strengths"}]}
                  404 {"detail": ...} when the student has no active router (or no such version,
                  for a request that names one); 422 on a bad body;
                  503 when the active router cannot be loaded.
    GET  /healthz {"status": "ok", "loaded": [[student, version], ...], "batching": bool}

Settings come from the environment (``Settings.from_env``; ``PERSYN_ROUTER_BATCHING=0`` turns
micro-batching off).
"""

from __future__ import annotations

import argparse
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator

from services.core.settings import Settings
from services.routing.client import service_from_settings
from services.routing.service import NoActiveRouter, RouterService, RouterServiceError, UnknownRouterVersion

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8100


class RouteRequest(BaseModel):
    student_id: str = Field(min_length=1)
    prompts: list[str] = Field(min_length=1)
    top_k: int = Field(default=3, ge=1)
    version: str | None = Field(default=None, min_length=1, description="a router version; the active one when absent")

    @field_validator("prompts")
    @classmethod
    def _unicode(cls, prompts: list[str]) -> list[str]:
        """A lone surrogate (a ``\\ud800`` escape) is no text a tokenizer can take: refuse it here."""
        for i, prompt in enumerate(prompts):
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"prompt {i} is not valid Unicode (a lone surrogate such as \\ud800)") from None
        return prompts


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 as ``{"detail": str}`` naming each field, never echoing the input (it may not even encode)."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"detail": problems.encode("utf-8", "backslashreplace").decode("utf-8")}, status_code=422)


def create_app(settings: Settings | None = None, *, service: RouterService | None = None) -> FastAPI:
    """The router server; ``service`` defaults to one built from ``settings`` (closed on shutdown,
    an injected one belongs to the caller)."""
    settings = settings or Settings.from_env()
    own_service = service is None
    store = None
    if service is None:
        from services.jobs.store import JobStore

        store = JobStore.from_url(settings.redis_url, settings.key_prefix)
        service = service_from_settings(settings, store.active_router, resolve_version=store.router_version)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            if own_service:
                await service.aclose()
            if store is not None:
                store.r.close()

    app = FastAPI(title="PerSyn router service", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.service = service
    app.state.settings = settings

    @app.post("/route")
    async def route(body: RouteRequest) -> Response:
        if len(body.prompts) > settings.max_prompts_per_request:
            raise HTTPException(422, f"at most {settings.max_prompts_per_request} prompts per request, "
                                     f"got {len(body.prompts)}")
        if any(len(p) > settings.max_prompt_chars for p in body.prompts):
            raise HTTPException(422, f"prompts are limited to {settings.max_prompt_chars} characters")
        try:
            routed = await service.route(body.student_id, body.prompts, body.top_k, body.version)
        except (NoActiveRouter, UnknownRouterVersion) as exc:
            raise HTTPException(404, str(exc.args[0]) if exc.args else "no active router") from exc
        except RouterServiceError as exc:
            raise HTTPException(503, str(exc)) from exc
        # plain json.dumps: no response-model validation on the hot path
        payload = {"version": routed.version,
                   "results": [{"teacher": r.teacher, "top_k": r.top_k, "strengths": r.strengths}
                               for r in routed.results]}
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "batching": service.batching,
                             "loaded": [list(key) for key in service.loaded()]})

    return app


def main(argv: list[str] | None = None) -> int:
    """``persyn router-server [--host H] [--port P]``: serve the router over HTTP with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="persyn router-server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
