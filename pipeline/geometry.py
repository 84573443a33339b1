"""Pure geometry and mask functions: 5-point similarity alignment, warps, box masks, paste-back.

Templates follow FaceFusion: normalised 5-point coordinates multiplied by the crop size.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import cv2
import numpy as np

from pipeline.errors import InvalidOptionError
from pipeline.types import Affine, ImageBGR, Landmarks5, Mask


def _read_only(points: object) -> np.ndarray:
    """(5, 2) float32 normalised template, immutable."""
    array = np.array(points, dtype=np.float32)
    array.setflags(write=False)
    return array


_ARCFACE_112 = _read_only(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)

TEMPLATES = MappingProxyType(
    {
        # insightface arcface_dst / 112
        "arcface_112_v2": _read_only(_ARCFACE_112 / 112.0),
        # inswapper crop: (arcface_112 + [8, 0]) / 128
        "arcface_128": _read_only((_ARCFACE_112 + np.array([8.0, 0.0], np.float32)) / 128.0),
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
    """(5, 2) float32 template landmarks in crop pixels for a square crop of side ``size``."""
    if template not in TEMPLATES:
        raise InvalidOptionError(f"unknown warp template {template!r}, expected one of {sorted(TEMPLATES)}")
    if size <= 0:
        raise InvalidOptionError(f"crop size must be positive, got {size}")
    return (TEMPLATES[template] * size).astype(np.float32)


def estimate_affine(landmarks: Landmarks5, template: str, size: int) -> Affine:
    """Least-squares similarity transform (rotation, uniform scale, translation) image -> crop."""
    src = np.asarray(landmarks, np.float32).reshape(5, 2)
    dst = template_points(template, size)
    matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if matrix is None:
        raise InvalidOptionError("degenerate landmarks: no similarity transform")
    return matrix.astype(np.float32)


def warp_face(image: ImageBGR, landmarks: Landmarks5, template: str, size: int) -> tuple[ImageBGR, Affine]:
    """Aligned ``(size, size, 3)`` crop of the face and the forward affine used."""
    matrix = estimate_affine(landmarks, template, size)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(crop, np.uint8), matrix


def box_mask(size: int, blur: float, padding: Sequence[float] = (0, 0, 0, 0)) -> Mask:
    """FaceFusion box mask: ``(size, size)`` float32, ones with zeroed, blurred borders.

    ``blur`` in [0, 1] (FaceFusion ``face_mask_blur``); ``padding`` top, right, bottom, left in percent.
    """
    if not 0.0 <= blur <= 1.0:
        raise InvalidOptionError(f"face_mask_blur must be in [0, 1], got {blur}")
    if len(padding) != 4 or any(not 0 <= p <= 100 for p in padding):
        raise InvalidOptionError(f"face_mask_padding must be 4 percentages in [0, 100], got {list(padding)}")
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
    return mask


def blend(original: ImageBGR, processed: ImageBGR, ratio: float) -> ImageBGR:
    """``ratio * processed + (1 - ratio) * original`` as uint8; ratio in [0, 1]."""
    if not 0.0 <= ratio <= 1.0:
        raise InvalidOptionError(f"blend ratio must be in [0, 1], got {ratio}")
    out = cv2.addWeighted(processed.astype(np.float32), ratio, original.astype(np.float32), 1.0 - ratio, 0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def paste_back(frame: ImageBGR, crop: ImageBGR, affine: Affine, crop_mask: Mask) -> ImageBGR:
    """Inverse-warp ``crop`` into ``frame`` through ``affine``, weighted by ``crop_mask`` (crop frame).

    Pixels where the warped mask is 0 keep the frame's exact values. Returns a new image.
    """
    h, w = frame.shape[:2]
    inverse = cv2.invertAffineTransform(affine)
    warped_mask = cv2.warpAffine(crop_mask, inverse, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    warped_mask = np.clip(warped_mask, 0.0, 1.0)
    ys, xs = np.nonzero(warped_mask > 0)
    out = frame.copy()
    if ys.size == 0:
        return out
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # warp only the face's bounding region: translate the inverse affine into the region.
    region_inverse = inverse.copy()
    region_inverse[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(crop, region_inverse, (x1 - x0, y1 - y0), borderMode=cv2.BORDER_REPLICATE)
    m = warped_mask[y0:y1, x0:x1, None]
    region = frame[y0:y1, x0:x1].astype(np.float32)
    mixed = m * warped.astype(np.float32) + (1.0 - m) * region
    out[y0:y1, x0:x1] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def face_region_mask(frame_shape: tuple[int, ...], affine: Affine, crop_mask: Mask) -> Mask:
    """The crop mask warped into frame coordinates: ``(H, W)`` float32, where paste-back writes."""
    h, w = frame_shape[:2]
    inverse = cv2.invertAffineTransform(affine)
    return np.clip(cv2.warpAffine(crop_mask, inverse, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0), 0, 1)
