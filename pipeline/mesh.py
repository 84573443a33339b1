"""Pure functions over MediaPipe's 468-point face mesh: its triangles, a piecewise-affine warp, the hull
mask, region masks and the 5 alignment points.

Meshes are ``(468, 2)`` float32 ``(x, y)`` in the pixels of the image they were found in. The index
sets below are MediaPipe's published face-mesh connections (``FACEMESH_FACE_OVAL``, ``_LEFT_EYE``,
``_RIGHT_EYE``, ``_LEFT_EYEBROW``, ``_RIGHT_EYEBROW``, ``_LIPS``, ``_NOSE`` in
``mediapipe/python/solutions/face_mesh_connections.py`` of the ``mediapipe==0.10.21`` wheel, Apache-2.0,
The MediaPipe Authors), written as ordered loops; ``scripts/convert_face_mesh.py`` checks them against
that file. "Left" and "right" are the subject's, as in MediaPipe: the left eye shows on the image's right.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Literal, get_args

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.types import ImageBGR, Landmarks5, Mask

MESH_POINTS = 468
TRIANGLES_RESOURCE = "assets/models/face_landmark_mediapipe_triangles.json"
"""(898, 3) vertex indices, inside the ``pipeline`` package (written by scripts/convert_face_mesh.py)."""

FACE_OVAL = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377,
             400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338)  # fmt: skip
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_EYEBROW = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)
"""The two polylines of ``FACEMESH_RIGHT_EYEBROW`` (46 -> 55 and 70 -> 107) joined into one outline."""
LEFT_EYEBROW = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)
"""The two polylines of ``FACEMESH_LEFT_EYEBROW`` (276 -> 285 and 300 -> 336) joined into one outline."""
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440)
"""Every point of ``FACEMESH_NOSE`` (the bridge and the outline of the tip and nostrils)."""
NOSE_TIP = 1
"""MediaPipe's ``noseTip`` keypoint."""
MOUTH_CORNERS = (61, 291)
"""Outer lip corners, image-left (the subject's right) first."""

FaceRegion = Literal[
    "skin", "left-eyebrow", "right-eyebrow", "left-eye", "right-eye", "nose", "mouth", "upper-lip",
    "lower-lip",
]  # fmt: skip
"""FaceFusion's ``face_mask_regions`` names (without ``glasses``, which a mesh cannot see)."""
REGIONS: tuple[str, ...] = get_args(FaceRegion)

_LIP_CORNER = len(LIPS_OUTER) // 2
_REGION_OUTLINES = MappingProxyType(
    {
        # painted in this order, later ones over earlier ones: the regions partition the face oval.
        "skin": FACE_OVAL,
        "nose": None,  # convex hull of NOSE
        "left-eyebrow": LEFT_EYEBROW,
        "right-eyebrow": RIGHT_EYEBROW,
        "left-eye": LEFT_EYE,
        "right-eye": RIGHT_EYE,
        # upper lip: the outer upper arc 291 -> 61, then the inner upper arc 78 -> 308
        "upper-lip": LIPS_OUTER[_LIP_CORNER:]
        + LIPS_OUTER[:1]
        + LIPS_INNER[:1]
        + LIPS_INNER[: _LIP_CORNER - 1 : -1],
        # lower lip: the outer lower arc 61 -> 291, then the inner lower arc 308 -> 78
        "lower-lip": LIPS_OUTER[: _LIP_CORNER + 1] + LIPS_INNER[_LIP_CORNER::-1],
        "mouth": LIPS_INNER,
    }
)
_SHIFT = 4
"""Sub-pixel bits for OpenCV's polygon fills."""


@cache
def _triangles() -> npt.NDArray[np.int32]:
    text = resources.files("pipeline").joinpath(TRIANGLES_RESOURCE).read_text()
    triangles = np.asarray(json.loads(text), np.int32)
    triangles.setflags(write=False)
    return triangles


