"""Array conventions shared by the whole core.

Every image that crosses a function boundary is ``ImageBGR``: ``(H, W, 3) uint8`` in BGR order, as
OpenCV decodes it. Models that want RGB or floats convert inside their own wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

ImageBGR: TypeAlias = npt.NDArray[np.uint8]
"""(H, W, 3) uint8, BGR channel order."""

CropsBGR: TypeAlias = npt.NDArray[np.uint8]
"""(N, S, S, 3) uint8 BGR: a batch of aligned face crops of side S."""

Landmarks5: TypeAlias = npt.NDArray[np.float32]
"""(5, 2) float32 (x, y) in image pixels: image-left eye, image-right eye, nose tip,
image-left mouth corner, image-right mouth corner."""

Affine: TypeAlias = npt.NDArray[np.float64]
"""(2, 3) float64 forward affine, image pixels -> crop pixels."""

Mask: TypeAlias = npt.NDArray[np.float32]
"""(H, W) float32 in [0, 1]."""

Embedding: TypeAlias = npt.NDArray[np.float32]
"""(D,) float32, L2-normalised identity embedding."""


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates."""

    bbox: npt.NDArray[np.float32]
    """(4,) float32 x1, y1, x2, y2 in image pixels."""
    landmarks: Landmarks5
    score: float
    embedding: Embedding | None = None
    mesh: npt.NDArray[np.float32] | None = None
    """(P, 2) float32 dense landmarks (the face mesh) in image pixels, when a landmarker ran."""

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    def with_embedding(self, embedding: Embedding) -> Face:
        return replace(self, embedding=embedding)
