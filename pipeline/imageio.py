"""Image bytes in and out: type by magic bytes, pixel-count limit, decode to ImageBGR, encode."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from pipeline.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaError
from pipeline.types import ImageBGR

DEFAULT_MAX_PIXELS = 40_000_000
"""Decoded pixel-count limit (e.g. 8000 x 5000): guards against decompression bombs."""


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
    """(width, height) read from the header without decoding, when the header says it."""
    if media_type == "image/png" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if media_type == "image/jpeg":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
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


def decode_image(data: bytes, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageBGR:
    """Decode JPEG/PNG/WebP bytes to ``(H, W, 3) uint8`` BGR (alpha dropped, grey expanded, 16-bit scaled).

    Raises UnsupportedMediaError (415) for other types, PayloadTooLargeError (413) over ``max_pixels``,
    InvalidInputError (400) for empty or corrupt data.
    """
    if not data:
        raise InvalidInputError(f"{field}: empty file")
    media_type = sniff_image_type(data)
    if media_type is None:
        raise UnsupportedMediaError(f"{field}: not a JPEG, PNG or WebP image")
    size = declared_size(data, media_type)
    if size is not None and size[0] * size[1] > max_pixels:
        raise PayloadTooLargeError(f"{field}: {size[0]}x{size[1]} pixels is over the limit of {max_pixels}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise InvalidInputError(f"{field}: corrupt or truncated {media_type} image")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise PayloadTooLargeError(f"{field}: {image.shape[1]}x{image.shape[0]} pixels is over the limit")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
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
