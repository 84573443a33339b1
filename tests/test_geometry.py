import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.geometry import (
    blend,
    box_mask,
    estimate_affine,
    face_region_mask,
    fit_similarity,
    paste_area,
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
    # insightface's arcface_dst, to the 8 decimals FaceFusion keeps
    arcface_dst = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655]]
    arcface_dst.append([70.7299, 92.2041])
    np.testing.assert_allclose(a112, arcface_dst, atol=112 * 5e-9 + 1e-5)


def test_fit_similarity_is_the_least_squares_optimum_without_reflection():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 1000, (5, 2))
    angle, scale = 0.7, 0.31
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rotation.T + [12.0, -40.0] + rng.normal(0, 3.0, (5, 2))
    fit = fit_similarity(src, dst)
    assert fit.dtype == np.float64 and fit.shape == (2, 3)
    assert fit[0, 0] == fit[1, 1] and fit[0, 1] == -fit[1, 0]
    residual = ((src @ fit[:, :2].T + fit[:, 2] - dst) ** 2).sum()
    # any perturbation of the 4 parameters increases the squared error (it is the optimum)
    for delta in np.eye(4) * 1e-4:
        a, b, tx, ty = fit[0, 0] + delta[0], fit[1, 0] + delta[1], fit[0, 2] + delta[2], fit[1, 2] + delta[3]
        moved = np.array([[a, -b, tx], [b, a, ty]])
        assert ((src @ moved[:, :2].T + moved[:, 2] - dst) ** 2).sum() > residual
    # mirrored targets still give a rotation (positive determinant), never a reflection
    mirrored = fit_similarity(src, dst * [-1, 1])
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_estimate_affine_keeps_every_landmark_where_lmeds_dropped_one():
    landmarks, _ = _rotation_landmarks("arcface_112_v2", 112, angle=5.0, scale=2.0, shift=(50.0, 30.0))
    landmarks[3] += (9.0, -6.0)  # one mouth corner disagrees
    affine = estimate_affine(landmarks, "arcface_112_v2", 112)
    target = template_points("arcface_112_v2", 112)
    np.testing.assert_allclose(affine, fit_similarity(landmarks, target), atol=1e-4)
    residuals = np.linalg.norm(landmarks @ affine[:, :2].T + affine[:, 2] - target, axis=1)
    # the error is spread over all points, not left entirely on the disagreeing one
    assert residuals[3] < 4.0 and np.sort(residuals)[-2] > 0.5


def test_degenerate_landmarks_are_a_typed_error():
    with pytest.raises(InvalidOptionError):
        estimate_affine(np.full((5, 2), 7.0, np.float32), "arcface_128", 128)
    with pytest.raises(InvalidOptionError):
        nan_landmarks = np.array([[0, 0], [1, 0], [np.nan, 1], [0, 1], [1, 1]], np.float32)
        estimate_affine(nan_landmarks, "arcface_128", 128)


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


def _translation(dx: float, dy: float) -> np.ndarray:
    """Forward affine (frame -> crop) of a crop whose top-left corner sits at frame point (dx, dy)."""
    return np.array([[1, 0, -dx], [0, 1, -dy]], np.float32)


def test_paste_area_is_facefusions_rounded_corner_rectangle_clipped_to_the_frame():
    # corners (80.6, 60.4) .. (208.6, 188.4): FaceFusion rounds them (floor/ceil would be 80..209, 60..189)
    (box, matrix) = paste_area((300, 300, 3), (128, 128, 3), _translation(80.6, 60.4))
    assert box == (81, 60, 209, 188)
    np.testing.assert_allclose(matrix, [[1, 0, -0.4], [0, 1, 0.4]], atol=1e-4)
    assert paste_area((150, 100, 3), (128, 128, 3), _translation(-30.2, 70.0))[0] == (0, 70, 98, 150)
    assert paste_area((150, 100, 3), (128, 128, 3), _translation(500.0, 10.0))[0] == (100, 10, 100, 138)
    # a 45 degree turn at scale 1/2 about frame (200, 200): the corners lie 128 * sqrt(2) px from it
    turn = cv2.getRotationMatrix2D((200.0, 200.0), 45.0, 0.5)
    turn[:, 2] += 64 - 200
    low, high = int(np.rint(200 - 128 * np.sqrt(2))), int(np.rint(200 + 128 * np.sqrt(2)))
    assert paste_area((400, 400, 3), (128, 128, 3), turn.astype(np.float32))[0] == (low, low, high, high)


