"""The one swap orchestration (pipeline.orchestration).

Unit tier: fake ports that record every call, no Ray, no ONNX: which port is called how often and with
what (canvases, crops, identities), what comes back where, and which pixels may change.
In-process tier: the real detector and embedder from ../shared/assets with the project's test models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from pipeline.canvas import CanvasSpec
from pipeline.errors import InvalidInputError, InvalidOptionError, NoFaceError, UnsupportedOptionError
from pipeline.geometry import box_mask, face_region_mask, warp_face
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator, crops_for
from pipeline.ports import (
    CropSpec,
    DenseLandmarks,
    DetectorInfo,
    EmbedderInfo,
    EnhancerInfo,
    LandmarkerInfo,
    Ports,
    Swapped,
    SwapperInfo,
)
from pipeline.profiles import PipelineConfig, build_models
from pipeline.types import Face, ImageBGR

SWAP_CROP = CropSpec("arcface_128", 128)
ENHANCE_CROP = CropSpec("ffhq_512", 512)
EMBED_CROP = CropSpec("arcface_112_v2", 112)


def _face(x: float, y: float, side: float, score: float = 0.9) -> Face:
    """A face box at (x, y) of width ``side`` with landmarks on the arcface template inside it."""
    from pipeline.geometry import template_points

    points = template_points("arcface_112_v2", 1) * side + np.array([x, y], np.float32)
    return Face(np.array([x, y, x + side, y + side * 1.2], np.float32), points.astype(np.float32), score)


class FakeDetector:
    """Answers each canvas with the faces given for its (height, width), in canvas pixels."""

    def __init__(self, by_shape: dict[tuple[int, int], list[Face]], canvas: CanvasSpec) -> None:
        self.info = DetectorInfo("fake_detector", canvas)
        self.by_shape = by_shape
        self.calls: list[list[tuple[int, ...]]] = []

    async def detect(self, canvases: Sequence[ImageBGR], score_threshold: float) -> list[list[Face]]:
        self.calls.append([c.shape for c in canvases])
        return [list(self.by_shape.get(c.shape[:2], [])) for c in canvases]


class FakeEmbedder:
    """Embeds a crop as the unit vector of its mean BGR colour (so colour decides identity)."""

    def __init__(self) -> None:
        self.info = EmbedderInfo("fake_embedder", EMBED_CROP, 3)
        self.calls: list[int] = []

    async def embed(self, crops: np.ndarray) -> np.ndarray:
        self.calls.append(len(crops))
        v = crops.reshape(len(crops), -1, 3).mean(axis=1).astype(np.float32) + 1e-3
        return v / np.linalg.norm(v, axis=1, keepdims=True)


class FakeSwapper:
    """Paints every crop with a constant colour; records the crops and identities it got."""

    def __init__(self, identity: str = "embedding", masks: float | None = None) -> None:
        self.info = SwapperInfo("fake_swapper", SWAP_CROP, identity, 3 if identity == "embedding" else None)
        self.crops: list[np.ndarray] = []
        self.identities: list[np.ndarray] = []
        self._masks = masks

    async def swap(self, crops: np.ndarray, identities: np.ndarray) -> Swapped:
        self.crops.append(crops.copy())
        self.identities.append(identities.copy())
        out = np.zeros_like(crops)
        out[..., 1] = 255
        masks = None
        if self._masks is not None:
            masks = np.full(crops.shape[:3], self._masks, np.float32)
        return Swapped(out, masks)


class FakeEnhancer:
    def __init__(self) -> None:
        self.info = EnhancerInfo("fake_enhancer", ENHANCE_CROP)
        self.calls: list[int] = []

    async def enhance(self, crops: np.ndarray) -> np.ndarray:
        self.calls.append(len(crops))
        return np.full_like(crops, 255)


def _image(height: int, width: int, seed: int) -> ImageBGR:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)


TARGET = _image(600, 800, 1)  # canvas 400x300 (scale 0.5) under a 400x400 spec
SOURCE = _image(300, 300, 2)  # fits: canvas is the image itself
CANVAS = CanvasSpec(400, 400, upscale=False)
TARGET_FACES = [_face(100, 100, 60), _face(250, 120, 40), _face(50, 220, 30)]  # canvas pixels
SOURCE_FACE = _face(100, 80, 90)


def _ports(**overrides: object) -> Ports:
    detector = FakeDetector({(300, 400): TARGET_FACES, (300, 300): [SOURCE_FACE]}, CANVAS)
    parts: dict[str, object] = {
        "detector": detector,
        "swapper": FakeSwapper(),
        "embedder": FakeEmbedder(),
        "enhancer": FakeEnhancer(),
        "profile": "fake",
    }
    parts.update(overrides)
    return Ports(**parts)  # type: ignore[arg-type]


def _swap(ports: Ports, options: SwapOptions, source=SOURCE, target=TARGET, reference=None, **kw):
    return asyncio.run(SwapOrchestrator(ports, **kw).swap(source, target, options, reference))


def _region(shape: tuple[int, ...], faces: list[Face], crop: CropSpec, options: SwapOptions) -> np.ndarray:
    mask = box_mask(crop.size, options.face_mask_blur, options.face_mask_padding)
    touched = np.zeros(shape[:2], bool)
    for face in faces:
        _, affine = warp_face(TARGET, face.landmarks, crop.template, crop.size)
        touched |= face_region_mask(shape, affine, mask) > 0
    return touched


def test_one_call_per_stage_and_faces_in_image_pixels() -> None:
    ports = _ports()
    result = _swap(ports, SwapOptions(face_selector_mode="many"))
    detector, swapper, embedder = ports.detector, ports.swapper, ports.embedder
    assert detector.calls == [[(300, 400, 3), (300, 300, 3)]]  # target and source canvases, one call
    assert embedder.calls == [1]  # the source face only
    assert len(swapper.crops) == 1 and swapper.crops[0].shape == (3, 128, 128, 3)
    # faces come back scaled from canvas to image pixels, largest first
    assert [round(float(f.bbox[2] - f.bbox[0])) for f in result.faces] == [120, 80, 60]
    np.testing.assert_allclose(result.faces[0].landmarks, TARGET_FACES[0].landmarks / 0.5, rtol=1e-6)
    # every identity is the source embedding
    assert (swapper.identities[0] == swapper.identities[0][0]).all()
    assert result.components == {
        "profile": "fake",
        "detector": "fake_detector",
        "embedder": "fake_embedder",
        "swapper": "fake_swapper",
        "enhancer": "fake_enhancer",
        "landmarker": None,
    }


def test_crops_are_cut_from_the_original_frame_even_where_faces_overlap() -> None:
    overlapping = [_face(100, 100, 60), _face(120, 110, 60)]
    ports = _ports(detector=FakeDetector({(300, 400): overlapping, (300, 300): [SOURCE_FACE]}, CANVAS))
    _swap(ports, SwapOptions(face_selector_mode="many"))
    faces = [_scaled(f, 2.0) for f in overlapping]
    expected, _ = crops_for(TARGET, sorted(faces, key=lambda f: -f.area), SWAP_CROP)
    np.testing.assert_array_equal(ports.swapper.crops[0], expected)


def _scaled(face: Face, factor: float) -> Face:
    return Face(face.bbox * factor, face.landmarks * factor, face.score)


def test_only_the_pasted_region_changes() -> None:
    options = SwapOptions(face_selector_mode="many", face_mask_blur=0.2)
    result = _swap(_ports(), options)
    touched = _region(TARGET.shape, result.faces, SWAP_CROP, options)
    diff = np.abs(result.image.astype(int) - TARGET.astype(int)).sum(axis=2)
    assert (diff[~touched] == 0).all()
    assert (diff[touched] > 0).mean() > 0.5


def test_blend_ratio_zero_and_zero_masks_give_the_target_back() -> None:
    assert np.array_equal(_swap(_ports(), SwapOptions(blend_ratio=0.0)).image, TARGET)
    masked = _swap(_ports(swapper=FakeSwapper(masks=0.0)), SwapOptions())
    assert np.array_equal(masked.image, TARGET)


def test_max_faces_from_the_request_and_the_service() -> None:
    many = SwapOptions(face_selector_mode="many")
    assert _swap(_ports(), many, max_faces=2).faces_swapped == 2
    assert (
        _swap(_ports(), SwapOptions(face_selector_mode="many", max_faces=1), max_faces=2).faces_swapped == 1
    )
    assert _swap(_ports(), SwapOptions(face_selector_mode="one")).faces_swapped == 1


def test_crop_identity_is_the_aligned_source_face() -> None:
    ports = _ports(swapper=FakeSwapper(identity="crop"), embedder=None)
    _swap(ports, SwapOptions())
    expected, _ = crops_for(SOURCE, [SOURCE_FACE], SWAP_CROP)
    np.testing.assert_array_equal(ports.swapper.identities[0][0], expected[0])
    assert ports.swapper.identities[0].shape == (1, 128, 128, 3)


def test_reference_mode_embeds_everything_in_one_call_and_picks_the_closest() -> None:
    target = TARGET.copy()
    # paint the second target face's region red, and a red reference: it is the one chosen
    chosen = _scaled(TARGET_FACES[1], 2.0)
    x1, y1, x2, y2 = (int(v) for v in chosen.bbox)
    target[y1 - 40 : y2 + 40, x1 - 40 : x2 + 40] = (0, 0, 255)
    reference = np.zeros((300, 300, 3), np.uint8)
    reference[:] = (0, 0, 255)
    ports = _ports(detector=FakeDetector({(300, 400): TARGET_FACES, (300, 300): [SOURCE_FACE]}, CANVAS))
    result = _swap(
        ports,
        SwapOptions(face_selector_mode="reference", reference_face_distance=0.05),
        target=target,
        reference=reference,
    )
    assert ports.embedder.calls == [1 + 1 + 3]  # source, reference and the 3 candidates together
    assert result.faces_swapped == 1
    np.testing.assert_allclose(result.faces[0].bbox, chosen.bbox, rtol=1e-6)
    with pytest.raises(NoFaceError, match="within distance"):
        _swap(
            _ports(),
            SwapOptions(face_selector_mode="reference", reference_face_distance=0.0),
            reference=np.zeros((300, 300, 3), np.uint8) + 17,
        )


def test_enhance_only_runs_no_swapper_and_ignores_padding() -> None:
    ports = _ports()
    options = SwapOptions(frame_processors=("face_enhancer",), face_mask_padding=(40, 40, 40, 40))
    result = asyncio.run(SwapOrchestrator(ports).swap(None, TARGET, options))
    assert ports.swapper.crops == [] and ports.enhancer.calls == [1]
    assert ports.detector.calls == [[(300, 400, 3)]]
    # the enhancer's mask has no padding: pixels the padded swap mask would exclude still change
    enhanced = _region(TARGET.shape, result.faces, ENHANCE_CROP, SwapOptions())
    diff = np.abs(result.image.astype(int) - TARGET.astype(int)).sum(axis=2)
    assert (diff[~enhanced] == 0).all() and (diff[enhanced] > 0).mean() > 0.5


def test_errors_before_any_model_runs() -> None:
    ports = _ports(embedder=None, enhancer=None, swapper=FakeSwapper(identity="crop"))
    orchestrator = SwapOrchestrator(ports)
    cases = [
        (dict(source=None), SwapOptions(), InvalidInputError),
        (dict(), SwapOptions(face_selector_mode="reference"), UnsupportedOptionError),
        (dict(), SwapOptions().with_enhance(True), UnsupportedOptionError),
        (dict(), SwapOptions(face_enhance_model="gfpgan_1.4"), UnsupportedOptionError),
    ]
    for kwargs, options, error in cases:
        with pytest.raises(error):
            asyncio.run(orchestrator.swap(kwargs.get("source", SOURCE), TARGET, options))
    assert ports.detector.calls == []
    with pytest.raises(InvalidOptionError, match="reference image"):
        asyncio.run(
            SwapOrchestrator(_ports()).swap(SOURCE, TARGET, SwapOptions(face_selector_mode="reference"))
        )


def test_no_face_errors_name_the_image() -> None:
    blank = np.zeros((200, 200, 3), np.uint8)
    with pytest.raises(NoFaceError, match="target"):
        _swap(_ports(), SwapOptions(), target=blank)
    with pytest.raises(NoFaceError, match="source") as err:
        _swap(_ports(), SwapOptions(), source=blank)
    assert err.value.status == 422


def test_frames_batch_through_one_call_per_stage_and_faceless_frames_pass() -> None:
    ports = _ports()
    orchestrator = SwapOrchestrator(ports)
    identity = asyncio.run(orchestrator.source_identity(SOURCE, SwapOptions()))
    blank = np.zeros((600, 800, 3), np.uint8) + 40
    frames = [TARGET, _image(600, 800, 3), TARGET]
    detector = FakeDetector({(300, 400): TARGET_FACES}, CANVAS)
    ports = _ports(detector=detector, swapper=FakeSwapper())
    orchestrator = SwapOrchestrator(ports)
    results = asyncio.run(orchestrator.swap_frames(frames + [blank], identity, SwapOptions()))
    assert detector.calls == [[(300, 400, 3)] * 4]
    assert len(ports.swapper.crops) == 1 and len(ports.swapper.crops[0]) == 4  # one face each of 4 frames
    assert [r.faces_swapped for r in results] == [1, 1, 1, 1]
    # faces given by the caller (a tracker): no detector call; an empty list passes the frame through
    detector.calls.clear()
    given = [[_scaled(TARGET_FACES[0], 2.0)], []]
    results = asyncio.run(orchestrator.swap_frames([TARGET, TARGET], identity, SwapOptions(), faces=given))
    assert detector.calls == [] and [r.faces_swapped for r in results] == [1, 0]
    assert np.array_equal(results[1].image, TARGET)
    # a plan's faces (select=False): every given face is processed, whatever the selector mode
    planned = [[_scaled(TARGET_FACES[0], 2.0), _scaled(TARGET_FACES[0], 1.0)]]
    one = SwapOptions(face_selector_mode="one")
    assert asyncio.run(orchestrator.swap_frames([TARGET], identity, one, faces=planned))[0].faces_swapped == 1
    kept = asyncio.run(orchestrator.swap_frames([TARGET], identity, one, faces=planned, select=False))
    assert kept[0].faces == planned[0]
    with pytest.raises(ValueError, match="needs the faces"):
        asyncio.run(orchestrator.swap_frames([TARGET], identity, one, select=False))


def test_a_swapper_of_another_model_refuses_the_identity() -> None:
    orchestrator = SwapOrchestrator(_ports())
    identity = asyncio.run(orchestrator.source_identity(SOURCE, SwapOptions()))
    other = SwapOrchestrator(_ports(swapper=FakeSwapper(identity="crop")))
    with pytest.raises(UnsupportedOptionError):
        asyncio.run(other.swap_frames([TARGET], identity, SwapOptions()))


def test_swap_encoded_decodes_labels_and_encodes(assets) -> None:
    from pipeline.provenance import read_label

    ok, png = cv2.imencode(".png", TARGET)
    _, src = cv2.imencode(".png", SOURCE)
    encoded = asyncio.run(
        SwapOrchestrator(_ports()).swap_encoded(
            {"source_image": src.tobytes(), "target_image": png.tobytes()},
            SwapOptions(),
            media_type="image/png",
            label={"request_id": "abc"},
        )
    )
    assert encoded.media_type == "image/png"
    decoded = cv2.imdecode(np.frombuffer(encoded.data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, encoded.result.image)
    label = read_label(encoded.data)
    assert label is not None and label.request_id == "abc"


# -- in process, real detector and embedder ---------------------------------------------------------------
SOURCE_PHOTO = "astronaut_eileen_collins_nasa.png"
TARGET_PHOTO = "codait_luciano_cc0.png"


def _local(assets, test_models, swapper: str, enhancer: str = "gfpgan_identity") -> SwapOrchestrator:
    models = build_models(
        PipelineConfig(
            overrides={
                "detector": str(assets / "models" / "face_detection_yunet_2026may.onnx"),
                "embedder": str(test_models["arcface"]),
                "swapper": str(test_models[swapper]),
                "enhancer": str(test_models[enhancer]),
            }
        )
    )
    return SwapOrchestrator(models.ports())


def _touched(orchestrator: SwapOrchestrator, result, target, options) -> np.ndarray:
    crop = orchestrator.ports.swapper.info.crop
    mask = box_mask(crop.size, options.face_mask_blur, options.face_mask_padding)
    _, affines = crops_for(target, result.faces, crop)
    touched = np.zeros(target.shape[:2], bool)
    for affine in affines:
        touched |= face_region_mask(target.shape, affine, mask) > 0
    return touched


def test_identity_test_swapper_reproduces_the_target(assets, test_models, load_image):
    orchestrator = _local(assets, test_models, "inswapper_identity")
    target = load_image(TARGET_PHOTO)
    options = SwapOptions()
    result = asyncio.run(orchestrator.swap(load_image(SOURCE_PHOTO), target, options))
    touched = _touched(orchestrator, result, target, options)
    diff = np.abs(result.image.astype(int) - target.astype(int))
    assert (diff[~touched] == 0).all()
    assert diff[touched].mean() < 4.0  # resampling twice costs ~3 levels on real photos


def test_constant_test_swapper_changes_only_the_masked_faces(assets, test_models, load_image):
    orchestrator = _local(assets, test_models, "inswapper_constant")
    target = load_image("pexels_group_meeting_1080865.jpeg")
    options = SwapOptions(face_selector_mode="many", face_mask_blur=0.0)
    result = asyncio.run(orchestrator.swap(load_image(SOURCE_PHOTO), target, options))
    assert result.faces_swapped == 5
    touched = _touched(orchestrator, result, target, options)
    diff = np.abs(result.image.astype(int) - target.astype(int)).sum(axis=2)
    assert (diff[~touched] == 0).all()
    assert (diff[touched] > 0).mean() > 0.9


def test_reference_mode_picks_the_matching_person(assets, load_image):
    models = build_models(
        PipelineConfig(
            overrides={
                "detector": str(assets / "models" / "face_detection_yunet_2026may.onnx"),
                "embedder": str(assets / "models" / "mobilefacenet_paddlex_128d.onnx"),
            },
            enhance=False,
        )
    )
    orchestrator = SwapOrchestrator(models.ports())
    group = load_image("pexels_group_meeting_1080865.jpeg")
    faces = asyncio.run(orchestrator.detect([group], 0.5))[0]
    chosen = sorted(faces, key=lambda f: -f.area)[2]
    x1, y1, x2, y2 = (int(v) for v in chosen.bbox)
    pad = 60
    reference = group[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad].copy()
    options = SwapOptions(face_selector_mode="reference", reference_face_distance=0.3)
    result = asyncio.run(orchestrator.swap(load_image(SOURCE_PHOTO), group, options, reference))
    assert result.faces_swapped == 1
    assert np.abs(result.faces[0].bbox - chosen.bbox).max() < 3


def test_enhancer_runs_after_the_swap(assets, test_models, load_image):
    orchestrator = _local(assets, test_models, "inswapper_identity", enhancer="gfpgan_sharpen")
    target, source = load_image(TARGET_PHOTO), load_image(SOURCE_PHOTO)
    plain = asyncio.run(orchestrator.swap(source, target, SwapOptions()))
    enhanced = asyncio.run(orchestrator.swap(source, target, SwapOptions().with_enhance(True)))
    assert np.abs(enhanced.image.astype(int) - plain.image.astype(int)).max() > 0
    none = asyncio.run(
        orchestrator.swap(source, target, SwapOptions(face_enhancer_blend=0).with_enhance(True))
    )
    assert np.array_equal(none.image, plain.image)


def test_a_source_sent_again_is_not_decoded_detected_or_embedded_again() -> None:
    from pipeline.identities import IdentityCache

    _, target = cv2.imencode(".png", TARGET)
    _, source = cv2.imencode(".png", SOURCE)
    uploads = {"source_image": source.tobytes(), "target_image": target.tobytes()}
    ports = _ports()
    cache = IdentityCache(capacity=1)
    orchestrator = SwapOrchestrator(ports, identities=cache)
    first = asyncio.run(orchestrator.swap_encoded(uploads, SwapOptions(), media_type="image/png"))
    again = asyncio.run(orchestrator.swap_encoded(uploads, SwapOptions(), media_type="image/png"))
    assert ports.detector.calls == [[(300, 400, 3), (300, 300, 3)], [(300, 400, 3)]]
    assert ports.embedder.calls == [1]
    assert first.data == again.data and len(cache) == 1
    # another threshold is another key: the source is detected again
    asyncio.run(orchestrator.swap_encoded(uploads, SwapOptions(detector_score=0.6), media_type="image/png"))
    assert len(ports.detector.calls) == 3 and ports.embedder.calls == [1, 1] and len(cache) == 1


class FakeLandmarker:
    """Answers every crop with one synthetic mesh (real topology), in 192 px crops aligned to ffhq_512."""

    def __init__(self, score: float = 0.9) -> None:
        from tests.test_mesh import synthetic_mesh

        self.info = LandmarkerInfo("fake_mesh", CropSpec("ffhq_512", 192), 468)
        self.mesh = synthetic_mesh(192)
        self.score = score
        self.calls: list[int] = []

    async def landmarks(self, crops: np.ndarray) -> DenseLandmarks:
        self.calls.append(len(crops))
        n = len(crops)
        return DenseLandmarks(np.repeat(self.mesh[None], n, axis=0), np.full(n, self.score, np.float32))


def test_region_masks_keep_the_swap_inside_the_chosen_regions() -> None:
    box_only = _swap(_ports(landmarker=FakeLandmarker()), SwapOptions(face_selector_mode="many"))
    ports = _ports(landmarker=FakeLandmarker())
    regions = SwapOptions(
        face_selector_mode="many", face_mask_types=("box", "region"), face_mask_regions=("nose",)
    )
    nose = _swap(ports, regions)
    assert ports.landmarker.calls == [3]  # one call for the three target faces, none for the source
    changed = lambda r: np.abs(r.image.astype(int) - TARGET.astype(int)).sum(axis=2) > 0  # noqa: E731
    assert changed(nose).sum() < 0.25 * changed(box_only).sum()
    assert not (changed(nose) & ~changed(box_only)).any()  # the region mask only ever removes
    # a landmarker that sees no face leaves the box mask alone
    unsure = _swap(_ports(landmarker=FakeLandmarker(score=0.1)), regions)
    assert np.array_equal(unsure.image, box_only.image)


def test_refined_landmarks_come_from_the_mesh_for_targets_and_source() -> None:
    from pipeline.mesh import five_point_from_mesh

    landmarker = FakeLandmarker()
    ports = _ports(landmarker=landmarker)
    result = _swap(ports, SwapOptions(refine_landmarks=True))
    assert landmarker.calls == [2]  # the target face and the source face, in one call
    face = result.faces[0]
    assert face.mesh is not None
    np.testing.assert_allclose(face.landmarks, five_point_from_mesh(face.mesh), atol=1e-4)
    assert not np.allclose(face.landmarks, _scaled(TARGET_FACES[0], 2.0).landmarks, atol=0.5)
    with pytest.raises(UnsupportedOptionError, match="face mesh"):
        _swap(_ports(), SwapOptions(refine_landmarks=True))
    # a video's planned faces (select=False) are refined the same way
    identity = asyncio.run(SwapOrchestrator(ports).source_identity(SOURCE, SwapOptions()))
    planned = [[_scaled(TARGET_FACES[0], 2.0)]]
    landmarker.calls.clear()
    frames = asyncio.run(
        SwapOrchestrator(ports).swap_frames(
            [TARGET], identity, SwapOptions(refine_landmarks=True), faces=planned, select=False
        )
    )
    assert landmarker.calls == [1]
    np.testing.assert_allclose(frames[0].faces[0].landmarks, face.landmarks, atol=1e-4)
