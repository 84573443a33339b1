"""The middleware in Serve's HTTP proxy (serve_app.proxy), as a plain ASGI app around fake inner apps: no Ray.
Request ids are bounded and sanitised before the proxy's own code reads them, headers the proxy would decode
as UTF-8 and the service does not use are dropped, and every error that leaves is the service's JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from serve_app.proxy import ProxyGuard, middlewares

Message = dict[str, Any]


def _call(inner, headers: list[tuple[bytes, bytes]]) -> tuple[list[Message], dict[str, Any]]:
    """Run one HTTP request through ProxyGuard(inner); the sent messages and the scope ``inner`` saw."""
    seen: dict[str, Any] = {}
    sent: list[Message] = []

    async def app(scope, receive, send):
        seen.update(scope)
        await inner(scope, receive, send)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": headers}
    asyncio.run(ProxyGuard(app)(scope, receive, send))
    return sent, seen


async def _ok(scope, receive, send):
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"status": "ok"}'})


def _request_id(scope: dict[str, Any]) -> str:
    (value,) = [v for k, v in scope["headers"] if k == b"x-request-id"]
    return value.decode("ascii")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"req-1.2:3_x", True),
        (b"a" * 128, True),
        (b"a" * 129, False),
        (b"a" * 70_000, False),
        (b"bad\xffbyte", False),
        (b"has space", False),
        (b"", False),
    ],
)
def test_request_ids_are_kept_only_when_short_and_plain(sent: bytes, kept: bool) -> None:
    _, scope = _call(_ok, [(b"x-request-id", sent), (b"accept", b"*/*")])
    request_id = _request_id(scope)
    if kept:
        assert request_id == sent.decode()
    else:
        assert request_id != sent.decode("latin-1") and len(request_id) == 32
    assert (b"accept", b"*/*") in scope["headers"]


def test_a_missing_request_id_gets_one_and_duplicates_collapse() -> None:
    _, scope = _call(_ok, [])
    assert len(_request_id(scope)) == 32
    _, scope = _call(_ok, [(b"X-Request-ID", b"first"), (b"x-request-id", b"second")])
    assert _request_id(scope) == "first"


def test_headers_the_proxy_would_decode_are_dropped() -> None:
    headers = [
        (b"serve_multiplexed_model_id", b"\xff\xfe"),
        (b"serve-multiplexed-model-id", b"m"),
        (b"x-session-id", b"\xff"),
        (b"x-api-key", b"k" * 20),
    ]
    _, scope = _call(_ok, headers)
    names = [k for k, _ in scope["headers"]]
    assert names == [b"x-api-key", b"x-request-id"]


def test_plain_text_errors_become_the_service_json() -> None:
    async def overloaded(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"text/plain"), (b"retry-after", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"Service Unavailable", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent, scope = _call(overloaded, [(b"x-request-id", b"rid-7")])
    start, body = sent
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json" and headers[b"retry-after"] == b"2"
    assert headers[b"x-request-id"] == b"rid-7"
    payload = json.loads(body["body"])
    assert payload == {
        "success": False,
        "error": payload["error"],
        "code": "unavailable",
        "request_id": "rid-7",
    }
    assert "retry later" in payload["error"]


def test_an_exception_before_the_response_is_a_json_500() -> None:
    async def broken(scope, receive, send):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    sent, scope = _call(broken, [])
    start, body = sent
    assert start["status"] == 500 and dict(start["headers"])[b"content-type"] == b"application/json"
    payload = json.loads(body["body"])
    assert payload["code"] == "internal_error" and payload["request_id"] == _request_id(scope)
    assert payload["error"] == "internal error"  # nothing of the exception leaks


def test_json_responses_and_successes_pass_through_untouched() -> None:
    async def json_error(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 422,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"code": "no_face"}'})

    for inner, status, body in ((_ok, 200, b'{"status": "ok"}'), (json_error, 422, b'{"code": "no_face"}')):
        sent, _ = _call(inner, [])
        assert sent[0]["status"] == status and sent[1]["body"] == body


def test_the_proxy_callback_returns_the_middleware() -> None:
    (middleware,) = middlewares()
    assert middleware.cls is ProxyGuard
