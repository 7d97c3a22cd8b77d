"""POST /v1/route: each prompt's teacher for one student, from its active router."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, status
from starlette.concurrency import run_in_threadpool

from ..deps import MetricsDep, RouterClientDep, SettingsDep, StoreDep
from ..protocol import ErrorResponse, RouteRequest, RouteResponse, RouteResult

router = APIRouter(tags=["routing"])


@router.post(
    "/route", response_model=RouteResponse, summary="Route prompts to teachers",
    responses={404: {"model": ErrorResponse, "description": "unknown student"},
               409: {"model": ErrorResponse, "description": "the student has no active router"},
               413: {"model": ErrorResponse, "description": "too many or too long prompts"},
               503: {"model": ErrorResponse, "description": "the router could not be loaded or reached"}})
async def route(body: RouteRequest, settings: SettingsDep, store: StoreDep, metrics: MetricsDep,
                client: RouterClientDep) -> RouteResponse:
    """Per prompt: the teacher with the highest Bradley-Terry strength, the top k and every strength.

    Requests are batched with concurrent ones inside the router service.
    """
    if len(body.prompts) > settings.max_prompts_per_request:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"{len(body.prompts)} prompts; at most {settings.max_prompts_per_request} per request")
    for i, prompt in enumerate(body.prompts):
        if len(prompt) > settings.max_prompt_chars:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                f"prompts[{i}] has {len(prompt)} characters; at most {settings.max_prompt_chars}")
    await run_in_threadpool(store.get_student, body.student_id)  # NotFound -> 404
    start = time.perf_counter()
    batch = await client.route(body.student_id, body.prompts, top_k=body.top_k)
    metrics.route_latency.observe(time.perf_counter() - start)
    for result in batch.results:
        metrics.assignments.labels(teacher=result.teacher).inc()
    return RouteResponse(
        student_id=body.student_id, router_version=batch.version,
        results=[RouteResult(teacher=r.teacher, top_k=r.top_k, strengths=r.strengths) for r in batch.results])
