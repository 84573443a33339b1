"""Face detectors with 5 landmarks: SCRFD (InsightFace) and YuNet (OpenCV Zoo).

Every detector implements :class:`pipeline.models.base.Detector`: ``detect(image)`` takes an
``ImageBGR`` and returns :class:`~pipeline.types.Face` objects in image pixels, best score first.
Landmark order is the ArcFace one: image-left eye, image-right eye, nose tip, image-left mouth corner,
image-right mouth corner.

The ONNX detectors get their ``onnxruntime.InferenceSession`` injected (built by
``pipeline.sessions.create_session``) and check the graph's inputs and outputs when constructed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pipeline.canvas import CanvasSpec, check_image, faces_to_image, make_canvas, pad_canvas
from pipeline.errors import InvalidOptionError, ModelContractError
from pipeline.types import Face, ImageBGR

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)

"""Feature-map strides shared by SCRFD and YuNet."""

FloatArray = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------------------------- helpers
def nms(boxes: FloatArray, scores: FloatArray, iou: float) -> npt.NDArray[np.int64]:
    """Greedy non-maximum suppression.

    ``boxes`` (N, 4) x1, y1, x2, y2; ``scores`` (N,). Keeps the best box, drops every other box whose
    IoU with it is > ``iou``, repeats. Returns the kept indices into ``boxes``, best score first.
    """
    corners = np.asarray(boxes, np.float64).reshape(-1, 4)
    ranking = np.asarray(scores, np.float64).reshape(-1)
    if corners.shape[0] != ranking.shape[0]:
        raise InvalidOptionError(f"nms: {corners.shape[0]} boxes but {ranking.shape[0]} scores")
    x1, y1, x2, y2 = corners.T
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-ranking, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0.0)
        inter_h = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0.0)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


def distance2bbox(points: FloatArray, distance: FloatArray) -> FloatArray:
    """Anchor centres (N, 2) x, y and (left, top, right, bottom) distances (N, 4), both in pixels,
    -> boxes (N, 4) float32 x1, y1, x2, y2."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    distance = np.asarray(distance, np.float32).reshape(-1, 4)
    return np.concatenate([points - distance[:, :2], points + distance[:, 2:]], axis=1)


def distance2kps(points: FloatArray, distance: FloatArray) -> FloatArray:
    """Anchor centres (N, 2) and keypoint offsets (N, 2K) x0, y0, x1, y1... in pixels
    -> keypoints (N, K, 2) float32."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    distance = np.asarray(distance, np.float32).reshape(points.shape[0], -1, 2)
    return points[:, None, :] + distance


def _grid_centres(rows: int, cols: int, stride: int, anchors: int) -> FloatArray:
    """(rows * cols * anchors, 2) float32 cell corners (col * stride, row * stride), row-major, each
    repeated ``anchors`` times in a row (the InsightFace/YuNet anchor order)."""
    ys, xs = np.mgrid[:rows, :cols]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, anchors, axis=0)


def _check_threshold(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InvalidOptionError(f"{what} must be in [0, 1], got {value}")
    return value


def _check_input_size(size: Sequence[int], who: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(v) != v or v <= 0 or v % 32 for v in size):
        raise InvalidOptionError(
            f"{who}: input_size must be (width, height), positive multiples of 32, got {size}"
        )
    return int(size[0]), int(size[1])


def _image_input(session: ort.InferenceSession, who: str) -> tuple[str, int | None, int | None]:
    """The single NCHW 3-channel image input: its name and fixed (height, width), None where dynamic."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelContractError(f"{who}: expected 1 image input, the graph has {[i.name for i in inputs]}")
    shape = list(inputs[0].shape)
    if (
        len(shape) != 4
        or (isinstance(shape[1], int) and shape[1] != 3)
        or (isinstance(shape[0], int) and shape[0] != 1)
    ):
        raise ModelContractError(
            f"{who}: input {inputs[0].name!r} should be (1, 3, H, W), the graph says {shape}"
        )
    if inputs[0].type != "tensor(float)":
        raise ModelContractError(
            f"{who}: input {inputs[0].name!r} should be float32, the graph says {inputs[0].type}"
        )
    height = shape[2] if isinstance(shape[2], int) else None
    width = shape[3] if isinstance(shape[3], int) else None
    return inputs[0].name, height, width


