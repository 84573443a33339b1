"""Tiny TEST models with the exact I/O contracts of the real face models.

The real models (inswapper_128, arcface_w600k_r50, gfpgan_1.4, SCRFD) cannot be downloaded in CI, so
the project tests its wrappers, its batching and its serving graph against these generated files.
They are *test models*: their outputs are simple, deterministic functions of their inputs, chosen so
that tests can predict the result exactly. Never mistake them for real ones (their file names start
with ``test_``).

Contracts reproduced (names, layout, dtype float32; the batch axis is the dynamic ``batch`` so that
serving can batch, where the real files mostly fix it to 1):

- inswapper_128: inputs ``target`` [batch, 3, 128, 128] RGB in [0, 1] and ``source`` [batch, 512]
  latent, output ``output`` [batch, 3, 128, 128] RGB in [0, 1]; the graph's LAST initializer is the
  (512, 512) float32 ``emap`` (here a seeded random orthogonal matrix), unused by the graph, exactly
  as in InsightFace's file.
- arcface_w600k_r50: input ``input.1`` [batch, 3, 112, 112] RGB (x - 127.5) / 127.5, output ``683``
  [batch, 512] (not normalised). These are the node names of InsightFace's buffalo_l
  ``w600k_r50.onnx`` as remembered, which FaceFusion ships as ``arcface_w600k_r50.onnx``; they could
  not be checked against the file here. The wrapper does not depend on them.
- gfpgan_1.4: input ``input`` [batch, 3, 512, 512] RGB in [-1, 1], output ``output`` same shape in
  [-1, 1].
- SCRFD (as ``scrfd_500m_bnkps.onnx`` in the shared assets): input ``input.1`` [batch, 3, height,
  width], outputs ``score_{8,16,32}`` [batch, anchors, 1], ``bbox_*`` [batch, anchors, 4],
  ``kps_*`` [batch, anchors, 10], anchors = 2 * (height / stride) * (width / stride).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 8
"""IR 8 / opset 17 load in every onnxruntime >= 1.14, including the GPU machine's builds."""

TEST_MODEL_NAMES = (
    "inswapper_identity",
    "inswapper_constant",
    "inswapper_tint",
    "arcface",
    "gfpgan_identity",
    "gfpgan_sharpen",
    "scrfd",
)

CONSTANT_SWAP_RGB = (0.2, 0.6, 0.9)
"""Output colour of ``inswapper_constant``, RGB in [0, 1]; as BGR uint8: (230, 153, 51)."""

SCRFD_TEST_STRIDE = 16
SCRFD_TEST_CELL = (12, 20)
"""(row, col) of the one stride-16 grid cell (its first anchor) that ``scrfd`` scores high: anchor
centre (320, 192) in input-tensor pixels. Inputs narrower than 336 or lower than 208 px hold no face."""
SCRFD_TEST_SCORE = 0.95
SCRFD_TEST_BOX = (256.0, 112.0, 384.0, 288.0)
"""x1, y1, x2, y2 of the ``scrfd`` test face in input-tensor pixels (128 x 176)."""
SCRFD_TEST_KPS = ((292.0, 180.0), (348.0, 180.0), (320.0, 212.0), (296.0, 248.0), (344.0, 248.0))
"""(5, 2) x, y landmarks of the ``scrfd`` test face in input-tensor pixels."""

_SCRFD_BACKGROUND_SCORE = 0.01


