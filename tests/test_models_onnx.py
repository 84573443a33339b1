"""ONNX wrappers (embedder, inswapper, GFPGAN) against the generated TEST models and the real
MobileFaceNet, and the swap/enhance plumbing through pipeline.geometry on real photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import InvalidInputError, ModelContractError, ModelNotFoundError
from pipeline.geometry import box_mask, face_region_mask, paste_back, template_points, warp_face
from pipeline.inprocess import LocalEmbedder, LocalSwapper
from pipeline.models.embedder import ArcFaceEmbedder
from pipeline.models.enhancer import GfpganEnhancer
from pipeline.models.swapper import InswapperSwapper, load_emap
from pipeline.ports import Ports
from pipeline.sessions import SessionConfig, create_session
from pipeline.testmodels import (
    CONSTANT_SWAP_RGB,
    SCRFD_TEST_BOX,
    SCRFD_TEST_KPS,
    SCRFD_TEST_SCORE,
    TEST_MODEL_NAMES,
    build_arcface,
    build_inswapper,
)
from pipeline.types import Face

REPO = Path(__file__).resolve().parents[1]
CPU = SessionConfig(providers=("cpu",), intra_op_threads=1)
CONSTANT_BGR = np.rint(255 * np.array(CONSTANT_SWAP_RGB[::-1])).astype(np.uint8)


def session(model: Path | bytes | onnx.ModelProto) -> ort.InferenceSession:
    return create_session(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model, CPU)


def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def arcface(test_models: dict[str, Path]) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(session(test_models["arcface"]))


@pytest.fixture(scope="module")
def swappers(test_models: dict[str, Path]) -> dict[str, InswapperSwapper]:
    out = {}
    for variant in ("identity", "constant", "tint"):
        path = test_models[f"inswapper_{variant}"]
        out[variant] = InswapperSwapper(session(path), load_emap(path))
    return out


def embed(embedder: ArcFaceEmbedder, image: np.ndarray, face: Face) -> np.ndarray:
    """(D,) embedding of ``face`` in ``image``, aligned to the embedder's template."""
    crop, _ = warp_face(image, face.landmarks, embedder.template, embedder.crop_size)
    return embedder.embed_crops(crop[None])[0]


@pytest.fixture(scope="module")
def yunet_faces(assets: Path):
    """Faces of a real photo from YuNet (cv2.FaceDetectorYN, 2026may model), largest first."""

    def _detect(image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        model = str(assets / "models" / "face_detection_yunet_2026may.onnx")
        detector = cv2.FaceDetectorYN.create(model, "", (w, h), 0.6, 0.3, 5000)
        _, rows = detector.detect(image)
        assert rows is not None, "YuNet found no face"
        faces = [
            Face(
                bbox=np.array([r[0], r[1], r[0] + r[2], r[1] + r[3]], np.float32),
                landmarks=r[4:14].reshape(5, 2).astype(np.float32),
                score=float(r[14]),
            )
            for r in rows
        ]
        return sorted(faces, key=lambda f: -f.area)

    return _detect


def synthetic_face_image() -> tuple[np.ndarray, Face]:
    """A seeded noise image with landmarks placed on the arcface_112 template (for unit maths only)."""
    image = np.random.default_rng(7).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    landmarks = (template_points("arcface_112_v2", 112) + 24.0).astype(np.float32)
    return image, Face(bbox=np.array([24, 24, 136, 136], np.float32), landmarks=landmarks, score=1.0)


def renamed_input(path: Path, old: str, new: str) -> bytes:
    model = onnx.load(str(path))
    for value in model.graph.input:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    return model.SerializeToString()


# ---------------------------------------------------------------- test models


def test_test_models_are_deterministic_and_named(test_models: dict[str, Path], tmp_path: Path) -> None:
    assert tuple(test_models) == TEST_MODEL_NAMES
    spec = importlib.util.spec_from_file_location(
        "make_test_models", REPO / "scripts" / "make_test_models.py"
    )
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(tmp_path)]) == 0
    for name, path in test_models.items():
        assert path.name == f"test_{name}.onnx"
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), name


