"""Tracks across frames: association, gap filling, selection per track and the sidecar, on synthetic
sequences whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.tracking import (
    SIDECAR_COLUMNS,
    Track,
    TrackBuilder,
    TrackedFace,
    Tracker,
    TrackerConfig,
    Tracks,
    TrackSelector,
    associate,
    face_row,
    fill_gaps,
    iou_matrix,
    main_track,
    match_reference,
    move_geometry,
    read_sidecar,
    row_to_face,
    select_tracks,
    track_offline,
    tracks_to_rows,
    write_sidecar,
)
from pipeline.types import Face

# Landmarks of a face of size 1 centred at the origin (eyes, nose, mouth corners).
_LAYOUT = np.array([[-0.2, -0.12], [0.2, -0.12], [0.0, 0.05], [-0.15, 0.22], [0.15, 0.22]], np.float32)


def _face(cx: float, cy: float, size: float = 100.0, score: float = 0.9, embedding=None) -> Face:
    half = size / 2
    bbox = np.array([cx - half, cy - half, cx + half, cy + half], np.float32)
    landmarks = (_LAYOUT * size + [cx, cy]).astype(np.float32)
    return Face(bbox, landmarks, score, embedding)


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


def _tracked(frame: int, track_id: int, cx: float, size: float = 100.0, source="detected", embedding=None):
    face = _face(cx, 100.0, size)
    return TrackedFace(frame, track_id, face.bbox, face.landmarks, 0.9, source, embedding)


# ---------------------------------------------------------------------------------------------- association
def test_iou_matrix_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_associate_is_one_to_one_best_first_and_gated():
    tracks = np.array([[0, 0, 100, 100], [200, 0, 300, 100]], np.float32)
    dets = np.array([[210, 0, 310, 100], [5, 0, 105, 100], [600, 0, 700, 100]], np.float32)
    assert associate(tracks, dets) == [(0, 1), (1, 0)]
    # A detection far from every track matches nothing, and the threshold gates weak overlaps.
    assert associate(tracks, dets[2:]) == []
    assert associate(tracks[:1], np.array([[60, 0, 160, 100]], np.float32), min_iou=0.3) == []


def test_associate_embeddings_veto_another_person_and_break_ties():
    box = np.array([[0, 0, 100, 100]], np.float32)
    same, other = _unit(1, 0, 0), _unit(0, 1, 0)
    # Full overlap, but a different identity: never matched.
    assert associate(box, box, [same], [other]) == []
    assert associate(box, box, [same], [same]) == [(0, 0)]
    # Two detections overlap the track equally; the embedding picks the same person.
    dets = np.array([[10, 0, 110, 100], [-10, 0, 90, 100]], np.float32)
    assert associate(box, dets, [same], [other, same], max_embedding_distance=2.0) == [(0, 1)]


# ---------------------------------------------------------------------------------------------- streaming
def test_tracker_keeps_ids_of_two_faces_crossing_with_overlapping_boxes():
    tracker = Tracker()
    ids = {"left": set(), "right": set()}
    for t in range(40):
        a = _face(100 + 10 * t, 100)  # moves right
        b = _face(490 - 10 * t, 130)  # moves left, crossing a around t = 19
        faces = tracker.update(t, [b, a] if t % 2 else [a, b])
        assert len(faces) == 2 and all(f.source == "detected" for f in faces)
        for f in faces:
            ids["left" if abs(f.bbox[0] + 50 - (100 + 10 * t)) < 1 else "right"].add(f.track_id)
    assert ids == {"left": {0}, "right": {1}}


def test_tracker_coasts_through_a_short_miss_and_ends_after_a_long_one():
    tracker = Tracker(TrackerConfig(max_gap=3))
    for t in range(5):
        out = tracker.update(t, [_face(100 + 4 * t, 100)])
        assert [f.track_id for f in out] == [0]
    # Missed frames 5..7: the motion prediction is returned as "tracked", on the constant-velocity path.
    for t in range(5, 8):
        (coasted,) = tracker.update(t, [])
        assert coasted.source == "tracked" and coasted.track_id == 0
        np.testing.assert_allclose(coasted.landmarks, _face(100 + 4 * t, 100).landmarks, atol=1e-3)
    (back,) = tracker.update(8, [_face(132, 100)])
    assert back.track_id == 0 and back.source == "detected"
    # A miss longer than max_gap ends the track; the same place later starts a new id.
    for t in range(9, 13):
        out = tracker.update(t, [])
    assert out == [] and tracker.live() == []
    assert tracker.update(13, [_face(152, 100)])[0].track_id == 1


def test_tracker_without_coasting_returns_only_observations():
    tracker = Tracker(TrackerConfig(coast=False))
    tracker.update(0, [_face(100, 100)])
    assert tracker.update(1, []) == []
    assert len(tracker.live()) == 1


def test_tracker_uses_followed_positions_until_max_undetected():
    tracker = Tracker(TrackerConfig(max_undetected=2, max_gap=0, coast=False))
    tracker.update(0, [_face(100, 100)])
    for t in (1, 2):
        (f,) = tracker.update(t, [], {0: _face(100 + t, 100)})
        assert f.source == "tracked"
        np.testing.assert_allclose(f.landmarks, _face(100 + t, 100).landmarks)
    # Three frames since the last detection: a followed position alone no longer keeps the track.
    assert tracker.update(3, [], {0: _face(103, 100)}) == []
    assert tracker.live() == []


def test_a_followed_box_on_another_tracks_detection_counts_as_a_miss():
    tracker = Tracker(TrackerConfig(coast=False))
    tracker.update(0, [_face(100, 100), _face(300, 100)])
    # Track 1's follower slid onto track 0's face; the detector sees only that face.
    out = tracker.update(1, [_face(102, 100)], {0: _face(102, 100), 1: _face(110, 100)})
    assert [(f.track_id, f.source) for f in out] == [(0, "detected")]


def test_tracker_prefers_the_followed_box_for_association():
    tracker = Tracker()
    tracker.update(0, [_face(100, 100)])
    # The face jumped 80 px (beyond any IoU with the old box); the follower saw it, so the detection joins.
    (f,) = tracker.update(1, [_face(180, 100)], {0: _face(178, 100)})
    assert f.track_id == 0 and f.source == "detected"


def test_tracker_keeps_a_running_mean_embedding_and_rejects_other_identities():
    tracker = Tracker()
    e1, e2 = _unit(1, 0.1, 0), _unit(1, -0.1, 0)
    tracker.update(0, [_face(100, 100, embedding=e1)])
    (f,) = tracker.update(1, [_face(101, 100, embedding=e2)])
    np.testing.assert_allclose(f.embedding, _unit(1, 0, 0), atol=1e-6)
    # Same place, different person: a new track.
    out = tracker.update(2, [_face(102, 100, embedding=_unit(0, 0, 1))])
    assert [x.track_id for x in out if x.source == "detected"] == [1]


def test_tracker_rejects_frames_out_of_order():
    tracker = Tracker()
    tracker.update(3, [])
    with pytest.raises(InvalidInputError):
        tracker.update(3, [])


@pytest.mark.parametrize(
    "kwargs", [{"max_gap": -1}, {"min_iou": 1.5}, {"max_undetected": -2}, {"velocity_smoothing": 2.0}]
)
def test_tracker_config_is_validated(kwargs):
    with pytest.raises(InvalidOptionError):
        TrackerConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- offline
def test_track_offline_interpolates_short_gaps_exactly_and_splits_long_ones():
    truth = {t: _face(100 + 3 * t, 100 + t, 100 + t) for t in range(30)}
    frames = [[truth[t]] if t not in (5, 6, 7) and not 15 <= t < 21 else [] for t in range(30)]
    tracks = track_offline(frames, TrackerConfig(max_gap=5))
    assert tracks.frame_count == 30
    assert [(t.first, t.last) for t in tracks] == [(0, 14), (21, 29)]
    first = tracks.tracks[0]
    assert [f.source for f in first.faces[4:9]] == ["detected"] + ["interpolated"] * 3 + ["detected"]
    for face in first.faces:
        np.testing.assert_allclose(face.landmarks, truth[face.frame_index].landmarks, atol=1e-3)
        np.testing.assert_allclose(face.bbox, truth[face.frame_index].bbox, atol=1e-3)
    per_frame = tracks.per_frame()
    assert [len(f) for f in per_frame] == [1] * 15 + [0] * 6 + [1] * 9


def test_fill_gaps_values_and_order_check():
    a, b = _tracked(0, 7, 100.0), _tracked(4, 7, 140.0)
    filled = fill_gaps([a, b])
    assert [f.frame_index for f in filled] == [0, 1, 2, 3, 4]
    assert [f.source for f in filled] == [
        "detected",
        "interpolated",
        "interpolated",
        "interpolated",
        "detected",
    ]
    np.testing.assert_allclose(filled[2].landmarks, _tracked(2, 7, 120.0).landmarks, atol=1e-4)
    with pytest.raises(InvalidInputError):
        fill_gaps([b, a])


def test_track_requires_consecutive_frames():
    with pytest.raises(InvalidInputError):
        Track(0, (_tracked(0, 0, 1.0), _tracked(2, 0, 1.0)))
    with pytest.raises(InvalidInputError):
        Track(0, ())


def test_track_builder_gives_each_track_its_mean_embedding():
    builder = TrackBuilder()
    builder.add(0, [_tracked(0, 0, 100.0, embedding=_unit(1, 0.2))])
    builder.add(1, [_tracked(1, 0, 101.0, source="tracked")])
    builder.add(2, [_tracked(2, 0, 102.0, embedding=_unit(1, -0.2))])
    (track,) = builder.build()
    np.testing.assert_allclose(track.embedding, _unit(1, 0), atol=1e-6)
    assert all(np.allclose(f.embedding, track.embedding) for f in track.faces)
    with pytest.raises(InvalidInputError):
        builder.add(3, [_tracked(4, 0, 1.0)])


def test_move_geometry_applies_a_similarity():
    angle, scale = np.deg2rad(10), 1.2
    m = np.array(
        [
            [scale * np.cos(angle), -scale * np.sin(angle), 5],
            [scale * np.sin(angle), scale * np.cos(angle), -3],
        ]
    )
    face = _face(50, 60, 40)
    box, landmarks = move_geometry(m, face.bbox, face.landmarks)
    np.testing.assert_allclose(landmarks, face.landmarks @ m[:, :2].T + m[:, 2], atol=1e-4)
    centre = m[:, :2] @ [50, 60] + m[:, 2]
    np.testing.assert_allclose(box, [*(centre - 24), *(centre + 24)], atol=1e-4)


# ---------------------------------------------------------------------------------------------- selection
def _track(track_id: int, first: int, length: int, size: float, embedding=None) -> Track:
    faces = tuple(_tracked(first + k, track_id, 100.0 + k, size, embedding=embedding) for k in range(length))
    return Track(track_id, faces, embedding)


def test_main_track_is_area_times_duration_not_the_largest_face():
    short_big = _track(0, 0, 10, 200.0)  # 10 x 40,000
    long_medium = _track(1, 0, 75, 100.0)  # 75 x 10,000
    assert main_track([short_big, long_medium]) is long_medium
    assert main_track([]) is None
    assert select_tracks([short_big, long_medium], "one") == [long_medium]
    assert select_tracks([long_medium, short_big], "many") == [long_medium, short_big]


def test_match_reference_uses_each_tracks_mean_embedding_once():
    ref = _unit(1, 0, 0)
    near, far, closer = _unit(1, 0.5, 0), _unit(0, 1, 0), _unit(1, 0.1, 0)
    tracks = [_track(0, 0, 5, 100, near), _track(1, 0, 5, 100, far), _track(2, 0, 5, 100, closer)]
    assert [t.track_id for t in match_reference(tracks, ref, 0.3)] == [2, 0]
    assert [t.track_id for t in select_tracks(tracks, "reference", ref, 0.01)] == [2]
    with pytest.raises(InvalidOptionError):
        match_reference([_track(0, 0, 3, 100)], ref)
    with pytest.raises(InvalidOptionError):
        select_tracks(tracks, "reference")
    with pytest.raises(InvalidOptionError):
        select_tracks(tracks, "largest")


def test_track_selector_one_keeps_its_track_while_another_grows_larger():
    selector = TrackSelector("one")
    assert selector.select([]) == []
    picks = []
    for t in range(10):
        a = _tracked(t, 0, 100.0, size=120 - 5 * t)
        b = _tracked(t, 1, 400.0, size=80 + 5 * t)
        picks.append(selector.select([a, b])[0].track_id)
    assert picks == [0] * 10
    # The locked track ended: the largest present face is taken and kept.
    assert selector.select([_tracked(10, 1, 400.0, 130), _tracked(10, 2, 50.0, 60)])[0].track_id == 1
    assert selector.select([_tracked(11, 1, 400.0, 10), _tracked(11, 2, 50.0, 60)])[0].track_id == 1


def test_track_selector_reference_decides_once_per_track():
    ref = _unit(1, 0)
    selector = TrackSelector("reference", ref, max_distance=0.2)
    undecided = _tracked(0, 0, 100.0)
    assert selector.select([undecided]) == []
    match = _tracked(1, 0, 100.0, embedding=_unit(1, 0.1))
    assert selector.select([match]) == [match]
    # Decided: a later, different mean embedding of the same track does not flip it.
    drift = _tracked(2, 0, 100.0, embedding=_unit(0, 1))
    assert selector.select([drift]) == [drift]
    assert selector.select([_tracked(3, 5, 100.0, embedding=_unit(0, 1))]) == []
    with pytest.raises(InvalidOptionError):
        TrackSelector("reference")
    many = TrackSelector("many")
    small, big = _tracked(0, 0, 1.0, 50), _tracked(0, 1, 1.0, 90)
    assert many.select([small, big]) == [big, small]


# ---------------------------------------------------------------------------------------------- sidecar
def test_sidecar_rows_have_the_documented_columns_and_pts():
    tracks = Tracks((Track(3, (_tracked(0, 3, 100.0), _tracked(1, 3, 101.5, source="interpolated"))),), 2)
    rows = tracks_to_rows(tracks, pts=[0, 512])
    assert [list(r) for r in rows] == [list(SIDECAR_COLUMNS)] * 2
    assert rows[1]["frame"] == 1 and rows[1]["pts"] == 512 and rows[1]["source"] == "interpolated"
    assert len(rows[0]["box"]) == 4 and len(rows[0]["landmarks"]) == 10
    assert rows[0]["landmarks"][:2] == [round(100.0 - 20.0, 2), round(100.0 - 12.0, 2)]
    assert face_row(tracks.tracks[0].faces[0])["pts"] is None
    assert tracks_to_rows([tracks.tracks[0].faces[1]], {1: 77})[0]["pts"] == 77


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_sidecar_round_trips_through_files(tmp_path, suffix):
    faces = [_tracked(t, t % 2, 100.0 + 0.123 * t, source=("detected", "tracked")[t % 2]) for t in range(6)]
    rows = tracks_to_rows(faces, pts=[t * 1000 for t in range(6)])
    path = write_sidecar(rows, tmp_path / f"tracks{suffix}")
    back = read_sidecar(path)
    assert len(back) == 6 and [r["pts"] for r in back] == [t * 1000 for t in range(6)]
    for row, face in zip(back, faces, strict=True):
        restored = row_to_face(row)
        assert (restored.frame_index, restored.track_id, restored.source) == (
            face.frame_index,
            face.track_id,
            face.source,
        )
        np.testing.assert_allclose(restored.landmarks, face.landmarks, atol=0.006)
        np.testing.assert_allclose(restored.bbox, face.bbox, atol=0.006)


def test_sidecar_rejects_unknown_formats_and_sources(tmp_path):
    with pytest.raises(InvalidOptionError):
        write_sidecar([], tmp_path / "x.csv")
    with pytest.raises(InvalidOptionError):
        read_sidecar(tmp_path / "x.csv")
    row = face_row(_tracked(0, 0, 1.0))
    with pytest.raises(InvalidInputError):
        row_to_face({**row, "source": "guessed"})
