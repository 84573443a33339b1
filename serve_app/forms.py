"""Request parsing shared by image swaps and video jobs: multipart bodies (the body limit is enforced while
the stream arrives, file and text fields are separated, a field given twice is a 400), the swap options from
text fields, and the response type from ``Accept``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from pipeline.errors import InvalidInputError, InvalidOptionError, PayloadTooLargeError, UnsupportedMediaError
from pipeline.options import SwapOptions
from serve_app.errors import RequestTimeoutError
from serve_app.routes import JPEG_TYPE, JSON_TYPE, PNG_TYPE

MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_TEXT_FIELDS = 32
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_ACCEPT_MATCHES = MappingProxyType(
    {
        JSON_TYPE: JSON_TYPE,
        "application/*": JSON_TYPE,
        "*/*": JSON_TYPE,
        JPEG_TYPE: JPEG_TYPE,
        "image/*": JPEG_TYPE,
        PNG_TYPE: PNG_TYPE,
    }
)


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidOptionError(f"{name}: expected true or false, got {raw[:40]!r}")


def options_from_fields(texts: Mapping[str, str]) -> SwapOptions:
    """SwapOptions from the text fields: individual options, a JSON ``options`` object, ``enhance_output``."""
    fields = dict(texts)
    mapping: dict[str, object] = {}
    raw_json = fields.pop("options", None)
    if raw_json is not None and raw_json.strip():
        try:
            parsed = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise InvalidOptionError(f"options: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise InvalidOptionError("options: JSON nested too deeply") from None
        except ValueError:  # e.g. an integer over Python's digit limit
            raise InvalidOptionError("options: a number in the JSON is too long") from None
        if not isinstance(parsed, dict):
            raise InvalidOptionError("options: expected a JSON object")
        mapping.update(parsed)
    enhance = fields.pop("enhance_output", None)
    both = sorted(set(mapping) & set(fields))
    if both:
        raise InvalidOptionError(f"{both}: given both as a field and inside options")
    options = SwapOptions.from_mapping({**mapping, **fields})
    if enhance is not None and enhance.strip():
        options = options.with_enhance(parse_bool("enhance_output", enhance))
    return options


def negotiate(accept: str | None) -> str:
    """The response type for an Accept header: ``application/json`` (also for ``*/*``, no header or only
    unsupported types), ``image/jpeg`` or ``image/png``. The highest q wins, the earliest listed on ties."""
    best: dict[str, tuple[float, int]] = {}
    for position, part in enumerate((accept or "").split(",")[:32]):
        media, *params = (p.strip() for p in part.split(";"))
        chosen = _ACCEPT_MATCHES.get(media.lower())
        if chosen is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if chosen not in best or q > best[chosen][0]:
            best[chosen] = (q, best.get(chosen, (0.0, position))[1])
    ranked = sorted(((q, -position, media) for media, (q, position) in best.items() if q > 0), reverse=True)
    return ranked[0][2] if ranked else JSON_TYPE


@dataclass(frozen=True)
class UploadPace:
    """How slowly a body may arrive: a gap of more than ``idle_timeout_s`` between two chunks, or an average
    under ``min_bytes_per_s`` once ``grace_s`` have passed, ends the request with 408. So a client that
    declares a large body and trickles it cannot hold the ingress' capacity for long."""

    idle_timeout_s: float = 10.0
    min_bytes_per_s: float = 32 * 1024
    grace_s: float = 5.0


async def limited(
    stream: AsyncGenerator[bytes, None],
    max_bytes: int,
    pace: UploadPace = UploadPace(),
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[bytes, None]:
    """Pass the body through, raising PayloadTooLargeError as soon as it exceeds ``max_bytes`` and
    RequestTimeoutError as soon as it arrives slower than ``pace`` allows."""
    total = 0
    started = clock()
    chunks = aiter(stream)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), pace.idle_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeoutError(
                f"no request data for {pace.idle_timeout_s:g} s; the upload was abandoned"
            ) from None
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"request body is over the limit of {max_bytes} bytes")
        elapsed = clock() - started
        if elapsed > pace.grace_s and total < pace.min_bytes_per_s * elapsed:
            raise RequestTimeoutError(
                f"the upload arrives at {total / elapsed:.0f} B/s, under the minimum of "
                f"{pace.min_bytes_per_s:.0f} B/s"
            )
        yield chunk


@dataclass(frozen=True)
class MultipartForm:
    """Uploads (spooled to disk past 1 MiB by Starlette) and text fields, each given once."""

    files: Mapping[str, UploadFile]
    texts: Mapping[str, str]


@asynccontextmanager
async def read_multipart(
    request: Request,
    max_bytes: int,
    file_fields: Sequence[str],
    what: str,
    pace: UploadPace = UploadPace(),
) -> AsyncIterator[MultipartForm]:
    """Parse a multipart body whose files may only be ``file_fields``, arriving no slower than ``pace``;
    the uploads close when the block ends. ``what`` names the expected parts in the 415 message."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaError(
            f"expected a multipart/form-data body with {what}, got {content_type or 'no content type'!r}"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body of {declared} bytes is over the limit of {max_bytes} bytes")
    parser = MultiPartParser(
        request.headers,
        limited(request.stream(), max_bytes, pace),
        max_files=len(file_fields),
        max_fields=MAX_TEXT_FIELDS,
        max_part_size=MAX_TEXT_FIELD_BYTES,
    )
    form = await parser.parse()
    try:
        files: dict[str, UploadFile] = {}
        texts: dict[str, str] = {}
        for key, value in form.multi_items():
            if key in files or key in texts:
                raise InvalidInputError(f"{key}: given more than once")
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    raise InvalidInputError(
                        f"{key}: unexpected file; the file fields are {list(file_fields)}"
                    )
                files[key] = value
            elif key in file_fields:
                raise InvalidInputError(f"{key}: must be a file upload")
            else:
                texts[key] = value
        yield MultipartForm(files=files, texts=texts)
    finally:
        await form.close()
