"""What the in-process ports need from each kind of model. Model classes implement these structurally;
:mod:`pipeline.inprocess` wraps them into the orchestration's ports (:mod:`pipeline.ports`)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipeline.canvas import CanvasSpec
from pipeline.ports import IdentityKind, Masks
from pipeline.types import CropsBGR, Face, ImageBGR


class Detector(Protocol):
    """Finds faces with 5 landmarks on a canvas (the image shrunk as ``canvas`` says)."""

    name: str
    canvas: CanvasSpec

    def detect_canvas(self, canvas: ImageBGR, score_threshold: float | None = None) -> list[Face]:
        """Faces in canvas pixels, best score first. ``score_threshold`` overrides the default."""
        ...


class Embedder(Protocol):
    """Identity embedding of aligned face crops."""

    name: str
    template: str
    crop_size: int
    dim: int

    def embed_crops(self, crops: CropsBGR) -> npt.NDArray[np.float32]:
        """(N, S, S, 3) BGR crops aligned to ``template`` -> (N, D) float32 L2-normalised."""
        ...


class Swapper(Protocol):
    """Replaces the identity of aligned target crops with one identity per crop, of kind ``identity``
    (see :data:`pipeline.identities.IdentityKind`; ``identity_dim``: the embedding length, for
    ``embedding``)."""

    name: str
    template: str
    crop_size: int
    identity: IdentityKind
    identity_dim: int | None
    notice: str | None
    """What a user should know about results of this swapper (None: nothing)."""

    def swap_crops(self, crops: CropsBGR, identities: np.ndarray) -> CropsBGR | tuple[CropsBGR, Masks]:
        """(N, S, S, 3) BGR target crops, N identities -> (N, S, S, 3) BGR swapped crops, optionally with
        (N, S, S) float32 masks of where the swap applies."""
        ...


class Landmarker(Protocol):
    """Dense landmarks of aligned face crops."""

    name: str
    template: str
    crop_size: int
    points: int

    def landmarks(self, crops: CropsBGR) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(N, S, S, 3) BGR crops -> ((N, P, 2) float32 crop pixels, (N,) float32 face scores)."""
        ...


class Enhancer(Protocol):
    """Restores aligned face crops."""

    name: str
    template: str
    crop_size: int

    def enhance_crops(self, crops: CropsBGR) -> CropsBGR:
        """(N, S, S, 3) BGR -> (N, S, S, 3) BGR restored."""
        ...
