"""The one place where errors become HTTP responses.

Typed pipeline errors keep their status and code; Ray's errors are unwrapped (a replica's exception
arrives as ``RayTaskError(cause)``) and mapped: backpressure -> 503 ``overloaded`` with Retry-After,
an unavailable deployment -> 503 ``unavailable``; anything else is a logged 500 that leaks nothing.
The API-key errors of the ingress: 401 ``unauthorized`` (with ``WWW-Authenticate: Bearer``), 403
``forbidden``, 429 ``rate_limited`` (with Retry-After).
Every error body is ``{"success": false, "error", "code", "request_id"}``; the response object is an
:class:`ErrorResponse` that also carries the code, for the ingress' metrics and access log.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import HTTPConnection
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


class UnauthorizedError(FaceSwapError):
    """An ``/api/`` request without an API key (or with a malformed Authorization header)."""

    status = 401
    code = "unauthorized"


class ForbiddenError(FaceSwapError):
    """An ``/api/`` request whose API key is not one of the configured keys."""

    status = 403
    code = "forbidden"


class RateLimitedError(FaceSwapError):
    """An API key went over its request rate; ``retry_after_s`` is when its next request is allowed."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeoutError(FaceSwapError):
    """The request body arrived too slowly (or stopped arriving)."""

    status = 408
    code = "request_timeout"


class RouteError(FaceSwapError):
    """An HTTP routing error (unknown path, wrong method)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.code = _HTTP_CODES.get(status, "http_error")


def unwrap(exc: BaseException) -> BaseException:
    """The exception a Ray error stands for: a task's, actor's or Ray Data UDF's exception is the ``cause`` of
    (possibly nested) ``RayTaskError`` wrappers, and chained exceptions are followed through ``__cause__``
    until a typed :class:`~pipeline.errors.FaceSwapError` appears. Anything else comes back as the innermost
    Ray cause (or ``exc`` itself)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    innermost = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FaceSwapError):
            return current
        cause = getattr(current, "cause", None) if isinstance(current, RayTaskError) else None
        if isinstance(cause, BaseException):
            innermost = cause
            current = cause
        else:
            current = current.__cause__
    return innermost


def to_service_error(exc: BaseException, request_id: str | None = None) -> tuple[FaceSwapError, float | None]:
    """The typed error a caller sees for ``exc`` and the Retry-After seconds to send with it (or None)."""
    cause = unwrap(exc)
    if isinstance(cause, RateLimitedError):
        return cause, cause.retry_after_s
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


class ErrorResponse(JSONResponse):
    """A JSON error response that remembers the typed error it was made from."""

    def __init__(self, error: FaceSwapError, request_id: str, headers: Mapping[str, str] | None) -> None:
        super().__init__(
            {**error.to_dict(), "request_id": request_id}, status_code=error.status, headers=headers
        )
        self.error = error


def error_response(exc: BaseException, request_id: str) -> ErrorResponse:
    """The JSON error response for ``exc`` (logged by the ingress' access log, with its code)."""
    error, retry_after = to_service_error(exc, request_id)
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = 'Bearer realm="faceswap"'
    return ErrorResponse(error, request_id, headers or None)


REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def valid_request_id(text: str) -> bool:
    """A request id the service keeps, echoes and logs: 1-128 characters of ``[A-Za-z0-9._:-]``."""
    return _REQUEST_ID.fullmatch(text) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(connection: HTTPConnection) -> str:
    """The id of a request or WebSocket: ``X-Request-ID`` as the proxy passed it on (the client's when it
    was valid, else one the proxy generated, see ``serve_app.proxy``); a fresh one when absent or invalid."""
    value = connection.headers.get("x-request-id", "")
    return value if valid_request_id(value) else new_request_id()
