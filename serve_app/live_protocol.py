"""The messages of ``WS /api/v1/live`` and its close codes: pure functions, shared by the server, the load
generator and the tests.

1. The client opens the socket offering the subprotocol ``faceswap.v1`` (and, from a browser with API keys
   on, ``ticket.<ticket>`` from ``POST /api/v1/live/tickets``; other clients may send the key in the
   ``Authorization`` or ``X-API-Key`` header of the handshake instead).
2. Its first message is JSON text (:func:`parse_setup`): ``{"identity_id": ...}`` or ``{"source_image":
   "<base64 or data: URL>"}``, optionally ``"reference_image"`` (the same way), ``"options"`` (the swap
   options, as ``POST /api/v1/swap`` takes them) and ``"tracking"`` (``detect_every``, ``smoothing``,
   ``max_gap``). The server answers one JSON text message ``{"type": "ready", ...}`` (:func:`ready`).
3. Then the client sends binary frames (JPEG or WebP). For each frame it swaps, the server sends back one
   binary message (:func:`frame_message`): a 4-byte big-endian length, that many bytes of JSON header
   (:class:`FrameHeader`) and the swapped frame as JPEG. Frames are numbered in the order they arrive
   (``seq`` from 0), answered in that order; frames replaced by a newer one before they were swapped, or
   sent faster than the service's frame rate, are dropped and counted in every header.
4. Either side may close; the server closes with a code and a reason (:func:`close_for`): 1000 when the
   client asked, ``4000 + status`` for every error a REST route answers 4xx (4400, 4401, 4403, 4404,
   4408, 4409, 4413, 4415, 4422, 4429), 1013 (try again later) for 503, 1011 for any other failure.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from pipeline.errors import FaceSwapError, InvalidInputError, InvalidOptionError, PayloadTooLargeError
from pipeline.options import SwapOptions

LIVE_PATH = "/api/v1/live"
TICKETS_PATH = "/api/v1/live/tickets"
SUBPROTOCOL = "faceswap.v1"
TICKET_PREFIX = "ticket."
"""A subprotocol ``ticket.<ticket>`` carries a connection ticket (browsers cannot set headers)."""
NORMAL_CLOSURE = 1000
TRY_AGAIN_LATER = 1013
INTERNAL_ERROR = 1011
MAX_REASON_BYTES = 123
"""A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455, 5.5.1)."""
_LENGTH = struct.Struct(">I")
_SETUP_KEYS = frozenset({"identity_id", "source_image", "reference_image", "options", "tracking"})
_TRACKING_LIMITS = MappingProxyType({"detect_every": (1, 100), "max_gap": (0, 100), "smoothing": (0.0, 1.0)})


@dataclass(frozen=True)
class Tracking:
    """Keyframe tracking of one connection (``serve_app.config.LiveArgs`` gives the defaults)."""

    detect_every: int
    max_gap: int
    smoothing: float


@dataclass(frozen=True)
class Setup:
    """A connection's first message. Exactly one of ``identity_id`` and ``source_image`` (image bytes)."""

    options: SwapOptions
    tracking: Tracking
    identity_id: str | None = None
    source_image: bytes | None = None
    reference_image: bytes | None = None


