"""The one place where errors become HTTP responses.

Typed pipeline errors keep their status and code; Ray's errors are unwrapped (a replica's exception
arrives as ``RayTaskError(cause)``) and mapped: backpressure -> 503 ``overloaded`` with Retry-After,
an unavailable deployment -> 503 ``unavailable``; anything else is a logged 500 that leaks nothing.
Every error body is ``{"success": false, "error", "code", "request_id"}``.
"""

from __future__ import annotations

import logging
import math
import uuid
from types import MappingProxyType

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse

from pipeline.errors import FaceSwapError, InvalidInputError, OverloadedError

log = logging.getLogger("ray.serve")

DEFAULT_RETRY_AFTER_S = 1.0
"""Retry-After sent with 503 responses when Ray gives no value."""

_HTTP_CODES = MappingProxyType({404: "not_found", 405: "method_not_allowed"})


class ServiceUnavailableError(FaceSwapError):
    """A downstream deployment has no running replica (starting, failed or being replaced)."""

    status = 503
    code = "unavailable"


class InternalError(FaceSwapError):
    """An unexpected failure; the message is generic on purpose (details are in the replica log)."""

    status = 500
    code = "internal_error"


class RouteError(FaceSwapError):
    """An HTTP routing error (unknown path, wrong method)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.code = _HTTP_CODES.get(status, "http_error")


def _unwrap(exc: BaseException) -> BaseException:
    """The original exception inside (possibly nested) ``RayTaskError`` wrappers."""
    seen = 0
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None and seen < 8:
        exc = exc.cause
        seen += 1
    return exc


def to_service_error(exc: BaseException, request_id: str | None = None) -> tuple[FaceSwapError, float | None]:
    """The typed error a caller sees for ``exc`` and the Retry-After seconds to send with it (or None)."""
    cause = _unwrap(exc)
    if isinstance(cause, FaceSwapError):
        retry = DEFAULT_RETRY_AFTER_S if cause.status == 503 else None
        return cause, retry
    if isinstance(cause, BackPressureError):
        retry = cause.retry_after_s if cause.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
        return OverloadedError(f"the service is at capacity, retry later ({cause.message})"), retry
    if isinstance(
        cause, DeploymentUnavailableError | ReplicaUnavailableError | ActorUnavailableError | RayActorError
    ):
        return ServiceUnavailableError(
            "a model deployment is unavailable, retry later"
        ), DEFAULT_RETRY_AFTER_S
    if isinstance(cause, MultiPartException):
        return InvalidInputError(f"malformed multipart body: {cause.message}"), None
    if isinstance(cause, HTTPException):
        return RouteError(str(cause.detail), cause.status_code), None
    log.error("request %s failed unexpectedly", request_id, exc_info=(type(exc), exc, exc.__traceback__))
    return InternalError("internal error"), None


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    """The JSON error response for ``exc``."""
    error, retry_after = to_service_error(exc, request_id)
    if error.status >= 500:
        log.warning("request %s: %s %s", request_id, error.code, error.message)
    else:
        log.info("request %s: %s %s", request_id, error.code, error.message)
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSONResponse(
        {**error.to_dict(), "request_id": request_id}, status_code=error.status, headers=headers
    )


def request_id_of(request: Request) -> str:
    """The request id the Serve proxy put in ``X-Request-ID`` (the client's, or one it generated; the
    proxy also returns it as the response's ``X-Request-ID``)."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette handler: routing errors (404, 405) as JSON errors too."""
    return error_response(exc, request_id_of(request))
