import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidOptionError
from pipeline.geometry import (
    blend,
    box_mask,
    estimate_affine,
    face_region_mask,
    paste_back,
    template_points,
    warp_face,
)


def _rotation_landmarks(template: str, size: int, angle: float, scale: float, shift: tuple[float, float]):
    pts = template_points(template, size)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += shift
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32), m


@pytest.mark.parametrize("template,size", [("arcface_112_v2", 112), ("arcface_128", 128), ("ffhq_512", 512)])
def test_estimate_affine_inverts_a_known_similarity(template, size):
    landmarks, forward = _rotation_landmarks(template, size, angle=17.0, scale=1.7, shift=(40.0, 25.0))
    affine = estimate_affine(landmarks, template, size)
    mapped = landmarks @ affine[:, :2].T + affine[:, 2]
    np.testing.assert_allclose(mapped, template_points(template, size), atol=1e-3)
    # composing the estimate with the known forward map gives the identity
    full = np.vstack([forward, [0, 0, 1]])
    np.testing.assert_allclose(affine @ full, [[1, 0, 0], [0, 1, 0]], atol=1e-3)


def test_arcface_128_template_is_shifted_arcface_112():
    a112 = template_points("arcface_112_v2", 112)
    a128 = template_points("arcface_128", 128)
    np.testing.assert_allclose(a128, a112 + [8, 0], atol=1e-4)


def test_unknown_template_is_a_typed_error():
    with pytest.raises(InvalidOptionError):
        template_points("nope", 112)


def test_warp_then_paste_back_round_trip_reproduces_the_frame():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (400, 360, 3), dtype=np.uint8), (0, 0), 3)
    landmarks, _ = _rotation_landmarks("arcface_128", 128, angle=-9.0, scale=1.4, shift=(110.0, 140.0))
    crop, affine = warp_face(frame, landmarks, "arcface_128", 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    mask = box_mask(128, 0.3)
    out = paste_back(frame, crop, affine, mask)
    region = face_region_mask(frame.shape, affine, mask) > 0.5
    diff = np.abs(out.astype(int) - frame.astype(int))
    assert region.sum() > 5000
    assert diff[region].mean() < 3.0
    assert (diff[~(face_region_mask(frame.shape, affine, mask) > 0)] == 0).all()


def test_paste_back_of_a_constant_crop_changes_only_the_masked_region():
    frame = np.full((300, 300, 3), 40, np.uint8)
    landmarks, _ = _rotation_landmarks("arcface_128", 128, angle=0.0, scale=1.0, shift=(80.0, 60.0))
    _, affine = warp_face(frame, landmarks, "arcface_128", 128)
    mask = box_mask(128, 0.0)
    out = paste_back(frame, np.full((128, 128, 3), 200, np.uint8), affine, mask)
    assert (out[:55, :] == 40).all() and (out[:, :75] == 40).all()
    assert (out[60 + 64, 80 + 64] == 200).all()


def test_box_mask_follows_facefusion_semantics():
    sharp = box_mask(128, 0.0)
    assert sharp[0].max() == 0 and sharp[:, 0].max() == 0 and sharp[1:-1, 1:-1].min() == 1
    padded = box_mask(100, 0.0, (10, 0, 20, 0))
    assert padded[:10].max() == 0 and padded[10:80, 5:95].min() == 1 and padded[80:].max() == 0
    blurred = box_mask(128, 0.3)
    assert blurred[64, 64] == pytest.approx(1.0, abs=1e-3)
    assert 0 < blurred[4, 64] < blurred[20, 64] <= 1.0
    with pytest.raises(InvalidOptionError):
        box_mask(128, 1.5)
    with pytest.raises(InvalidOptionError):
        box_mask(128, 0.3, (0, 0, 0))


def test_blend_ratio_endpoints_and_midpoint():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 200, np.uint8)
    assert (blend(a, b, 1.0) == 200).all()
    assert (blend(a, b, 0.0) == 0).all()
    assert (blend(a, b, 0.25) == 50).all()
    with pytest.raises(InvalidOptionError):
        blend(a, b, 1.2)
