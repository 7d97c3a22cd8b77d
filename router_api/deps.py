"""Request dependencies: what the app holds (settings, store, router client, metrics) and API-key auth."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.core.settings import Settings
from services.jobs.store import JobStore
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
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]  # a student or job id

_bearer = HTTPBearer(auto_error=False, description="One of the keys in PERSYN_API_KEYS")


def require_api_key(settings: SettingsDep,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Every key is compared in constant time, so a timing side channel does not leak a prefix."""
    if not settings.api_keys:
        return
    token = credentials.credentials.encode() if credentials else b""
    matched = False
    for key in settings.api_keys:
        matched |= secrets.compare_digest(token, key.encode())
    if not (credentials and matched):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid API key" if credentials else "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"})