def test_paste_back_writes_only_inside_the_paste_area():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    affine = _translation(80.6, 60.4)
    out = paste_back(frame, np.full((128, 128, 3), 255, np.uint8), affine, np.ones((128, 128), np.float32))
    changed = (out != frame).any(axis=-1)
    inside = np.zeros_like(changed)
    inside[60:188, 81:209] = True
    assert not changed[~inside].any()
    assert changed[60:188, 81:209].mean() > 0.95
    # the old behaviour wrote the warped mask's bilinear rim one pixel beyond: row 188 and column 80 stay put
    assert (out[188] == frame[188]).all() and (out[:, 80] == frame[:, 80]).all()
    region = face_region_mask(frame.shape, affine, np.ones((128, 128), np.float32))
    assert region[~inside].max() == 0 and region[61:187, 82:208].min() == 1.0


def test_full_mask_paste_back_of_the_frames_own_crop_reproduces_it_exactly():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    ones = np.ones((128, 128), np.float32)
    for dx, dy in [(40, 30), (-50, 100), (170, -20)]:  # inside, off the left/bottom, off the right/top
        affine = _translation(dx, dy)
        crop = cv2.warpAffine(frame, affine, (128, 128), borderMode=cv2.BORDER_REPLICATE)
        painted = frame.copy()
        x1, y1, x2, y2 = paste_area(frame.shape, crop.shape, affine)[0]
        painted[y1:y2, x1:x2] = 0
        assert np.array_equal(paste_back(painted, crop, affine, ones), frame)
    # a quarter turn maps pixel centres onto pixel centres: exact too (x 52 and 180 lie on the crop's edge)
    turn = np.array([[0, 1, -20], [-1, 0, 180]], np.float32)
    crop = cv2.warpAffine(frame, turn, (128, 128))
    assert paste_area(frame.shape, crop.shape, turn)[0] == (52, 20, 180, 148)
    out = paste_back(np.zeros_like(frame), crop, turn, ones)
    assert np.array_equal(out[20:148, 53:180], frame[20:148, 53:180])


def test_paste_back_truncates_like_facefusion():
    frame = np.full((50, 50, 3), 100, np.uint8)
    affine = _translation(10, 10)
    half = np.full((20, 20), 0.5, np.float32)
    # 100 * 0.5 + 255 * 0.5 = 177.5 -> 177; 100 * 0.5 + 0.5 * 0.5 = 50.25 -> 50 (float crops are not rounded)
    assert (paste_back(frame, np.full((20, 20, 3), 255, np.uint8), affine, half)[15, 15] == 177).all()
    assert (paste_back(frame, np.full((20, 20, 3), 0.5, np.float32), affine, half)[15, 15] == 50).all()
    almost = np.full((20, 20, 3), 254.9, np.float32)
    assert (paste_back(frame, almost, affine, np.ones((20, 20), np.float32))[15, 15] == 254).all()
    with pytest.raises(InvalidInputError):
        paste_back(frame, np.zeros((20, 20, 3), np.uint8), affine, np.ones((21, 20), np.float32))


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


def test_box_mask_is_made_once_and_cannot_be_changed_by_a_caller():
    mask = box_mask(128, 0.3, [5, 0, 0, 0])
    assert box_mask(128, 0.3, (5.0, 0.0, 0.0, 0.0)) is mask
    with pytest.raises(ValueError):
        mask[0, 0] = 1.0


def test_blend_ratio_endpoints_and_midpoint():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 200, np.uint8)
    assert (blend(a, b, 1.0) == 200).all()
    assert (blend(a, b, 0.0) == 0).all()
    assert (blend(a, b, 0.25) == 50).all()
    # rounded to nearest (cv2.addWeighted on uint8), unlike paste-back's truncation
    assert (blend(a, b, 0.0049) == 1).all() and (blend(a, b, 0.0026) == 1).all()
    assert (blend(a, b, 0.0024) == 0).all()
    with pytest.raises(InvalidOptionError):
        blend(a, b, 1.2)