def _f32(name: str, array: np.ndarray | Sequence[float] | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def _i64(name: str, array: Sequence[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.int64), name)


def _model(
    graph_name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, graph_name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="faceswap-serve pipeline.testmodels",
        doc_string=f"TEST model {graph_name}: not a real face model.",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def build_inswapper(variant: str, *, batch: int | str = "batch") -> onnx.ModelProto:
    """inswapper_128 test model; ``variant`` is ``identity``, ``constant`` or ``tint``.

    identity: output = target (source still consumed, times 0). constant: output =
    :data:`CONSTANT_SWAP_RGB` everywhere. tint: output = 0.5 * target + 0.5 * sigmoid(source @ W)
    per RGB channel, W a seeded (512, 3) matrix, so the swapped colour depends on the identity.
    ``batch``: the batch axis, a dim name (dynamic) or 1 (fixed, like the real file).
    """
    if variant not in ("identity", "constant", "tint"):
        raise ValueError(f"unknown inswapper test variant {variant!r}")
    rng = np.random.default_rng(128)
    emap = _orthogonal(rng, 512)
    inputs = [
        helper.make_tensor_value_info("target", TensorProto.FLOAT, [batch, 3, 128, 128]),
        helper.make_tensor_value_info("source", TensorProto.FLOAT, [batch, 512]),
    ]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, 128, 128])]
    initializers = [_f32("zero", 0.0), _i64("axis_1", [1]), _i64("axes_2_3", [2, 3])]
    # (batch, 1, 1, 1) zeros that depend on `source`: every variant consumes both inputs.
    nodes = [
        helper.make_node("ReduceSum", ["source", "axis_1"], ["source_sum"], keepdims=1),
        helper.make_node("Unsqueeze", ["source_sum", "axes_2_3"], ["source_sum_4d"]),
        helper.make_node("Mul", ["source_sum_4d", "zero"], ["source_zero"]),
    ]
    if variant == "identity":
        nodes.append(helper.make_node("Add", ["target", "source_zero"], ["output"]))
    elif variant == "constant":
        initializers += [
            _f32("colour", np.reshape(CONSTANT_SWAP_RGB, (1, 3, 1, 1))),
            _f32("lo", 0.0),
            _f32("hi", 1.0),
        ]
        nodes += [
            helper.make_node("Mul", ["target", "zero"], ["target_zero"]),
            helper.make_node("Add", ["target_zero", "colour"], ["coloured"]),
            helper.make_node("Add", ["coloured", "source_zero"], ["unclipped"]),
            helper.make_node("Clip", ["unclipped", "lo", "hi"], ["output"]),
        ]
    else:
        tint = (2.0 * rng.standard_normal((512, 3))).astype(np.float32)
        initializers += [_f32("tint_w", tint), _f32("half", 0.5)]
        nodes += [
            helper.make_node("MatMul", ["source", "tint_w"], ["tint_logits"]),
            helper.make_node("Sigmoid", ["tint_logits"], ["tint_rgb"]),
            helper.make_node("Unsqueeze", ["tint_rgb", "axes_2_3"], ["tint_4d"]),
            helper.make_node("Add", ["target", "tint_4d"], ["tinted_sum"]),
            helper.make_node("Mul", ["tinted_sum", "half"], ["output"]),
        ]
    initializers.append(_f32("emap", emap))  # LAST initializer, as in InsightFace's inswapper_128.onnx
    return _model(f"test_inswapper_{variant}", nodes, inputs, outputs, initializers)


def build_arcface(*, batch: int | str = "batch") -> onnx.ModelProto:
    """arcface_w600k_r50 test model: ``input.1`` [batch, 3, 112, 112] -> ``683`` [batch, 512].

    Embedding = seeded random projection of the 8x8 average-pooled pixels minus their mean, so
    different faces give different embeddings and the same crop the same one.
    """
    rng = np.random.default_rng(112)
    features = 3 * 14 * 14
    projection = (rng.standard_normal((features, 512)) / np.sqrt(features)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, 512])]
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("ReduceMean", ["features"], ["features_mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["features", "features_mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "projection"], ["683"]),
    ]
    return _model("test_arcface", nodes, inputs, outputs, [_f32("projection", projection)])


