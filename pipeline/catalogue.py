"""The model catalogue (pipeline/models.yaml, package data) as validated, immutable data, and finding model
files on disk.

Every entry becomes a :class:`ModelSpec`; a malformed entry raises :class:`CatalogueError` naming the entry
and the field. An entry without a pinned ``sha256`` and ``size`` is *unverified*: it can be used when its
file is already in place, but :mod:`pipeline.download` refuses to fetch it unless told to.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml

from pipeline.errors import CatalogueError, ModelNotFoundError
from pipeline.geometry import TEMPLATES

log = logging.getLogger(__name__)

ModelKind = Literal["detector", "embedder", "swapper", "enhancer"]
ModelFamily = Literal["scrfd", "yunet", "arcface", "inswapper", "gfpgan"]
ChannelOrder = Literal["rgb", "bgr"]

KINDS: frozenset[str] = frozenset(get_args(ModelKind))
FAMILIES: frozenset[str] = frozenset(get_args(ModelFamily))
CHANNEL_ORDERS: frozenset[str] = frozenset(get_args(ChannelOrder))

CATALOGUE_ENV = "FACESWAP_CATALOGUE"
MODELS_DIR_ENV = "FACESWAP_MODELS_DIR"
CATALOGUE_VERSION = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 1 << 20
_OPTIONAL_FIELDS = frozenset({"notes"})


def _fail(name: object, field: str, problem: str) -> CatalogueError:
    return CatalogueError(f"model {name!r}: field {field!r}: {problem}")


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry.

    ``input_size``: detectors: the square side the model runs at; other kinds: the side of the aligned
    crop (warped with ``template``). Input normalisation in 0..255 pixel units: ``(pixel - mean) / std``
    with channels in ``channel_order``. ``sha256``/``size`` are ``None`` when not pinned (unverified);
    ``url`` is ``None`` when the file cannot be downloaded and must be placed in the models directory.
    """

    name: str
    kind: ModelKind
    family: ModelFamily
    file: str
    url: str | None
    sha256: str | None
    size: int | None
    licence: str
    input_size: int
    template: str | None
    mean: float
    std: float
    channel_order: ChannelOrder
    notes: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise _fail(self.name, "name", "must be a non-empty name of letters, digits, '.', '_', '-'")
        self._check_choice("kind", self.kind, KINDS)
        self._check_choice("family", self.family, FAMILIES)
        self._check_choice("channel_order", self.channel_order, CHANNEL_ORDERS)
        self._check_file()
        self._check_url()
        if self.sha256 is not None and not (isinstance(self.sha256, str) and _SHA256_RE.match(self.sha256)):
            raise _fail(self.name, "sha256", f"must be 64 lowercase hex digits or null, got {self.sha256!r}")
        if self.size is not None and not (_is_int(self.size) and self.size > 0):
            raise _fail(self.name, "size", f"must be a positive number of bytes or null, got {self.size!r}")
        if not isinstance(self.licence, str) or not self.licence.strip():
            raise _fail(self.name, "licence", "must be a non-empty string")
        if not (_is_int(self.input_size) and self.input_size > 0):
            raise _fail(self.name, "input_size", f"must be a positive integer, got {self.input_size!r}")
        self._check_template()
        if not _is_real(self.mean) or not math.isfinite(self.mean):
            raise _fail(self.name, "mean", f"must be a finite number, got {self.mean!r}")
        if not _is_real(self.std) or not math.isfinite(self.std) or self.std <= 0:
            raise _fail(self.name, "std", f"must be a positive finite number, got {self.std!r}")
        if not isinstance(self.notes, str):
            raise _fail(self.name, "notes", "must be a string")

    def _check_choice(self, field: str, value: object, allowed: frozenset[str]) -> None:
        if value not in allowed:
            raise _fail(self.name, field, f"must be one of {sorted(allowed)}, got {value!r}")

    def _check_file(self) -> None:
        file = self.file
        if (
            not isinstance(file, str)
            or not file
            or file in (".", "..")
            or "/" in file
            or "\\" in file
            or "\0" in file
            or file != file.strip()
        ):
            raise _fail(self.name, "file", f"must be a plain file name without path separators, got {file!r}")

    def _check_url(self) -> None:
        if self.url is None:
            return
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail(self.name, "url", f"must be an http(s) URL or null, got {self.url!r}")

    def _check_template(self) -> None:
        if self.template is None:
            if self.kind != "detector":
                raise _fail(self.name, "template", f"is required for kind {self.kind!r}")
            return
        if self.template not in TEMPLATES:
            raise _fail(self.name, "template", f"must be one of {sorted(TEMPLATES)}, got {self.template!r}")

    @property
    def verified(self) -> bool:
        """True when both ``sha256`` and ``size`` are pinned, so a download can be checked."""
        return self.sha256 is not None and self.size is not None

    @classmethod
    def from_mapping(cls, entry: object, index: int = 0) -> ModelSpec:
        """Build from one YAML entry; unknown, missing or mistyped fields raise :class:`CatalogueError`."""
        if not isinstance(entry, Mapping):
            raise CatalogueError(f"model entry #{index}: must be a mapping, got {type(entry).__name__}")
        name = entry.get("name", f"#{index}")
        known = {f.name for f in fields(cls)}
        for key in entry:
            if key not in known:
                raise _fail(name, str(key), f"unknown key (allowed: {sorted(known)})")
        for key in sorted(known - _OPTIONAL_FIELDS):
            if key not in entry:
                raise _fail(name, key, "is missing")
        values: dict[str, Any] = dict(entry)
        return cls(**values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def default_catalogue_path() -> Path:
    """$FACESWAP_CATALOGUE, else the package's own ``models.yaml`` (installed with it as package data)."""
    env = os.environ.get(CATALOGUE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "models.yaml"


def default_models_dir() -> Path:
    """$FACESWAP_MODELS_DIR, else ``~/.cache/faceswap-serve/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "faceswap-serve" / "models"


@dataclass(frozen=True, eq=False)
class Catalogue:
    """All model specs by name, in file order."""

    models: Mapping[str, ModelSpec]
    source: str = "<memory>"

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        """Read and validate a catalogue file (default: :func:`default_catalogue_path`)."""
        path = default_catalogue_path() if path is None else Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogueError(f"cannot read model catalogue {path}: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CatalogueError(f"model catalogue {path} is not valid YAML: {exc}") from exc
        return cls.from_data(data, source=str(path))

    @classmethod
    def from_data(cls, data: object, source: str = "<memory>") -> Catalogue:
        """Validate parsed YAML: ``{version: 1, models: [entry, ...]}``."""
        if not isinstance(data, Mapping):
            raise CatalogueError(f"{source}: top level must be a mapping with a 'models' list")
        unknown = sorted(str(k) for k in data if k not in ("version", "models"))
        if unknown:
            raise CatalogueError(f"{source}: unknown top-level keys {unknown}")
        if data.get("version", CATALOGUE_VERSION) != CATALOGUE_VERSION:
            raise CatalogueError(f"{source}: unsupported version {data.get('version')!r}")
        entries = data.get("models")
        if not isinstance(entries, list) or not entries:
            raise CatalogueError(f"{source}: 'models' must be a non-empty list")
        models: dict[str, ModelSpec] = {}
        files: dict[str, str] = {}
        for index, entry in enumerate(entries):
            spec = ModelSpec.from_mapping(entry, index)
            if spec.name in models:
                raise _fail(spec.name, "name", "is defined twice")
            if spec.file in files:
                raise _fail(spec.name, "file", f"{spec.file!r} is also used by {files[spec.file]!r}")
            models[spec.name] = spec
            files[spec.file] = spec.name
        return cls(MappingProxyType(models), source)

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFoundError(
                f"unknown model {name!r}; the catalogue ({self.source}) has: {', '.join(self.models)}"
            ) from None

    def by_kind(self, kind: str) -> list[ModelSpec]:
        if kind not in KINDS:
            raise CatalogueError(f"unknown model kind {kind!r}, expected one of {sorted(KINDS)}")
        return [spec for spec in self.models.values() if spec.kind == kind]

    def spec_for_file(self, file: str, kind: str | None = None) -> ModelSpec:
        """The entry whose ``file`` is ``file`` (and whose kind is ``kind`` when given)."""
        for spec in self.models.values():
            if spec.file == file and (kind is None or spec.kind == kind):
                return spec
        wanted = f"{kind} model" if kind is not None else "model"
        files = ", ".join(spec.file for spec in self.models.values() if kind is None or spec.kind == kind)
        raise ModelNotFoundError(
            f"no {wanted} in the catalogue ({self.source}) has the file name {file!r}; known: {files}"
        )

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        """All entries in file order."""
        return tuple(self.models.values())

    def names(self) -> list[str]:
        return list(self.models)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return name in self.models


def file_sha256(path: Path) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_file(spec: ModelSpec, search_dirs: Sequence[Path], *, verify: bool = False) -> Path | None:
    """First ``<dir>/<spec.file>`` whose size (and with ``verify``, sha256) matches the pin, else None.

    Mismatching files are skipped with a warning. Unpinned fields are not checked.
    """
    for directory in search_dirs:
        candidate = Path(directory) / spec.file
        if not candidate.is_file():
            continue
        actual_size = candidate.stat().st_size
        if spec.size is not None and actual_size != spec.size:
            log.warning(
                "skipping %s: %d bytes, model %s expects %d", candidate, actual_size, spec.name, spec.size
            )
            continue
        if verify and spec.sha256 is not None:
            actual = file_sha256(candidate)
            if actual != spec.sha256:
                log.warning(
                    "skipping %s: sha256 %s, model %s expects %s", candidate, actual, spec.name, spec.sha256
                )
                continue
        return candidate
    return None
