"""Provenance labels: JSON round trip, JPEG/PNG metadata that leaves pixels untouched, mp4/mkv tags."""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
import zlib
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline import provenance
from pipeline.errors import InvalidInputError, UnsupportedMediaError
from pipeline.provenance import (
    DIGITAL_SOURCE_TYPE,
    ProvenanceLabel,
    label_image,
    label_jpeg,
    label_png,
    read_label,
    read_video_label,
    video_metadata,
)

IPTC_DST = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"
# Minimal Exif APP1: "Exif\0\0" + little-endian TIFF header pointing at an empty IFD0.
EXIF_APP1 = (
    b"\xff\xe1" + struct.pack(">H", 2 + 20) + b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"
)


@pytest.fixture
def label() -> ProvenanceLabel:
    return ProvenanceLabel(
        models={"detector": "yoloface_8n", "swapper": "inswapper_128", "enhancer": "gfpgan_1.4"},
        request_id='req-<1>&"2"',
        task_id="task-42",
    )


@pytest.fixture
def image() -> np.ndarray:
    """(48, 64, 3) uint8 BGR with gradients and noise, so JPEG pixels are not trivially flat."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    base = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1)
    return (base + rng.integers(0, 30, base.shape)).clip(0, 255).astype(np.uint8)


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out is not None
    return out


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment bytes) of the header segments up to SOS (test-side parser)."""
    assert data[:2] == b"\xff\xd8"
    out, i = [], 2
    while data[i + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        out.append((data[i + 1], data[i : i + 2 + length]))
        i += 2 + length
    return out


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk, asserting each CRC and that IEND ends the file (test-side parser)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        body = data[i + 8 : i + 8 + length]
        (crc,) = struct.unpack(">I", data[i + 8 + length : i + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        i += 12 + length
    assert out[-1] == (b"IEND", b"")
    return out


def xmp_root(packet: bytes) -> ET.Element:
    description = ET.fromstring(packet).find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    assert description is not None
    return description


def test_json_round_trip_carries_synthetic_markers(label: ProvenanceLabel) -> None:
    text = label.to_json()
    assert text == json.dumps(json.loads(text), separators=(",", ":"))  # compact
    assert '"synthetic":true' in text
    assert f'"digital_source_type":"{DIGITAL_SOURCE_TYPE}"' in text
    assert DIGITAL_SOURCE_TYPE == "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    parsed = ProvenanceLabel.from_json(text)
    assert parsed == label
    assert parsed.models == label.models
    assert ProvenanceLabel.from_json(text.encode()) == label


def test_defaults_generator_version_and_utc_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(provenance, "version", missing)
    local = ProvenanceLabel()
    assert (local.generator, local.version, local.models, local.request_id) == (
        "faceswap-serve",
        "0.0.0+local",
        {},
        None,
    )
    created = datetime.fromisoformat(local.created)
    assert created.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 3600
    monkeypatch.setattr(provenance, "version", lambda name: "1.2.3" if name == "faceswap-serve" else "?")
    assert ProvenanceLabel().version == "1.2.3"
    assert '"request_id"' not in local.to_json()


def test_models_are_copied_not_aliased() -> None:
    models = {"swapper": "inswapper_128"}
    label = ProvenanceLabel(models=models)
    models["swapper"] = "changed"
    assert label.models == {"swapper": "inswapper_128"}
    assert label in {label}  # frozen and hashable although models is a dict


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"generator": "faceswap-serve", "version": "1", "created": "2024-01-01T00:00:00Z", "models": {}}',
        '{"synthetic": true, "generator": "g", "version": "1", "created": "2024-01-01T00:00:00Z"}',
        '{"synthetic": true, "generator": "g", "version": 1, "created": "2024-01-01", "models": {}}',
        '{"synthetic": true, "generator": "g", "version": "1", "created": "yesterday", "models": {}}',
        '{"synthetic": true, "generator": "g", "version": "1", "created": "2024-01-01", "models": {"a": 1}}',
    ],
)
def test_from_json_rejects_non_labels(text: str) -> None:
    with pytest.raises(InvalidInputError):
        ProvenanceLabel.from_json(text)


def test_jpeg_label_round_trip_keeps_pixels(image: np.ndarray, label: ProvenanceLabel) -> None:
    plain = encode(image, ".jpg")
    labelled = label_image(plain, "image/jpeg", label)
    assert np.array_equal(decode(labelled), decode(plain))
    assert read_label(plain) is None
    assert read_label(labelled) == label

    segments = jpeg_segments(labelled)
    assert segments[0][0] == 0xE0 and segments[0][1][4:9] == b"JFIF\x00"  # cv2 writes APP0 first
    marker, xmp = segments[1]
    assert marker == 0xE1 and xmp[4:33] == b"http://ns.adobe.com/xap/1.0/\x00"
    assert xmp_root(xmp[33:]).get(IPTC_DST) == DIGITAL_SOURCE_TYPE
    assert segments[2] == (0xFE, segments[2][1]) and segments[2][1][4:].decode() == label.to_json()
    # Everything but the two inserted segments is byte-identical.
    assert labelled.replace(xmp, b"").replace(segments[2][1], b"") == plain


