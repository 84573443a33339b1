"""The video face plan (pipeline.video_faces), without Ray or models: synthetic frames (textured patches
moved along known paths, so every frame's true landmarks are known) and a fake detector that returns the
true faces and counts its calls."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.options import SwapOptions
from pipeline.tracking import SIDECAR_COLUMNS, read_sidecar, write_sidecar
from pipeline.types import Face, ImageBGR
from pipeline.video import VideoFrame
from pipeline.video_faces import PlannedFace, detected, plan_video_faces, sidecar_rows

SIZE = (320, 240)  # width, height
_LAYOUT = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
"""Landmarks of a face as fractions of its square box."""


def _texture(seed: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 1.5)


class Person:
    """A textured square moving along a straight line while its side changes linearly."""

    def __init__(
        self, seed: int, start: tuple[float, float], end: tuple[float, float], sides: tuple[float, float]
    ):
        self.texture = _texture(seed, 128)
        self.start, self.end, self.sides = np.array(start), np.array(end), sides

    def box(self, t: float) -> np.ndarray:
        centre = self.start + (self.end - self.start) * t
        side = self.sides[0] + (self.sides[1] - self.sides[0]) * t
        return np.array([*(centre - side / 2), *(centre + side / 2)])

    def face(self, t: float) -> Face:
        box = self.box(t)
        landmarks = box[:2] + _LAYOUT * (box[2] - box[0])
        return Face(box.astype(np.float32), landmarks.astype(np.float32), 0.9)

    def paint(self, image: np.ndarray, t: float) -> None:
        x1, y1, x2, y2 = (int(round(v)) for v in self.box(t))
        image[y1:y2, x1:x2] = cv2.resize(self.texture, (x2 - x1, y2 - y1), interpolation=cv2.INTER_AREA)


class Scene:
    """Frames of people (later ones in front) over a textured background, an optional grey occluder over
    person 0, and a detector that finds each visible person exactly; it records the frames it ran on."""

    def __init__(self, people: list[Person], frames: int, occluded: tuple[int, ...] = ()) -> None:
        self.people = people
        self.count = frames
        self.occluded = set(occluded)
        background = cv2.resize(_texture(99, 64), SIZE, interpolation=cv2.INTER_LINEAR)
        self.images: list[ImageBGR] = []
        for index in range(frames):
            image = background.copy()
            for person in people:
                person.paint(image, self.t(index))
            if index in occluded:
                x1, y1, x2, y2 = (int(v) for v in people[0].box(self.t(index)))
                image[y1 - 10 : y2 + 10, x1 - 10 : x2 + 10] = 128
            self.images.append(image)
        self.calls: list[int] = []

    def t(self, index: int) -> float:
        return index / (self.count - 1)

    def frames(self) -> list[VideoFrame]:
        return [VideoFrame(i, 1000 + 40 * i, i / 25, image) for i, image in enumerate(self.images)]

    def detect(self, image: ImageBGR) -> list[Face]:
        index = next(i for i, im in enumerate(self.images) if im is image)
        self.calls.append(index)
        return [
            p.face(self.t(index))
            for k, p in enumerate(self.people)
            if not (k == 0 and index in self.occluded)
        ]

    def person_of(self, face: Face, index: int) -> int:
        """The person whose true landmarks are nearest to the face's."""
        errors = [np.abs(p.face(self.t(index)).landmarks - face.landmarks).mean() for p in self.people]
        return int(np.argmin(errors))


def _walker() -> Person:
    return Person(1, (70.0, 120.0), (250.0, 125.0), (80.0, 84.0))


def _crossing() -> Scene:
    """Person 0 crosses left to right at about one size; person 1 passes right to left in front of it while
    growing, so the largest face of a frame changes person two thirds of the way; person 0 has the larger
    area x duration."""
    return Scene([_walker(), Person(2, (260.0, 130.0), (60.0, 125.0), (50.0, 100.0))], 36)


def _plan(scene: Scene, **options: object):
    return plan_video_faces(scene.frames(), scene.detect, SwapOptions(**options), max_faces=16)


def test_a_short_occlusion_is_filled_by_interpolation_and_keyframes_are_counted():
    scene = Scene([_walker()], 30, occluded=(12, 13, 14))
    plan = _plan(scene)
    assert plan.tracking and plan.tracks == 1 and plan.frames_without_face == 0
    assert plan.keyframes == tuple(scene.calls) and plan.detector_calls == len(scene.calls)
    assert plan.calls_per_frame <= 0.35 and plan.keyframes[0] == 0
    assert 12 in scene.calls  # the failed follow brought the detector forward
    sources = [faces[0].source for faces in plan.per_frame]
    assert sources[12:15] == ["interpolated"] * 3 and set(sources) == {"detected", "tracked", "interpolated"}
    for index, (planned,) in enumerate(plan.per_frame):
        truth = scene.people[0].face(scene.t(index)).landmarks
        assert np.abs(planned.face.landmarks - truth).max() < 1.5, index
    untracked = _plan(Scene([_walker()], 30, occluded=(12, 13, 14)), tracking=False)
    assert [i for i, faces in enumerate(untracked.per_frame) if not faces] == [12, 13, 14]


