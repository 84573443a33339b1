"""The options of a swap: one typed model, the single definition of their names, types, ranges, defaults,
choices and help texts.

Everything else is derived from :class:`SwapOptions`: validation (:meth:`SwapOptions.from_mapping` takes JSON
values or multipart/CLI strings), the command-line flags (``pipeline.cli``), the OpenAPI schema and from it
the try-it page's form (``serve_app.openapi``). Choice lists are ``Literal`` types.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from pipeline.errors import InvalidOptionError
from pipeline.mesh import REGIONS, FaceRegion

SelectorMode = Literal["one", "many", "reference"]
FrameProcessor = Literal["face_swapper", "face_enhancer"]
MaskType = Literal["box", "region"]
FRAME_PROCESSORS: tuple[str, ...] = get_args(FrameProcessor)
SELECTOR_MODES: tuple[str, ...] = get_args(SelectorMode)

MAX_FACES_CAP = 64
"""Hard cap of faces processed per image, whatever a request or a deployment asks for."""
MIN_DETECTOR_SCORE = 0.1
"""Lowest accepted ``detector_score``: below it detectors return noise (thousands of "faces")."""
MAX_GAP_CAP = 250
"""Largest ``max_gap`` in frames (10 s at 25 fps): a longer miss is another appearance of the face."""
MAX_DETECT_EVERY = 100
"""Largest ``detect_every`` in frames: the detector still runs at least every 4 s at 25 fps."""
_MAX_TEXT = 64
"""Longest string accepted for one numeric value."""
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


def _number(raw: object) -> object:
    """A JSON number, or an ASCII decimal string (no Unicode digits, no inf/nan, no bools)."""
    if isinstance(raw, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(raw, int) and abs(raw) > 2**53:
        raise ValueError("number out of range")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueError("expected a finite number")
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) > _MAX_TEXT or _NUMBER.fullmatch(text) is None:
            raise ValueError("expected a decimal number in ASCII digits")
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    return raw


def _integer(raw: object) -> object:
    """A JSON integer (or integral float), or an ASCII integer string."""
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) > _MAX_TEXT or _INTEGER.fullmatch(text) is None:
            raise ValueError("expected an integer in ASCII digits")
        raw = int(text)
    value = _number(raw)
    if isinstance(value, float):
        if value != int(value):
            raise ValueError("expected an integer")
        return int(value)
    return value


def _text_list(raw: object) -> object:
    """A JSON list, or a string holding a JSON list or comma/space separated values."""
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except (ValueError, RecursionError):
                raise ValueError("invalid JSON list") from None
        else:
            return tuple(part for part in text.replace(",", " ").split() if part)
    return tuple(raw) if isinstance(raw, list) else raw


def _padding(raw: object) -> object:
    """1 or 4 integers (top, right, bottom, left); one value pads every side."""
    values = _text_list(raw)
    if isinstance(values, list | tuple):
        if len(values) not in (1, 4):
            raise ValueError("expected 1 or 4 values (top, right, bottom, left)")
        values = tuple(_integer(v) for v in values) * (4 // len(values))
    return values


def _boolean(raw: object) -> object:
    """A JSON boolean, or one of true/false, yes/no, on/off, 1/0 (ASCII, any case)."""
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected true or false")
    if isinstance(raw, bool):
        return raw
    raise ValueError("expected true or false")


def _stripped(raw: object) -> object:
    return raw.strip() if isinstance(raw, str) else raw


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise ValueError("duplicate entries")
    return values


def _choices(kind: Any) -> Any:
    """A tuple of distinct choices of ``kind``, given as a JSON list or a comma/space separated string."""
    return Annotated[
        tuple[kind, ...], BeforeValidator(_text_list), AfterValidator(_unique), Field(min_length=1)
    ]


Boolean = Annotated[bool, BeforeValidator(_boolean)]
Number = Annotated[float, BeforeValidator(_number)]
Integer = Annotated[int, BeforeValidator(_integer)]
Percent = Annotated[int, BeforeValidator(_integer), Field(ge=0, le=100)]
FaceCount = Annotated[int, BeforeValidator(_integer), Field(ge=1, le=MAX_FACES_CAP)]
Processors = _choices(FrameProcessor)


class SwapOptions(BaseModel):
    """What a caller may set per swap. Defaults follow FaceFusion where it has one."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    frame_processors: Processors = Field(
        default=("face_swapper",),
        description="Processors to run, in order: face_swapper and/or face_enhancer.",
    )
    blend_ratio: Number = Field(
        default=1.0, ge=0.0, le=1.0, description="Weight of the swapped face against the original."
    )
    face_mask_blur: Number = Field(default=0.3, ge=0.0, le=1.0, description="Blur of the face mask's edge.")
    face_mask_padding: Annotated[tuple[Percent, Percent, Percent, Percent], BeforeValidator(_padding)] = (
        Field(
            default=(0, 0, 0, 0),
            description="Face mask padding in percent: top, right, bottom, left (one value for all four).",
        )
    )
    face_mask_types: _choices(MaskType) = Field(  # type: ignore[valid-type]
        default=("box",),
        description="Masks that shape the swapped face, combined by their minimum: box, region.",
    )
    face_mask_regions: _choices(FaceRegion) = Field(  # type: ignore[valid-type]
        default=REGIONS,
        description="Face regions the region mask keeps (from the dense face mesh).",
    )
    refine_landmarks: Boolean = Field(
        default=False,
        description="Align faces on 5 points taken from the dense face mesh instead of the detector's.",
    )
    face_enhancer_blend: Integer = Field(
        default=80, ge=0, le=100, description="Weight of the enhanced face, in percent."
    )
    face_enhance_model: Annotated[str | None, BeforeValidator(_stripped)] = Field(
        default=None, max_length=64, description="Enhancer model; must be the deployed one (default: it)."
    )
    face_selector_mode: SelectorMode = Field(
        default="one",
        description="Target faces to swap: one (the largest), many (all) or reference (like a reference).",
    )
    reference_face_distance: Number = Field(
        default=0.6, ge=0.0, le=2.0, description="Largest cosine distance to the reference face."
    )
    detector_score: Number = Field(
        default=0.5, ge=MIN_DETECTOR_SCORE, le=1.0, description="Smallest face detection score."
    )
    max_faces: FaceCount | None = Field(
        default=None,
        description="Most faces processed per image (default: the service's setting).",
    )
    tracking: Boolean = Field(
        default=True,
        description="Video: follow faces across frames (steady, no flashes, one person per track); false: "
        "detect on every frame. Image swaps ignore it.",
    )
    smoothing: Number = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Video with tracking: strength of the landmark smoothing along each track (0: off). "
        "Image swaps ignore it.",
    )
    max_gap: Integer = Field(
        default=5,
        ge=0,
        le=MAX_GAP_CAP,
        description="Video with tracking: frames a face may be missed (occluded, blurred) and still be "
        "swapped, its landmarks interpolated. Image swaps ignore it.",
    )
    detect_every: Integer = Field(
        default=4,
        ge=1,
        le=MAX_DETECT_EVERY,
        description="Video with tracking: run the detector every this many frames (sooner when following "
        "fails); faces are followed by optical flow in between. Image swaps ignore it.",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidOptionError(describe_errors(exc)) from None

    @property
    def enhance(self) -> bool:
        return "face_enhancer" in self.frame_processors

    @property
    def swap(self) -> bool:
        return "face_swapper" in self.frame_processors

    def with_enhance(self, enhance: bool) -> SwapOptions:
        """These options with ``face_enhancer`` added or removed."""
        procs = [p for p in self.frame_processors if p != "face_enhancer"]
        if enhance:
            procs.append("face_enhancer")
        if not procs:
            raise InvalidOptionError("frame_processors: at least one processor is needed")
        return self.model_copy(update={"frame_processors": tuple(procs)})

    def to_json(self) -> dict[str, Any]:
        """JSON values that :meth:`from_mapping` reads back into equal options."""
        return self.model_dump(mode="json")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> SwapOptions:
        """Parse and validate: values may be typed (JSON) or strings (multipart, CLI); empty strings and None
        mean the default. Unknown names and bad values raise :class:`InvalidOptionError` naming the option."""
        known = set(cls.model_fields)
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            shown = ", ".join(repr(u[:40]) for u in unknown[:5])
            raise InvalidOptionError(f"unknown option(s) {shown}; known options are {sorted(known)}")
        given = {k: v for k, v in values.items() if v is not None and v != ""}
        try:
            return cls.model_validate(given, strict=False)
        except ValidationError as exc:
            raise InvalidOptionError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One readable line per problem, ``name: message``; input values are never echoed in full (numbers
    out of range are shown cut to 24 characters)."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"] if not isinstance(p, int)) or "options"
        bound = _BOUNDS.get(error["type"])
        if bound is not None:
            limit = error.get("ctx", {}).get(bound[0])
            message = f"{str(error.get('input'))[:24]} is out of range ({bound[1]} {limit})"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "; ".join(dict.fromkeys(problems))


