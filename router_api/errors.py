"""Every error the gateway answers is ``{"detail": "<message>"}`` (``ErrorResponse``), mapped here once.

- Domain errors: unknown (or another tenant's) student, job or version 404, a taken student id 409,
  no active router 409, router service down 503, Redis down 503.
- Validation errors (FastAPI's ``RequestValidationError``) become one message naming each bad field;
  the offending input is never echoed (it may hold NaN, which JSON cannot carry).
- JSON bodies are parsed strictly (``StrictJSONRoute``): NaN/Infinity, nesting too deep for the parser
  and text that is not valid Unicode (a lone surrogate from a ``\\ud800`` escape) are 422 up front, so
  nothing downstream (Redis, a tokenizer, a job's tasks) ever sees them.
- ``error_responses`` documents the same body in the OpenAPI schema of each operation.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable

import redis
from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.jobs.store import IdTaken, NotFound
from services.routing.service import NoActiveRouter, RouterServiceError, UnknownRouterVersion

from .protocol import NON_BLANK, ErrorResponse

log = logging.getLogger(__name__)

#: What each documented status means, for operations that do not say more.
_DESCRIPTIONS = {
    400: "the multipart body could not be read",
    401: "missing or invalid API key (when PERSYN_API_KEYS is set)",
    403: "the API key is not an admin key",
    404: "unknown id (another tenant's ids are unknown too)",
    409: "conflict with the service's state",
    413: "too many or too long prompts",
    422: "invalid request: each bad field named (NaN/Infinity, invalid Unicode and too deep nesting included)",
    503: "a dependency (Redis, the router service) is unavailable",
}


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``codes``, each with the ``ErrorResponse`` body; ``descriptions``
    (``e404="unknown job"``) override the generic text."""
    return {code: {"model": ErrorResponse, "description": descriptions.get(f"e{code}", _DESCRIPTIONS[code])}
            for code in codes}


def _error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # backslashreplace: a message can never fail to encode (it may quote text the client sent)
    return JSONResponse({"detail": message.encode("utf-8", "backslashreplace").decode("utf-8")},
                        status_code=status_code, headers=headers)


def _message(exc: Exception) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__  # KeyError's str() adds quotes


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_message(errors: list[dict]) -> str:
    """One line naming every bad field: ``body.prompts.1: must not be empty or blank; ...``."""
    parts = []
    for error in errors:
        if error.get("type") == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == NON_BLANK:
            msg = "must not be empty or blank"
        else:
            msg = error.get("msg", "invalid")
        parts.append(f"{_field(tuple(error.get('loc', ())))}: {msg}")
    return "; ".join(parts) or "invalid request"


class BadJSON(ValueError):
    """A JSON text the service refuses (the message says why and where)."""


#: A JSON escape of a UTF-16 surrogate: the only way a strictly decoded text yields one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads_strict(raw: bytes | str, where: str = "body") -> Any:
    """``json.loads`` that refuses NaN/Infinity, nesting too deep to parse and invalid Unicode;
    ``where`` starts each message (``body``, ``line 3``)."""
    def reject_constant(name: str):
        raise BadJSON(f"{where}: {name} is not a JSON number")

    try:  # strict UTF-8 both ways (json.loads itself would let encoded surrogates through)
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw.encode("utf-8").decode("utf-8")
    except UnicodeError:
        raise BadJSON(f"{where}: not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=reject_constant)
    except RecursionError:
        raise BadJSON(f"{where}: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadJSON(f"{where}: not valid JSON ({exc.msg} at position {exc.pos})") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then look for the string that holds a lone one
        _check_strings(value, where)
    return value


def _check_strings(value: Any, where: str) -> None:
    stack: list[tuple[Any, tuple]] = [(value, (where,))]
    while stack:  # iterative: the parser's own depth limit bounds the work, not Python's stack
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path)
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, path)


def _check_text(text: str, path: tuple) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJSON(f"{_field(path)}: text is not valid Unicode (a lone surrogate such as \\ud800)") from None


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_strict(await self.body())
            except BadJSON as exc:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies are read with ``loads_strict`` (``APIRouter(route_class=...)``)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict_handler


# --------------------------------------------------------------------------- handlers

async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail),
                  headers=getattr(exc, "headers", None))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, validation_message(list(exc.errors())))


async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
    return _error(status.HTTP_404_NOT_FOUND, _message(exc))


async def _taken(request: Request, exc: IdTaken) -> JSONResponse:
    return _error(status.HTTP_409_CONFLICT, _message(exc))


async def _no_active_router(request: Request, exc: NoActiveRouter) -> JSONResponse:
    return _error(status.HTTP_409_CONFLICT, f"{_message(exc)}: run a calibrate job for this student first")


async def _unknown_version(request: Request, exc: UnknownRouterVersion) -> JSONResponse:
    return _error(status.HTTP_404_NOT_FOUND, _message(exc))


async def _router_unavailable(request: Request, exc: RouterServiceError) -> JSONResponse:
    log.error("router service error on %s: %s", request.url.path, exc)  # paths and URLs stay in the log
    return _error(status.HTTP_503_SERVICE_UNAVAILABLE,
                  "router service unavailable: the student's router could not be loaded or reached; retry later")


async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
    log.error("Redis error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
    return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "the job store (Redis) is unavailable; retry later")


def install(app) -> None:
    """Register every handler above on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(IdTaken, _taken)
    app.add_exception_handler(NoActiveRouter, _no_active_router)
    app.add_exception_handler(UnknownRouterVersion, _unknown_version)
    app.add_exception_handler(RouterServiceError, _router_unavailable)
    app.add_exception_handler(redis.RedisError, _redis_down)
