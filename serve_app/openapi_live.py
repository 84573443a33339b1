"""OpenAPI path items and schemas of the identity and live routes (merged into ``serve_app.openapi``); the
WebSocket itself goes into the document's ``x-websockets`` extension."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from serve_app.identities import IDENTITIES_PATH, IDENTITY_OPTIONS, IDENTITY_PATH
from serve_app.live_protocol import LIVE_PATH, SUBPROTOCOL, TICKET_PREFIX, TICKETS_PATH
from serve_app.openapi_forms import SOURCE_IMAGE, multipart_body, option_schemas

IDENTITY_ID_FIELD: Mapping[str, Any] = MappingProxyType(
    {
        "type": "string",
        "pattern": "^[0-9a-f]{32}$",
        "description": "An identity from POST /api/v1/identities, in place of source_image (the same "
        "result, without detecting the source again).",
    }
)
"""The ``identity_id`` form field of the swap route."""

SCHEMAS: Mapping[str, Any] = MappingProxyType(
    {
        "Identity": {
            "type": "object",
            "required": ["identity_id", "expires_at", "ttl_s", "swapper", "kind", "face"],
            "properties": {
                "identity_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "expires_at": {"type": "string", "format": "date-time"},
                "created_at": {"type": "string", "format": "date-time"},
                "ttl_s": {"type": "number"},
                "swapper": {"type": "string", "description": "The swapper the identity was made for."},
                "kind": {"type": "string", "enum": ["embedding", "crop"]},
                "face": {
                    "type": "object",
                    "properties": {
                        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                        "score": {"type": "number"},
                    },
                },
            },
        },
        "LiveTicket": {
            "type": "object",
            "required": ["ticket", "expires_at", "ttl_s", "subprotocols"],
            "properties": {
                "ticket": {"type": "string"},
                "expires_at": {"type": "string", "format": "date-time"},
                "ttl_s": {"type": "number"},
                "subprotocols": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": f"Offer these when opening the WebSocket: {SUBPROTOCOL} and "
                    f"{TICKET_PREFIX}<ticket>.",
                },
            },
        },
    }
)

LIVE_DESCRIPTION = (
    "A WebSocket. Offer the subprotocol faceswap.v1 (and, from a browser with "
    "API keys, ticket.<ticket> from POST /api/v1/live/tickets; other clients send the key in the "
    "handshake's headers). First message, JSON text: {identity_id} or {source_image: base64}, optionally "
    "reference_image, options (the swap options) and tracking ({detect_every, smoothing, max_gap}); the "
    'answer is JSON text {"type": "ready", ...}. Then send binary JPEG or WebP frames; each swapped frame '
    "comes back, in order, as one binary message: a 4-byte big-endian length, a JSON header (seq, faces, "
    "boxes, detected, server_time, server_ms, received, dropped) and the JPEG. Frames the service cannot "
    "swap in time are dropped (the latest wins) and counted in every header. Errors close the socket with "
    "4000 + the HTTP status a REST route would answer (4400, 4401, 4403, 4404, 4408, 4409, 4413, 4415, "
    "4422, 4429) and the error as the reason; 1013 when overloaded, 1011 on an internal error."
)


def websockets(operation: Mapping[str, Any]) -> dict[str, Any]:
    """The WebSocket route, for the document's ``x-websockets`` extension: OpenAPI 3.0 describes HTTP
    operations only (a plain ``GET`` of the path is answered 426)."""
    return {
        LIVE_PATH: {
            "operationId": "live",
            "summary": "Live face swap of a stream of frames over a WebSocket.",
            "description": LIVE_DESCRIPTION,
            "subprotocols": [SUBPROTOCOL, f"{TICKET_PREFIX}<ticket>"],
            **operation,
        }
    }


def paths(errors: Mapping[str, Any], operation: Mapping[str, Any]) -> dict[str, Any]:
    """The HTTP path items. ``errors``: the ingress' error responses by status; ``operation``: extra keys
    of every operation (e.g. ``security``). Refers to the component schemas ``Error``, ``Identity`` and
    ``LiveTicket``."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    options = option_schemas()
    auth = {code: errors[code] for code in ("401", "403", "429") if code in errors}
    identity_id = {
        "name": "identity_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
    identity = {"application/json": {"schema": {"$ref": "#/components/schemas/Identity"}}}
    not_found = {"description": "No such identity for this API key (unknown, expired or deleted).", **error}
    return {
        IDENTITIES_PATH: {
            "post": {
                "operationId": "createIdentity",
                "summary": "Keep the largest face of a source image as an identity for later swaps.",
                **operation,
                "requestBody": multipart_body(
                    {
                        "source_image": dict(SOURCE_IMAGE),
                        "ttl_s": {
                            "type": "number",
                            "minimum": 1,
                            "description": "Seconds to keep it (default and maximum: the service's settings)",
                        },
                        **{name: options[name] for name in IDENTITY_OPTIONS},
                    },
                    ["source_image"],
                ),
                "responses": {
                    "201": {
                        "description": "Kept; Location names it.",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": identity,
                    },
                    **{code: errors[code] for code in ("400", "413", "415", "422", "503") if code in errors},
                    **auth,
                    "429": {
                        "description": "The API key holds its maximum of identities (identity_quota), or "
                        "is over its request rate (rate_limited).",
                        **error,
                    },
                },
            }
        },
        IDENTITY_PATH: {
            "get": {
                "operationId": "getIdentity",
                "summary": "An identity's description.",
                **operation,
                "parameters": [identity_id],
                "responses": {
                    "200": {"description": "The identity.", "content": identity},
                    **auth,
                    "400": {"description": "Not a valid identity id.", **error},
                    "404": not_found,
                },
            },
            "delete": {
                "operationId": "deleteIdentity",
                "summary": "Forget an identity now.",
                **operation,
                "parameters": [identity_id],
                "responses": {
                    "204": {"description": "Deleted."},
                    **auth,
                    "400": {"description": "Not a valid identity id.", **error},
                    "404": not_found,
                },
            },
        },
        TICKETS_PATH: {
            "post": {
                "operationId": "liveTicket",
                "summary": "A short-lived ticket that lets a browser open WS /api/v1/live for this API key.",
                **operation,
                "responses": {
                    "201": {
                        "description": "The ticket, and the subprotocols to offer.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/LiveTicket"}}
                        },
                    },
                    **auth,
                },
            }
        },
    }