def _check_output_shape(who: str, name: str, shape: Sequence[object], channels: int) -> None:
    """A per-stride head output: (N, C) or (1, N, C); symbolic dims accepted."""
    ok = len(shape) in (2, 3)
    if ok and isinstance(shape[-1], int):
        ok = shape[-1] == channels
    if ok and len(shape) == 3 and isinstance(shape[0], int):
        ok = shape[0] == 1
    if not ok:
        raise ModelContractError(
            f"{who}: output {name!r} should be (N, {channels}) or (1, N, {channels}), got {list(shape)}"
        )


def _head(who: str, name: str, value: np.ndarray, count: int, channels: int) -> FloatArray:
    """A run-time head output as (count, channels) float32, batch dimension dropped."""
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (count, channels):
        raise ModelContractError(
            f"{who}: output {name!r} has shape {list(np.shape(value))}, expected ({count}, {channels})"
        )
    return array.astype(np.float32, copy=False)


def _faces(boxes: FloatArray, landmarks: FloatArray, scores: FloatArray, nms_iou: float) -> list[Face]:
    """NMS, best score first; canvas pixels (the network input is the canvas padded at the bottom/right)."""
    keep = nms(boxes, scores, nms_iou)
    return [
        Face(
            bbox=boxes[i].astype(np.float32),
            landmarks=landmarks[i].astype(np.float32),
            score=float(scores[i]),
        )
        for i in keep
    ]


