"""POST /v1/route: each prompt's teacher for one student, from its active router, a named version or
its A/B split."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, status
from starlette.concurrency import run_in_threadpool

from services.jobs.store import JobStore
from services.method.ab import ab_arm

from ..deps import Caller, CallerDep, MetricsDep, RouterClientDep, SettingsDep, StoreDep, owned
from ..errors import StrictJSONRoute, error_responses
from ..protocol import RouteRequest, RouteResponse, RouteResult

router = APIRouter(tags=["routing"], route_class=StrictJSONRoute)


@router.post(
    "/route", response_model=RouteResponse, summary="Route prompts to teachers",
    responses=error_responses(401, 404, 409, 413, 422, 503, e404="unknown student, or it has no such router version",
                              e409="the student has no active router",
                              e503="Redis, or the router (its loading or the router service), is unavailable"))
async def route(body: RouteRequest, settings: SettingsDep, store: StoreDep, metrics: MetricsDep,
                client: RouterClientDep, caller: CallerDep) -> RouteResponse:
    """Per prompt: the teacher with the highest Bradley-Terry strength, the top k and every strength.

    The router is the named ``version``; else, while the student has an A/B split, version A or B by
    the hash of the prompts; else the active version. ``router_version`` says which served.
    Requests are batched with concurrent ones inside the router service.
    """
    if len(body.prompts) > settings.max_prompts_per_request:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"{len(body.prompts)} prompts; at most {settings.max_prompts_per_request} per request")
    for i, prompt in enumerate(body.prompts):
        if len(prompt) > settings.max_prompt_chars:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                f"prompts[{i}] has {len(prompt)} characters; at most {settings.max_prompt_chars}")
    version = await run_in_threadpool(_version, store, caller, body.student_id, body.version, body.prompts)
    start = time.perf_counter()
    batch = await client.route(body.student_id, body.prompts, top_k=body.top_k, version=version)
    metrics.route_latency.observe(time.perf_counter() - start)
    metrics.version_requests.labels(student=body.student_id, version=batch.version).inc()
    metrics.version_prompts.labels(student=body.student_id, version=batch.version).inc(len(batch.results))
    for result in batch.results:
        metrics.assignments.labels(teacher=result.teacher).inc()
    return RouteResponse(
        student_id=body.student_id, router_version=batch.version,
        results=[RouteResult(teacher=r.teacher, top_k=r.top_k, strengths=r.strengths) for r in batch.results])


def _version(store: JobStore, caller: Caller, student_id: str, named: str | None, prompts: list[str]) -> str | None:
    """The version a request names, else its arm of the student's A/B split, else None (the active one)."""
    owned(store, caller, "student", student_id)  # NotFound -> 404
    if named is not None:
        return named
    split = store.ab_split(student_id)
    if split is None:
        return None
    return split["version_b"] if ab_arm(prompts, split["share_b"]) == "b" else split["version_a"]
