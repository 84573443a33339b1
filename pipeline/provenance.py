"""Provenance labels: machine-readable marks that an output image or video was synthesised by this service.

Images carry the label twice: as XMP (``Iptc4xmpExt:DigitalSourceType = trainedAlgorithmicMedia``, the
IPTC term for AI-generated media, read by exiftool, Adobe tools and C2PA-aware viewers) plus the label
JSON in a plain comment (JPEG ``COM`` segment, PNG ``tEXt`` chunk keyword ``faceswap-serve``). Videos
carry the JSON in the container's ``comment`` tag (see :func:`video_metadata`). Pixels are untouched.
"""

from __future__ import annotations

import html
import json
import os
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import av

from pipeline.errors import InvalidInputError, UnsupportedMediaError

GENERATOR = "faceswap-serve"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
LABEL_NS = "urn:faceswap-serve:provenance:1.0/"
XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_PNG_KEYWORD = b"XML:com.adobe.xmp"
PNG_LABEL_KEYWORD = GENERATOR.encode("latin-1")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_LABEL = re.compile(rb"<fss:label>(.*?)</fss:label>", re.DOTALL)


def package_version() -> str:
    """The installed ``faceswap-serve`` distribution version, ``0.0.0+local`` when run from a checkout."""
    try:
        return version(GENERATOR)
    except PackageNotFoundError:
        return "0.0.0+local"


def utc_now() -> str:
    """Current time as ISO 8601 UTC with a ``Z`` suffix, whole seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True)
class ProvenanceLabel:
    """Who synthesised a piece of media, when (ISO 8601 UTC), and with which models (stage -> name)."""

    generator: str = GENERATOR
    version: str = field(default_factory=package_version)
    created: str = field(default_factory=utc_now)
    models: dict[str, str] = field(default_factory=dict, hash=False)
    request_id: str | None = None
    task_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", dict(self.models))

    def to_json(self) -> str:
        """Compact ASCII JSON, with the ``synthetic`` and IPTC ``digital_source_type`` markers."""
        doc: dict[str, object] = {
            "generator": self.generator,
            "version": self.version,
            "created": self.created,
            "synthetic": True,
            "digital_source_type": DIGITAL_SOURCE_TYPE,
            "models": dict(self.models),
        }
        if self.request_id is not None:
            doc["request_id"] = self.request_id
        if self.task_id is not None:
            doc["task_id"] = self.task_id
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ProvenanceLabel:
        """Parse :meth:`to_json` output. Raises InvalidInputError when it is not a provenance label."""
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"provenance label is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("synthetic") is not True:
            raise InvalidInputError('provenance label: missing "synthetic": true')
        strings = ("generator", "version", "created")
        optional = ("request_id", "task_id")
        models = doc.get("models")
        if (
            not all(isinstance(doc.get(k), str) for k in strings)
            or not all(doc.get(k) is None or isinstance(doc[k], str) for k in optional)
            or not isinstance(models, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in models.items())
        ):
            raise InvalidInputError("provenance label: fields missing or of the wrong type")
        try:
            datetime.fromisoformat(doc["created"])
        except ValueError as exc:
            raise InvalidInputError(f"provenance label: created is not ISO 8601: {exc}") from exc
        return cls(models=models, **{k: doc[k] for k in (*strings, *optional) if k in doc})


def xmp_packet(label: ProvenanceLabel) -> bytes:
    """UTF-8 XMP packet: IPTC DigitalSourceType plus ``fss:label`` holding the label JSON."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{IPTC_EXT_NS}" xmlns:fss="{LABEL_NS}"'
        f' Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}">'
        f"<fss:label>{html.escape(label.to_json(), quote=False)}</fss:label>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def _label_from_xmp(packet: bytes) -> ProvenanceLabel | None:
    match = _XMP_LABEL.search(packet)
    return _parse_or_none(html.unescape(match.group(1).decode("utf-8", "replace"))) if match else None


