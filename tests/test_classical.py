"""Classical swapper and enhancer: pure helpers on synthetic arrays, the models on real faces
with real YuNet landmarks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.geometry import template_points, warp_face
from pipeline.models.classical import (
    ClassicalEnhancer,
    ClassicalSwapper,
    face_ellipse_mask,
    reinhard_transfer,
)
from pipeline.types import Face, ImageBGR

SOURCE = "codait_luciano_cc0.png"
TARGET = "pexels_woman_portrait_638700.jpeg"
OTHER = "pexels_man_santa_costume_716658.jpeg"


def lab_of(image: ImageBGR) -> np.ndarray:
    """(H, W, 3) float32 LAB (L 0..100) of a uint8 BGR image."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)


def mean_abs(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64))[region].mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * np.log10(255.0**2 / mse)


def blur(image: np.ndarray, sigma: float) -> ImageBGR:
    """Gaussian-blurred copy of a uint8 image: a soft, detail-poor crop for the enhancer."""
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma), np.uint8)


def laplacian_variance(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


# --- pure helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("template,size", [("arcface_128", 128), ("arcface_112_v2", 112), ("ffhq_512", 512)])
def test_face_ellipse_mask_covers_the_inner_face_inside_the_crop(template: str, size: int) -> None:
    mask = face_ellipse_mask(size, template)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) == {0.0, 1.0}
    assert mask[size // 2, size // 2] == 1.0
    assert mask[0, 0] == mask[0, -1] == mask[-1, 0] == mask[-1, -1] == 0.0
    # strictly inside the crop: the outermost rows and columns are empty
    assert mask[0].sum() == mask[-1].sum() == mask[:, 0].sum() == mask[:, -1].sum() == 0.0
    points = np.rint(template_points(template, size)).astype(int)
    assert all(mask[y, x] == 1.0 for x, y in points)
    # reaches above the eyes (brows) and below the mouth (chin)
    rows = np.nonzero(mask.any(axis=1))[0]
    eye_y, mouth_y = points[:2, 1].mean(), points[3:, 1].mean()
    assert rows.min() < eye_y - 0.4 * (mouth_y - eye_y)
    assert rows.max() > mouth_y + (mouth_y - eye_y) * 0.4


def test_face_ellipse_mask_rejects_unknown_template() -> None:
    with pytest.raises(InvalidOptionError):
        face_ellipse_mask(128, "nope")


def test_reinhard_transfer_matches_reference_mean_and_std_inside_mask() -> None:
    rng = np.random.default_rng(0)
    size = 64
    mask = np.zeros((size, size), np.float32)
    mask[16:48, 16:48] = 1.0
    src = np.clip(rng.normal((90, 120, 150), (12, 10, 8), (size, size, 3)), 0, 255).astype(np.uint8)
    ref = np.clip(rng.normal((150, 110, 80), (6, 14, 10), (size, size, 3)), 0, 255).astype(np.uint8)
    ref_with_other_background = ref.copy()
    ref_with_other_background[mask == 0] = (0, 255, 0)

    out = reinhard_transfer(src, ref, mask)

    assert out.shape == src.shape and out.dtype == np.uint8
    inside = mask > 0
    out_lab, ref_lab, src_lab = lab_of(out)[inside], lab_of(ref)[inside], lab_of(src)[inside]
    np.testing.assert_allclose(out_lab.mean(0), ref_lab.mean(0), atol=0.5)
    np.testing.assert_allclose(out_lab.std(0), ref_lab.std(0), rtol=0.1, atol=0.3)
    assert np.abs(src_lab.mean(0) - ref_lab.mean(0)).max() > 10  # the transfer had work to do
    # statistics come only from the masked region: the reference's background does not matter
    np.testing.assert_array_equal(reinhard_transfer(src, ref_with_other_background, mask), out)


def test_reinhard_transfer_rejects_bad_inputs() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InvalidInputError):
        reinhard_transfer(image, np.zeros((8, 9, 3), np.uint8), np.ones((8, 8), np.float32))
    with pytest.raises(InvalidInputError):
        reinhard_transfer(image, image, np.ones((4, 4), np.float32))
    with pytest.raises(InvalidInputError):
        reinhard_transfer(image, image, np.zeros((8, 8), np.float32))


