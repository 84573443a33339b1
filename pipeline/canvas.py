"""Detector canvases: the image shrunk to what a detector looks at, made where the frame was decoded.

A detector never receives a frame: the orchestration resizes each image to the detector's
:class:`CanvasSpec` and sends that canvas, which is all a remote detector replica needs (a 1280x720
frame becomes a 640x360 canvas, a quarter of the bytes). Faces come back in canvas pixels and are mapped
back to image pixels here. Padding to the network's input shape is the detector's own business.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.types import Face, ImageBGR


@dataclass(frozen=True)
class CanvasSpec:
    """The box an image is fitted into, keeping its aspect ratio.

    ``width`` x ``height`` in pixels; ``upscale``: whether images smaller than the box are enlarged (a
    fixed-size network, letterboxed) or kept at their size (a network with a dynamic input size).
    """

    width: int
    height: int
    upscale: bool

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InvalidOptionError(f"canvas size must be positive, got {self.width}x{self.height}")


def check_image(image: object) -> None:
    """Raise InvalidInputError unless ``image`` is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InvalidInputError(f"expected an (H, W, 3) uint8 BGR image, got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"empty image of shape {image.shape}")


def make_canvas(image: ImageBGR, spec: CanvasSpec) -> tuple[ImageBGR, float]:
    """``image`` (H, W, 3) uint8 BGR fitted into ``spec``: the canvas (h, w, 3) uint8 BGR with
    ``h <= spec.height`` and ``w <= spec.width``, and the scale ``s`` such that an image point ``p`` is at
    ``p * s`` on the canvas. Shrinking uses area interpolation, enlarging bilinear. The image itself is
    returned (no copy) when it already fits and is not to be enlarged."""
    check_image(image)
    h, w = image.shape[:2]
    scale = min(spec.width / w, spec.height / h)
    if not spec.upscale:
        scale = min(scale, 1.0)
    if scale == 1.0:
        return image, 1.0
    size = (min(spec.width, max(1, round(w * scale))), min(spec.height, max(1, round(h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, size, interpolation=interpolation), np.uint8), float(scale)


def pad_canvas(canvas: ImageBGR, width: int, height: int) -> ImageBGR:
    """``canvas`` at the top-left of a zero (height, width, 3) uint8 image (the network's input shape)."""
    h, w = canvas.shape[:2]
    if h > height or w > width:
        raise InvalidInputError(f"canvas {w}x{h} does not fit the detector input {width}x{height}")
    if (h, w) == (height, width):
        return canvas
    padded = np.zeros((height, width, 3), np.uint8)
    padded[:h, :w] = canvas
    return padded


def faces_to_image(faces: list[Face], scale: float) -> list[Face]:
    """Faces found on a canvas of scale ``scale`` (see :func:`make_canvas`), in image pixels."""
    if scale == 1.0:
        return faces
    return [
        Face(
            bbox=(face.bbox / scale).astype(np.float32),
            landmarks=(face.landmarks / scale).astype(np.float32),
            score=face.score,
            embedding=face.embedding,
            mesh=None if face.mesh is None else (face.mesh / scale).astype(np.float32),
        )
        for face in faces
    ]
