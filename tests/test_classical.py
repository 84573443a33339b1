"""The classical enhancer on real faces aligned with real YuNet landmarks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.geometry import warp_face
from pipeline.models.classical import ClassicalEnhancer
from pipeline.types import Face, ImageBGR

TARGET = "pexels_woman_portrait_638700.jpeg"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * np.log10(255.0**2 / mse)


def blur(image: np.ndarray, sigma: float) -> ImageBGR:
    """Gaussian-blurred copy of a uint8 image: a soft, detail-poor crop for the enhancer."""
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma), np.uint8)


def laplacian_variance(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


# --- real faces ----------------------------------------------------------------------------


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
