import numpy as np
import pytest

from pipeline.errors import InvalidOptionError
from pipeline.options import SwapOptions
from pipeline.selection import cosine_distance, select_faces
from pipeline.types import Face


def test_defaults_and_string_parsing():
    opts = SwapOptions.from_mapping(
        {
            "blend_ratio": "0.5",
            "face_mask_padding": "1, 2, 3, 4",
            "frame_processors": '["face_swapper", "face_enhancer"]',
            "face_enhancer_blend": "60",
            "face_selector_mode": "many",
        }
    )
    assert opts.blend_ratio == 0.5 and opts.face_mask_padding == (1, 2, 3, 4)
    assert opts.enhance and opts.swap and opts.face_enhancer_blend == 60 and opts.face_selector_mode == "many"
    assert SwapOptions().frame_processors == ("face_swapper",)
    assert SwapOptions().with_enhance(True).enhance


@pytest.mark.parametrize(
    "values",
    [
        {"blend_ratio": "abc"},
        {"blend_ratio": "1.5"},
        {"blend_ratio": "nan"},
        {"face_mask_blur": -0.1},
        {"face_enhancer_blend": "50.5"},
        {"face_selector_mode": "all"},
        {"frame_processors": "face_swapper,lip_syncer"},
        {"frame_processors": "face_swapper,face_swapper"},
        {"face_mask_padding": "1,2"},
        {"detector_score": True},
        {"colour": "red"},
    ],
)
def test_bad_options_raise_a_typed_error(values):
    with pytest.raises(InvalidOptionError) as err:
        SwapOptions.from_mapping(values)
    assert err.value.status == 400


def _face(x: float, size: float, emb: list[float] | None = None) -> Face:
    bbox = np.array([x, 0, x + size, size], np.float32)
    e = None if emb is None else np.asarray(emb, np.float32) / np.linalg.norm(emb)
    return Face(bbox, np.zeros((5, 2), np.float32), 0.9, e)


def test_select_one_many_reference():
    small, big, mid = _face(0, 10, [1, 0]), _face(20, 50, [0, 1]), _face(80, 30, [1, 0.1])
    faces = [small, big, mid]
    assert select_faces(faces, "one") == [big]
    assert select_faces(faces, "many") == [big, mid, small]
    ref = np.array([1.0, 0.0], np.float32)
    assert select_faces(faces, "reference", ref, 0.1) == [small, mid]
    assert select_faces(faces, "reference", ref, 0.001) == [small]
    assert cosine_distance(ref, np.array([0, 1], np.float32)) == pytest.approx(1.0)
    with pytest.raises(InvalidOptionError):
        select_faces(faces, "reference", None)


def test_deeply_nested_json_is_a_typed_error():
    with pytest.raises(InvalidOptionError):
        SwapOptions.from_mapping({"frame_processors": "[" * 30000 + "]" * 30000})