_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "above"),
    "less_than": ("lt", "below"),
}


@dataclass(frozen=True)
class OptionFact:
    """One option as the CLI, the OpenAPI schema and the form present it (read off :class:`SwapOptions`)."""

    name: str
    kind: Literal["number", "integer", "string", "list", "boolean"]
    default: object
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    """Allowed values (of each item, for lists)."""


def option_facts() -> list[OptionFact]:
    """Every option of :class:`SwapOptions`, in definition order."""
    facts = []
    schema = SwapOptions.model_json_schema()["properties"]
    for name, field in SwapOptions.model_fields.items():
        prop = schema[name]
        choices: tuple[str, ...] = ()
        if "enum" in prop:
            choices = tuple(prop["enum"])
        items = prop.get("items", {})
        if "enum" in items:
            choices = tuple(items["enum"])
        variants = prop.get("anyOf", [prop])
        types = {v.get("type") for v in variants} - {"null"}
        kind: Literal["number", "integer", "string", "list", "boolean"]
        if "array" in types:
            kind = "list"
        elif "boolean" in types:
            kind = "boolean"
        elif "integer" in types:
            kind = "integer"
        elif "number" in types:
            kind = "number"
        else:
            kind = "string"
        # pydantic writes the bounds of an optional constrained type as "ge"/"le" inside anyOf.
        bounds = next((v for v in variants if {"minimum", "maximum", "ge", "le"} & set(v)), {})
        facts.append(
            OptionFact(
                name=name,
                kind=kind,
                default=field.default,
                description=field.description or "",
                minimum=bounds.get("minimum", bounds.get("ge")),
                maximum=bounds.get("maximum", bounds.get("le")),
                choices=choices,
            )
        )
    return facts