# --- swapper on real faces ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detect(assets: Path, load_image: Callable[[str], ImageBGR]) -> Callable[[str], tuple[ImageBGR, Face]]:
    """Best YuNet face (cv2.FaceDetectorYN, real model) of a real photo, as (image, Face)."""
    model = str(assets / "models" / "face_detection_yunet_2026may.onnx")

    def _detect(name: str) -> tuple[ImageBGR, Face]:
        image = load_image(name)
        h, w = image.shape[:2]
        detector = cv2.FaceDetectorYN.create(model, "", (w, h), 0.6, 0.3, 10)
        _, faces = detector.detect(image)
        assert faces is not None and len(faces), name
        row = faces[int(np.argmax(faces[:, 14]))]
        x, y, bw, bh = row[:4]
        bbox = np.array([x, y, x + bw, y + bh], np.float32)
        return image, Face(bbox, row[4:14].reshape(5, 2).astype(np.float32), float(row[14]))

    return _detect


@pytest.fixture(scope="module")
def pair(detect) -> tuple[np.ndarray, np.ndarray]:
    """(source identity (S,S,3) float32, target crop (S,S,3) uint8) for two different people, arcface_128."""
    swapper = ClassicalSwapper()
    source_image, source_face = detect(SOURCE)
    target_image, target_face = detect(TARGET)
    identity = swapper.encode_source(source_image, source_face)
    target_crop, _ = warp_face(target_image, target_face.landmarks, swapper.template, swapper.crop_size)
    return identity, target_crop


def test_encode_source_is_the_aligned_source_crop(detect) -> None:
    swapper = ClassicalSwapper()
    image, face = detect(SOURCE)
    identity = swapper.encode_source(image, face)
    assert identity.shape == (128, 128, 3) and identity.dtype == np.float32
    crop, _ = warp_face(image, face.landmarks, "arcface_128", 128)
    np.testing.assert_array_equal(identity, crop.astype(np.float32))


def test_recoloured_source_takes_the_target_skin_colour(pair) -> None:
    identity, target = pair
    source = identity.astype(np.uint8)
    mask = face_ellipse_mask(128, "arcface_128")
    inside = mask > 0
    recoloured = reinhard_transfer(source, target, mask)
    target_mean = lab_of(target)[inside].mean(0)
    assert np.abs(lab_of(source)[inside].mean(0) - target_mean).max() > 8  # different people, lighting
    np.testing.assert_allclose(lab_of(recoloured)[inside].mean(0), target_mean, atol=2.5)


@pytest.mark.parametrize("blending", ["feather", "poisson"])
def test_swap_carries_source_identity_and_keeps_outside_pixels(pair, blending: str) -> None:
    identity, target = pair
    swapper = ClassicalSwapper(blending=blending)
    out = swapper.swap_crops(target[None], identity[None])
    assert out.shape == (1, 128, 128, 3) and out.dtype == np.uint8
    swapped = out[0]

    mask = face_ellipse_mask(128, "arcface_128")
    recoloured = reinhard_transfer(identity.astype(np.uint8), target, mask)
    inner = cv2.erode(mask, np.ones((21, 21), np.uint8)) > 0
    to_source = mean_abs(swapped, recoloured, inner)
    to_target = mean_abs(swapped, target, inner)
    assert to_source < 0.5 * to_target, (to_source, to_target)
    np.testing.assert_array_equal(swapped[mask == 0], target[mask == 0])


def test_feather_alpha_is_zero_outside_and_one_in_the_middle() -> None:
    swapper = ClassicalSwapper(blending="feather")
    assert np.all(swapper.alpha[swapper.mask == 0] == 0.0)
    assert swapper.alpha[64, 64] == pytest.approx(1.0)
    assert 0.0 < swapper.alpha.min(initial=1.0, where=swapper.alpha > 0) < 0.5  # a soft edge