def _pad32(canvas: ImageBGR) -> ImageBGR:
    """``canvas`` zero-padded at the bottom/right to multiples of 32 (a dynamic-size network's input)."""
    h, w = canvas.shape[:2]
    return pad_canvas(canvas, -(-w // 32) * 32, -(-h // 32) * 32)


class CanvasDetector:
    """Base of the detectors: ``canvas`` says how an image is shrunk for the network
    (:func:`pipeline.canvas.make_canvas`); ``detect_canvas`` finds faces on such a canvas (canvas pixels);
    ``detect`` does both for a whole image (image pixels)."""

    name: str
    canvas: CanvasSpec
    score_threshold: float

    def detect_canvas(self, canvas: ImageBGR, score_threshold: float | None = None) -> list[Face]:
        """Faces on ``canvas`` (h, w, 3) uint8 BGR fitting :attr:`canvas`, canvas pixels, best score first."""
        raise NotImplementedError

    def detect(self, image: ImageBGR, score_threshold: float | None = None) -> list[Face]:
        """Faces in ``image`` (H, W, 3) uint8 BGR, image pixels, best score first."""
        canvas, scale = make_canvas(image, self.canvas)
        return faces_to_image(self.detect_canvas(canvas, score_threshold), scale)

    def _threshold(self, score_threshold: float | None) -> float:
        return self.score_threshold if score_threshold is None else _check_threshold(score_threshold, "score")


# ---------------------------------------------------------------------------------------------- SCRFD
_SCRFD_HEADS = (("score", 1), ("bbox", 4), ("kps", 10))


class ScrfdDetector(CanvasDetector):
    """InsightFace SCRFD / RetinaFace-family detector with 5 keypoints (``scrfd_*_bnkps``, ``det_*``).

    Network input: RGB, ``(x - 127.5) / 128``, NCHW float32, the image letterboxed at the top-left into
    ``input_size`` = (width, height), both multiples of 32 (canvas: that box, small images enlarged).
    Outputs per stride 8/16/32 with 2 anchors per
    cell: sigmoid scores (N, 1), (l, t, r, b) box distances (N, 4) and keypoint offsets (N, 10), in
    stride units, optionally with a leading batch dimension of 1. Outputs named ``score_<s>``,
    ``bbox_<s>``, ``kps_<s>`` are mapped by name; other names (FaceFusion's numeric exports) by the
    InsightFace order: 3 scores, 3 boxes, 3 keypoint sets, strides ascending.
    """

    anchors_per_cell = 2

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        name: str = "scrfd",
    ) -> None:
        self.name = name
        self.session = session
        self.input_size = _check_input_size(input_size, name)
        self.canvas = CanvasSpec(*self.input_size, upscale=True)
        self.score_threshold = _check_threshold(score_threshold, "score_threshold")
        self.nms_threshold = _check_threshold(nms_threshold, "nms_threshold")
        self.input_name, fixed_h, fixed_w = _image_input(session, name)
        if (fixed_w is not None and fixed_w != self.input_size[0]) or (
            fixed_h is not None and fixed_h != self.input_size[1]
        ):
            raise ModelContractError(
                f"{name}: the graph's input is fixed at {fixed_w}x{fixed_h} but input_size is "
                f"{self.input_size[0]}x{self.input_size[1]}"
            )
        self.output_names = self._map_outputs(session)

    def _map_outputs(self, session: ort.InferenceSession) -> dict[tuple[str, int], str]:
        """(head, stride) -> output name, checking count and channel dims."""
        outputs = session.get_outputs()
        names = [o.name for o in outputs]
        if len(outputs) != 9:
            raise ModelContractError(
                f"{self.name}: expected 9 outputs (score/bbox/kps x strides 8, 16, 32; a 5-keypoint model), "
                f"the graph has {len(outputs)}: {names}"
            )
        wanted = [f"{head}_{stride}" for head, _ in _SCRFD_HEADS for stride in STRIDES]
        named = any(n.split("_")[0] in {"score", "bbox", "kps"} for n in names)
        if named and set(names) != set(wanted):
            raise ModelContractError(f"{self.name}: expected outputs {wanted}, the graph has {names}")
        shapes = {o.name: o.shape for o in outputs}
        mapping: dict[tuple[str, int], str] = {}
        for h, (head, channels) in enumerate(_SCRFD_HEADS):
            for s, stride in enumerate(STRIDES):
                out_name = f"{head}_{stride}" if named else names[h * len(STRIDES) + s]
                _check_output_shape(self.name, out_name, shapes[out_name], channels)
                mapping[(head, stride)] = out_name
        if not named:
            log.info("%s: numeric output names, mapped in InsightFace order: %s", self.name, names)
        return mapping

    def detect_canvas(self, canvas: ImageBGR, score_threshold: float | None = None) -> list[Face]:
        threshold = self._threshold(score_threshold)
        check_image(canvas)
        padded = pad_canvas(canvas, *self.input_size)
        rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
        blob = ((rgb.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        order = list(self.output_names.values())
        values = dict(zip(order, self.session.run(order, {self.input_name: blob}), strict=True))
        width, height = self.input_size
        boxes, landmarks, scores = [], [], []
        for stride in STRIDES:
            rows, cols = height // stride, width // stride
            count = rows * cols * self.anchors_per_cell
            heads = {
                head: _head(
                    self.name,
                    self.output_names[(head, stride)],
                    values[self.output_names[(head, stride)]],
                    count,
                    channels,
                )
                for head, channels in _SCRFD_HEADS
            }
            score = heads["score"][:, 0]
            keep = np.flatnonzero(score >= threshold)
            if keep.size == 0:
                continue
            centres = _grid_centres(rows, cols, stride, self.anchors_per_cell)[keep]
            boxes.append(distance2bbox(centres, heads["bbox"][keep] * stride))
            landmarks.append(distance2kps(centres, heads["kps"][keep] * stride))
            scores.append(score[keep])
        if not scores:
            return []
        return _faces(
            np.concatenate(boxes),
            np.concatenate(landmarks),
            np.concatenate(scores),
            self.nms_threshold,
        )


# ---------------------------------------------------------------------------------------------- YuNet
_YUNET_HEADS = (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))


class YunetDetector(CanvasDetector):
    """OpenCV Zoo YuNet through ONNX Runtime (not ``cv2.FaceDetectorYN``).

    Network input: BGR float32 with raw 0..255 values, NCHW, height and width multiples of 32. Outputs
    ``cls_<s>``, ``obj_<s>`` (N, 1), ``bbox_<s>`` (N, 4), ``kps_<s>`` (N, 10) for strides 8/16/32, one
    anchor per cell, optionally with a leading batch dimension of 1. Decoding: score =
    sqrt(clip(cls) * clip(obj)); box centre ``(col + dx, row + dy) * s``, size ``exp(dw, dh) * s``;
    landmark ``(col + kx, row + ky) * s``.

    Sizing: a fixed-size graph (the 2023mar file, 640x640) gets the image letterboxed into its size. A
    dynamic graph (2026may) gets the image downscaled so its long side is at most ``max_side`` (YuNet is
    trained on faces of about 10-300 px) and zero-padded at the bottom/right to multiples of 32, or,
    when ``input_size`` = (width, height) is given, letterboxed into that size. ``max_side`` only
    applies without a letterbox canvas (the canvas bounds the size itself).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        input_size: tuple[int, int] | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int = 640,
        name: str = "yunet",
    ) -> None:
        self.name = name
        self.session = session
        self.score_threshold = _check_threshold(score_threshold, "score_threshold")
        self.nms_threshold = _check_threshold(nms_threshold, "nms_threshold")
        if int(max_side) != max_side or max_side < 32:
            raise InvalidOptionError(f"{name}: max_side must be an integer >= 32, got {max_side}")
        self.max_side = int(max_side)
        self.input_name, fixed_h, fixed_w = _image_input(session, name)
        if (fixed_h is None) != (fixed_w is None):
            raise ModelContractError(f"{name}: input height and width must both be fixed or both dynamic")
        self.input_size: tuple[int, int] | None
        if fixed_h is not None and fixed_w is not None:
            if fixed_w % 32 or fixed_h % 32:
                raise ModelContractError(f"{name}: fixed input {fixed_w}x{fixed_h} is not a multiple of 32")
            fixed = (fixed_w, fixed_h)
            if input_size is not None and tuple(input_size) != fixed:
                raise ModelContractError(
                    f"{name}: the graph's input is fixed at {fixed_w}x{fixed_h}, "
                    f"but input_size is {tuple(input_size)}"
                )
            self.input_size = fixed
        else:
            self.input_size = None if input_size is None else _check_input_size(input_size, name)
        self.canvas = (
            CanvasSpec(self.max_side, self.max_side, upscale=False)
            if self.input_size is None
            else CanvasSpec(*self.input_size, upscale=True)
        )
        outputs = {o.name: o.shape for o in session.get_outputs()}
        wanted = [f"{head}_{stride}" for head, _ in _YUNET_HEADS for stride in STRIDES]
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise ModelContractError(f"{name}: outputs {missing} missing, the graph has {list(outputs)}")
        for head, channels in _YUNET_HEADS:
            for stride in STRIDES:
                _check_output_shape(name, f"{head}_{stride}", outputs[f"{head}_{stride}"], channels)
        self.output_names = wanted

    def detect_canvas(self, canvas: ImageBGR, score_threshold: float | None = None) -> list[Face]:
        threshold = self._threshold(score_threshold)
        check_image(canvas)
        padded = _pad32(canvas) if self.input_size is None else pad_canvas(canvas, *self.input_size)
        blob = padded.astype(np.float32).transpose(2, 0, 1)[None]
        values = dict(
            zip(self.output_names, self.session.run(self.output_names, {self.input_name: blob}), strict=True)
        )
        height, width = padded.shape[:2]
        boxes, landmarks, scores = [], [], []
        for stride in STRIDES:
            rows, cols = height // stride, width // stride
            heads = {
                head: _head(self.name, f"{head}_{stride}", values[f"{head}_{stride}"], rows * cols, channels)
                for head, channels in _YUNET_HEADS
            }
            score = np.sqrt(np.clip(heads["cls"][:, 0], 0, 1) * np.clip(heads["obj"][:, 0], 0, 1))
            keep = np.flatnonzero(score >= threshold)
            if keep.size == 0:
                continue
            cells = _grid_centres(rows, cols, 1, 1)[keep]
            bbox = heads["bbox"][keep]
            centre = (cells + bbox[:, :2]) * stride
            half = np.exp(bbox[:, 2:]) * stride / 2.0
            boxes.append(np.concatenate([centre - half, centre + half], axis=1))
            landmarks.append((cells[:, None, :] + heads["kps"][keep].reshape(-1, 5, 2)) * stride)
            scores.append(score[keep])
        if not scores:
            return []
        return _faces(
            np.concatenate(boxes).astype(np.float32),
            np.concatenate(landmarks).astype(np.float32),
            np.concatenate(scores).astype(np.float32),
            self.nms_threshold,
        )


__all__ = [
    "STRIDES",
    "ScrfdDetector",
    "YunetDetector",
    "distance2bbox",
    "distance2kps",
    "CanvasDetector",
    "nms",
]