def test_scrfd_test_model_emits_one_known_face(test_models: dict[str, Path]) -> None:
    sess = session(test_models["scrfd"])
    assert [i.name for i in sess.get_inputs()] == ["input.1"]
    names = [o.name for o in sess.get_outputs()]
    assert names == [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 640, 640)).astype(np.float32)
    out = dict(zip(names, sess.run(None, {"input.1": pixels}), strict=True))
    found = []
    for stride in (8, 16, 32):
        cells = 640 // stride
        assert out[f"score_{stride}"].shape == (2, 2 * cells * cells, 1)
        assert out[f"bbox_{stride}"].shape == (2, 2 * cells * cells, 4)
        assert out[f"kps_{stride}"].shape == (2, 2 * cells * cells, 10)
        cols, rows = np.meshgrid(np.arange(cells), np.arange(cells))
        centres = np.repeat(np.stack([cols.ravel(), rows.ravel()], -1) * stride, 2, axis=0)
        for b, i in zip(*np.nonzero(out[f"score_{stride}"][..., 0] > 0.5), strict=True):
            box = np.r_[
                centres[i] - out[f"bbox_{stride}"][b, i, :2] * stride,
                centres[i] + out[f"bbox_{stride}"][b, i, 2:] * stride,
            ]
            kps = centres[i] + out[f"kps_{stride}"][b, i].reshape(5, 2) * stride
            found.append((b, stride, out[f"score_{stride}"][b, i, 0], box, kps))
    assert [(b, s) for b, s, *_ in found] == [(0, 16), (1, 16)]
    for _, _, score, box, kps in found:
        assert score == pytest.approx(SCRFD_TEST_SCORE)
        np.testing.assert_allclose(box, SCRFD_TEST_BOX, atol=1e-4)
        np.testing.assert_allclose(kps, SCRFD_TEST_KPS, atol=1e-4)
    other = sess.run(None, {"input.1": np.zeros((1, 3, 320, 256), np.float32)})
    assert [o.shape[1] for o in other[:3]] == [2 * 40 * 32, 2 * 20 * 16, 2 * 10 * 8]
    assert max(float(o.max()) for o in other[:3]) < 0.5  # the face cell lies outside a 256-wide input


# ---------------------------------------------------------------- emap, latent, contracts


def test_load_emap_returns_last_initializer(test_models: dict[str, Path]) -> None:
    path = test_models["inswapper_tint"]
    emap = load_emap(path)
    last = onnx.load(str(path)).graph.initializer[-1]
    assert emap.shape == (512, 512) and emap.dtype == np.float32
    np.testing.assert_array_equal(emap, numpy_helper.to_array(last))
    with pytest.raises(ModelContractError, match=r"\(588, 512\)"):
        load_emap(test_models["arcface"])  # its last initializer is the (588, 512) projection


def test_latent_is_normalised_embedding_times_emap(
    test_models: dict[str, Path], swappers: dict[str, InswapperSwapper], arcface: ArcFaceEmbedder
) -> None:
    image, face = synthetic_face_image()
    crop, _ = warp_face(image, face.landmarks, "arcface_112_v2", 112)
    raw_session = session(test_models["arcface"])
    blob = (crop[..., ::-1].astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
    embedding = raw_session.run(None, {"input.1": blob})[0][0]
    expected = normalise(normalise(embedding) @ load_emap(test_models["inswapper_identity"]))
    latent = swappers["identity"].latent(embed(arcface, image, face))
    assert latent.shape == (512,) and latent.dtype == np.float32
    np.testing.assert_allclose(latent, expected, atol=1e-5)


def test_wrong_graphs_raise_model_contract_error(
    test_models: dict[str, Path], arcface: ArcFaceEmbedder
) -> None:
    swap_path = test_models["inswapper_identity"]
    emap = load_emap(swap_path)
    with pytest.raises(ModelContractError, match="target"):
        InswapperSwapper(session(renamed_input(swap_path, "target", "image")), emap)
    with pytest.raises(ModelContractError, match="emap"):
        InswapperSwapper(session(swap_path), emap[:256])
    with pytest.raises(ModelContractError, match="input 'target'"):
        InswapperSwapper(session(swap_path), emap, crop_size=256)
    with pytest.raises(ModelContractError, match=r"\[N, 3, 112, 112\]"):
        ArcFaceEmbedder(session(test_models["gfpgan_identity"]))
    with pytest.raises(ModelContractError, match="1 input and 1 output"):
        ArcFaceEmbedder(session(swap_path))
    with pytest.raises(ModelContractError, match=r"\[N, 3, 512, 512\]"):
        GfpganEnhancer(session(test_models["arcface"]))
    # a 128-d embedder cannot feed the 512-d emap
    small = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "hw"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["y"]),
        ],
        "tiny_128d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 128])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
            numpy_helper.from_array(np.ones((3, 128), np.float32), "w"),
        ],
    )
    tiny = helper.make_model(small, opset_imports=[helper.make_opsetid("", 18)])
    tiny.ir_version = 8
    embedder_128 = ArcFaceEmbedder(session(tiny), name="tiny_128d")
    assert embedder_128.dim == 128
    swapper = InswapperSwapper(session(swap_path), emap)
    with pytest.raises(ModelNotFoundError, match=r"512-d ArcFace embedder .*tiny_128d \(128-d\)"):
        Ports(detector=None, swapper=LocalSwapper(swapper), embedder=LocalEmbedder(embedder_128))  # type: ignore[arg-type]