def build_gfpgan(variant: str, *, batch: int | str = "batch") -> onnx.ModelProto:
    """gfpgan_1.4 test model; ``variant`` ``identity`` (output = input) or ``sharpen`` (a fixed 3x3
    depthwise unsharp mask, identity + 0.5 * (identity - box blur)), both clipped to [-1, 1]."""
    if variant not in ("identity", "sharpen"):
        raise ValueError(f"unknown gfpgan test variant {variant!r}")
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 512, 512])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, 512, 512])]
    initializers = [_f32("lo", -1.0), _f32("hi", 1.0)]
    nodes: list[onnx.NodeProto] = []
    clip_input = "input"
    if variant == "sharpen":
        delta = np.zeros((3, 3), np.float32)
        delta[1, 1] = 1.0
        kernel = 1.5 * delta - 0.5 * np.full((3, 3), 1.0 / 9.0, np.float32)
        initializers.append(_f32("unsharp", np.broadcast_to(kernel, (3, 1, 3, 3))))
        nodes.append(
            helper.make_node("Conv", ["input", "unsharp"], ["sharpened"], group=3, pads=[1, 1, 1, 1])
        )
        clip_input = "sharpened"
    nodes.append(helper.make_node("Clip", [clip_input, "lo", "hi"], ["output"]))
    return _model(f"test_gfpgan_{variant}", nodes, inputs, outputs, initializers)