def _parse_or_none(text: str | bytes) -> ProvenanceLabel | None:
    try:
        return ProvenanceLabel.from_json(text)
    except InvalidInputError:
        return None


# --- JPEG -------------------------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each header segment after SOI, up to and excluding SOS; ``start`` is
    the offset of the ``0xFF`` marker byte, ``end`` one past the segment."""
    if data[:2] != b"\xff\xd8":
        raise UnsupportedMediaError("not a JPEG image")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise InvalidInputError(f"corrupt JPEG: no marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        yield marker, i, i + 2 + length
        i += 2 + length


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > 0xFFFF - 2:
        raise ValueError(f"JPEG segment payload of {len(payload)} bytes is over the 65533-byte limit")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _is_label_segment(data: bytes, marker: int, start: int, end: int) -> bool:
    body = data[start + 4 : end]
    return (marker == 0xE1 and body.startswith(XMP_JPEG_HEADER)) or (
        marker == 0xFE and _parse_or_none(body) is not None
    )


def label_jpeg(data: bytes, label: ProvenanceLabel) -> bytes:
    """JPEG bytes with an XMP APP1 segment and a COM segment carrying ``label``; entropy-coded data is
    copied unchanged. Inserted after SOI and any leading APP0 (JFIF) / Exif APP1 segments; an existing
    XMP packet or provenance comment is replaced, so labelling twice keeps one label."""
    segments = list(_jpeg_segments(data))
    insert_at = 2
    for marker, start, end in segments:
        if marker == 0xE0 or (marker == 0xE1 and data[start + 4 : start + 10] == b"Exif\x00\x00"):
            insert_at = end
        else:
            break
    new = _jpeg_segment(0xE1, XMP_JPEG_HEADER + xmp_packet(label)) + _jpeg_segment(
        0xFE, label.to_json().encode("ascii")
    )
    edits = sorted(
        [
            (insert_at, insert_at, new),
            *((s, e, b"") for m, s, e in segments if _is_label_segment(data, m, s, e)),
        ]
    )
    out = bytearray()
    pos = 0
    for start, end, replacement in edits:
        out += data[pos:start] + replacement
        pos = end
    out += data[pos:]
    return bytes(out)


def _read_jpeg_label(data: bytes) -> ProvenanceLabel | None:
    comments: list[ProvenanceLabel | None] = []
    for marker, start, end in _jpeg_segments(data):
        body = data[start + 4 : end]
        if marker == 0xE1 and body.startswith(XMP_JPEG_HEADER):
            found = _label_from_xmp(body[len(XMP_JPEG_HEADER) :])
            if found is not None:
                return found
        elif marker == 0xFE:
            comments.append(_parse_or_none(body))
    return next((c for c in comments if c is not None), None)


# --- PNG --------------------------------------------------------------------------------------------


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(type, body, start, end) of each chunk; raises InvalidInputError on a bad length or CRC."""
    if not data.startswith(PNG_SIGNATURE):
        raise UnsupportedMediaError("not a PNG image")
    i = len(PNG_SIGNATURE)
    while i + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        end = i + 12 + length
        if end > len(data):
            raise InvalidInputError(f"corrupt PNG: chunk {kind!r} runs past the end")
        body = data[i + 8 : i + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) != crc:
            raise InvalidInputError(f"corrupt PNG: bad CRC in chunk {kind!r}")
        yield kind, body, i, end
        if kind == b"IEND":
            return
        i = end


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_text_keyword(kind: bytes, body: bytes) -> bytes | None:
    return body.split(b"\x00", 1)[0] if kind in (b"tEXt", b"iTXt") else None