@pytest.mark.parametrize("blending", ["feather", "poisson"])
def test_swap_batch_equals_single_calls(detect, blending: str) -> None:
    swapper = ClassicalSwapper(blending=blending)
    names = [SOURCE, TARGET, OTHER]
    detected = [detect(name) for name in names]
    identities = np.stack([swapper.encode_source(image, face) for image, face in detected])
    crops = np.stack([warp_face(image, face.landmarks, "arcface_128", 128)[0] for image, face in detected])
    # each target gets the next person's face
    identities = np.roll(identities, 1, axis=0)
    batch = swapper.swap_crops(crops, identities)
    singles = np.concatenate([swapper.swap_crops(crops[i : i + 1], identities[i : i + 1]) for i in range(3)])
    np.testing.assert_array_equal(batch, singles)
    np.testing.assert_array_equal(swapper.swap_crops(crops, identities), batch)  # repeatable
    assert all(not np.array_equal(batch[i], crops[i]) for i in range(3))


def test_swapper_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidOptionError):
        ClassicalSwapper(blending="alpha")
    with pytest.raises(InvalidOptionError):
        ClassicalSwapper(template="nope")
    swapper = ClassicalSwapper()
    crops = np.zeros((2, 128, 128, 3), np.uint8)
    with pytest.raises(InvalidInputError):
        swapper.swap_crops(crops, np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(InvalidInputError):
        swapper.swap_crops(np.zeros((2, 64, 64, 3), np.uint8), np.zeros((2, 64, 64, 3), np.float32))


# --- enhancer -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ffhq_crop(detect) -> ImageBGR:
    image, face = detect(TARGET)
    crop, _ = warp_face(image, face.landmarks, "ffhq_512", 512)
    return crop


def test_enhancer_sharpens_a_blurred_crop_and_stays_close(ffhq_crop: np.ndarray) -> None:
    enhancer = ClassicalEnhancer()
    assert (enhancer.template, enhancer.crop_size) == ("ffhq_512", 512)
    blurred = blur(ffhq_crop, 2.0)
    out = enhancer.enhance_crops(blurred[None])
    assert out.shape == (1, 512, 512, 3) and out.dtype == np.uint8
    enhanced = out[0]
    assert not np.array_equal(enhanced, blurred)
    assert psnr(enhanced, blurred) > 25.0
    assert laplacian_variance(enhanced) > 1.5 * laplacian_variance(blurred)


def test_enhancer_is_deterministic_and_batch_equals_singles(ffhq_crop: np.ndarray) -> None:
    enhancer = ClassicalEnhancer(strength=0.8)
    crops = np.stack([ffhq_crop, blur(ffhq_crop, 1.5), ffhq_crop[:, ::-1].copy()])
    batch = enhancer.enhance_crops(crops)
    singles = np.concatenate([enhancer.enhance_crops(crops[i : i + 1]) for i in range(3)])
    np.testing.assert_array_equal(batch, singles)
    np.testing.assert_array_equal(enhancer.enhance_crops(crops), batch)


def test_enhancer_strength_scales_the_change(ffhq_crop: np.ndarray) -> None:
    blurred = blur(ffhq_crop, 2.0)[None]
    weak = ClassicalEnhancer(strength=0.2).enhance_crops(blurred)[0]
    strong = ClassicalEnhancer(strength=1.0).enhance_crops(blurred)[0]
    assert psnr(weak, blurred[0]) > psnr(strong, blurred[0])
    assert laplacian_variance(strong) > laplacian_variance(weak)


def test_enhancer_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidOptionError):
        ClassicalEnhancer(strength=0.0)
    with pytest.raises(InvalidOptionError):
        ClassicalEnhancer(strength=1.5)
    with pytest.raises(InvalidOptionError):
        ClassicalEnhancer(template="nope")
    with pytest.raises(InvalidInputError):
        ClassicalEnhancer().enhance_crops(np.zeros((1, 256, 256, 3), np.uint8))
