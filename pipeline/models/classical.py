"""Classical (no-download) models for the ``lite`` profile: an OpenCV face swapper and enhancer.

The swapper aligns source and target faces to the same 5-point template, so eyes, nose and mouth
line up pixel for pixel; it recolours the source to the target's skin tone (Reinhard transfer in
LAB) and blends it into the target crop inside an inner-face ellipse. The enhancer is a fast
edge-preserving denoise, unsharp mask and CLAHE on lightness, all in uint8.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.geometry import template_points
from pipeline.types import CropsBGR, ImageBGR, Mask

_BLENDINGS = ("feather", "poisson")
_STD_FLOOR = 1e-3
"""Smallest source standard deviation (LAB units) divided by in the Reinhard transfer."""


def face_ellipse_mask(size: int, template: str) -> Mask:
    """Hard ``(size, size)`` float32 mask (1 inside, 0 outside) of the inner face of an aligned crop.

    The axis-aligned ellipse is placed from the template's 5 landmarks in crop pixels: with ``d`` the
    distance from the eye midpoint to the mouth midpoint, it spans from ``0.55 d`` above the eye line
    (the brows) to ``0.55 d`` below the mouth line (the chin), and ``0.9`` eye distances either side
    of the face's centre line. It is clipped to keep a one-pixel margin inside the crop.
    """
    points = template_points(template, size)
    eye_mid = points[:2].mean(axis=0)
    mouth_mid = points[3:].mean(axis=0)
    d = float(np.linalg.norm(mouth_mid - eye_mid))
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    top = max(eye_mid[1] - 0.55 * d, 1.0)
    bottom = min(mouth_mid[1] + 0.55 * d, size - 2.0)
    centre_x = float((eye_mid[0] + mouth_mid[0]) / 2.0)
    semi_x = min(0.9 * eye_distance, centre_x - 1.0, size - 2.0 - centre_x)
    centre_y = (top + bottom) / 2.0
    semi_y = (bottom - top) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    inside = ((xs - centre_x) / semi_x) ** 2 + ((ys - centre_y) / semi_y) ** 2 <= 1.0
    return inside.astype(np.float32)


def _masked_mean_std(lab: np.ndarray, weights: Mask) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel weighted mean and standard deviation, each (3,) float64, of (H, W, 3) ``lab``."""
    w = weights.astype(np.float64)[..., None]
    total = w.sum()
    mean = (lab * w).sum(axis=(0, 1)) / total
    var = (((lab - mean) ** 2) * w).sum(axis=(0, 1)) / total
    return mean, np.sqrt(var)


