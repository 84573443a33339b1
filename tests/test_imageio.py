import struct
import zlib

import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaError
from pipeline.imageio import decode_image, encode_image, sniff_image_type


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_round_trip_png_is_lossless_and_jpeg_close():
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8), (0, 0), 2)
    png = encode_image(image, "image/png")
    assert sniff_image_type(png) == "image/png"
    assert (decode_image(png) == image).all()
    jpg = encode_image(image, "image/jpeg")
    assert sniff_image_type(jpg) == "image/jpeg"
    assert np.abs(decode_image(jpg).astype(int) - image).mean() < 4


def test_formats_are_normalised_to_bgr_uint8():
    grey = np.full((10, 12), 77, np.uint8)
    out = decode_image(cv2.imencode(".png", grey)[1].tobytes())
    assert out.shape == (10, 12, 3) and (out == 77).all()
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 2] = 255
    out = decode_image(cv2.imencode(".png", bgra)[1].tobytes())
    assert out.shape == (8, 8, 3) and (out[..., 2] == 255).all()
    deep = np.full((6, 6, 3), 65535, np.uint16)
    out = decode_image(cv2.imencode(".png", deep)[1].tobytes())
    assert out.dtype == np.uint8 and (out == 255).all()
    webp = cv2.imencode(".webp", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    assert sniff_image_type(webp) == "image/webp" and decode_image(webp).shape == (16, 16, 3)


def test_bad_inputs_map_to_status_codes():
    with pytest.raises(InvalidInputError):
        decode_image(b"")
    with pytest.raises(UnsupportedMediaError) as e:
        decode_image(b"hello, I am text named face.jpg")
    assert e.value.status == 415
    jpg = encode_image(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InvalidInputError) as e2:
        decode_image(jpg[:40])
    assert e2.value.status == 400
    with pytest.raises(PayloadTooLargeError) as e3:
        decode_image(_png_header(20000, 20000) + b"\x00" * 64)
    assert e3.value.status == 413
    big_jpeg = encode_image(np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(PayloadTooLargeError):
        decode_image(big_jpeg, max_pixels=100 * 100)


def test_header_sizes_are_read_without_decoding():
    from pipeline.imageio import declared_size

    image = np.zeros((30, 50, 3), np.uint8)
    jpg = encode_image(image)
    assert declared_size(jpg, "image/jpeg") == (50, 30)
    filled = jpg[:2] + b"\xff" + jpg[2:]  # a fill byte before the first marker is legal JPEG
    assert declared_size(filled, "image/jpeg") == (50, 30)
    lossy = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()
    lossless = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    assert lossy[12:16] == b"VP8 " and lossless[12:16] == b"VP8L"
    assert declared_size(lossy, "image/webp") == (50, 30)
    assert declared_size(lossless, "image/webp") == (50, 30)


def test_long_sides_and_headers_without_a_size_are_refused():
    with pytest.raises(PayloadTooLargeError, match="side"):
        decode_image(_png_header(2, 40000) + b"\x00" * 64)
    with pytest.raises(InvalidInputError, match="no size"):
        decode_image(b"\xff\xd8\xff\xe0" + b"\x00" * 32)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding only the Orientation tag (big-endian TIFF)."""

    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.mark.parametrize(
    ("orientation", "turn"),
    [(1, None), (6, cv2.ROTATE_90_CLOCKWISE), (3, cv2.ROTATE_180), (8, cv2.ROTATE_90_COUNTERCLOCKWISE)],
)
def test_exif_orientation_is_applied(orientation: int, turn: int | None) -> None:
    """A phone photo stored sideways (Orientation 6) decodes upright, as a viewer shows it."""
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :20] = (0, 0, 255)  # a red band on the stored image's left edge
    jpeg = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    image = decode_image(_with_exif_orientation(jpeg, orientation))
    expected = stored if turn is None else cv2.rotate(stored, turn)
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected).mean() < 2.0