def test_one_mode_keeps_the_main_track_when_two_faces_cross():
    scene = _crossing()
    plan = _plan(scene)
    assert plan.tracks == 2
    assert all(len(faces) == 1 for faces in plan.per_frame)
    assert {faces[0].track_id for faces in plan.per_frame} == {0}
    assert {scene.person_of(faces[0].face, i) for i, faces in enumerate(plan.per_frame)} == {0}
    # detected on every frame and chosen per frame, the largest face changes person
    per_frame = _plan(_crossing(), tracking=False)
    people = [scene.person_of(faces[0].face, i) for i, faces in enumerate(per_frame.per_frame)]
    assert people[0] == 0 and people[-1] == 1


def test_many_mode_keeps_every_track_and_max_faces_keeps_the_best_ranked_one():
    scene = _crossing()
    plan = _plan(scene, face_selector_mode="many")
    assert all(len(faces) == 2 for faces in plan.per_frame)
    for faces in plan.per_frame:  # largest first, the order the orchestration keeps
        assert faces[0].face.area >= faces[1].face.area
    other = _crossing()
    limited = plan_video_faces(
        other.frames(), other.detect, SwapOptions(face_selector_mode="many"), max_faces=1
    )
    assert {faces[0].track_id for faces in limited.per_frame} == {0}  # no flicker as sizes change


def test_reference_mode_decides_once_per_track_with_embeddings_of_the_keyframes():
    scene = _crossing()
    vectors = np.eye(2, 8, dtype=np.float32)
    embedded: list[int] = []

    def embed(image: ImageBGR, faces: list[Face]) -> np.ndarray:
        index = next(i for i, im in enumerate(scene.images) if im is image)
        embedded.append(index)
        return np.stack([vectors[scene.person_of(f, index)] for f in faces])

    options = SwapOptions(face_selector_mode="reference")
    plan = plan_video_faces(
        scene.frames(), scene.detect, options, max_faces=4, embed=embed, reference=vectors[1]
    )
    assert embedded == scene.calls and plan.embedder_calls == len(embedded)  # keyframes only
    assert {scene.person_of(faces[0].face, i) for i, faces in enumerate(plan.per_frame)} == {1}
    assert all(len(faces) == 1 for faces in plan.per_frame)
    with pytest.raises(InvalidOptionError, match="embedder and a reference"):
        plan_video_faces(scene.frames(), scene.detect, options, max_faces=4)


def test_tracking_off_is_per_frame_detection():
    scene = _crossing()
    plan = _plan(scene, tracking=False, face_selector_mode="many")
    assert not plan.tracking and plan.tracks == 0
    assert plan.keyframes == tuple(range(36)) == tuple(scene.calls)
    for index, faces in enumerate(plan.per_frame):
        assert [(p.track_id, p.source) for p in faces] == [(None, "detected")] * 2
        expected = sorted(scene.detect(scene.images[index]), key=lambda f: -f.area)
        assert all(np.array_equal(p.face.bbox, e.bbox) for p, e in zip(faces, expected, strict=True))


def test_sidecar_rows_round_trip_with_pts(tmp_path: Path):
    scene = Scene([_walker()], 12, occluded=(5,))
    plan = _plan(scene)
    rows = plan.rows()
    assert [r["frame"] for r in rows] == list(range(12))
    assert [r["pts"] for r in rows] == [1000 + 40 * i for i in range(12)]
    assert all(tuple(r) == SIDECAR_COLUMNS for r in rows)
    assert rows[5]["source"] == "interpolated" and {r["track_id"] for r in rows} == {0}
    assert rows[0]["landmarks"] == [round(float(v), 2) for v in plan.per_frame[0][0].face.landmarks.ravel()]
    assert read_sidecar(write_sidecar(rows, tmp_path / "tracks.jsonl")) == rows
    parquet = read_sidecar(write_sidecar(rows, tmp_path / "tracks.parquet"))
    assert [(r["frame"], r["track_id"], r["source"]) for r in parquet] == [
        (r["frame"], r["track_id"], r["source"]) for r in rows
    ]
    untracked = sidecar_rows(7, None, detected([scene.people[0].face(0.5)]))
    assert [(r["frame"], r["pts"], r["track_id"], r["source"]) for r in untracked] == [
        (7, None, None, "detected")
    ]


def test_planned_faces_feed_the_swap_and_the_range_is_checked():
    scene = Scene([_walker()], 8)
    plan = _plan(scene)
    faces = plan.faces(2, 5)
    assert len(faces) == 3 and all(isinstance(f[0], Face) and f[0].embedding is None for f in faces)
    assert all(isinstance(p, PlannedFace) for frame in plan.per_frame for p in frame)
    with pytest.raises(InvalidInputError, match="not in the plan"):
        plan.faces(6, 9)
    shuffled = scene.frames()
    shuffled[3], shuffled[4] = shuffled[4], shuffled[3]
    with pytest.raises(InvalidInputError, match="frame 4 came where frame 3"):
        plan_video_faces(shuffled, scene.detect, SwapOptions(), max_faces=1)
    with pytest.raises(InvalidOptionError, match="max_faces"):
        plan_video_faces(scene.frames(), scene.detect, SwapOptions(), max_faces=0)


@pytest.mark.parametrize(
    ("name", "value"), [("smoothing", 1.5), ("max_gap", -1), ("detect_every", 0), ("tracking", "maybe")]
)
def test_the_tracking_options_are_validated(name: str, value: object):
    with pytest.raises(InvalidOptionError, match=name):
        SwapOptions.from_mapping({name: value})
    assert SwapOptions.from_mapping({"tracking": "off", "detect_every": "2"}).detect_every == 2
    assert (SwapOptions().tracking, SwapOptions().smoothing, SwapOptions().max_gap) == (True, 0.5, 5)
