"""Face detectors: pure helpers, graph-contract checks on tiny hand-built ONNX graphs, and the real
SCRFD-500M / YuNet models on the real photos in ../shared/assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.canvas import CanvasSpec, faces_to_image, make_canvas, pad_canvas
from pipeline.errors import InvalidInputError, InvalidOptionError, ModelContractError
from pipeline.models.detectors import (
    ScrfdDetector,
    YunetDetector,
    distance2bbox,
    distance2kps,
    nms,
)
from pipeline.sessions import SessionConfig, create_session
from pipeline.types import Face

# YuNet (cv2.FaceDetectorYN, 0.6 / NMS 0.3) boxes x, y, w, h from ../shared/assets/README.md
README_BOXES: dict[str, list[tuple[int, int, int, int]]] = {
    "astronaut_eileen_collins_nasa.png": [(178, 62, 89, 113)],
    "pexels_woman_portrait_638700.jpeg": [(269, 358, 437, 528)],
    "pexels_man_santa_costume_716658.jpeg": [(691, 311, 299, 376)],
    "pexels_group_meeting_1080865.jpeg": [
        (165, 244, 130, 169),
        (312, 9, 117, 149),
        (950, 288, 148, 174),
        (625, 69, 121, 163),
        (979, 0, 97, 72),
    ],
    "codait_luciano_cc0.png": [(130, 45, 137, 189)],
    "paul_rudd_2009_ccbysa2.jpeg": [(99, 137, 258, 375)],
    "paul_rudd_cropped_ccbysa2.jpeg": [(106, 183, 293, 405)],
}
PORTRAIT = "pexels_woman_portrait_638700.jpeg"
PORTRAIT_EYES_X = (408.0, 599.0)  # README, YuNet on the full-size portrait


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x1, y1, x2, y2 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def xyxy(box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], np.float32)


def check_face(face: Face, image_shape: tuple[int, ...]) -> None:
    """Landmarks inside the box, image-left eye left of image-right eye, eyes above the mouth.

    A face cut by the image border (the group photo's top-edge face) may have landmarks outside the
    frame, so containment is checked only for boxes at least 3 px inside the image."""
    assert face.bbox.shape == (4,) and face.bbox.dtype == np.float32
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    x1, y1, x2, y2 = face.bbox
    assert x1 < x2 and y1 < y2
    lm = face.landmarks
    height, width = image_shape[:2]
    if x1 >= 3 and y1 >= 3 and x2 <= width - 3 and y2 <= height - 3:
        inside = (lm[:, 0] >= x1) & (lm[:, 0] <= x2) & (lm[:, 1] >= y1) & (lm[:, 1] <= y2)
        assert np.all(inside), (face.bbox, lm)
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert max(lm[0, 1], lm[1, 1]) < min(lm[3, 1], lm[4, 1])
    assert 0.0 <= face.score <= 1.0


# ---------------------------------------------------------------------------------------------- helpers
def test_canvas_of_a_wide_image_keeps_pixels_and_pads_at_the_bottom() -> None:
    image = np.full((50, 100, 3), (10, 20, 30), np.uint8)
    canvas, scale = make_canvas(image, CanvasSpec(64, 64, upscale=True))
    assert canvas.shape == (32, 64, 3) and canvas.dtype == np.uint8
    assert scale == pytest.approx(0.64)
    assert np.all(canvas == (10, 20, 30))
    padded = pad_canvas(canvas, 64, 64)
    assert padded.shape == (64, 64, 3) and np.array_equal(padded[:32], canvas) and not padded[32:].any()


def test_canvas_upscales_a_small_tall_image_only_when_asked() -> None:
    image = np.zeros((20, 10, 3), np.uint8)
    image[:, 5:] = 255  # right half white
    canvas, scale = make_canvas(image, CanvasSpec(96, 64, upscale=True))  # width 96, height 64
    assert canvas.shape == (64, 32, 3)
    assert scale == pytest.approx(3.2)
    assert not canvas[:, :14].any() and np.all(canvas[:, 18:30] == 255)
    same, one = make_canvas(image, CanvasSpec(96, 64, upscale=False))
    assert same is image and one == 1.0


def test_faces_on_a_canvas_map_back_to_image_pixels() -> None:
    face = Face(np.array([10, 20, 30, 40], np.float32), np.full((5, 2), 8, np.float32), 0.9)
    (back,) = faces_to_image([face], 0.25)
    assert np.array_equal(back.bbox, [40, 80, 120, 160]) and np.all(back.landmarks == 32)
    assert back.score == 0.9 and back.bbox.dtype == np.float32


@pytest.mark.parametrize("size", [(0, 64), (64, -1)])
def test_canvas_rejects_bad_size(size: tuple[int, int]) -> None:
    with pytest.raises(InvalidOptionError):
        CanvasSpec(*size, upscale=True)


def test_nms_hand_case() -> None:
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0: overlaps 1 with IoU 81/119 = 0.68
            [1, 1, 11, 11],  # 1: best
            [20, 20, 30, 30],  # 2: disjoint
            [0, 0, 10, 5],  # 3: IoU with 0 = 0.5, with 1 = 36/114 = 0.32
        ],
        np.float32,
    )
    scores = np.array([0.8, 0.9, 0.3, 0.7], np.float32)
    kept = nms(boxes, scores, 0.4)
    assert kept.tolist() == [1, 3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 3, 2]
    assert nms(boxes, scores, 0.2).tolist() == [1, 2]


def test_nms_empty() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.4).tolist() == []


def test_distance_decoders() -> None:
    points = np.array([[10, 20], [0, 0]], np.float32)
    boxes = distance2bbox(points, np.array([[1, 2, 3, 4], [5, 5, 5, 5]], np.float32))
    np.testing.assert_array_equal(boxes, [[9, 18, 13, 24], [-5, -5, 5, 5]])
    kps = distance2kps(points, np.arange(20, dtype=np.float32).reshape(2, 10))
    assert kps.shape == (2, 5, 2)
    np.testing.assert_array_equal(kps[0, 1], [12, 23])
    np.testing.assert_array_equal(kps[1, 4], [18, 19])


# ---------------------------------------------------------------------------------------------- tiny graphs
def constant_model(inputs_shape: list[int | str], outputs: list[tuple[str, np.ndarray]]) -> bytes:
    """An ONNX graph with one float input ``images`` whose outputs are the given constants (each plus
    0 * sum(input), so the input is used)."""
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
    ]
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    for name, value in outputs:
        initializers.append(numpy_helper.from_array(value.astype(np.float32), f"const_{name}"))
        nodes.append(helper.make_node("Add", [f"const_{name}", "nothing"], [name]))
    graph = helper.make_graph(
        nodes,
        "constants",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, inputs_shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)) for name, v in outputs],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session_of(model: bytes):
    return create_session(model, SessionConfig())


def test_wrong_output_names_raise_model_contract_error() -> None:
    model = constant_model(
        [1, 3, 64, 64], [("boxes", np.zeros((10, 4), np.float32)), ("scores", np.zeros((10, 1), np.float32))]
    )
    session = session_of(model)
    with pytest.raises(ModelContractError, match="9 outputs"):
        ScrfdDetector(session, input_size=(64, 64))
    with pytest.raises(ModelContractError, match="missing"):
        YunetDetector(session)


def test_wrong_channels_and_inputs_raise_model_contract_error() -> None:
    heads = [("score", 1), ("bbox", 4), ("kps", 8)]  # 4 keypoints: not a 5-landmark model
    outputs = [(f"{h}_{s}", np.zeros((1, 10, c), np.float32)) for h, c in heads for s in (8, 16, 32)]
    with pytest.raises(ModelContractError, match="kps_8"):
        ScrfdDetector(session_of(constant_model([1, 3, "h", "w"], outputs)))
    grey_input = constant_model([1, 1, "h", "w"], outputs)
    with pytest.raises(ModelContractError, match="input"):
        ScrfdDetector(session_of(grey_input))


def planted_scrfd_outputs(batch: bool) -> list[tuple[str, np.ndarray]]:
    """SCRFD heads for a 64x64 input with numeric names in InsightFace order. Planted: a 0.9 face at
    stride 16 (row 1, col 2, anchor 1; box [16, 8, 56, 48]), the same box at 0.7 from stride 8 (row 2,
    col 4, anchor 0; suppressed by NMS) and a 0.3 face at stride 32 (row 1, col 1, anchor 0; box
    [24, 24, 40, 40])."""
    counts = {8: 128, 16: 32, 32: 8}
    scores = {s: np.zeros((n, 1), np.float32) for s, n in counts.items()}
    bboxes = {s: np.zeros((n, 4), np.float32) for s, n in counts.items()}
    kps = {s: np.zeros((n, 10), np.float32) for s, n in counts.items()}
    scores[16][13] = 0.9
    bboxes[16][13] = (1.0, 0.5, 1.5, 2.0)
    kps[16][13] = (-0.5, 0.0, 0.5, 0.0, 0.0, 0.5, -0.4, 1.0, 0.4, 1.0)
    scores[8][40] = 0.7
    bboxes[8][40] = (2.0, 1.0, 3.0, 4.0)
    kps[8][40] = (-1.0, 0.0, 1.0, 0.0, 0.0, 1.0, -0.8, 2.0, 0.8, 2.0)
    scores[32][6] = 0.3
    bboxes[32][6] = (0.25, 0.25, 0.25, 0.25)
    kps[32][6] = (-0.1, -0.1, 0.1, -0.1, 0.0, 0.0, -0.1, 0.1, 0.1, 0.1)
    arrays = [d[s] for d in (scores, bboxes, kps) for s in (8, 16, 32)]
    return [(str(400 + i), a[None] if batch else a) for i, a in enumerate(arrays)]


@pytest.mark.parametrize("batch", [True, False], ids=["1xNxC", "NxC"])
def test_scrfd_numeric_outputs_decode_in_insightface_order(batch: bool) -> None:
    detector = ScrfdDetector(
        session_of(constant_model([1, 3, 64, 64], planted_scrfd_outputs(batch))), input_size=(64, 64)
    )
    image = np.zeros((128, 128, 3), np.uint8)  # letterbox scale 0.5: image = network / 0.5
    faces = detector.detect(image)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].bbox, [32, 16, 112, 96], atol=1e-4)
    expected_kps = (np.array([32, 16]) + np.array([[-8, 0], [8, 0], [0, 8], [-6.4, 16], [6.4, 16]])) * 2
    np.testing.assert_allclose(faces[0].landmarks, expected_kps, atol=1e-4)
    assert faces[0].score == pytest.approx(0.9)
    low = detector.detect(image, score_threshold=0.2)
    assert [round(f.score, 3) for f in low] == [0.9, 0.3]
    np.testing.assert_allclose(low[1].bbox, [48, 48, 80, 80], atol=1e-4)
    assert detector.detect(image, score_threshold=0.95) == []


def test_fixed_graph_input_size_mismatch_and_bad_options() -> None:
    session = session_of(constant_model([1, 3, 64, 64], planted_scrfd_outputs(True)))
    with pytest.raises(ModelContractError, match="fixed"):
        ScrfdDetector(session)  # default 640x640
    with pytest.raises(InvalidOptionError):
        ScrfdDetector(session, input_size=(60, 64))
    detector = ScrfdDetector(session, input_size=(64, 64))
    with pytest.raises(InvalidOptionError):
        detector.detect(np.zeros((8, 8, 3), np.uint8), score_threshold=1.5)
    with pytest.raises(InvalidInputError):
        detector.detect(np.zeros((8, 8), np.uint8))


# ---------------------------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def detectors(assets: Path) -> dict[str, object]:
    models = assets / "models"
    dynamic = create_session(models / "face_detection_yunet_2026may.onnx", SessionConfig())
    return {
        "scrfd": ScrfdDetector(create_session(models / "scrfd_500m_bnkps.onnx", SessionConfig())),
        "yunet": YunetDetector(dynamic),
        "yunet_2023mar": YunetDetector(
            create_session(models / "face_detection_yunet_2023mar.onnx", SessionConfig())
        ),
        "yunet_full": YunetDetector(dynamic, max_side=4096),
        "yunet_640_canvas": YunetDetector(dynamic, input_size=(640, 640)),
    }


@pytest.mark.assets
@pytest.mark.parametrize("kind", ["scrfd", "yunet", "yunet_2023mar", "yunet_full"])
@pytest.mark.parametrize("image_name", list(README_BOXES))
def test_real_detectors_match_readme(detectors, load_image, kind: str, image_name: str) -> None:
    image = load_image(image_name)
    faces = detectors[kind].detect(image)
    expected = README_BOXES[image_name]
    assert len(faces) == len(expected), [(f.score, f.bbox.tolist()) for f in faces]
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    for box in expected:
        assert max(iou(xyxy(box), f.bbox) for f in faces) > 0.5, box
    for face in faces:
        check_face(face, image.shape)


@pytest.mark.assets
@pytest.mark.parametrize(
    ("kind", "tolerance"), [("yunet_full", 1.5), ("yunet", 8.0), ("yunet_2023mar", 8.0), ("scrfd", 6.0)]
)
def test_portrait_eye_positions(detectors, load_image, kind: str, tolerance: float) -> None:
    (face,) = detectors[kind].detect(load_image(PORTRAIT))
    np.testing.assert_allclose(face.landmarks[:2, 0], PORTRAIT_EYES_X, atol=tolerance)


@pytest.mark.assets
def test_yunet_threshold_override_and_canvas_matches_fixed_model(detectors, load_image) -> None:
    image = load_image("pexels_group_meeting_1080865.jpeg")
    strict = detectors["yunet"].detect(image, score_threshold=0.9)
    assert 0 < len(strict) < 5 and all(f.score >= 0.9 for f in strict)
    fixed = detectors["yunet_2023mar"].detect(image)
    canvas = detectors["yunet_640_canvas"].detect(image)
    assert len(fixed) == len(canvas) == 5
    for a, b in zip(fixed, canvas, strict=True):
        np.testing.assert_allclose(a.bbox, b.bbox, atol=0.5)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.5)
