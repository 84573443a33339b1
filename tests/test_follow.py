"""Optical-flow following and keyframe detection, on synthetic frames made by moving a textured image
through known similarity transforms (so every frame's true landmarks are known), and on the real
astronaut video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidOptionError
from pipeline.follow import FollowConfig, KeyframeTracker, follow_face, track_video
from pipeline.tracking import TrackerConfig
from pipeline.types import Face

SIZE = (320, 240)  # width, height
_LAYOUT = np.array([[-0.2, -0.12], [0.2, -0.12], [0.0, 0.05], [-0.15, 0.22], [0.15, 0.22]])


def _texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    m = cv2.getRotationMatrix2D((SIZE[0] / 2, SIZE[1] / 2), angle_deg, scale)
    m[:, 2] += shift
    return m


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:, :2].T + m[:, 2]


SOURCE_FACE = _LAYOUT * 100 + [160.0, 120.0]  # (5, 2) landmarks of a 100 px face in the source image


def _face_at(landmarks: np.ndarray, score: float = 0.9) -> Face:
    """A face whose box is centred on ``landmarks`` and sized by its eye distance (0.4 of the box)."""
    centre = landmarks.mean(axis=0)
    size = float(np.linalg.norm(landmarks[1] - landmarks[0])) / 0.4
    box = np.array([*(centre - size / 2), *(centre + size / 2)], np.float32)
    return Face(box, landmarks.astype(np.float32), score)


class Scene:
    """Frames of the texture through a smooth camera path, optionally with a grey occluder, and a fake
    detector that returns the true face (plus seeded noise) unless it is occluded; counts its calls."""

    def __init__(self, frames: int = 20, occluded: tuple[int, ...] = (), noise: float = 0.0) -> None:
        self.texture = _texture()
        self.matrices = [_similarity(0.3 * t, 1.0 + 0.004 * t, (2.0 * t, -1.0 * t)) for t in range(frames)]
        self.truth = [_apply(m, SOURCE_FACE) for m in self.matrices]
        self.occluded = set(occluded)
        self.rng = np.random.default_rng(5)
        self.noise = noise
        self.calls: list[int] = []
        self.images = [self._render(t) for t in range(frames)]

    def _render(self, t: int) -> np.ndarray:
        image = cv2.warpAffine(
            self.texture, self.matrices[t], SIZE, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
        )
        if t in self.occluded:
            lo = self.truth[t].min(axis=0) - 45
            hi = self.truth[t].max(axis=0) + 45
            cv2.rectangle(image, tuple(int(v) for v in lo), tuple(int(v) for v in hi), (128, 128, 128), -1)
        return image

    def detect(self, image: np.ndarray) -> list[Face]:
        t = next(i for i, im in enumerate(self.images) if im is image)
        self.calls.append(t)
        if t in self.occluded:
            return []
        return [
            _face_at(self.truth[t] + self.rng.normal(0, self.noise, (5, 2)) if self.noise else self.truth[t])
        ]


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


# ---------------------------------------------------------------------------------------------- follow_face
def test_follow_face_recovers_a_known_motion():
    texture = _texture()
    motion = _similarity(2.0, 1.03, (6.0, -4.0))
    moved = cv2.warpAffine(texture, motion, SIZE, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    result = follow_face(_gray(texture), _gray(moved), _face_at(SOURCE_FACE))
    assert result.motion is not None and result.confidence > 0.8
    np.testing.assert_allclose(result.face.landmarks, _apply(motion, SOURCE_FACE), atol=0.3)
    np.testing.assert_allclose(result.motion[:, :2], motion[:, :2], atol=0.01)
    np.testing.assert_allclose(result.motion[:, 2], motion[:, 2], atol=1.5)
    assert result.face.score == pytest.approx(0.9)


def test_follow_face_fails_on_an_occluder_and_on_a_leap_from_the_prediction():
    scene = Scene(frames=3, occluded=(1,))
    face = _face_at(scene.truth[0])
    hidden = follow_face(_gray(scene.images[0]), _gray(scene.images[1]), face)
    assert hidden.motion is None
    np.testing.assert_array_equal(hidden.face.landmarks, face.landmarks)
    expected_box = _face_at(scene.truth[1]).bbox
    ok = follow_face(
        _gray(scene.images[0]), _gray(scene.images[2]), face, expected=_face_at(scene.truth[2]).bbox
    )
    assert ok.motion is not None
    far = expected_box + np.array([40, 0, 40, 0], np.float32)
    assert follow_face(_gray(scene.images[0]), _gray(scene.images[2]), face, expected=far).motion is None


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 2}, {"fb_threshold": 0}, {"min_confidence": 1.5}, {"min_landmarks": 6}, {"work_size": 8}],
)
def test_follow_config_is_validated(kwargs):
    with pytest.raises(InvalidOptionError):
        FollowConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- keyframes
def test_keyframe_tracker_detects_every_k_frames_and_follows_in_between():
    scene = Scene(frames=20)
    tracker = KeyframeTracker(scene.detect, detect_every=4, smoothing=0.0)
    sources = []
    for t, image in enumerate(scene.images):
        (face,) = tracker.process(t, image)
        assert face.track_id == 0 and face.frame_index == t
        np.testing.assert_allclose(face.landmarks, scene.truth[t], atol=0.5)
        sources.append(face.source)
    assert scene.calls == [0, 4, 8, 12, 16]
    assert tracker.detector_calls == 5 and tracker.frames == 20
    assert sources == (["detected"] + ["tracked"] * 3) * 5


def test_keyframe_tracker_keeps_following_over_long_keyframe_intervals():
    scene = Scene(frames=25)
    tracker = KeyframeTracker(scene.detect, detect_every=10, tracker=TrackerConfig(coast=False))
    out = [tracker.step(t, image) for t, image in enumerate(scene.images)]
    assert [len(faces) for faces in out] == [1] * 25 and {f[0].track_id for f in out} == {0}
    assert scene.calls == [0, 10, 20]


def test_keyframe_tracker_streams_through_an_occlusion_and_detects_right_after_it():
    scene = Scene(frames=20, occluded=(9, 10))
    tracker = KeyframeTracker(scene.detect, detect_every=4, max_gap=5)
    out = [tracker.process(t, image) for t, image in enumerate(scene.images)]
    assert all(len(faces) == 1 and faces[0].track_id == 0 for faces in out)  # no frame left without a face
    assert [out[t][0].source for t in (9, 10, 11)] == ["tracked", "tracked", "detected"]
    # The failed follow at 9 brings the detection forward; while the face is missed it is looked for
    # every detect_every // 2 frames, then the regular schedule resumes from the last call.
    assert scene.calls == [0, 4, 8, 9, 11, 15, 19]
    for t in (9, 10):  # coasted on the track's motion: close to the truth
        assert np.abs(out[t][0].landmarks - scene.truth[t]).max() < 2.0


def test_track_video_interpolates_an_occlusion_and_reports_calls():
    scene = Scene(frames=20, occluded=(9, 10))
    result = track_video(enumerate(scene.images), scene.detect, detect_every=4, smoothing=0.0)
    (track,) = result.tracks
    assert (track.first, track.last) == (0, 19)
    assert [track.faces[t].source for t in (8, 9, 10, 11)] == [
        "detected",
        "interpolated",
        "interpolated",
        "detected",
    ]
    assert result.detector_calls == len(scene.calls) == 7 and result.frames == 20
    assert result.calls_per_frame == pytest.approx(7 / 20)
    for t in range(20):
        np.testing.assert_allclose(track.faces[t].landmarks, scene.truth[t], atol=1.0)


def test_track_video_smoothing_removes_detector_noise():
    def run(smoothing: float) -> tuple[float, float]:
        scene = Scene(frames=40, noise=1.5)
        (track,) = track_video(
            enumerate(scene.images), scene.detect, detect_every=2, smoothing=smoothing
        ).tracks
        landmarks = track.landmarks()
        truth = np.stack(scene.truth)
        second = landmarks[2:] - 2 * landmarks[1:-1] + landmarks[:-2]
        return float(np.sqrt(np.mean((landmarks - truth) ** 2))), float(np.sqrt(np.mean(second**2)))

    raw_error, raw_jitter = run(0.0)
    error, jitter = run(0.5)
    assert error < raw_error
    assert jitter < 0.5 * raw_jitter


def test_keyframe_tracker_options_are_validated():
    with pytest.raises(InvalidOptionError):
        KeyframeTracker(lambda image: [], detect_every=0)
    with pytest.raises(InvalidOptionError):
        KeyframeTracker(lambda image: [], smoothing=2.0)


# ---------------------------------------------------------------------------------------------- real video
def test_astronaut_video_tracking_beats_per_frame_detection(assets: Path):
    from bench.clips import ClipRenderer, clip
    from pipeline.models.detectors import YunetDetector
    from pipeline.sessions import SessionConfig, create_session
    from pipeline.video import read_frames

    detector = YunetDetector(
        create_session(
            assets / "models" / "face_detection_yunet_2026may.onnx", SessionConfig(providers=("cpu",))
        )
    )
    spec = clip("astronaut")
    truth = ClipRenderer(assets, spec, detector.detect).truth().landmarks[:, 0]
    frames = [f.image for f in read_frames(assets / "video" / spec.shipped) if f.index < 40]
    per_frame = np.stack([detector.detect(image)[0].landmarks for image in frames])
    result = track_video(enumerate(frames), detector.detect)
    (track,) = result.tracks
    assert (track.first, track.last) == (0, 39)
    tracked = track.landmarks()

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.sum((x - truth[:40]) ** 2, axis=-1))))

    def jitter(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.sum((x[2:] - 2 * x[1:-1] + x[:-2]) ** 2, axis=-1))))

    assert result.calls_per_frame <= 0.35
    assert rms(tracked) <= 1.05 * rms(per_frame)
    assert jitter(tracked) <= 0.5 * jitter(per_frame)


def test_clip_truth_matches_the_shipped_video(assets: Path):
    """The bench's truth rests on reproducing the generator's camera: rendered frames equal the shipped
    video's decoded frames up to H.264 noise, and YuNet's landmarks lie near the mapped photo landmarks."""
    from bench.clips import ClipRenderer, clip
    from pipeline.models.detectors import YunetDetector
    from pipeline.sessions import SessionConfig, create_session
    from pipeline.video import read_frames

    detector = YunetDetector(
        create_session(
            assets / "models" / "face_detection_yunet_2026may.onnx", SessionConfig(providers=("cpu",))
        )
    )
    spec = clip("astronaut")
    renderer = ClipRenderer(assets, spec, detector.detect)
    truth = renderer.truth()
    assert truth.landmarks.shape == (75, 1, 5, 2) and truth.visible.all()
    for frame in read_frames(assets / "video" / spec.shipped):
        if frame.index in (0, 37, 74):
            diff = renderer.render(frame.index).astype(np.float64) - frame.image
            assert 10 * np.log10(255**2 / np.mean(diff**2)) > 35.0
            (face,) = detector.detect(frame.image)
            assert np.linalg.norm(face.landmarks - truth.landmarks[frame.index, 0], axis=1).max() < 15.0
