"""Runtime options of a swap, validated from any mapping (JSON values or multipart strings)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Literal

from pipeline.errors import InvalidOptionError

SelectorMode = Literal["one", "many", "reference"]
FRAME_PROCESSORS = ("face_swapper", "face_enhancer")


@dataclass(frozen=True)
class SwapOptions:
    """What a caller may set per swap. Defaults follow FaceFusion where it has one."""

    frame_processors: tuple[str, ...] = ("face_swapper",)
    """Ordered processors: ``face_swapper`` and/or ``face_enhancer``."""
    blend_ratio: float = 1.0
    """[0, 1]: swapped face weight against the original inside the mask."""
    face_mask_blur: float = 0.3
    """[0, 1]: FaceFusion box-mask blur."""
    face_mask_padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Top, right, bottom, left in percent of the crop."""
    face_enhancer_blend: int = 80
    """[0, 100]: enhanced face weight (FaceFusion ``face_enhancer_blend``)."""
    face_enhance_model: str | None = None
    """Name of the enhancer model to use; None = the one loaded."""
    face_selector_mode: SelectorMode = "one"
    """``one``: the largest face; ``many``: every face; ``reference``: faces close to a reference face."""
    reference_face_distance: float = 0.6
    """[0, 2]: max cosine distance (1 - cos) to the reference face in ``reference`` mode."""
    detector_score: float = 0.5
    """[0, 1]: minimum detection score."""

    def __post_init__(self) -> None:
        if not self.frame_processors:
            raise InvalidOptionError("frame_processors: at least one processor is needed")
        for p in self.frame_processors:
            if p not in FRAME_PROCESSORS:
                raise InvalidOptionError(
                    f"frame_processors: unknown {p!r}, expected any of {list(FRAME_PROCESSORS)}"
                )
        if len(set(self.frame_processors)) != len(self.frame_processors):
            raise InvalidOptionError("frame_processors: duplicate entries")
        _check_range("blend_ratio", self.blend_ratio, 0.0, 1.0)
        _check_range("face_mask_blur", self.face_mask_blur, 0.0, 1.0)
        _check_range("face_enhancer_blend", self.face_enhancer_blend, 0, 100)
        _check_range("reference_face_distance", self.reference_face_distance, 0.0, 2.0)
        _check_range("detector_score", self.detector_score, 0.0, 1.0)
        if len(self.face_mask_padding) != 4:
            raise InvalidOptionError("face_mask_padding: expected 4 values (top, right, bottom, left)")
        for pad in self.face_mask_padding:
            _check_range("face_mask_padding", pad, 0, 100)
        if self.face_selector_mode not in ("one", "many", "reference"):
            raise InvalidOptionError(
                f"face_selector_mode: unknown {self.face_selector_mode!r}, expected one, many or reference"
            )

    @property
    def enhance(self) -> bool:
        return "face_enhancer" in self.frame_processors

    @property
    def swap(self) -> bool:
        return "face_swapper" in self.frame_processors

    def with_enhance(self, enhance: bool) -> SwapOptions:
        procs = [p for p in self.frame_processors if p != "face_enhancer"]
        if enhance:
            procs.append("face_enhancer")
        if not procs:
            raise InvalidOptionError("frame_processors: at least one processor is needed")
        return replace(self, frame_processors=tuple(procs))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> SwapOptions:
        """Parse and validate. Values may be typed (JSON) or strings (multipart/CLI). Unknown keys fail."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidOptionError(f"unknown option(s) {unknown}; known options are {sorted(known)}")
        parsed: dict[str, object] = {}
        for name, raw in values.items():
            if raw is None or raw == "":
                continue
            parsed[name] = _PARSERS[name](name, raw)
        return cls(**parsed)  # type: ignore[arg-type]


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidOptionError(f"{name}: expected a number, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidOptionError(f"{name}: {value} is out of range [{lo}, {hi}]")


def _as_float(name: str, raw: object) -> float:
    if isinstance(raw, bool):
        raise InvalidOptionError(f"{name}: expected a number, got {raw!r}")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidOptionError(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise InvalidOptionError(f"{name}: expected a finite number, got {raw!r}")
    return value


def _as_int(name: str, raw: object) -> int:
    value = _as_float(name, raw)
    if value != int(value):
        raise InvalidOptionError(f"{name}: expected an integer, got {raw!r}")
    return int(value)


def _as_str(name: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidOptionError(f"{name}: expected a string, got {raw!r}")
    return raw.strip()


def _as_list(name: str, raw: object) -> list[object]:
    """A JSON list, or a comma/space separated string."""
    if isinstance(raw, list | tuple):
        return list(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                raise InvalidOptionError(f"{name}: invalid JSON list {text[:40]!r}") from None
            if not isinstance(value, list):
                raise InvalidOptionError(f"{name}: expected a list, got {raw!r}")
            return value
        return [p for p in text.replace(",", " ").split() if p]
    raise InvalidOptionError(f"{name}: expected a list, got {raw!r}")


def _processors(name: str, raw: object) -> tuple[str, ...]:
    return tuple(_as_str(name, p) for p in _as_list(name, raw))


def _padding(name: str, raw: object) -> tuple[int, int, int, int]:
    values = [_as_int(name, v) for v in _as_list(name, raw)]
    if len(values) == 1:
        values *= 4
    if len(values) != 4:
        raise InvalidOptionError(f"{name}: expected 1 or 4 values, got {raw!r}")
    return (values[0], values[1], values[2], values[3])


_PARSERS = MappingProxyType(
    {
        "frame_processors": _processors,
        "blend_ratio": _as_float,
        "face_mask_blur": _as_float,
        "face_mask_padding": _padding,
        "face_enhancer_blend": _as_int,
        "face_enhance_model": _as_str,
        "face_selector_mode": _as_str,
        "reference_face_distance": _as_float,
        "detector_score": _as_float,
    }
)
