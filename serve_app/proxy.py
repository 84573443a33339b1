"""An ASGI middleware for Ray Serve's HTTP proxy: what reaches the proxy's own code is sane, and what leaves
it is the service's JSON, whatever failed.

Ray 2.60 installs it from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy:middlewares``, set
in the environment of the Ray processes (``serve_app.local`` does it for local runs; ``cluster.yaml`` and
``configs/rayservice.yaml`` for clusters). User middlewares wrap Serve's own ``RequestIdMiddleware``, so
this one sees every request first:

- ``X-Request-ID``: kept when it is 1-128 characters of ``[A-Za-z0-9._:-]``, otherwise replaced by a fresh
  id (the proxy echoes and logs it, so a 1 MB or non-UTF-8 id never gets that far).
- ``serve_multiplexed_model_id`` and session-id headers (which the proxy decodes as UTF-8 and the service
  does not use) are dropped.
- A plain-text error the proxy itself answers (backpressure, timeouts, its own failures) and any exception
  that escapes become ``{"success": false, "error", "code", "request_id"}`` with the same status (and
  ``Retry-After``), as every error of the service's own routes is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from types import MappingProxyType
from typing import Any

from starlette.middleware import Middleware

from serve_app.errors import REQUEST_ID_HEADER, new_request_id, valid_request_id

log = logging.getLogger("ray.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DROPPED = frozenset({b"serve_multiplexed_model_id", b"serve-multiplexed-model-id", b"x-session-id"})
_CODES = MappingProxyType(
    {
        400: "invalid_input",
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "payload_too_large",
        500: "internal_error",
        503: "unavailable",
        504: "timeout",
    }
)
_MESSAGES = MappingProxyType(
    {
        408: "the request took too long",
        500: "internal error",
        503: "the service is at capacity or starting, retry later",
        504: "the request timed out, retry later",
    }
)


def error_body(status: int, request_id: str, detail: str | None = None) -> bytes:
    """The service's JSON error body for a status the proxy produced."""
    message = _MESSAGES.get(status) or (detail or "request failed").strip()[:200]
    code = _CODES.get(status, "http_error")
    return json.dumps({"success": False, "error": message, "code": code, "request_id": request_id}).encode()


class ProxyGuard:
    """The middleware described in the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = None
        headers = []
        for name, value in scope.get("headers", []):
            lowered = name.lower()
            if lowered == REQUEST_ID_HEADER:
                text = value.decode("latin-1")
                request_id = request_id or (text if valid_request_id(text) else None)
            elif lowered not in _DROPPED:
                headers.append((name, value))
        request_id = request_id or new_request_id()
        headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
        scope = {**scope, "headers": headers}
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        reply = _Reply(send, request_id)
        try:
            await self.app(scope, receive, reply.send)
        except Exception:
            log.exception("request %s failed in the proxy", request_id)
            if reply.started:
                raise
            await reply.error(500)


class _Reply:
    """Passes a response through, except a non-JSON error, which it answers as the service's JSON."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id
        self._held: Message | None = None
        self._detail = b""
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                self._held = message
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            self._detail += message.get("body", b"")[: 1024 - len(self._detail)]
            if not message.get("more_body", False):
                held, self._held = self._held, None
                keep = [(k, v) for k, v in held.get("headers", []) if k.lower() == b"retry-after"]
                await self.error(held["status"], self._detail.decode("utf-8", "replace"), keep)
            return
        await self._send(message)

    async def error(self, status: int, detail: str | None = None, headers: list[Any] | None = None) -> None:
        body = error_body(status, self._request_id, detail)
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (REQUEST_ID_HEADER, self._request_id.encode("ascii")),
                    *(headers or []),
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": body})


def middlewares() -> list[Middleware]:
    """The proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(ProxyGuard)]
