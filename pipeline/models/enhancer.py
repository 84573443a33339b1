"""GFPGAN 1.4 face restoration on aligned 512x512 FFHQ crops (``face_enhancer_blend`` is applied to the
whole frame by the orchestration, as FaceFusion does)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from pipeline.errors import ModelContractError
from pipeline.models.onnx_io import batch_axis, check_crops, run_batched
from pipeline.types import CropsBGR


class GfpganEnhancer:
    """Enhancer protocol over a GFPGAN-style ONNX session (injected).

    Graph contract: one input (N, 3, S, S) float32 RGB ``(x / 255 - 0.5) / 0.5`` with S ==
    ``crop_size`` (or dynamic), one output of the same shape in [-1, 1]; N dynamic (one call per
    batch) or fixed 1 (one call per crop).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        name: str = "gfpgan_1.4",
        template: str = "ffhq_512",
        crop_size: int = 512,
    ) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelContractError(
                f"{name}: expected 1 input and 1 output, the graph has "
                f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
            )
        for what, arg in (("input", inputs[0]), ("output", outputs[0])):
            shape = list(arg.shape)
            spatial_ok = all(not isinstance(d, int) or d == crop_size for d in shape[2:])
            if len(shape) != 4 or shape[1] != 3 or not spatial_ok:
                raise ModelContractError(
                    f"{name}: {what} {arg.name!r} has shape {shape}, "
                    f"expected [N, 3, {crop_size}, {crop_size}]"
                )
        if inputs[0].type != "tensor(float)":
            raise ModelContractError(
                f"{name}: input {inputs[0].name!r} is {inputs[0].type}, expected float32"
            )
        self._fixed_batch = batch_axis(inputs[0].shape[0], f"{name} input {inputs[0].name!r}")
        self._session = session
        self._input = inputs[0].name
        self._output = outputs[0].name
        self.name = name
        self.template = template
        self.crop_size = crop_size

    def enhance_crops(self, crops: CropsBGR) -> CropsBGR:
        """(N, S, S, 3) BGR uint8 crops aligned to ``template`` -> (N, S, S, 3) BGR uint8 restored."""
        s = self.crop_size
        check_crops(self.name, crops, s)
        if len(crops) == 0:
            return np.zeros((0, s, s, 3), np.uint8)
        x = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
        blob = np.ascontiguousarray((x / 255.0 - 0.5) / 0.5, dtype=np.float32)
        out = run_batched(self._session, self._output, {self._input: blob}, self._fixed_batch)
        y = (np.clip(out.astype(np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
        rgb = np.clip(np.rint(y), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1)[..., ::-1])
