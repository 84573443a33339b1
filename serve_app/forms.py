"""Multipart request bodies, read once for image swaps and video jobs: the body limit is enforced while
the stream arrives, file and text fields are separated, and a field given twice is a 400."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from pipeline.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaError

MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_TEXT_FIELDS = 32


async def limited(stream: AsyncGenerator[bytes, None], max_bytes: int) -> AsyncGenerator[bytes, None]:
    """Pass the body through, raising PayloadTooLargeError as soon as it exceeds ``max_bytes``."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"request body is over the limit of {max_bytes} bytes")
        yield chunk


@dataclass(frozen=True)
class MultipartForm:
    """Uploads (spooled to disk past 1 MiB by Starlette) and text fields, each given once."""

    files: Mapping[str, UploadFile]
    texts: Mapping[str, str]


@asynccontextmanager
async def read_multipart(
    request: Request, max_bytes: int, file_fields: Sequence[str], what: str
) -> AsyncIterator[MultipartForm]:
    """Parse a multipart body whose files may only be ``file_fields``; the uploads close when the block
    ends. ``what`` names the expected parts in the 415 message."""
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
        limited(request.stream(), max_bytes),
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
