"""Image bytes in and out: type by magic bytes, pixel-count limit, decode to ImageBGR, encode."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from pipeline.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaError
from pipeline.types import ImageBGR

DEFAULT_MAX_PIXELS = 40_000_000
"""Decoded pixel-count limit (e.g. 8000 x 5000): guards against decompression bombs."""
MAX_SIDE = 16384
"""Longest image side accepted; OpenCV's warps assert on sides of 32767 px and more."""


def sniff_image_type(data: bytes) -> str | None:
    """``image/jpeg``, ``image/png`` or ``image/webp`` from the magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def declared_size(data: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) read from the header without decoding, or None when the header does not say it."""
    if media_type == "image/png":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        return None
    if media_type == "image/webp":
        return _webp_size(data)
    if media_type == "image/jpeg":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG markers up to the first start-of-frame segment."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        if data[i + 1] == 0xFF:  # fill byte before a marker
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size from the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return int(w & 0x3FFF), int(h & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def check_dimensions(width: int, height: int, *, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """PayloadTooLargeError (413) over ``max_pixels`` or over :data:`MAX_SIDE` on either side."""
    if width * height > max_pixels:
        raise PayloadTooLargeError(f"{field}: {width}x{height} pixels is over the limit of {max_pixels}")
    if max(width, height) > MAX_SIDE:
        raise PayloadTooLargeError(f"{field}: {width}x{height} has a side over the limit of {MAX_SIDE} px")


def decode_image(data: bytes, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageBGR:
    """Decode JPEG/PNG/WebP bytes to ``(H, W, 3) uint8`` BGR, upright by its EXIF orientation (alpha dropped,
    grey expanded, 16-bit scaled).

    Raises UnsupportedMediaError (415) for other types, PayloadTooLargeError (413) over ``max_pixels`` or
    :data:`MAX_SIDE` (checked on the header before decoding), InvalidInputError (400) for empty or corrupt
    data.
    """
    if not data:
        raise InvalidInputError(f"{field}: empty file")
    media_type = sniff_image_type(data)
    if media_type is None:
        raise UnsupportedMediaError(f"{field}: not a JPEG, PNG or WebP image")
    size = declared_size(data, media_type)
    if size is None:  # never decode an image whose size is unknown: it could be a decompression bomb
        raise InvalidInputError(f"{field}: corrupt or truncated {media_type} image (no size in its header)")
    check_dimensions(*size, field=field, max_pixels=max_pixels)
    # IMREAD_COLOR applies the EXIF orientation (a phone photo stored sideways comes out upright), expands
    # grey and drops alpha; IMREAD_ANYDEPTH keeps 16-bit samples, scaled to 8 bits below.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None or image.size == 0:
        raise InvalidInputError(f"{field}: corrupt or truncated {media_type} image")
    check_dimensions(image.shape[1], image.shape[0], field=field, max_pixels=max_pixels)
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UnsupportedMediaError(f"{field}: unsupported pixel format {image.dtype} x {image.shape}")
    return np.ascontiguousarray(image)


def read_image_file(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageBGR:
    """Read and decode an image file, with the same checks as uploads."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    return decode_image(data, field=path, max_pixels=max_pixels)


def encode_image(image: ImageBGR, media_type: str = "image/jpeg", quality: int = 92) -> bytes:
    """Encode BGR to JPEG or PNG bytes."""
    if media_type == "image/jpeg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif media_type == "image/png":
        ok, buf = cv2.imencode(".png", image)
    else:
        raise UnsupportedMediaError(f"cannot encode {media_type}; use image/jpeg or image/png")
    if not ok:
        raise InvalidInputError("image encoding failed")
    return buf.tobytes()