def face_mesh_triangles() -> npt.NDArray[np.int32]:
    """(898, 3) int32 read-only vertex indices: MediaPipe's tessellation with the eyes and mouth closed."""
    return _triangles()


def check_mesh(mesh: np.ndarray, what: str = "mesh") -> npt.NDArray[np.float32]:
    """``mesh`` as (468, 2) float32, or :class:`InvalidInputError` when its shape is not that or a
    coordinate is not finite."""
    points = np.asarray(mesh, np.float32)
    if points.shape != (MESH_POINTS, 2) or not np.isfinite(points).all():
        raise InvalidInputError(f"{what} must be ({MESH_POINTS}, 2) finite floats, got {points.shape}")
    return points


def _fixed(points: np.ndarray) -> npt.NDArray[np.int32]:
    return np.rint(np.asarray(points, np.float64) * (1 << _SHIFT)).astype(np.int32)


def piecewise_affine_maps(
    src_points: np.ndarray, dst_points: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Mask]:
    """``cv2.remap`` maps of the piecewise-affine warp taking ``src_points`` to ``dst_points``.

    ``src_points``, ``dst_points``: (P, 2) float (x, y), source and destination pixels of the same
    vertices; ``triangles``: (T, 3) vertex indices; ``shape``: (height, width) of the destination.
    Every destination pixel inside a triangle gets the source position given by that triangle's affine
    map, so each destination vertex maps exactly onto its source vertex. Returns ``map_x``, ``map_y``
    (height, width) float32 source pixels (-1 outside the mesh) and ``covered`` (height, width) float32
    in {0, 1}. Where the destination mesh folds over itself, triangles that face the other way than most
    are drawn first, so the ones facing the viewer win. Degenerate destination triangles are skipped.
    """
    src = np.asarray(src_points, np.float64)
    dst = np.asarray(dst_points, np.float64)
    tris = np.asarray(triangles, np.intp)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise InvalidInputError(f"src and dst points must both be (P, 2), got {src.shape} and {dst.shape}")
    if tris.ndim != 2 or tris.shape[1] != 3 or tris.min(initial=0) < 0 or tris.max(initial=0) >= len(src):
        raise InvalidInputError(f"triangles must be (T, 3) indices below {len(src)}, got {tris.shape}")
    height, width = shape
    corners = dst[tris]  # (T, 3, 2)
    homogeneous = np.concatenate([corners, np.ones((len(tris), 3, 1))], axis=2)  # rows (x, y, 1)
    det = np.linalg.det(homogeneous)  # twice the signed area
    usable = np.abs(det) > 1e-6
    affines = np.zeros((len(tris), 3, 2))
    affines[usable] = np.linalg.solve(homogeneous[usable], src[tris][usable])  # (x, y, 1) @ A = source
    facing = np.sign(np.sum(det[usable]))
    order = sorted(np.flatnonzero(usable), key=lambda t: bool(np.sign(det[t]) == facing))
    labels = np.full((height, width), -1, np.int32)
    fixed = _fixed(corners)
    for t in order:
        cv2.fillConvexPoly(labels, fixed[t], int(t), lineType=cv2.LINE_8, shift=_SHIFT)
    ys, xs = np.nonzero(labels >= 0)
    a = affines[labels[ys, xs]]
    map_x = np.full((height, width), -1.0, np.float32)
    map_y = np.full((height, width), -1.0, np.float32)
    map_x[ys, xs] = xs * a[:, 0, 0] + ys * a[:, 1, 0] + a[:, 2, 0]
    map_y[ys, xs] = xs * a[:, 0, 1] + ys * a[:, 1, 1] + a[:, 2, 1]
    return map_x, map_y, (labels >= 0).astype(np.float32)