def reinhard_transfer(src_bgr: ImageBGR, ref_bgr: ImageBGR, mask: Mask) -> ImageBGR:
    """Reinhard colour transfer: ``src_bgr`` recoloured to the colour statistics of ``ref_bgr``.

    ``src_bgr`` and ``ref_bgr``: (H, W, 3) uint8 BGR of the same size. ``mask``: (H, W) float32 in
    [0, 1], the weights of the region whose per-channel LAB mean and standard deviation are matched
    (the same region in both images, so background does not skew the statistics). Every pixel of the
    source is mapped ``(x - mean_src) * std_ref / std_src + mean_ref`` in float LAB; the result is
    (H, W, 3) uint8 BGR, rounded and clipped.
    """
    if src_bgr.shape != ref_bgr.shape or src_bgr.ndim != 3 or src_bgr.shape[2] != 3:
        raise InvalidInputError(
            f"reinhard_transfer needs two (H, W, 3) images of one shape, "
            f"got {src_bgr.shape} and {ref_bgr.shape}"
        )
    if mask.shape != src_bgr.shape[:2]:
        raise InvalidInputError(f"mask shape {mask.shape} does not match image shape {src_bgr.shape[:2]}")
    if float(mask.sum()) <= 0.0:
        raise InvalidInputError("reinhard_transfer mask selects no pixels")
    src_lab = cv2.cvtColor(src_bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
    ref_lab = cv2.cvtColor(ref_bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
    src_mean, src_std = _masked_mean_std(src_lab, mask)
    ref_mean, ref_std = _masked_mean_std(ref_lab, mask)
    scale = ref_std / np.maximum(src_std, _STD_FLOOR)
    out_lab = ((src_lab - src_mean) * scale + ref_mean).astype(np.float32)
    out_bgr = cv2.cvtColor(out_lab, cv2.COLOR_LAB2BGR) * 255.0
    return np.clip(np.rint(out_bgr), 0, 255).astype(np.uint8)


class ClassicalSwapper:
    """Swapper without a network: the aligned source face, recoloured and blended into the target.

    Its identity of a source face is the face itself, aligned like the target crops: identities are
    (S, S, 3) uint8 BGR crops. ``blending``: ``"feather"`` (Gaussian-feathered alpha inside the ellipse)
    or ``"poisson"``
    (``cv2.seamlessClone`` NORMAL_CLONE). Either way pixels outside the ellipse keep the target's values.
    """

    identity = "crop"
    identity_dim = None

    def __init__(
        self,
        *,
        name: str = "classical",
        template: str = "arcface_128",
        crop_size: int = 128,
        blending: str = "feather",
    ) -> None:
        if blending not in _BLENDINGS:
            raise InvalidOptionError(f"unknown blending {blending!r}, expected one of {list(_BLENDINGS)}")
        self.name = name
        self.template = template
        self.crop_size = crop_size
        self.blending = blending
        self.mask = face_ellipse_mask(crop_size, template)
        """(S, S) float32 hard inner-face ellipse: colour statistics region and blend region."""
        self.alpha = self._feather_alpha(self.mask)
        """(S, S) float32 feathered blend weights, zero wherever ``mask`` is zero."""
        self._clone_mask = (self.mask * 255).astype(np.uint8)
        x, y, w, h = cv2.boundingRect(self._clone_mask)
        # seamlessClone centres the mask's bounding box on this point; this keeps the clone in place.
        self._clone_centre = (x + w // 2, y + h // 2)

    @staticmethod
    def _feather_alpha(mask: Mask) -> Mask:
        """(S, S) float32 alpha: ``mask`` eroded by k px with a square, then Gaussian-blurred with a
        (2k+1)-square kernel, so the blur never reaches outside ``mask``."""
        k = max(1, round(mask.shape[0] * 0.06))
        kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
        eroded = cv2.erode(mask, kernel)
        return np.asarray(cv2.GaussianBlur(eroded, (2 * k + 1, 2 * k + 1), k / 2.5), np.float32)

    def swap_crops(self, crops: CropsBGR, identities: CropsBGR) -> CropsBGR:
        """(N, S, S, 3) uint8 BGR target crops, (N, S, S, 3) uint8 BGR aligned source crops ->
        (N, S, S, 3) uint8 BGR crops showing the source face in the target's colours."""
        s = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8:
            raise InvalidInputError(f"crops must be (N, {s}, {s}, 3) uint8, got {crops.shape} {crops.dtype}")
        if identities.shape != crops.shape or identities.dtype != np.uint8:
            raise InvalidInputError(
                f"identities must be uint8 crops like {crops.shape} (one source crop per target), "
                f"got {identities.shape} {identities.dtype}"
            )
        out = np.empty_like(crops)
        for i, (target, source) in enumerate(zip(crops, identities, strict=True)):
            out[i] = self._swap_one(target, source)
        return out

    def _swap_one(self, target: ImageBGR, source: ImageBGR) -> ImageBGR:
        recoloured = reinhard_transfer(source, target, self.mask)
        if self.blending == "poisson":
            # seamlessClone writes into its mask argument (OpenCV 4.14): give it a fresh copy each call.
            clone_mask = self._clone_mask.copy()
            cloned = cv2.seamlessClone(recoloured, target, clone_mask, self._clone_centre, cv2.NORMAL_CLONE)
            # the solver also nudges pixels just outside the mask; keep the target's exact values there.
            return np.where(self.mask[..., None] > 0, cloned, target)
        a = self.alpha[..., None]
        mixed = a * recoloured.astype(np.float32) + (1.0 - a) * target.astype(np.float32)
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


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
