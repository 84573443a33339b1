"""ArcFace-style identity embedder: aligned 112x112 crop -> L2-normalised embedding.

One class serves every single-input, single-output recognition model of this family, configured by
its constructor: InsightFace/FaceFusion ``arcface_w600k_r50`` (RGB, (x - 127.5) / 127.5, 512-d,
the defaults) and the PaddleX MobileFaceNet of the shared assets (BGR, same scaling, 128-d:
``rgb=False``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pipeline.errors import ModelContractError
from pipeline.models.onnx_io import batch_axis, check_crops, l2_normalise, run_batched
from pipeline.types import CropsBGR


class ArcFaceEmbedder:
    """Embedder protocol over an ONNX recognition model (session injected).

    Graph contract: one input (N, 3, S, S) float32 with S == ``crop_size`` (or dynamic), N dynamic
    or fixed 1 (then crops run one at a time); one output (N, D), D fixed.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        name: str = "arcface_w600k_r50",
        template: str = "arcface_112_v2",
        crop_size: int = 112,
        rgb: bool = True,
        mean: float = 127.5,
        std: float = 127.5,
    ) -> None:
        if std <= 0:
            raise ModelContractError(f"{name}: std must be positive, got {std}")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelContractError(
                f"{name}: expected 1 input and 1 output, the graph has "
                f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
            )
        shape, out_shape = list(inputs[0].shape), list(outputs[0].shape)
        spatial_ok = all(not isinstance(d, int) or d == crop_size for d in shape[2:])
        if len(shape) != 4 or shape[1] != 3 or not spatial_ok:
            raise ModelContractError(
                f"{name}: input {inputs[0].name!r} has shape {shape}, "
                f"expected [N, 3, {crop_size}, {crop_size}]"
            )
        if inputs[0].type != "tensor(float)":
            raise ModelContractError(
                f"{name}: input {inputs[0].name!r} is {inputs[0].type}, expected float32"
            )
        if len(out_shape) != 2 or not isinstance(out_shape[1], int) or out_shape[1] <= 0:
            raise ModelContractError(
                f"{name}: output {outputs[0].name!r} has shape {out_shape}, expected [N, D] with D fixed"
            )
        self._fixed_batch = batch_axis(shape[0], f"{name} input {inputs[0].name!r}")
        self._session = session
        self._input = inputs[0].name
        self._output = outputs[0].name
        self._rgb = rgb
        self._mean = np.float32(mean)
        self._std = np.float32(std)
        self.name = name
        self.template = template
        self.crop_size = crop_size
        self.dim: int = out_shape[1]
        """Embedding length D."""

    def _blob(self, crops: CropsBGR) -> npt.NDArray[np.float32]:
        """(N, S, S, 3) BGR uint8 -> (N, 3, S, S) float32 in the model's channel order and scaling."""
        ordered = crops[..., ::-1] if self._rgb else crops
        x = (ordered.astype(np.float32) - self._mean) / self._std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def embed_crops(self, crops: CropsBGR) -> npt.NDArray[np.float32]:
        """(N, S, S, 3) BGR uint8 crops aligned to ``template`` -> (N, D) float32 L2-normalised."""
        check_crops(self.name, crops, self.crop_size)
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        raw = run_batched(self._session, self._output, {self._input: self._blob(crops)}, self._fixed_batch)
        return l2_normalise(raw.astype(np.float32).reshape(len(crops), self.dim))
