"""Golden geometry contract on every face the real YuNet finds in the shipped photos.

The alignment must equal an independent least-squares similarity, FaceFusion's own estimator call must
agree with it, and paste-back must write only inside FaceFusion's paste rectangle.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.geometry import (
    estimate_affine,
    fit_similarity,
    paste_area,
    paste_back,
    template_points,
    warp_face,
)
from pipeline.models.detectors import YunetDetector
from pipeline.sessions import SessionConfig, create_session
from pipeline.types import ImageBGR, Landmarks5

TEMPLATE_SIZES = [("arcface_112_v2", 112), ("arcface_128", 128), ("ffhq_512", 512)]


@pytest.fixture(scope="module")
def photo_faces(assets: Path) -> list[tuple[str, ImageBGR, list[Landmarks5]]]:
    """(name, image, landmarks of every face YuNet finds) for every shipped photo."""
    session = create_session(assets / "models" / "face_detection_yunet_2026may.onnx", SessionConfig())
    detector = YunetDetector(session)
    photos = []
    for path in sorted((assets / "images").iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None, path.name
        photos.append((path.name, image, [face.landmarks for face in detector.detect(image)]))
    assert len(photos) >= 7
    return photos


def _lstsq_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Independent reference: solve the 4-parameter linear system [a, b, tx, ty] with numpy.linalg.lstsq."""
    src = np.asarray(source, np.float64)
    n = len(src)
    system = np.zeros((2 * n, 4))
    system[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    system[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(system, np.asarray(target, np.float64).reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def _expected_rectangles(
    frame_shape: tuple[int, ...], size: int, affine: np.ndarray
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(rounded, floor/ceil) rectangles x1, y1, x2, y2 of the crop corners mapped into the frame, clipped."""
    inverse = np.linalg.inv(np.vstack([np.asarray(affine, np.float64), [0, 0, 1]]))
    corners = np.array([[0, 0, 1], [size, 0, 1], [size, size, 1], [0, size, 1]], np.float64) @ inverse.T
    h, w = frame_shape[:2]

    def clipped(low: np.ndarray, high: np.ndarray) -> tuple[int, ...]:
        return tuple(int(v) for v in np.clip(np.concatenate([low, high]), 0, [w, h, w, h]))

    xy = corners[:, :2]
    return (
        clipped(np.rint(xy).min(axis=0), np.rint(xy).max(axis=0)),
        clipped(np.floor(xy.min(axis=0)), np.ceil(xy.max(axis=0))),
    )


@pytest.mark.assets
@pytest.mark.parametrize(("template", "size"), TEMPLATE_SIZES)
def test_affine_equals_an_independent_least_squares_similarity(photo_faces, template: str, size: int) -> None:
    faces = 0
    for name, _, landmarks_list in photo_faces:
        assert landmarks_list, f"YuNet found no face in {name}"
        for landmarks in landmarks_list:
            faces += 1
            target = template_points(template, size)
            reference = _lstsq_similarity(landmarks, target)
            np.testing.assert_allclose(fit_similarity(landmarks, target), reference, rtol=0, atol=1e-6)
            # the public affine is that fit, float64 like FaceFusion's matrix
            affine = estimate_affine(landmarks, template, size)
            assert affine.dtype == np.float64 and affine.shape == (2, 3)
            np.testing.assert_allclose(affine, reference, rtol=0, atol=1e-6)
            # FaceFusion's call: RANSAC with a 100 px threshold keeps all 5 points and refines them by
            # Levenberg-Marquardt towards the same optimum (OpenCV 4.x: 1e-11; 5.0 stops up to 0.013
            # short). cv2.LMEDS, which this replaced, was up to 29 away on these photos.
            residuals = np.linalg.norm(landmarks @ reference[:, :2].T + reference[:, 2] - target, axis=1)
            assert residuals.max() < 100, (name, template, residuals)
            facefusion, inliers = cv2.estimateAffinePartial2D(
                landmarks, target, method=cv2.RANSAC, ransacReprojThreshold=100
            )
            assert inliers.all()
            np.testing.assert_allclose(facefusion, reference, rtol=0, atol=0.02)
    assert faces >= 11


@pytest.mark.assets
@pytest.mark.parametrize(("template", "size"), TEMPLATE_SIZES)
def test_paste_back_of_an_inverted_crop_stays_in_the_paste_rectangle(
    photo_faces, template: str, size: int
) -> None:
    for name, image, landmarks_list in photo_faces:
        for landmarks in landmarks_list:
            crop, affine = warp_face(image, landmarks, template, size)
            rounded, floor_ceil = _expected_rectangles(image.shape, size, affine)
            assert paste_area(image.shape, crop.shape, affine)[0] == rounded
            x1, y1, x2, y2 = rounded
            fx1, fy1, fx2, fy2 = floor_ceil
            assert fx1 <= x1 < x2 <= fx2 and fy1 <= y1 < y2 <= fy2
            out = paste_back(image, 255 - crop, affine, np.ones((size, size), np.float32))
            changed = (out != image).any(axis=-1)
            inside = np.zeros_like(changed)
            inside[y1:y2, x1:x2] = True
            assert not changed[~inside].any(), (name, template)
            # and it does fill the rectangle: the changed pixels reach within 3 px of each side
            ys, xs = np.nonzero(changed)
            assert xs.min() - x1 <= 3 and x2 - 1 - xs.max() <= 3, (name, template)
            assert ys.min() - y1 <= 3 and y2 - 1 - ys.max() <= 3, (name, template)


@pytest.mark.assets
def test_full_mask_paste_back_reproduces_the_frame_inside(photo_faces) -> None:
    """ffhq_512 crops sample these faces at 0.67-3.5x, so the round trip (warp, inverse warp) keeps the
    frame up to bilinear loss: under 60% of the error that a 1 px misplacement of the frame costs."""
    for name, image, landmarks_list in photo_faces:
        shifted = image.copy()
        shifted[:, 1:] = image[:, :-1]
        for landmarks in landmarks_list:
            crop, affine = warp_face(image, landmarks, "ffhq_512", 512)
            ones = np.ones((512, 512), np.float32)
            out = paste_back(image, crop, affine, ones)
            (x1, y1, x2, y2), _ = paste_area(image.shape, crop.shape, affine)
            # frame pixels whose sample lies inside the crop (2 px margin against the bilinear rim)
            ys, xs = np.mgrid[y1:y2, x1:x2]
            cx = affine[0, 0] * xs + affine[0, 1] * ys + affine[0, 2]
            cy = affine[1, 0] * xs + affine[1, 1] * ys + affine[1, 2]
            interior = (cx >= 2) & (cx <= 509) & (cy >= 2) & (cy <= 509)
            assert interior.sum() > 5000, name
            got = out[y1:y2, x1:x2][interior].astype(np.int16)
            error = np.abs(got - image[y1:y2, x1:x2][interior]).mean()
            misplaced = np.abs(got - shifted[y1:y2, x1:x2][interior]).mean()
            assert error < 0.6 * misplaced, (name, error, misplaced)
            assert error < 3.0, (name, error)