def _scrfd_stride_nodes(stride: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``score_s``, ``bbox_s``, ``kps_s`` from ``input.1`` for one stride."""
    s = str(stride)
    row, col = SCRFD_TEST_CELL
    cx, cy = col * SCRFD_TEST_STRIDE, row * SCRFD_TEST_STRIDE
    x1, y1, x2, y2 = SCRFD_TEST_BOX
    bbox = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy], np.float32) / SCRFD_TEST_STRIDE
    kps = (np.asarray(SCRFD_TEST_KPS, np.float32) - (cx, cy)).reshape(10) / SCRFD_TEST_STRIDE
    has_face = stride == SCRFD_TEST_STRIDE
    init = [
        _f32(f"bbox_dist_{s}", (bbox if has_face else np.ones(4)).reshape(1, 4, 1, 1)),
        _f32(f"kps_dist_{s}", (kps if has_face else np.zeros(10)).reshape(1, 10, 1, 1)),
        _f32(f"face_score_{s}", SCRFD_TEST_SCORE - _SCRFD_BACKGROUND_SCORE if has_face else 0.0),
        _i64(f"face_row_{s}", row),
        _i64(f"face_col_{s}", col),
    ]
    nodes = [
        # (batch, 1, h, w) zeros on this stride's grid, computed from the pixels.
        helper.make_node(
            "AveragePool", ["input.1"], [f"pool_{s}"], kernel_shape=[stride, stride], strides=[stride, stride]
        ),
        helper.make_node("ReduceMean", [f"pool_{s}"], [f"pool_mean_{s}"], axes=[1], keepdims=1),
        helper.make_node("Mul", [f"pool_mean_{s}", "zero"], [f"grid_zero_{s}"]),
        # one-hot (h, w) map of the face cell, for any input size.
        helper.make_node("Shape", [f"grid_zero_{s}"], [f"grid_shape_{s}"]),
        helper.make_node("Gather", [f"grid_shape_{s}", "index_2"], [f"grid_h_{s}"], axis=0),
        helper.make_node("Gather", [f"grid_shape_{s}", "index_3"], [f"grid_w_{s}"], axis=0),
        helper.make_node("Range", ["int_0", f"grid_h_{s}", "int_1"], [f"rows_{s}"]),
        helper.make_node("Range", ["int_0", f"grid_w_{s}", "int_1"], [f"cols_{s}"]),
        helper.make_node("Equal", [f"rows_{s}", f"face_row_{s}"], [f"row_hit_{s}"]),
        helper.make_node("Equal", [f"cols_{s}", f"face_col_{s}"], [f"col_hit_{s}"]),
        helper.make_node("Cast", [f"row_hit_{s}"], [f"row_hit_f_{s}"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [f"col_hit_{s}"], [f"col_hit_f_{s}"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"row_hit_f_{s}", "axes_1"], [f"row_col_vec_{s}"]),
        helper.make_node("Mul", [f"row_col_vec_{s}", f"col_hit_f_{s}"], [f"onehot_{s}"]),
        # first anchor: background + face score at the face cell; second anchor: background.
        helper.make_node("Mul", [f"onehot_{s}", f"face_score_{s}"], [f"face_bump_{s}"]),
        helper.make_node("Add", [f"grid_zero_{s}", f"face_bump_{s}"], [f"bump_4d_{s}"]),
        helper.make_node("Add", [f"bump_4d_{s}", "background"], [f"score_a0_{s}"]),
        helper.make_node("Add", [f"grid_zero_{s}", "background"], [f"score_a1_{s}"]),
        helper.make_node("Add", [f"grid_zero_{s}", f"bbox_dist_{s}"], [f"bbox_map_{s}"]),
        helper.make_node("Add", [f"grid_zero_{s}", f"kps_dist_{s}"], [f"kps_map_{s}"]),
    ]
    # (batch, C, h, w) per anchor -> (batch, h, w, anchor, C) -> (batch, h * w * 2, C).
    for name, anchor0, anchor1, channels in (
        ("score", f"score_a0_{s}", f"score_a1_{s}", 1),
        ("bbox", f"bbox_map_{s}", f"bbox_map_{s}", 4),
        ("kps", f"kps_map_{s}", f"kps_map_{s}", 10),
    ):
        nodes += [
            helper.make_node("Transpose", [anchor0], [f"{name}_t0_{s}"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", [anchor1], [f"{name}_t1_{s}"], perm=[0, 2, 3, 1]),
            helper.make_node("Unsqueeze", [f"{name}_t0_{s}", "axes_3"], [f"{name}_u0_{s}"]),
            helper.make_node("Unsqueeze", [f"{name}_t1_{s}", "axes_3"], [f"{name}_u1_{s}"]),
            helper.make_node("Concat", [f"{name}_u0_{s}", f"{name}_u1_{s}"], [f"{name}_pair_{s}"], axis=3),
            helper.make_node("Reshape", [f"{name}_pair_{s}", f"flat_{channels}"], [f"{name}_{s}"]),
        ]
    return nodes, init


def build_scrfd() -> onnx.ModelProto:
    """SCRFD test model that finds one face, :data:`SCRFD_TEST_BOX` with :data:`SCRFD_TEST_KPS`
    and score :data:`SCRFD_TEST_SCORE`, at the first anchor of stride-16 cell :data:`SCRFD_TEST_CELL`
    (anchor index 2 * (12 * W / 16 + 20)); every other anchor scores 0.01. Sizes as in SCRFD:
    H and W multiples of 32."""
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, "height", "width"])]
    outputs = []
    for kind, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            dims: list[str | int] = ["batch", f"anchors_{stride}", channels]
            outputs.append(helper.make_tensor_value_info(f"{kind}_{stride}", TensorProto.FLOAT, dims))
    initializers = [
        _f32("zero", 0.0),
        _f32("background", _SCRFD_BACKGROUND_SCORE),
        _i64("index_2", 2),
        _i64("index_3", 3),
        _i64("int_0", 0),
        _i64("int_1", 1),
        _i64("axes_1", [1]),
        _i64("axes_3", [3]),
        _i64("flat_1", [0, -1, 1]),
        _i64("flat_4", [0, -1, 4]),
        _i64("flat_10", [0, -1, 10]),
    ]
    nodes: list[onnx.NodeProto] = []
    for stride in (8, 16, 32):
        stride_nodes, stride_init = _scrfd_stride_nodes(stride)
        nodes += stride_nodes
        initializers += stride_init
    return _model("test_scrfd", nodes, inputs, outputs, initializers)


def build_test_model(name: str) -> onnx.ModelProto:
    """The test model ``name`` (one of :data:`TEST_MODEL_NAMES`), batch axis dynamic."""
    if name.startswith("inswapper_"):
        return build_inswapper(name.removeprefix("inswapper_"))
    if name.startswith("gfpgan_"):
        return build_gfpgan(name.removeprefix("gfpgan_"))
    if name == "arcface":
        return build_arcface()
    if name == "scrfd":
        return build_scrfd()
    raise ValueError(f"unknown test model {name!r}, expected one of {TEST_MODEL_NAMES}")


def write_test_models(out_dir: Path) -> dict[str, Path]:
    """Write every test model to ``out_dir/test_<name>.onnx`` (deterministic bytes); name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in TEST_MODEL_NAMES:
        path = out_dir / f"test_{name}.onnx"
        onnx.save(build_test_model(name), str(path))
        paths[name] = path
    log.info("wrote %d test models to %s", len(paths), out_dir)
    return paths
