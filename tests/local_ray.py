"""Helpers for the test modules that run a real local Ray with Serve."""

from __future__ import annotations

from typing import Any

from serve_app.local import RAY_ENV, free_port, local_serve

__all__ = ["RAY_ENV", "assert_error", "free_port", "local_serve"]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """An httpx response is the service's JSON error with ``status`` and ``code`` and its request id."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"success", "error", "code", "request_id"}, body
    assert body["success"] is False and body["code"] == code and body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body
