"""InsightFace inswapper_128: aligned 128x128 target crop + source ArcFace embedding -> swapped crop."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pipeline.errors import InvalidInputError, ModelContractError
from pipeline.models.onnx_io import batch_axis, check_crops, l2_normalise, run_batched
from pipeline.types import CropsBGR

EMAP_SHAPE = (512, 512)

_FLOAT_TYPES = MappingProxyType({"tensor(float)": np.float32, "tensor(float16)": np.float16})


def load_emap(model_path: Path | str) -> npt.NDArray[np.float32]:
    """(512, 512) float32 ``emap``: the LAST initializer of the inswapper graph (InsightFace layout).

    Reads the graph only (``load_external_data=False``); raises :class:`ModelContractError` when the
    file has no initializers or the last one is not (512, 512).
    """
    import onnx  # here, not at the top: it costs ~0.8 s CPU to import, and only inswapper files need it

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for unreadable files
        raise ModelContractError(f"{Path(model_path).name}: cannot read the ONNX graph: {exc}") from exc
    if not model.graph.initializer:
        raise ModelContractError(f"{Path(model_path).name}: the graph has no initializers, so no emap")
    last = model.graph.initializer[-1]
    emap = onnx.numpy_helper.to_array(last)
    if emap.shape != EMAP_SHAPE:
        raise ModelContractError(
            f"{Path(model_path).name}: last initializer {last.name!r} has shape {emap.shape}, "
            f"expected the {EMAP_SHAPE} emap"
        )
    return emap.astype(np.float32)


class InswapperSwapper:
    """Swapper protocol over an inswapper_128 ONNX session (injected) and its ``emap``.

    Graph contract: inputs ``target`` (N, 3, 128, 128) RGB float in [0, 1] and ``source`` (N, 512)
    latent, one output (N, 3, 128, 128) RGB in [0, 1]; float32 or float16 inputs; N dynamic (one call
    per batch) or fixed 1 (one call per crop). The identity of a source face is its (512,) ArcFace
    w600k_r50 embedding (the model was trained on those); the latent fed to the graph is
    ``normalize(normalize(embedding) @ emap)`` (InsightFace).
    """

    identity = "embedding"
    notice = None

    def __init__(
        self,
        session: ort.InferenceSession,
        emap: npt.NDArray[np.float32],
        *,
        name: str = "inswapper_128",
        template: str = "arcface_128",
        crop_size: int = 128,
    ) -> None:
        emap = np.asarray(emap, np.float32)
        if emap.shape != EMAP_SHAPE:
            raise ModelContractError(f"{name}: emap has shape {emap.shape}, expected {EMAP_SHAPE}")
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = session.get_outputs()
        if set(inputs) != {"target", "source"} or len(outputs) != 1:
            raise ModelContractError(
                f"{name}: expected inputs ['source', 'target'] and 1 output, the graph has "
                f"{sorted(inputs)} -> {[o.name for o in outputs]}"
            )
        crop_shape = [3, crop_size, crop_size]
        checks = (
            ("input 'target'", list(inputs["target"].shape), crop_shape),
            ("input 'source'", list(inputs["source"].shape), [EMAP_SHAPE[1]]),
            (f"output {outputs[0].name!r}", list(outputs[0].shape), crop_shape),
        )
        for what, shape, tail in checks:
            if len(shape) != len(tail) + 1 or shape[1:] != tail:
                raise ModelContractError(
                    f"{name}: {what} has shape {shape}, expected [N, {', '.join(map(str, tail))}]"
                )
        for key in ("target", "source"):
            if inputs[key].type not in _FLOAT_TYPES:
                raise ModelContractError(
                    f"{name}: input {key!r} is {inputs[key].type}, expected float32 or float16"
                )
        fixed = {batch_axis(inputs[k].shape[0], f"{name} input {k!r}") for k in ("target", "source")}
        self._fixed_batch = 1 if 1 in fixed else None
        self._target_dtype = _FLOAT_TYPES[inputs["target"].type]
        self._source_dtype = _FLOAT_TYPES[inputs["source"].type]
        self._output = outputs[0].name
        self._session = session
        self._emap = emap
        self.identity_dim = EMAP_SHAPE[0]
        """Length of the source embedding this swapper takes."""
        self.name = name
        self.template = template
        self.crop_size = crop_size

    def latent(self, embedding: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(512,) or (N, 512) embedding -> same-shape float32 latent, ``normalize(normalize(e) @ emap)``."""
        e = np.asarray(embedding, np.float32)
        if e.shape[-1] != EMAP_SHAPE[0] or e.ndim not in (1, 2):
            raise InvalidInputError(f"{self.name}: embedding must be (512,) or (N, 512), got {e.shape}")
        return l2_normalise(l2_normalise(e) @ self._emap)

    def swap_crops(self, crops: CropsBGR, identities: npt.NDArray[np.float32]) -> CropsBGR:
        """(N, 128, 128, 3) BGR uint8 target crops, (N, 512) float32 source embeddings -> (N, 128, 128, 3)
        BGR uint8 swapped crops."""
        s = self.crop_size
        check_crops(self.name, crops, s)
        if identities.shape != (len(crops), EMAP_SHAPE[0]):
            raise InvalidInputError(
                f"{self.name}: identities must be ({len(crops)}, {EMAP_SHAPE[0]}), got {identities.shape}"
            )
        if len(crops) == 0:
            return np.zeros((0, s, s, 3), np.uint8)
        rgb_nchw = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        target = np.ascontiguousarray(rgb_nchw, dtype=self._target_dtype)
        source = np.ascontiguousarray(self.latent(identities), dtype=self._source_dtype)
        out = run_batched(
            self._session, self._output, {"target": target, "source": source}, self._fixed_batch
        )
        rgb = np.clip(np.rint(out.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1)[..., ::-1])