def label_png(data: bytes, label: ProvenanceLabel) -> bytes:
    """PNG bytes with an ``iTXt`` XMP chunk and a ``tEXt`` ``faceswap-serve`` chunk (label JSON) before
    IEND; other chunks copied unchanged. Existing chunks with those keywords are replaced."""
    out = bytearray(PNG_SIGNATURE)
    for kind, body, start, end in png_chunks(data):
        if _png_text_keyword(kind, body) in (XMP_PNG_KEYWORD, PNG_LABEL_KEYWORD):
            continue
        if kind == b"IEND":
            # iTXt: keyword, NUL, compression flag 0, method 0, empty language tag and translated keyword.
            out += _png_chunk(b"iTXt", XMP_PNG_KEYWORD + b"\x00\x00\x00\x00\x00" + xmp_packet(label))
            out += _png_chunk(b"tEXt", PNG_LABEL_KEYWORD + b"\x00" + label.to_json().encode("ascii"))
        out += data[start:end]
    if not out.endswith(_png_chunk(b"IEND", b"")):
        raise InvalidInputError("corrupt PNG: no IEND chunk")
    return bytes(out)


def _read_png_label(data: bytes) -> ProvenanceLabel | None:
    texts: list[ProvenanceLabel | None] = []
    for kind, body, _, _ in png_chunks(data):
        keyword = _png_text_keyword(kind, body)
        if (
            keyword == XMP_PNG_KEYWORD
            and kind == b"iTXt"
            and body[len(keyword) + 1 : len(keyword) + 2] == b"\x00"
        ):
            found = _label_from_xmp(body)
            if found is not None:
                return found
        elif keyword == PNG_LABEL_KEYWORD and kind == b"tEXt":
            texts.append(_parse_or_none(body[len(keyword) + 1 :]))
    return next((t for t in texts if t is not None), None)


# --- dispatch ---------------------------------------------------------------------------------------


def label_image(data: bytes, media_type: str, label: ProvenanceLabel) -> bytes:
    """Label encoded ``image/jpeg`` or ``image/png`` bytes; UnsupportedMediaError for other types."""
    if media_type == "image/jpeg":
        return label_jpeg(data, label)
    if media_type == "image/png":
        return label_png(data, label)
    raise UnsupportedMediaError(f"cannot add a provenance label to {media_type}; use image/jpeg or image/png")


def label_output(
    data: bytes, media_type: str, components: Mapping[str, str | None], *, request_id: str | None = None
) -> bytes:
    """Label encoded output bytes with the models that made them (the stages that ran)."""
    models = {stage: name for stage, name in components.items() if name is not None}
    return label_image(data, media_type, ProvenanceLabel(models=models, request_id=request_id))


def read_label(data: bytes) -> ProvenanceLabel | None:
    """The provenance label in JPEG or PNG bytes (XMP first, then the comment), None when there is none.
    Raises UnsupportedMediaError for other types, InvalidInputError for corrupt headers."""
    if data[:3] == b"\xff\xd8\xff":
        return _read_jpeg_label(data)
    if data.startswith(PNG_SIGNATURE):
        return _read_png_label(data)
    raise UnsupportedMediaError("provenance labels are read from JPEG or PNG images only")


# --- video ------------------------------------------------------------------------------------------


def video_metadata(label: ProvenanceLabel) -> dict[str, str]:
    """Container tags for ``av.container.OutputContainer.metadata``: ``comment`` holds the label JSON
    (kept by the mp4, mov, mkv and webm muxers), ``description`` a human-readable note (kept by mp4,
    mkv and webm; dropped by mov). Custom keys are dropped by mp4 and ``encoder`` is overwritten."""
    return {
        "comment": label.to_json(),
        "description": (
            f"Synthetic media generated by {label.generator} {label.version} "
            f"(IPTC digital source type: trainedAlgorithmicMedia)"
        ),
    }


def read_video_label(path: str | os.PathLike[str]) -> ProvenanceLabel | None:
    """The label in a video file's ``comment`` tag (any case: mkv upper-cases tags), else None.
    Raises av's errors for files that cannot be opened."""
    with av.open(os.fspath(path)) as container:
        tags = {k.lower(): v for k, v in container.metadata.items()}
    comment = tags.get("comment")
    return _parse_or_none(comment) if comment is not None else None
