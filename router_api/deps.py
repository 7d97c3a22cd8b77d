"""Request dependencies: what the app holds (settings, store, router client, metrics), API-key auth
and tenancy.

Tenancy is checked here and nowhere else: ``authenticate`` turns the bearer key into a ``Caller``
(its tenant, admin or not); ``owned`` is the one check of a student or job id against the caller,
used by the path dependencies ``OwnedStudentId`` / ``OwnedJobId`` and by routes whose id comes in
the body. Another tenant's id answers exactly as an unknown one (404, same message).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.core.settings import DEFAULT_TENANT, Settings
from services.jobs.store import JobStore, NotFound
from services.method.formats import Teacher
from services.routing.client import RouterClient

from .metrics import GatewayMetrics
from .protocol import ID_PATTERN


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_teachers(request: Request) -> list[Teacher]:
    return request.app.state.teachers


def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def get_router_client(request: Request) -> RouterClient:
    return request.app.state.router_client


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
TeachersDep = Annotated[list[Teacher], Depends(get_teachers)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
RouterClientDep = Annotated[RouterClient, Depends(get_router_client)]

_bearer = HTTPBearer(auto_error=False, description="A key of PERSYN_API_KEYS ('tenant:key' entries)")


@dataclass(frozen=True)
class Caller:
    """Who is asking: the tenant of the API key, and whether it is an admin key."""

    tenant: str
    admin: bool

    def may_use(self, owner: str | None) -> bool:
        """A record without an owner predates tenancy: only an admin may use it."""
        return self.admin or owner == self.tenant


def authenticate(settings: SettingsDep,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    """The caller of a key; auth off (no keys): the default tenant, which may use every record.

    Every key is compared in constant time, so a timing side channel does not leak a prefix.
    """
    if not settings.api_keys:
        return Caller(DEFAULT_TENANT, admin=True)
    token = credentials.credentials.encode() if credentials else b""
    found = None
    for key in settings.api_keys:
        if secrets.compare_digest(token, key.key.encode()) and credentials:
            found = key
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid API key" if credentials else "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"})
    return Caller(found.tenant, found.admin)


CallerDep = Annotated[Caller, Depends(authenticate)]


def require_admin(caller: CallerDep, settings: SettingsDep) -> None:
    """For what shows every tenant's figures (``/metrics``); open when auth is off."""
    if settings.api_keys and not caller.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "an admin API key is needed")


def owned(store: JobStore, caller: Caller, kind: Literal["student", "job"], record_id: str) -> str:
    """``record_id`` if the caller may use it; NotFound (404) for an unknown id and another tenant's alike."""
    if not caller.may_use(store.owner(kind, record_id)):  # store.owner raises NotFound for an unknown id
        raise NotFound(f"unknown {kind} {record_id!r}")
    return record_id


def owned_student(student_id: Annotated[str, Path(pattern=ID_PATTERN)], caller: CallerDep, store: StoreDep) -> str:
    return owned(store, caller, "student", student_id)


def owned_job(job_id: Annotated[str, Path(pattern=ID_PATTERN)], caller: CallerDep, store: StoreDep) -> str:
    return owned(store, caller, "job", job_id)


OwnedStudentId = Annotated[str, Depends(owned_student)]
OwnedJobId = Annotated[str, Depends(owned_job)]
