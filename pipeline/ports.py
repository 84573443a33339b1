"""Model ports: what the swap orchestration (:mod:`pipeline.orchestration`) needs from each kind of model.

A port takes small arrays (detector canvases, aligned face crops, identities) and returns small arrays;
frames never pass through a port. In-process ports (:mod:`pipeline.inprocess`) call the ONNX model classes
directly; ``serve_app.ports`` implements the same Protocols over Ray Serve deployment handles, so the one
orchestration runs unchanged in the CLI, the Serve ingress, the Ray Data job and the video jobs.

Every port describes itself with a frozen ``*Info`` (name, canvas or crop geometry), which is all the
orchestration needs to prepare its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipeline.canvas import CanvasSpec
from pipeline.errors import ModelNotFoundError
from pipeline.identities import IdentityKind
from pipeline.types import CropsBGR, Face, ImageBGR

Embeddings = npt.NDArray[np.float32]
"""(N, D) float32, L2-normalised rows."""
Masks = npt.NDArray[np.float32]
"""(N, S, S) float32 in [0, 1]: per crop, where the processed crop replaces the original (crop pixels)."""


@dataclass(frozen=True)
class CropSpec:
    """An aligned square crop: the warp template's name and the side in pixels."""

    template: str
    size: int


@dataclass(frozen=True)
class DetectorInfo:
    name: str
    canvas: CanvasSpec


@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    crop: CropSpec
    dim: int
    """Embedding length D."""


@dataclass(frozen=True)
class SwapperInfo:
    name: str
    crop: CropSpec
    identity: IdentityKind
    identity_dim: int | None = None
    """For ``embedding`` identities: the embedding length the swapper was trained on."""
    notice: str | None = None
    """What a user should know about its results (the classical swapper says so, and how to get more)."""


@dataclass(frozen=True)
class EnhancerInfo:
    name: str
    crop: CropSpec


@dataclass(frozen=True)
class LandmarkerInfo:
    name: str
    crop: CropSpec
    points: int
    """Landmarks per face."""


@dataclass(frozen=True)
class DenseLandmarks:
    """A landmarker's output: ``points`` (N, P, 2) float32 (x, y) in crop pixels and ``scores`` (N,)
    float32 in [0, 1], how sure it is that each crop holds a face."""

    points: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Swapped:
    """A swapper's output: ``crops`` (N, S, S, 3) uint8 BGR and optionally ``masks`` (N, S, S) float32 where
    the swap applies (None: the whole crop, shaped by the box mask alone)."""

    crops: CropsBGR
    masks: Masks | None = None


class DetectorPort(Protocol):
    info: DetectorInfo

    async def detect(self, canvases: Sequence[ImageBGR], score_threshold: float) -> list[list[Face]]:
        """Faces of each (h, w, 3) uint8 BGR canvas, in canvas pixels, best score first."""
        ...


class EmbedderPort(Protocol):
    info: EmbedderInfo

    async def embed(self, crops: CropsBGR) -> Embeddings:
        """(N, S, S, 3) uint8 BGR crops aligned to ``info.crop`` -> (N, D) float32 L2-normalised."""
        ...


class SwapperPort(Protocol):
    info: SwapperInfo

    async def swap(self, crops: CropsBGR, identities: np.ndarray) -> Swapped:
        """(N, S, S, 3) uint8 BGR target crops aligned to ``info.crop`` and N identities (one per crop, of
        ``info.identity`` kind) -> the swapped crops."""
        ...


class EnhancerPort(Protocol):
    info: EnhancerInfo

    async def enhance(self, crops: CropsBGR) -> CropsBGR:
        """(N, S, S, 3) uint8 BGR crops aligned to ``info.crop`` -> (N, S, S, 3) uint8 BGR restored."""
        ...


class LandmarkerPort(Protocol):
    info: LandmarkerInfo

    async def landmarks(self, crops: CropsBGR) -> DenseLandmarks:
        """(N, S, S, 3) uint8 BGR crops aligned to ``info.crop`` -> their dense landmarks."""
        ...


@dataclass(frozen=True)
class Ports:
    """The models one orchestration runs on, and the profile they came from."""

    detector: DetectorPort
    swapper: SwapperPort
    embedder: EmbedderPort | None = None
    enhancer: EnhancerPort | None = None
    landmarker: LandmarkerPort | None = None
    profile: str = "custom"

    def __post_init__(self) -> None:
        swapper = self.swapper.info
        if swapper.identity == "embedding":
            have = self.embedder.info if self.embedder is not None else None
            if have is None or have.dim != swapper.identity_dim:
                loaded = f"{have.name} ({have.dim}-d)" if have is not None else "none"
                raise ModelNotFoundError(
                    f"{swapper.name} needs a {swapper.identity_dim}-d ArcFace embedder (arcface_w600k_r50); "
                    f"loaded: {loaded}"
                )

    @property
    def components(self) -> dict[str, str | None]:
        """Which profile and model runs each stage, for responses, logs and provenance labels."""
        return {
            "profile": self.profile,
            "detector": self.detector.info.name,
            "embedder": self.embedder.info.name if self.embedder is not None else None,
            "swapper": self.swapper.info.name,
            "enhancer": self.enhancer.info.name if self.enhancer is not None else None,
            "landmarker": self.landmarker.info.name if self.landmarker is not None else None,
        }
