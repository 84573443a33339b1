"""The in-process pipeline end to end: real photos, the lite profile and the project's test models."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InvalidOptionError, NoFaceError, UnsupportedOptionError
from pipeline.geometry import box_mask, face_region_mask
from pipeline.options import SwapOptions
from pipeline.profiles import PipelineConfig, build_pipeline

SOURCE = "astronaut_eileen_collins_nasa.png"
TARGET = "codait_luciano_cc0.png"


def _touched(pipeline, target, options) -> np.ndarray:
    """(H, W) bool: every pixel paste-back may write for the selected faces."""
    from pipeline.engine import crops_for

    faces = pipeline.target_faces(target, options)
    _, affines = crops_for(target, faces, pipeline.swapper.template, pipeline.swapper.crop_size)
    mask = box_mask(pipeline.swapper.crop_size, options.face_mask_blur, options.face_mask_padding)
    touched = np.zeros(target.shape[:2], bool)
    for affine in affines:
        touched |= face_region_mask(target.shape, affine, mask) > 0
    return touched


@pytest.fixture(scope="module")
def lite():
    return build_pipeline(PipelineConfig(profile="lite"))


def test_lite_profile_swaps_the_face_and_leaves_the_rest(lite, load_image):
    source, target = load_image(SOURCE), load_image(TARGET)
    options = SwapOptions()
    result = lite.swap(source, target, options)
    assert result.components["profile"] == "lite" and result.components["swapper"] == "classical"
    assert result.faces_swapped == 1
    touched = _touched(lite, target, options)
    diff = np.abs(result.image.astype(int) - target.astype(int)).sum(axis=2)
    assert (diff[~touched] == 0).all(), "pixels outside the face mask changed"
    assert diff[touched].mean() > 8, "the face region did not change"


def test_blend_ratio_zero_is_the_target(lite, load_image):
    target = load_image(TARGET)
    result = lite.swap(load_image(SOURCE), target, SwapOptions(blend_ratio=0.0))
    assert np.abs(result.image.astype(int) - target.astype(int)).max() <= 1


def test_lite_errors(lite, load_image):
    blank = np.full((240, 320, 3), 127, np.uint8)
    with pytest.raises(NoFaceError, match="source"):
        lite.swap(blank, load_image(TARGET))
    with pytest.raises(NoFaceError, match="target") as err:
        lite.swap(load_image(SOURCE), blank)
    assert err.value.status == 422
    with pytest.raises(UnsupportedOptionError):
        lite.swap(load_image(SOURCE), load_image(TARGET), SwapOptions(face_selector_mode="reference"))
    with pytest.raises(UnsupportedOptionError):
        lite.swap(load_image(SOURCE), load_image(TARGET), SwapOptions(face_enhance_model="gfpgan_1.4"))


def _custom(assets, test_models, swapper: str, enhancer: str = "gfpgan_identity"):
    return build_pipeline(
        PipelineConfig(
            overrides={
                "detector": str(assets / "models" / "face_detection_yunet_2026may.onnx"),
                "embedder": str(test_models["arcface"]),
                "swapper": str(test_models[swapper]),
                "enhancer": str(test_models[enhancer]),
            }
        )
    )


def test_identity_test_swapper_reproduces_the_target(assets, test_models, load_image):
    pipeline = _custom(assets, test_models, "inswapper_identity")
    assert pipeline.components["swapper"] != "classical"
    target = load_image(TARGET)
    options = SwapOptions()
    result = pipeline.swap(load_image(SOURCE), target, options)
    touched = _touched(pipeline, target, options)
    diff = np.abs(result.image.astype(int) - target.astype(int))
    assert (diff[~touched] == 0).all()
    assert diff[touched].mean() < 4.0  # resampling twice costs ~3 levels on real photos


def test_constant_test_swapper_changes_only_the_masked_face(assets, test_models, load_image):
    pipeline = _custom(assets, test_models, "inswapper_constant")
    target = load_image("pexels_group_meeting_1080865.jpeg")
    options = SwapOptions(face_selector_mode="many", face_mask_blur=0.0)
    result = pipeline.swap(load_image(SOURCE), target, options)
    assert result.faces_swapped == 5
    touched = _touched(pipeline, target, options)
    diff = np.abs(result.image.astype(int) - target.astype(int)).sum(axis=2)
    assert (diff[~touched] == 0).all()
    assert (diff[touched] > 0).mean() > 0.9


def test_reference_mode_picks_the_matching_person(assets, load_image):
    # the real MobileFaceNet embedder from the shared assets; the swapper falls back to classical
    pipeline = build_pipeline(
        PipelineConfig(
            overrides={
                "detector": str(assets / "models" / "face_detection_yunet_2026may.onnx"),
                "embedder": str(assets / "models" / "mobilefacenet_paddlex_128d.onnx"),
            },
            enhance=False,
        )
    )
    assert pipeline.components["swapper"] == "classical"
    group = load_image("pexels_group_meeting_1080865.jpeg")
    faces = pipeline.embed(group, pipeline.detect(group, SwapOptions()))
    chosen = faces[2]
    x1, y1, x2, y2 = (int(v) for v in chosen.bbox)
    pad = 60
    reference = group[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad].copy()
    options = SwapOptions(face_selector_mode="reference", reference_face_distance=0.3)
    selected = pipeline.target_faces(group, options, pipeline.reference_embedding(reference, options))
    assert len(selected) == 1
    assert np.abs(selected[0].bbox - chosen.bbox).max() < 3
    with pytest.raises(InvalidOptionError):
        pipeline.swap(load_image(SOURCE), group, options)


def test_enhancer_runs_after_the_swap(assets, test_models, load_image):
    pipeline = _custom(assets, test_models, "inswapper_identity", enhancer="gfpgan_sharpen")
    target = load_image(TARGET)
    plain = pipeline.swap(load_image(SOURCE), target, SwapOptions())
    enhanced = pipeline.swap(load_image(SOURCE), target, SwapOptions().with_enhance(True))
    diff = np.abs(enhanced.image.astype(int) - plain.image.astype(int))
    assert diff.max() > 0
    none = pipeline.swap(load_image(SOURCE), target, SwapOptions(face_enhancer_blend=0).with_enhance(True))
    assert np.abs(none.image.astype(int) - plain.image.astype(int)).max() <= 1
