"""Plumbing shared by the ONNX model wrappers: batch-axis contract, crop checks, batched runs."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pipeline.errors import InvalidInputError, ModelContractError
from pipeline.types import CropsBGR


def batch_axis(dim: object, what: str) -> int | None:
    """Batch dimension of an ONNX graph input: ``None`` when dynamic, ``1`` when fixed to 1.

    Raises :class:`ModelContractError` for any other fixed size.
    """
    if not isinstance(dim, int):
        return None
    if dim != 1:
        raise ModelContractError(f"{what}: fixed batch axis {dim}, expected 1 or dynamic")
    return 1


def l2_normalise(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(N, D) float32 rows divided by their L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def check_crops(name: str, crops: CropsBGR, size: int) -> None:
    """Raise InvalidInputError unless ``crops`` is (N, size, size, 3) uint8."""
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
        raise InvalidInputError(
            f"{name}: crops must be (N, {size}, {size}, 3) uint8, got {crops.shape} {crops.dtype}"
        )


def run_batched(
    session: ort.InferenceSession, output: str, feeds: dict[str, np.ndarray], fixed_batch: int | None
) -> np.ndarray:
    """One session call over the whole batch, or one call per item when the graph's batch is fixed at 1."""
    if fixed_batch != 1:
        return session.run([output], feeds)[0]
    n = len(next(iter(feeds.values())))
    return np.concatenate(
        [session.run([output], {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(n)]
    )
