"""Students and their router versions."""

from __future__ import annotations

from fastapi import APIRouter, status

from ..deps import IdPath, SettingsDep, StoreDep
from ..protocol import ActivateRequest, ErrorResponse, Student, StudentCreate

router = APIRouter(prefix="/students", tags=["students"])

_NOT_FOUND = {404: {"model": ErrorResponse, "description": "unknown student or router version"}}


@router.post("", response_model=Student, status_code=status.HTTP_201_CREATED, summary="Register a student")
def create_student(body: StudentCreate, settings: SettingsDep, store: StoreDep) -> dict:
    """Registering again updates model and family and keeps the router versions."""
    model = body.model or settings.default_student_model
    return store.register_student(body.student_id, model, body.family,
                                  endpoint=str(body.endpoint) if body.endpoint else None,
                                  endpoint_model=body.endpoint_model or (model if body.endpoint else None))


@router.get("/{student_id}", response_model=Student, summary="A student, its router versions and the active one",
            responses=_NOT_FOUND)
def get_student(student_id: IdPath, store: StoreDep) -> dict:
    return store.get_student(student_id)


@router.post("/{student_id}/activate", response_model=Student, summary="Make a router version the active one",
             responses=_NOT_FOUND)
def activate(student_id: IdPath, body: ActivateRequest, store: StoreDep) -> dict:
    """Later /v1/route requests use this version (rolling back is activating an older one)."""
    store.activate_version(student_id, body.version)
    return store.get_student(student_id)
