"""MediaPipe Face Mesh (468 landmarks) on aligned face crops, run by ONNX Runtime.

The model ships with the package (``pipeline/assets/models/face_landmark_mediapipe.onnx``, Apache-2.0,
converted from the ``mediapipe==0.10.21`` wheel by ``scripts/convert_face_mesh.py``; see its NOTICE and
provenance JSON). It wants a 192x192 RGB crop in which the face's mesh spans about 1/1.5 of the side,
upright (MediaPipe crops 1.5x the mesh's bounding box, rotated so the eyes are level). The project's
``ffhq_512`` alignment, scaled to 192, gives that: on the shared photos the mesh's long side is 119-134 px
of 192 (MediaPipe: 128), its centre 5-15 px below the crop's centre; moving or scaling the crop by that
much changes the landmarks by about 1 px (mean), so no template of its own is needed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pipeline.errors import InvalidInputError, ModelContractError
from pipeline.mesh import MESH_POINTS
from pipeline.models.onnx_io import batch_axis
from pipeline.types import CropsBGR

MODEL_RESOURCE = "assets/models/face_landmark_mediapipe.onnx"
"""The converted model, inside the ``pipeline`` package."""
INPUT_SIZE = 192


def packaged_model_path() -> Path:
    """Filesystem path of the face-mesh model shipped inside the ``pipeline`` package."""
    return Path(str(resources.files("pipeline").joinpath(MODEL_RESOURCE)))


class FaceMeshLandmarker:
    """468-point face mesh of face crops aligned to ``template`` (ONNX session injected).

    Graph contract: one input (N, 192, 192, 3) float32 NHWC, RGB in [0, 1], N fixed at 1 or dynamic;
    two outputs, (N, 1, 1, 1404) float32 landmarks (468 x (x, y, z) in input pixels, MediaPipe's
    convention: the input spans [0, 192]) and (N, 1, 1, 1) float32 face-presence logit, told apart by
    their sizes. ``crop_size`` is the model's input side; ``landmarks`` accepts crops of any side
    aligned to ``template`` and resizes them.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        name: str = "face_landmark_mediapipe",
        template: str = "ffhq_512",
    ) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 2:
            raise ModelContractError(
                f"{name}: expected 1 input and 2 outputs, the graph has "
                f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
            )
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1:] != [INPUT_SIZE, INPUT_SIZE, 3]:
            raise ModelContractError(
                f"{name}: input {inputs[0].name!r} has shape {shape}, "
                f"expected [N, {INPUT_SIZE}, {INPUT_SIZE}, 3]"
            )
        if inputs[0].type != "tensor(float)":
            raise ModelContractError(
                f"{name}: input {inputs[0].name!r} is {inputs[0].type}, expected float32"
            )
        sizes = {}
        for output in outputs:
            tail = output.shape[1:]
            if not all(isinstance(d, int) for d in tail) or output.type != "tensor(float)":
                raise ModelContractError(
                    f"{name}: output {output.name!r} is {output.type} {output.shape}, expected float32 "
                    "with a fixed size per item"
                )
            sizes[int(np.prod(tail))] = output.name
        if set(sizes) != {MESH_POINTS * 3, 1}:
            raise ModelContractError(
                f"{name}: outputs {[o.name for o in outputs]} hold {sorted(sizes)} values per item, "
                f"expected {MESH_POINTS * 3} (landmarks) and 1 (face logit)"
            )
        self._fixed_batch = batch_axis(shape[0], f"{name} input {inputs[0].name!r}")
        self._session = session
        self._input = inputs[0].name
        self._mesh_output = sizes[MESH_POINTS * 3]
        self._score_output = sizes[1]
        self.name = name
        self.template = template
        self.crop_size = INPUT_SIZE
        self.points = MESH_POINTS

    def _blob(self, crops: CropsBGR) -> npt.NDArray[np.float32]:
        """(N, S, S, 3) uint8 BGR -> (N, 192, 192, 3) float32 RGB in [0, 1]."""
        size = crops.shape[1]
        interpolation = cv2.INTER_AREA if size > INPUT_SIZE else cv2.INTER_LINEAR
        resized = [
            crop
            if size == INPUT_SIZE
            else cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)
            for crop in crops
        ]
        return np.ascontiguousarray(np.stack(resized)[..., ::-1], dtype=np.float32) / np.float32(255.0)

    def landmarks(self, crops: CropsBGR) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(N, S, S, 3) uint8 BGR crops aligned to ``template`` (any side S) ->
        ((N, 468, 2) float32 (x, y) in crop pixels (OpenCV convention: pixel centres at integers),
        (N,) float32 face-presence probability in [0, 1])."""
        if (
            crops.ndim != 4
            or crops.shape[1] != crops.shape[2]
            or crops.shape[3] != 3
            or crops.dtype != np.uint8
        ):
            raise InvalidInputError(
                f"{self.name}: crops must be (N, S, S, 3) uint8, got {crops.shape} {crops.dtype}"
            )
        n, size = len(crops), crops.shape[1]
        if n == 0:
            return np.zeros((0, MESH_POINTS, 2), np.float32), np.zeros((0,), np.float32)
        blob = self._blob(crops)
        outputs = [self._mesh_output, self._score_output]
        if self._fixed_batch == 1:
            rows = [self._session.run(outputs, {self._input: blob[i : i + 1]}) for i in range(n)]
            raw_mesh = np.concatenate([r[0] for r in rows])
            raw_logit = np.concatenate([r[1] for r in rows])
        else:
            raw_mesh, raw_logit = self._session.run(outputs, {self._input: blob})
        mesh = raw_mesh.reshape(n, MESH_POINTS, 3)[..., :2].astype(np.float32)
        # MediaPipe's input spans [0, 192]; OpenCV puts pixel centres at integers, so shift by half a pixel.
        points = mesh * np.float32(size / INPUT_SIZE) - np.float32(0.5)
        logits = raw_logit.reshape(n).astype(np.float64)
        return points.astype(np.float32), (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