def test_jpeg_keeps_existing_exif(image: np.ndarray, label: ProvenanceLabel) -> None:
    plain = encode(image, ".jpg")
    app0 = jpeg_segments(plain)[0][1]
    with_exif = plain[:2] + app0 + EXIF_APP1 + plain[2 + len(app0) :]
    labelled = label_jpeg(with_exif, label)
    markers = [(m, seg[4:10]) for m, seg in jpeg_segments(labelled)]
    assert markers[:4] == [
        (0xE0, b"JFIF\x00\x01"),
        (0xE1, b"Exif\x00\x00"),
        (0xE1, b"http:/"),
        (0xFE, b'{"gene'),
    ]
    assert jpeg_segments(labelled)[1][1] == EXIF_APP1
    assert np.array_equal(decode(labelled), decode(plain))
    assert read_label(labelled) == label


def test_relabelling_replaces_the_label(image: np.ndarray, label: ProvenanceLabel) -> None:
    second = ProvenanceLabel(models={"swapper": "simswap_256"}, created="2030-01-01T00:00:00Z")
    for labelled in (
        label_jpeg(label_jpeg(encode(image, ".jpg"), label), second),
        label_png(label_png(encode(image, ".png"), label), second),
    ):
        assert read_label(labelled) == second
        assert labelled.count(b"<fss:label>") == 1
        assert labelled.count(b'"synthetic":true') == 2  # one XMP copy, one comment copy


@pytest.mark.parametrize("keep", ["xmp", "comment"])
def test_jpeg_label_read_from_either_copy(image: np.ndarray, label: ProvenanceLabel, keep: str) -> None:
    labelled = label_jpeg(encode(image, ".jpg"), label)
    segments = dict(jpeg_segments(labelled))
    stripped = labelled.replace(segments[0xFE if keep == "xmp" else 0xE1], b"")
    assert len(stripped) < len(labelled)
    assert read_label(stripped) == label


@pytest.mark.parametrize("variant", ["bgr8", "gray16", "bgra8"])
def test_png_label_round_trip_keeps_pixels(image: np.ndarray, label: ProvenanceLabel, variant: str) -> None:
    pixels = {
        "bgr8": image,
        "gray16": image[..., 0].astype(np.uint16) * 257,
        "bgra8": np.dstack([image, image[..., 1]]),
    }[variant]
    plain = encode(pixels, ".png")
    labelled = label_image(plain, "image/png", label)
    out = decode(labelled)
    assert out.dtype == pixels.dtype and np.array_equal(out, pixels)
    assert read_label(plain) is None
    assert read_label(labelled) == label

    chunks = png_chunks(labelled)
    assert chunks[:-3] == png_chunks(plain)[:-1]
    (xmp_kind, xmp_body), (text_kind, text_body) = chunks[-3:-1]
    assert xmp_kind == b"iTXt" and xmp_body.startswith(b"XML:com.adobe.xmp\x00\x00\x00\x00\x00")
    assert xmp_root(xmp_body[len(b"XML:com.adobe.xmp") + 5 :]).get(IPTC_DST) == DIGITAL_SOURCE_TYPE
    assert (text_kind, text_body) == (b"tEXt", b"faceswap-serve\x00" + label.to_json().encode())


def test_corrupt_and_unsupported_inputs(image: np.ndarray, label: ProvenanceLabel) -> None:
    labelled = bytearray(label_png(encode(image, ".png"), label))
    labelled[16] ^= 0xFF  # first byte of the IHDR body: its CRC no longer matches
    with pytest.raises(InvalidInputError, match="CRC"):
        read_label(bytes(labelled))
    with pytest.raises(UnsupportedMediaError):
        label_image(encode(image, ".webp"), "image/webp", label)
    with pytest.raises(UnsupportedMediaError):
        read_label(b"GIF89a" + bytes(20))
    with pytest.raises(UnsupportedMediaError):
        label_png(encode(image, ".jpg"), label)


def write_video(path: Path, metadata: dict[str, str]) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.metadata.update(metadata)
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_video_tags_round_trip(tmp_path: Path, label: ProvenanceLabel, suffix: str) -> None:
    labelled, plain = tmp_path / f"labelled{suffix}", tmp_path / f"plain{suffix}"
    tags = video_metadata(label)
    write_video(labelled, tags)
    write_video(plain, {})
    assert read_video_label(labelled) == label
    assert read_video_label(plain) is None
    with av.open(str(labelled)) as container:
        kept = {k.lower(): v for k, v in container.metadata.items()}
        assert sum(1 for _ in container.decode(video=0)) == 4
    assert kept["comment"] == label.to_json()
    assert kept["description"] == tags["description"] and "trainedAlgorithmicMedia" in tags["description"]