def _image_bytes(name: str, value: object) -> bytes:
    """Base64 image bytes, optionally as a ``data:<type>;base64,`` URL."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{name}: expected a base64 string or a data: URL")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{name}: not valid base64") from None


def _tracking(raw: object, defaults: Tracking) -> Tracking:
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise InvalidOptionError("tracking: expected a JSON object")
    unknown = sorted(set(raw) - set(_TRACKING_LIMITS))
    if unknown:
        raise InvalidOptionError(f"tracking: unknown key(s) {unknown}; known: {sorted(_TRACKING_LIMITS)}")
    values = asdict(defaults)
    for name, value in raw.items():
        low, high = _TRACKING_LIMITS[name]
        integral = isinstance(low, int)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidOptionError(f"tracking.{name}: expected a number")
        if integral and value != int(value):
            raise InvalidOptionError(f"tracking.{name}: expected an integer")
        if not low <= value <= high:
            raise InvalidOptionError(f"tracking.{name}: must be in [{low}, {high}]")
        values[name] = int(value) if integral else float(value)
    return Tracking(**values)


def parse_setup(text: str | bytes, defaults: Tracking, max_bytes: int) -> Setup:
    """The first message of a connection. InvalidInputError (400) for anything malformed,
    InvalidOptionError (400) for a bad option, PayloadTooLargeError (413) over ``max_bytes``."""
    if len(text) > max_bytes:
        raise PayloadTooLargeError(f"the setup message is over the limit of {max_bytes} bytes")
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInputError("the first message must be a JSON object (the setup)") from None
    if not isinstance(values, dict):
        raise InvalidInputError("the first message must be a JSON object (the setup)")
    unknown = sorted(str(k)[:40] for k in values if k not in _SETUP_KEYS)
    if unknown:
        raise InvalidInputError(f"setup: unknown key(s) {unknown}; known: {sorted(_SETUP_KEYS)}")
    options = values.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidOptionError("options: expected a JSON object")
    identity_id = values.get("identity_id")
    source = values.get("source_image")
    if (identity_id is None) == (source is None):
        raise InvalidInputError("setup: give exactly one of identity_id and source_image")
    if identity_id is not None and not isinstance(identity_id, str):
        raise InvalidInputError("identity_id: expected a string")
    reference = values.get("reference_image")
    return Setup(
        options=SwapOptions.from_mapping(options),
        tracking=_tracking(values.get("tracking"), defaults),
        identity_id=identity_id,
        source_image=_image_bytes("source_image", source) if source is not None else None,
        reference_image=_image_bytes("reference_image", reference) if reference is not None else None,
    )


def ready(**fields: Any) -> str:
    """The server's answer to the setup: ``{"type": "ready", **fields}`` as JSON text."""
    return json.dumps({"type": "ready", **fields})


@dataclass(frozen=True)
class FrameHeader:
    """What the server says about one swapped frame."""

    seq: int
    """The frame's number: frames are numbered from 0 in the order they arrive."""
    faces: int
    """Faces swapped."""
    boxes: list[list[float]]
    """Their boxes, x1, y1, x2, y2 in the frame's pixels."""
    detected: bool
    """Whether the detector ran on this frame (a keyframe); otherwise the faces were followed."""
    server_time: float
    """Unix seconds when the frame was sent back."""
    server_ms: float
    """Milliseconds from the frame's arrival to its answer (waiting included)."""
    received: int
    """Frames received on this connection so far."""
    dropped: int
    """Frames dropped so far: replaced by a newer frame before they were swapped, or over the rate."""


def frame_message(header: FrameHeader, image: bytes) -> bytes:
    """One binary message: the header's JSON length (4 bytes, big-endian), the JSON, the image."""
    encoded = json.dumps(asdict(header), separators=(",", ":")).encode()
    return _LENGTH.pack(len(encoded)) + encoded + image


def read_frame_message(message: bytes) -> tuple[dict[str, Any], bytes]:
    """The header (as a dict) and image bytes of a :func:`frame_message`."""
    if len(message) < _LENGTH.size:
        raise InvalidInputError("frame message shorter than its length prefix")
    (length,) = _LENGTH.unpack_from(message)
    if len(message) < _LENGTH.size + length:
        raise InvalidInputError("frame message shorter than its header")
    header = json.loads(message[_LENGTH.size : _LENGTH.size + length])
    return header, message[_LENGTH.size + length :]


def close_reason(message: str) -> str:
    """``message`` cut to fit a close frame (at most 123 bytes of UTF-8, never half a character)."""
    data = message.encode()
    if len(data) <= MAX_REASON_BYTES:
        return message
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def close_for(error: FaceSwapError) -> tuple[int, str]:
    """The close code and reason for a typed error: ``4000 + status`` for a 4xx, 1013 for 503, else 1011
    (its message says nothing more than ``internal error``, as a REST 500)."""
    if 400 <= error.status < 500:
        return 4000 + error.status, close_reason(f"{error.code}: {error.message}")
    if error.status == 503:
        return TRY_AGAIN_LATER, close_reason(f"{error.code}: {error.message}")
    return INTERNAL_ERROR, close_reason(f"{error.code}: {error.message}")