def test_bad_crops_are_rejected(arcface: ArcFaceEmbedder, swappers: dict[str, InswapperSwapper]) -> None:
    with pytest.raises(InvalidInputError):
        arcface.embed_crops(np.zeros((1, 112, 112, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        swappers["tint"].swap_crops(np.zeros((2, 128, 128, 3), np.uint8), np.zeros((1, 512), np.float32))
    assert arcface.embed_crops(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 512)


def test_fixed_batch_one_loops_like_dynamic(
    test_models: dict[str, Path], arcface: ArcFaceEmbedder, swappers: dict[str, InswapperSwapper]
) -> None:
    rng = np.random.default_rng(3)
    faces = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    fixed_embedder = ArcFaceEmbedder(session(build_arcface(batch=1)))
    embeddings = arcface.embed_crops(faces)
    np.testing.assert_allclose(fixed_embedder.embed_crops(faces), embeddings, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert embeddings[0] @ embeddings[1] < 0.99  # different crops, different embeddings
    emap = load_emap(test_models["inswapper_tint"])
    fixed_swapper = InswapperSwapper(session(build_inswapper("tint", batch=1)), emap)
    crops = rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    sources = np.resize(embeddings, (3, 512)).astype(np.float32)
    np.testing.assert_array_equal(
        fixed_swapper.swap_crops(crops, sources), swappers["tint"].swap_crops(crops, sources)
    )


# ---------------------------------------------------------------- real MobileFaceNet


@pytest.mark.assets
def test_mobilefacenet_separates_identities(assets: Path, load_image, yunet_faces) -> None:
    embedder = ArcFaceEmbedder(
        session(assets / "models" / "mobilefacenet_paddlex_128d.onnx"), name="mobilefacenet_128d", rgb=False
    )
    assert embedder.dim == 128
    names = (
        "paul_rudd_2009_ccbysa2.jpeg",
        "paul_rudd_cropped_ccbysa2.jpeg",
        "astronaut_eileen_collins_nasa.png",
    )
    embeddings = []
    for name in names:
        image = load_image(name)
        embeddings.append(embed(embedder, image, yunet_faces(image)[0]))
    paul_a, paul_b, astronaut = embeddings
    assert float(np.linalg.norm(paul_a)) == pytest.approx(1.0, abs=1e-5)
    assert float(paul_a @ paul_b) > 0.5
    assert float(paul_a @ astronaut) < 0.3
    assert float(paul_b @ astronaut) < 0.3


# ---------------------------------------------------------------- plumbing on real photos


@pytest.mark.assets
def test_identity_swap_round_trip(
    load_image, yunet_faces, swappers: dict[str, InswapperSwapper], arcface: ArcFaceEmbedder
) -> None:
    image = load_image("astronaut_eileen_collins_nasa.png")
    face = yunet_faces(image)[0]
    swapper = swappers["identity"]
    crop, affine = warp_face(image, face.landmarks, swapper.template, swapper.crop_size)
    source = embed(arcface, image, face)
    swapped = swapper.swap_crops(crop[None], source[None])[0]
    np.testing.assert_array_equal(swapped, crop)
    mask = box_mask(swapper.crop_size, 0.3)
    out = paste_back(image, swapped, affine, mask)
    region = face_region_mask(image.shape, affine, mask)
    diff = np.abs(out.astype(np.int16) - image.astype(np.int16))
    assert (region > 0.5).sum() > 5000
    assert np.array_equal(out[region == 0], image[region == 0])
    assert diff.mean() < 2.0
    # Inside the face the two bilinear resamplings (warp at scale 0.85, inverse warp) of this detailed
    # photo alone cost about 3.2 grey levels; a 1 px misplacement costs about 8, swapped channels 32.
    assert diff[region > 0.5].mean() < 4.0


@pytest.mark.assets
def test_constant_swap_writes_only_inside_the_mask(
    load_image, yunet_faces, swappers: dict[str, InswapperSwapper], arcface: ArcFaceEmbedder
) -> None:
    image = load_image("codait_luciano_cc0.png")
    face = yunet_faces(image)[0]
    swapper = swappers["constant"]
    crop, affine = warp_face(image, face.landmarks, swapper.template, swapper.crop_size)
    swapped = swapper.swap_crops(crop[None], embed(arcface, image, face)[None])[0]
    assert np.array_equal(swapped, np.broadcast_to(CONSTANT_BGR, swapped.shape))
    mask = box_mask(swapper.crop_size, 0.3)
    out = paste_back(image, swapped, affine, mask)
    region = face_region_mask(image.shape, affine, mask)
    outside, inside = region == 0, region > 0.999
    assert outside.sum() > 0.5 * region.size and inside.sum() > 5000
    assert np.array_equal(out[outside], image[outside])
    assert np.abs(out[inside].astype(np.int16) - CONSTANT_BGR).max() <= 1
    # the face box itself (YuNet's) is covered
    x1, y1, x2, y2 = face.bbox.astype(int)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    assert np.array_equal(out[cy, cx], CONSTANT_BGR)


@pytest.mark.assets
def test_batched_swap_equals_single_calls(
    load_image, yunet_faces, swappers: dict[str, InswapperSwapper], arcface: ArcFaceEmbedder
) -> None:
    image = load_image("pexels_group_meeting_1080865.jpeg")
    faces = yunet_faces(image)[:4]
    swapper = swappers["tint"]
    crops = np.stack([warp_face(image, f.landmarks, swapper.template, swapper.crop_size)[0] for f in faces])
    latents = np.stack([embed(arcface, image, f) for f in faces])
    batched = swapper.swap_crops(crops, latents)
    singles = np.concatenate(
        [swapper.swap_crops(crops[i : i + 1], latents[i : i + 1]) for i in range(len(faces))]
    )
    assert batched.shape == (len(faces), 128, 128, 3) and batched.dtype == np.uint8
    assert np.abs(batched.astype(np.int16) - singles).max() <= 1
    # identity matters: the same crop swapped with another face's embedding changes colour
    other = swapper.swap_crops(crops[:1], latents[1:2])[0]
    assert np.abs(other.astype(np.int16) - batched[0]).mean() > 5.0


@pytest.mark.assets
def test_gfpgan_identity_round_trip_and_sharpen(
    test_models: dict[str, Path], load_image, yunet_faces
) -> None:
    image = load_image("pexels_man_santa_costume_716658.jpeg")
    face = yunet_faces(image)[0]
    identity = GfpganEnhancer(session(test_models["gfpgan_identity"]))
    sharpen = GfpganEnhancer(session(test_models["gfpgan_sharpen"]))
    crop, affine = warp_face(image, face.landmarks, identity.template, identity.crop_size)
    enhanced = identity.enhance_crops(crop[None])[0]
    assert np.abs(enhanced.astype(np.int16) - crop).max() <= 1
    mask = box_mask(identity.crop_size, 0.3)
    out = paste_back(image, enhanced, affine, mask)
    region = face_region_mask(image.shape, affine, mask)
    diff = np.abs(out.astype(np.int16) - image.astype(np.int16))
    assert (region > 0.5).sum() > 50000
    assert diff.mean() < 2.0 and diff[region > 0.5].mean() < 2.0

    sharpened = sharpen.enhance_crops(crop[None])[0]
    laplacian = [
        cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), cv2.CV_32F).var() for c in (crop, sharpened)
    ]
    assert laplacian[1] > 1.5 * laplacian[0]
