"""What the engine needs from each kind of model. Model classes implement these structurally."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipeline.types import CropsBGR, Face, ImageBGR


class Detector(Protocol):
    """Finds faces with 5 landmarks."""

    name: str

    def detect(self, image: ImageBGR, score_threshold: float | None = None) -> list[Face]:
        """Faces in image pixel coordinates, best score first. ``score_threshold`` overrides the default."""
        ...


class Embedder(Protocol):
    """Identity embedding of aligned face crops."""

    name: str
    template: str
    crop_size: int

    def embed_crops(self, crops: CropsBGR) -> npt.NDArray[np.float32]:
        """(N, S, S, 3) BGR crops aligned to ``template`` -> (N, D) float32 L2-normalised."""
        ...


class Swapper(Protocol):
    """Replaces the identity of aligned target crops.

    ``encode_source`` turns the source face into an identity array (any fixed shape per swapper:
    the inswapper latent, or the aligned source crop for the classical swapper); ``swap_crops``
    stacks one identity per crop.
    """

    name: str
    template: str
    crop_size: int

    def encode_source(self, image: ImageBGR, face: Face) -> npt.NDArray[np.float32]: ...

    def swap_crops(self, crops: CropsBGR, identities: npt.NDArray[np.float32]) -> CropsBGR:
        """(N, S, S, 3) BGR target crops, (N, ...) identities -> (N, S, S, 3) BGR swapped crops."""
        ...


class Enhancer(Protocol):
    """Restores aligned face crops."""

    name: str
    template: str
    crop_size: int

    def enhance_crops(self, crops: CropsBGR) -> CropsBGR:
        """(N, S, S, 3) BGR -> (N, S, S, 3) BGR restored (before face_enhancer_blend)."""
        ...