def piecewise_affine_warp(
    image: ImageBGR, src_points: np.ndarray, dst_points: np.ndarray, triangles: np.ndarray,
    shape: tuple[int, int],
) -> tuple[ImageBGR, Mask]:  # fmt: skip
    """``image`` (H, W, 3) uint8 BGR warped triangle by triangle from ``src_points`` (its pixels) onto
    ``dst_points``, sampled bilinearly at the full destination resolution ``shape`` = (height, width).

    Returns the warped (height, width, 3) uint8 BGR image, zero outside the mesh, and the (height, width)
    float32 coverage in {0, 1} (see :func:`piecewise_affine_maps`).
    """
    map_x, map_y, covered = piecewise_affine_maps(src_points, dst_points, triangles, shape)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    warped[covered == 0] = 0
    return np.asarray(warped, np.uint8), covered


def feather_inward(hard: np.ndarray, feather: float) -> Mask:
    """(H, W) float32: ``hard`` ((H, W), 1 inside, 0 outside) with a smooth ramp ``feather`` px wide on
    its inside edge (smoothstep of the distance to the outside); exactly 0 wherever ``hard`` is 0."""
    if feather < 0:
        raise InvalidOptionError(f"feather must be >= 0 px, got {feather}")
    binary = (np.asarray(hard) > 0).astype(np.uint8)
    if feather == 0:
        return binary.astype(np.float32)
    inside = cv2.distanceTransform(binary, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ramp = np.clip(inside / np.float32(feather), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def hull_mask(mesh: np.ndarray, shape: tuple[int, int], feather: float = 0.0) -> Mask:
    """(height, width) float32 mask of the convex hull of ``mesh`` ((P, 2) pixels) in an image of
    ``shape`` = (height, width): 1 inside, 0 outside. ``feather`` > 0 px ramps it smoothly from 0 at the
    hull's edge to 1 at ``feather`` px inside, so it stays exactly 0 outside the hull."""
    points = np.asarray(mesh, np.float32).reshape(-1, 2)
    hard = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(hard, _fixed(cv2.convexHull(points)[:, 0]), 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return feather_inward(hard, feather)


def region_labels(mesh: np.ndarray, shape: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """(height, width) uint8 label map of the face regions: 0 outside the face oval, ``k + 1`` for
    ``REGIONS[k]``. Each pixel has one label, so the regions never overlap."""
    points = check_mesh(mesh)
    labels = np.zeros(shape, np.uint8)
    for name, outline in _REGION_OUTLINES.items():
        polygon = cv2.convexHull(points[list(NOSE)])[:, 0] if outline is None else points[list(outline)]
        cv2.fillPoly(labels, [_fixed(polygon)], REGIONS.index(name) + 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return labels


def region_mask(
    mesh: np.ndarray, shape: tuple[int, int], regions: Sequence[str], feather: float = 0.0
) -> Mask:
    """(height, width) float32 mask of the union of ``regions`` (names from :data:`REGIONS`) of ``mesh``
    ((468, 2) pixels), feathered inward by ``feather`` px as in :func:`hull_mask`."""
    unknown = [r for r in regions if r not in REGIONS]
    if unknown or not regions:
        raise InvalidOptionError(f"face mask regions must be some of {list(REGIONS)}, got {list(regions)}")
    labels = region_labels(mesh, shape)
    wanted = np.array([REGIONS.index(r) + 1 for r in regions], np.uint8)
    return feather_inward(np.isin(labels, wanted).astype(np.uint8), feather)


def five_point_from_mesh(mesh: np.ndarray) -> Landmarks5:
    """(5, 2) float32 ArcFace-order points from a (468, 2) mesh: image-left eye centre (the subject's
    right eye: mean of its contour), image-right eye centre, nose tip (point 1), image-left and
    image-right outer mouth corners (61, 291). Meant for an upright, unmirrored face, like the detectors'
    landmarks."""
    points = check_mesh(mesh)
    return np.stack(
        [
            points[list(RIGHT_EYE)].mean(axis=0),
            points[list(LEFT_EYE)].mean(axis=0),
            points[NOSE_TIP],
            points[MOUTH_CORNERS[0]],
            points[MOUTH_CORNERS[1]],
        ]
    ).astype(np.float32)
