"""MeshSwapper: pixels outside its mask untouched, the source's identity inside, deterministic; its
colour and mask helpers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.geometry import template_points, warp_face
from pipeline.models.detectors import YunetDetector
from pipeline.models.embedder import ArcFaceEmbedder
from pipeline.models.landmarker import FaceMeshLandmarker, packaged_model_path
from pipeline.models.mesh_swapper import MeshSwapper, largest_part, match_skin_tone, skin_like
from pipeline.sessions import SessionConfig, create_session
from tests.test_mesh import synthetic_mesh

S = 512


class FixedMeshLandmarker:
    """Landmarker stand-in: the synthetic mesh for targets, a squeezed copy for sources (every odd crop)."""

    name = "fixed"
    template = "ffhq_512"
    crop_size = 192

    def landmarks(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        base = synthetic_mesh(crops.shape[1])
        n = len(crops)
        meshes = np.stack([base if i < n // 2 else (base - 256) * [0.9, 1.0] + 256 for i in range(n)])
        return meshes.astype(np.float32), np.ones(n, np.float32)


def _textured(seed: int, tint: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((S, S, 3), tint, np.float32) + rng.normal(0, 12, (S, S, 3))
    return np.clip(cv2.GaussianBlur(base, (0, 0), 1.5), 0, 255).astype(np.uint8)


def test_outside_the_mask_the_target_is_untouched_byte_for_byte():
    swapper = MeshSwapper(FixedMeshLandmarker())  # type: ignore[arg-type]
    target = _textured(0, (120, 140, 190))[None]
    source = _textured(1, (60, 90, 150))[None]
    out, masks = swapper.swap_crops(target, source)
    assert out.shape == target.shape and out.dtype == np.uint8
    assert masks.shape == (1, S, S) and masks.dtype == np.float32
    assert 0.0 <= masks.min() and masks.max() == 1.0
    outside = masks[0] == 0
    assert np.array_equal(out[0][outside], target[0][outside])
    inside = masks[0] == 1
    assert inside.sum() > 0.1 * S * S and not np.array_equal(out[0][inside], target[0][inside])
    again, again_masks = swapper.swap_crops(target, source)
    assert np.array_equal(again, out) and np.array_equal(again_masks, masks)


def test_rejects_bad_inputs_and_options():
    swapper = MeshSwapper(FixedMeshLandmarker())  # type: ignore[arg-type]
    crops = np.zeros((1, S, S, 3), np.uint8)
    with pytest.raises(InvalidInputError):
        swapper.swap_crops(crops, np.zeros((2, S, S, 3), np.uint8))
    with pytest.raises(InvalidInputError):
        swapper.swap_crops(crops[:, :256, :256], crops[:, :256, :256])
    with pytest.raises(InvalidInputError):
        swapper.swap_crops(crops, crops.astype(np.float32))  # type: ignore[arg-type]
    out, masks = swapper.swap_crops(crops[:0], crops[:0])
    assert out.shape == (0, S, S, 3) and masks.shape == (0, S, S)
    with pytest.raises(InvalidOptionError):
        MeshSwapper(SimpleNamespace(name="x", template="arcface_128"))  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError):
        MeshSwapper(FixedMeshLandmarker(), shape_transfer=1.5)  # type: ignore[arg-type]


def test_skin_like_accepts_the_sample_colour_and_rejects_hair():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = (120, 150, 210)  # skin-ish BGR
    image[:, 20:] = (30, 45, 70)  # dark brown hair
    image[::2, :20, 2] += 6  # some spread in the skin
    sample = np.zeros((40, 40), bool)
    sample[:, :10] = True
    like = skin_like(image, sample)
    assert like[:, :20].all() and not like[:, 20:].any()


def test_match_skin_tone_moves_the_mean_without_amplifying_blemishes():
    rng = np.random.default_rng(3)
    target = np.clip(rng.normal((150, 160, 200), 2, (64, 64, 3)), 0, 255).astype(np.uint8)  # even skin
    source = np.clip(rng.normal((90, 110, 160), 8, (64, 64, 3)), 0, 255).astype(np.uint8)  # blotchy
    skin = np.ones((64, 64), bool)
    toned = match_skin_tone(source, target, skin, skin)
    lab = [
        cv2.cvtColor(im, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)
        for im in (toned, source, target)
    ]
    np.testing.assert_allclose(lab[0].mean(axis=0), lab[2].mean(axis=0), atol=1.5)
    assert (lab[0][:, 1:].std(axis=0) <= lab[1][:, 1:].std(axis=0) + 0.5).all()  # chroma spread not scaled up


def test_largest_part_keeps_the_biggest_blob_and_drops_specks():
    region = np.zeros((60, 60), bool)
    region[5:35, 5:35] = True
    region[40:50, 40:50] = True
    region[55, 55] = True
    kept = largest_part(region, 1)
    assert kept[10:30, 10:30].all() and not kept[40:].any()


@pytest.fixture(scope="module")
def real(assets: Path) -> SimpleNamespace:
    config = SessionConfig()
    models = assets / "models"
    embedder = ArcFaceEmbedder(
        create_session(models / "mobilefacenet_paddlex_128d.onnx", config),
        rgb=False,
        name="mobilefacenet_128d",
    )
    return SimpleNamespace(
        detector=YunetDetector(create_session(models / "face_detection_yunet_2026may.onnx", config)),
        embedder=embedder,
        swapper=MeshSwapper(FaceMeshLandmarker(create_session(packaged_model_path(), config))),
    )


def _crop(real: SimpleNamespace, image: np.ndarray) -> np.ndarray:
    face = max(real.detector.detect(image), key=lambda f: f.area)
    return warp_face(image, face.landmarks, "ffhq_512", S)[0]


def _identity(real: SimpleNamespace, crop: np.ndarray) -> np.ndarray:
    """Embedding of an ffhq_512 crop: its 5 template points are where the face's landmarks are."""
    aligned, _ = warp_face(
        crop, template_points("ffhq_512", S), real.embedder.template, real.embedder.crop_size
    )
    return real.embedder.embed_crops(aligned[None])[0]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("codait_luciano_cc0.png", "astronaut_eileen_collins_nasa.png"),
        ("pexels_woman_portrait_638700.jpeg", "paul_rudd_2009_ccbysa2.jpeg"),
    ],
)
def test_real_swap_takes_the_source_identity_inside_the_mask_only(real, load_image, source, target):
    target_crop, source_crop = _crop(real, load_image(target)), _crop(real, load_image(source))
    out, masks = real.swapper.swap_crops(target_crop[None], source_crop[None])
    outside = masks[0] == 0
    assert np.array_equal(out[0][outside], target_crop[outside])
    assert 0.15 < masks[0].mean() < 0.6
    src, tgt, res = (_identity(real, c) for c in (source_crop, target_crop, out[0]))
    assert float(res @ src) > float(tgt @ src) + 0.2
    assert float(res @ src) > float(res @ tgt)


def test_real_swap_is_deterministic_and_batch_independent(real, load_image):
    crops = np.stack(
        [_crop(real, load_image(n)) for n in ("codait_luciano_cc0.png", "pexels_woman_portrait_638700.jpeg")]
    )
    sources = crops[::-1].copy()
    batch, batch_masks = real.swapper.swap_crops(crops, sources)
    for i in range(2):
        one, one_mask = real.swapper.swap_crops(crops[i : i + 1], sources[i : i + 1])
        assert np.array_equal(one[0], batch[i]) and np.array_equal(one_mask[0], batch_masks[i])
