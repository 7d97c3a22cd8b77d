"""Students and their router versions; a student belongs to the tenant that registered it."""

from __future__ import annotations

from fastapi import APIRouter, status

from ..deps import CallerDep, OwnedStudentId, SettingsDep, StoreDep
from ..errors import StrictJSONRoute, error_responses
from ..protocol import ABSplit, ActivateRequest, Student, StudentCreate

router = APIRouter(prefix="/students", tags=["students"], route_class=StrictJSONRoute)


@router.post("", response_model=Student, status_code=status.HTTP_201_CREATED, summary="Register a student",
             responses=error_responses(401, 409, 422, 503,
                                       e409="the student id is taken (ids are shared by all tenants)"))
def create_student(body: StudentCreate, settings: SettingsDep, store: StoreDep, caller: CallerDep) -> dict:
    """Registering again updates model, family and endpoint and keeps the router versions.

    Student ids are global: an id another tenant uses is 409 (nothing of that student is shown or changed).
    """
    model = body.model or settings.default_student_model
    return store.register_student(body.student_id, model, body.family,
                                  endpoint=str(body.endpoint) if body.endpoint else None,
                                  endpoint_model=body.endpoint_model or (model if body.endpoint else None),
                                  owner=caller.tenant, admin=caller.admin)


@router.get("/{student_id}", response_model=Student, summary="A student, its router versions and the active one",
            responses=error_responses(401, 404, 422, 503, e404="unknown student"))
def get_student(student_id: OwnedStudentId, store: StoreDep) -> dict:
    return store.get_student(student_id)


@router.post("/{student_id}/activate", response_model=Student, summary="Make a router version the active one",
             responses=error_responses(401, 404, 422, 503, e404="unknown student or router version"))
def activate(student_id: OwnedStudentId, body: ActivateRequest, store: StoreDep) -> dict:
    """Later /v1/route requests use this version (rolling back is activating an older one)."""
    store.activate_version(student_id, body.version)
    return store.get_student(student_id)


@router.put("/{student_id}/ab", response_model=Student, summary="Split routing between two router versions (A/B)",
            responses=error_responses(401, 404, 422, 503, e404="unknown student or router version"))
def set_ab_split(student_id: OwnedStudentId, body: ABSplit, store: StoreDep) -> dict:
    """/v1/route requests that name no version go to ``version_b`` with probability ``share_b`` (by the
    hash of their prompts, so a repeated request meets the same version) and to ``version_a`` otherwise;
    the response's ``router_version`` and the ``persyn_route_requests`` metric say which served. Jobs
    keep routing with the active version."""
    store.set_ab_split(student_id, body.version_a, body.version_b, body.share_b)
    return store.get_student(student_id)


@router.delete("/{student_id}/ab", response_model=Student, summary="End the A/B split",
               responses=error_responses(401, 404, 422, 503, e404="unknown student"))
def clear_ab_split(student_id: OwnedStudentId, store: StoreDep) -> dict:
    """Requests go to the active version again."""
    store.clear_ab_split(student_id)
    return store.get_student(student_id)
