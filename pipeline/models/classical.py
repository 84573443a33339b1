"""The classical (no-download) face enhancer of the ``lite`` profile: a fast edge-preserving denoise,
unsharp mask and CLAHE on lightness, all in uint8. (The classical swapper is
:mod:`pipeline.models.mesh_swapper`.)"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.geometry import template_points
from pipeline.types import CropsBGR, ImageBGR


class ClassicalEnhancer:
    """Enhancer without a network: bilateral denoise, unsharp mask, CLAHE on LAB lightness (uint8).

    ``strength`` ``s`` in (0, 1] scales all three steps: bilateral colour sigma ``5 + 20 s``; unsharp
    amount ``2 s`` with a Gaussian sigma of 2 px at 512 (scaled with ``crop_size``); CLAHE (clip limit
    ``1 + s``, 8x8 tiles) on LAB lightness, mixed ``s / 2`` into the sharpened lightness so the global
    tone stays close to the input. Deterministic: the same crop always gives the same bytes.
    """

    def __init__(
        self,
        *,
        name: str = "classical",
        template: str = "ffhq_512",
        crop_size: int = 512,
        strength: float = 0.5,
    ) -> None:
        if not 0.0 < strength <= 1.0:
            raise InvalidOptionError(f"classical enhancer strength must be in (0, 1], got {strength}")
        template_points(template, crop_size)  # validates template and crop_size
        self.name = name
        self.template = template
        self.crop_size = crop_size
        self.strength = strength

    def enhance_crops(self, crops: CropsBGR) -> CropsBGR:
        """(N, S, S, 3) uint8 BGR -> (N, S, S, 3) uint8 BGR enhanced."""
        s = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8:
            raise InvalidInputError(f"crops must be (N, {s}, {s}, 3) uint8, got {crops.shape} {crops.dtype}")
        clahe = cv2.createCLAHE(clipLimit=1.0 + self.strength, tileGridSize=(8, 8))
        out = np.empty_like(crops)
        for i, crop in enumerate(crops):
            out[i] = self._enhance_one(crop, clahe)
        return out

    def _enhance_one(self, crop: ImageBGR, clahe: cv2.CLAHE) -> ImageBGR:
        scale = self.crop_size / 512.0
        denoised = cv2.bilateralFilter(crop, 5, 5.0 + 20.0 * self.strength, 3.0 * scale)
        blurred = cv2.GaussianBlur(denoised, (0, 0), 2.0 * scale)
        amount = 2.0 * self.strength
        sharpened = cv2.addWeighted(denoised, 1.0 + amount, blurred, -amount, 0.0)
        lab = cv2.cvtColor(sharpened, cv2.COLOR_BGR2LAB)
        lightness = np.ascontiguousarray(lab[..., 0])
        mix = 0.5 * self.strength
        lab[..., 0] = cv2.addWeighted(lightness, 1.0 - mix, clahe.apply(lightness), mix, 0.0)
        return np.asarray(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR), np.uint8)
