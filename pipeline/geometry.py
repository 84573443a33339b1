"""Pure geometry and mask functions: 5-point similarity alignment, warps, box masks, paste-back.

They reproduce FaceFusion 3.8.1 (commit 33cc6b40): ``face_helper.py`` (templates, alignment, paste area,
paste-back), ``face_masker.create_box_mask`` and ``vision.blend_frame``. Templates are normalised
5-point coordinates multiplied by the crop size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import MappingProxyType

import cv2
import numpy as np

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.types import Affine, ImageBGR, Landmarks5, Mask


def _read_only(points: object) -> np.ndarray:
    """(5, 2) float64 normalised template, immutable."""
    array = np.array(points, dtype=np.float64)
    array.setflags(write=False)
    return array


# FaceFusion's WARP_TEMPLATE_SET values (facefusion/face_helper.py), float64 like FaceFusion's arithmetic.
TEMPLATES = MappingProxyType(
    {
        # insightface arcface_dst / 112
        "arcface_112_v2": _read_only(
            [
                [0.34191607, 0.46157411],
                [0.65653393, 0.45983393],
                [0.50022500, 0.64050536],
                [0.37097589, 0.82469196],
                [0.63151696, 0.82325089],
            ]
        ),
        # inswapper crop: (arcface_dst + [8, 0]) / 128
        "arcface_128": _read_only(
            [
                [0.36167656, 0.40387734],
                [0.63696719, 0.40235469],
                [0.50019687, 0.56044219],
                [0.38710391, 0.72160547],
                [0.61507734, 0.72034453],
            ]
        ),
        "ffhq_512": _read_only(
            [
                [0.37691676, 0.46864664],
                [0.62285697, 0.46912813],
                [0.50123859, 0.61331904],
                [0.39308822, 0.72541100],
                [0.61150205, 0.72490465],
            ]
        ),
    }
)


def template_points(template: str, size: int) -> np.ndarray:
    """(5, 2) float32 template landmarks in crop pixels for a square crop of side ``size``.

    FaceFusion's ``template * crop_size`` in float64, rounded to float32 as OpenCV's estimator rounds
    its point sets.
    """
    if template not in TEMPLATES:
        raise InvalidOptionError(f"unknown warp template {template!r}, expected one of {sorted(TEMPLATES)}")
    if size <= 0:
        raise InvalidOptionError(f"crop size must be positive, got {size}")
    return (TEMPLATES[template] * size).astype(np.float32)


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) ``source -> target``.

    ``source``, ``target``: (N, 2) point sets, N >= 2. Returns the (2, 3) float64 matrix
    ``[[a, -b, tx], [b, a, ty]]`` minimising ``sum |M [p, 1] - q|^2``: the closed form of Umeyama's fit
    in 2-D (centre both sets; ``a``, ``b`` are the normalised dot and cross sums). Written out because
    OpenCV offers only robust, iterative estimators for this model. FaceFusion's call (RANSAC, 100 px
    threshold) keeps all 5 points while every residual is under 100 crop pixels, and then converges to
    this optimum (OpenCV 4.14: within 1e-11).
    """
    src = np.asarray(source, np.float64).reshape(-1, 2)
    dst = np.asarray(target, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise InvalidOptionError(f"need two matching (N >= 2, 2) point sets, got {src.shape}, {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise InvalidOptionError("degenerate landmarks: non-finite coordinates")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    spread = float((s**2).sum())
    if spread <= 1e-12 * max(1.0, float(np.abs(src).max())) ** 2:
        raise InvalidOptionError("degenerate landmarks: no similarity transform")
    a = float((s * d).sum()) / spread
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / spread
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def estimate_affine(landmarks: Landmarks5, template: str, size: int) -> Affine:
    """Least-squares similarity transform image -> crop of side ``size`` (FaceFusion's alignment).

    ``landmarks``: (5, 2) image pixels. Returns the (2, 3) float64 forward affine: :func:`fit_similarity`
    of the float32 landmarks onto :func:`template_points` (float64 like FaceFusion's matrix, so crops and
    pastes are bit-identical to FaceFusion's).
    """
    src = np.asarray(landmarks, np.float32).reshape(5, 2)
    return fit_similarity(src, template_points(template, size))


def warp_face(image: ImageBGR, landmarks: Landmarks5, template: str, size: int) -> tuple[ImageBGR, Affine]:
    """Aligned ``(size, size, 3)`` crop of the face and the forward affine used.

    Bilinear with replicated borders. FaceFusion passes ``INTER_AREA``, which ``cv2.warpAffine`` runs as
    ``INTER_LINEAR``.
    """
    matrix = estimate_affine(landmarks, template, size)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(crop, np.uint8), matrix


def box_mask(size: int, blur: float, padding: Sequence[float] = (0, 0, 0, 0)) -> Mask:
    """FaceFusion box mask: ``(size, size)`` float32, ones with zeroed, blurred borders; read-only (masks
    are made once per size, blur and padding, as FaceFusion caches its static box mask).

    ``blur`` in [0, 1] (FaceFusion ``face_mask_blur``); ``padding`` top, right, bottom, left in percent.
    """
    if not 0.0 <= blur <= 1.0:
        raise InvalidOptionError(f"face_mask_blur must be in [0, 1], got {blur}")
    if len(padding) != 4 or any(not 0 <= p <= 100 for p in padding):
        raise InvalidOptionError(f"face_mask_padding must be 4 percentages in [0, 100], got {list(padding)}")
    return _box_mask(size, float(blur), tuple(float(p) for p in padding))


@functools.lru_cache(maxsize=64)
def _box_mask(size: int, blur: float, padding: tuple[float, ...]) -> Mask:
    blur_amount = int(size * 0.5 * blur)
    blur_area = max(blur_amount // 2, 1)
    mask: np.ndarray = np.ones((size, size), np.float32)
    top, right, bottom, left = (max(blur_area, int(size * p / 100)) for p in padding)
    mask[:top, :] = 0
    mask[-bottom:, :] = 0
    mask[:, :left] = 0
    mask[:, -right:] = 0
    if blur_amount > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur_amount * 0.25)
    mask.flags.writeable = False
    return mask


def blend(original: ImageBGR, processed: ImageBGR, ratio: float) -> ImageBGR:
    """``ratio * processed + (1 - ratio) * original`` as uint8, rounded; ratio in [0, 1].

    FaceFusion's ``blend_frame``: one ``cv2.addWeighted`` on the uint8 images (float32 arithmetic,
    rounded to nearest with saturation).
    """
    if not 0.0 <= ratio <= 1.0:
        raise InvalidOptionError(f"blend ratio must be in [0, 1], got {ratio}")
    return np.asarray(cv2.addWeighted(original, 1.0 - ratio, processed, ratio, 0.0), np.uint8)


def paste_area(
    frame_shape: tuple[int, ...], crop_shape: tuple[int, ...], affine: Affine
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Where paste-back writes: the rectangle ``(x1, y1, x2, y2)`` (exclusive ends, frame pixels) and the
    (2, 3) float64 inverse affine translated into it (crop pixels -> rectangle pixels).

    FaceFusion's ``calculate_paste_area``: the crop's corners ``(0, 0) .. (w, h)`` mapped by the inverse
    affine, their min floored and max ceiled, clipped to the frame. FaceFusion maps the corners as an
    integer array through ``cv2.transform``, which rounds them to the nearest integer first, so the
    floor/ceil is a no-op there and the rectangle is the rounded corners' bounding box; this does the
    same, so it lies inside the floor/ceil rectangle of the exact corners.
    """
    frame_h, frame_w = frame_shape[:2]
    crop_h, crop_w = crop_shape[:2]
    inverse = cv2.invertAffineTransform(np.asarray(affine, np.float64))
    corners = np.array([[0, 0], [crop_w, 0], [crop_w, crop_h], [0, crop_h]], np.float64)
    mapped = np.rint(corners @ inverse[:, :2].T + inverse[:, 2])
    x1, y1 = np.clip(mapped.min(axis=0), 0, (frame_w, frame_h)).astype(int)
    x2, y2 = np.clip(mapped.max(axis=0), 0, (frame_w, frame_h)).astype(int)
    paste_matrix = inverse.copy()
    paste_matrix[:, 2] -= (x1, y1)
    return (int(x1), int(y1), int(x2), int(y2)), paste_matrix


def _warped_mask(crop_mask: Mask, paste_matrix: np.ndarray, width: int, height: int) -> Mask:
    """``crop_mask`` bilinearly warped into the paste rectangle, zero outside the crop, clipped to [0, 1]."""
    warped = cv2.warpAffine(np.asarray(crop_mask, np.float32), paste_matrix, (width, height))
    return np.clip(warped, 0.0, 1.0)


def paste_back(frame: ImageBGR, crop: np.ndarray, affine: Affine, crop_mask: Mask) -> ImageBGR:
    """FaceFusion's ``paste_back``: ``crop`` inverse-warped into ``frame`` through ``affine``, weighted by
    ``crop_mask``. Returns a new image.

    ``crop``: (h, w, 3) BGR, uint8 or float32 in 0..255 (FaceFusion pastes the swapper's float output
    unrounded); ``crop_mask``: (h, w) float32 in crop pixels. Inside :func:`paste_area` the frame becomes
    ``frame * (1 - m) + warped_crop * m`` in float32, truncated to uint8 (``astype``, as FaceFusion);
    every pixel outside that rectangle keeps its exact value.
    """
    if crop.shape[:2] != np.shape(crop_mask)[:2]:
        raise InvalidInputError(f"crop {crop.shape[:2]} and mask {np.shape(crop_mask)[:2]} differ in size")
    (x1, y1, x2, y2), paste_matrix = paste_area(frame.shape, crop.shape, affine)
    out = frame.copy()
    if x2 <= x1 or y2 <= y1:
        return out
    mask = _warped_mask(crop_mask, paste_matrix, x2 - x1, y2 - y1)[:, :, None]
    warped = cv2.warpAffine(crop, paste_matrix, (x2 - x1, y2 - y1), borderMode=cv2.BORDER_REPLICATE)
    mixed = out[y1:y2, x1:x2] * (1 - mask) + warped * mask
    out[y1:y2, x1:x2] = mixed.astype(np.uint8)
    return out


def face_region_mask(frame_shape: tuple[int, ...], affine: Affine, crop_mask: Mask) -> Mask:
    """The crop mask as paste-back applies it, in frame coordinates: ``(H, W)`` float32 in [0, 1], zero
    outside :func:`paste_area`."""
    h, w = frame_shape[:2]
    region: Mask = np.zeros((h, w), np.float32)
    (x1, y1, x2, y2), paste_matrix = paste_area(frame_shape, np.shape(crop_mask), affine)
    if x2 > x1 and y2 > y1:
        region[y1:y2, x1:x2] = _warped_mask(crop_mask, paste_matrix, x2 - x1, y2 - y1)
    return region
