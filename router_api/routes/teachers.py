"""The configured teacher pool (endpoint URLs, no credentials)."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import TeachersDep
from ..errors import error_responses
from ..protocol import TeacherInfo

router = APIRouter(prefix="/teachers", tags=["teachers"])


@router.get("", response_model=list[TeacherInfo], summary="List the teacher pool", responses=error_responses(401))
def list_teachers(teachers: TeachersDep) -> list[TeacherInfo]:
    """Empty when the service runs without a pool file (PERSYN_TEACHER_POOL). Shared by every tenant."""
    return [TeacherInfo(name=t.name, family=t.family, size_b=t.size_b, model=t.model, base_url=t.base_url,
                        long_cot=t.long_cot, cost_per_1m_output=t.cost_per_1m_output) for t in teachers]
