"""Face tracks across video frames: association, gap filling, selection per track, and the sidecar rows.

One core, two modes:

- **Streaming** (:class:`Tracker`): ``update(frame_index, detections, followed)`` once per frame, in order.
  It keeps only the live tracks (a few arrays each), so memory does not grow with the video. A track that
  misses a frame is *coasted* (its constant-velocity prediction is returned with source ``tracked``) for
  up to ``max_gap`` frames, then ended.
- **Offline** (:func:`track_offline`, or :class:`TrackBuilder` around any streaming run): the same core
  without coasting records what was observed; a gap of up to ``max_gap`` frames inside a track is then
  filled by interpolating boxes and landmarks linearly between the observations around it (source
  ``interpolated``), so nothing is extrapolated.

Association is greedy on an affinity: the IoU of a track's predicted box and a detection's box, plus
``embedding_weight`` times the cosine similarity when both carry an identity embedding. Pairs under
``min_iou``, or (with embeddings) over ``max_embedding_distance``, never match. Greedy rather than the
Hungarian method: a frame holds a handful of faces whose gated affinities rarely conflict, and the
optimal assignment (scipy's ``linear_sum_assignment``) would add a dependency the project does not have.

Selection is per track: :func:`main_track` (``one``: the track with the largest sum of box areas over its
frames, i.e. mean area x duration), :func:`match_reference` (``reference``: each track's mean embedding
against the reference, once per track) and :class:`TrackSelector` (the same rules, causally, for
streaming).

The sidecar (:func:`tracks_to_rows`, :func:`write_sidecar`) has one row per face per frame: ``frame``,
``pts``, ``track_id``, ``box`` (4), ``landmarks`` (10: x0, y0, ... x4, y4), ``score`` and ``source``.

Coordinates are image pixels of the frame throughout; boxes are (4,) float32 x1, y1, x2, y2 and
landmarks (5, 2) float32 in the order of :data:`pipeline.types.Landmarks5`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.selection import cosine_distance
from pipeline.types import Embedding, Face, Landmarks5

Source = Literal["detected", "tracked", "interpolated"]
"""How a face of a frame was found: by the detector on this frame; by following the track from earlier
frames (optical flow, or the track's motion prediction while it is missed); or by interpolating between
two observations of the track (offline only)."""
SOURCES: tuple[Source, ...] = get_args(Source)

Box = npt.NDArray[np.float32]
"""(4,) float32 x1, y1, x2, y2 in image pixels."""


@dataclass(frozen=True)
class TrackedFace:
    """One face of one track in one frame."""

    frame_index: int
    track_id: int
    bbox: Box
    landmarks: Landmarks5
    score: float
    """The detector's score of the track's latest detection."""
    source: Source
    embedding: Embedding | None = None
    """The track's identity embedding (mean of its detections' embeddings, L2-normalised) as known when
    this face was produced; None when no detection of the track carried one."""

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    def to_face(self) -> Face:
        """As a :class:`~pipeline.types.Face` (for the swap stages), with the track's embedding."""
        return Face(self.bbox, self.landmarks, self.score, self.embedding)

    def moved(self, bbox: npt.ArrayLike, landmarks: npt.ArrayLike) -> TrackedFace:
        """The same face with new geometry (e.g. smoothed), as float32."""
        return replace(
            self,
            bbox=np.asarray(bbox, np.float32).reshape(4),
            landmarks=np.asarray(landmarks, np.float32).reshape(5, 2),
        )


@dataclass(frozen=True)
class Track:
    """A face followed through consecutive frames: exactly one :class:`TrackedFace` per frame from
    ``first`` to ``last``."""

    track_id: int
    faces: tuple[TrackedFace, ...]
    embedding: Embedding | None = None
    """Mean of the embeddings its detections carried, L2-normalised; None when none carried one."""

    def __post_init__(self) -> None:
        if not self.faces:
            raise InvalidInputError(f"track {self.track_id} has no faces")
        frames = [f.frame_index for f in self.faces]
        if frames != list(range(frames[0], frames[0] + len(frames))):
            raise InvalidInputError(f"track {self.track_id}: frames are not consecutive")

    @property
    def first(self) -> int:
        return self.faces[0].frame_index

    @property
    def last(self) -> int:
        return self.faces[-1].frame_index

    def __len__(self) -> int:
        return len(self.faces)

    def landmarks(self) -> npt.NDArray[np.float32]:
        """(T, 5, 2) float32: the landmarks of frames first..last."""
        return np.stack([f.landmarks for f in self.faces]).astype(np.float32)

    def boxes(self) -> npt.NDArray[np.float32]:
        """(T, 4) float32: the boxes of frames first..last."""
        return np.stack([f.bbox for f in self.faces]).astype(np.float32)

    def total_area(self) -> float:
        """Sum of the box areas over the track's frames: mean area x duration."""
        return float(sum(f.area for f in self.faces))

    def with_geometry(self, boxes: npt.ArrayLike, landmarks: npt.ArrayLike) -> Track:
        """The same track with new (T, 4) boxes and (T, 5, 2) landmarks (e.g. smoothed)."""
        boxes = np.asarray(boxes, np.float32).reshape(len(self), 4)
        landmarks = np.asarray(landmarks, np.float32).reshape(len(self), 5, 2)
        faces = tuple(f.moved(b, lm) for f, b, lm in zip(self.faces, boxes, landmarks, strict=True))
        return replace(self, faces=faces)


@dataclass(frozen=True)
class Tracks:
    """Every track of a video (ordered by id) and the number of frames it has."""

    tracks: tuple[Track, ...]
    frame_count: int

    def __iter__(self) -> Iterator[Track]:
        return iter(self.tracks)

    def __len__(self) -> int:
        return len(self.tracks)

    def per_frame(self) -> list[list[TrackedFace]]:
        """``frame_count`` lists: the faces of each frame, by track id."""
        frames: list[list[TrackedFace]] = [[] for _ in range(self.frame_count)]
        for track in self.tracks:
            for face in track.faces:
                frames[face.frame_index].append(face)
        return frames

    def faces(self) -> list[TrackedFace]:
        """All faces, ordered by frame, then track id."""
        return [face for frame in self.per_frame() for face in frame]


def move_geometry(
    matrix: npt.ArrayLike, bbox: npt.ArrayLike, landmarks: npt.ArrayLike
) -> tuple[Box, Landmarks5]:
    """A face's box and landmarks moved by ``matrix``, a (2, 3) similarity from image pixels to image
    pixels (e.g. a frame-to-frame motion): the landmarks are mapped; the box stays axis-aligned, its
    centre mapped and its sides scaled by the similarity's scale."""
    m = np.asarray(matrix, np.float64).reshape(2, 3)
    points = np.asarray(landmarks, np.float64).reshape(5, 2) @ m[:, :2].T + m[:, 2]
    box = np.asarray(bbox, np.float64).reshape(4)
    centre = m[:, :2] @ ((box[:2] + box[2:]) / 2) + m[:, 2]
    half = (box[2:] - box[:2]) / 2 * np.sqrt(abs(np.linalg.det(m[:, :2])))
    return np.concatenate([centre - half, centre + half]).astype(np.float32), points.astype(np.float32)


# ---------------------------------------------------------------------------------------------- association
def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(N, M) intersection over union of boxes ``a`` (N, 4) and ``b`` (M, 4), x1, y1, x2, y2."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def associate(
    track_boxes: npt.ArrayLike,
    detection_boxes: npt.ArrayLike,
    track_embeddings: Sequence[Embedding | None] | None = None,
    detection_embeddings: Sequence[Embedding | None] | None = None,
    *,
    min_iou: float = 0.3,
    embedding_weight: float = 0.5,
    max_embedding_distance: float = 0.6,
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of tracks (N boxes) to detections (M boxes).

    Affinity = IoU, plus ``embedding_weight`` x cosine similarity where the track and the detection both
    have an embedding. A pair with IoU < ``min_iou`` or, with embeddings, cosine distance >
    ``max_embedding_distance`` is never matched. Pairs are taken best affinity first (ties: lower track,
    then lower detection index). Returns (track index, detection index) pairs, by track index.
    """
    iou = iou_matrix(track_boxes, detection_boxes)
    n, m = iou.shape
    affinity = iou.copy()
    allowed = iou >= min_iou
    if track_embeddings is not None and detection_embeddings is not None:
        for i, te in enumerate(track_embeddings):
            if te is None:
                continue
            for j, de in enumerate(detection_embeddings):
                if de is None:
                    continue
                distance = cosine_distance(te, de)
                allowed[i, j] &= distance <= max_embedding_distance
                affinity[i, j] += embedding_weight * (1.0 - distance)
    candidates = sorted((-affinity[i, j], i, j) for i in range(n) for j in range(m) if allowed[i, j])
    used_t: set[int] = set()
    used_d: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i not in used_t and j not in used_d:
            used_t.add(i)
            used_d.add(j)
            pairs.append((i, j))
    return sorted(pairs)


# ---------------------------------------------------------------------------------------------- core
@dataclass(frozen=True)
class TrackerConfig:
    """How detections join tracks and how long a track lives without them."""

    max_gap: int = 5
    """Frames a track may miss and still continue (offline: filled by interpolation; streaming: coasted
    on its motion). A longer miss ends it; a face found after that starts a new track."""
    min_iou: float = 0.3
    """Least IoU of a track's predicted box and a detection for them to match."""
    embedding_weight: float = 0.5
    """Weight of the cosine similarity in the affinity when the track and the detection carry
    embeddings."""
    max_embedding_distance: float = 0.6
    """With embeddings on both sides: a larger cosine distance never matches (another person)."""
    max_undetected: int = 8
    """Frames a track may be followed (``followed`` observations) since its last detection; after that a
    followed observation counts as a miss, so a follower that drifted off a face cannot keep a track."""
    coast: bool = True
    """Streaming: return the motion prediction of a missed track (source ``tracked``) for up to
    ``max_gap`` frames. Off for offline runs, which interpolate instead."""
    velocity_smoothing: float = 0.5
    """[0, 1]: weight of the newest per-frame motion in the track's velocity (an exponential average)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_gap, int) or self.max_gap < 0:
            raise InvalidOptionError(f"max_gap must be an integer >= 0, got {self.max_gap!r}")
        if not isinstance(self.max_undetected, int) or self.max_undetected < 0:
            raise InvalidOptionError(f"max_undetected must be an integer >= 0, got {self.max_undetected!r}")
        for name, lo, hi in (
            ("min_iou", 0.0, 1.0),
            ("embedding_weight", 0.0, 10.0),
            ("max_embedding_distance", 0.0, 2.0),
            ("velocity_smoothing", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise InvalidOptionError(f"{name} must be in [{lo}, {hi}], got {value}")


@dataclass
class _State:
    """A live track: its last observation, its velocity per frame and its embedding sum."""

    track_id: int
    frame: int
    bbox: npt.NDArray[np.float64]
    landmarks: npt.NDArray[np.float64]
    score: float
    last_detected: int
    box_velocity: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(4))
    landmark_velocity: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((5, 2)))
    embedding_sum: npt.NDArray[np.float64] | None = None
    observations: int = 0

    def predict(self, frame: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        steps = frame - self.frame
        return self.bbox + steps * self.box_velocity, self.landmarks + steps * self.landmark_velocity

    def embedding(self) -> Embedding | None:
        if self.embedding_sum is None:
            return None
        norm = float(np.linalg.norm(self.embedding_sum))
        return None if norm == 0.0 else (self.embedding_sum / norm).astype(np.float32)

    def observe(self, frame: int, face: Face, detected: bool, alpha: float) -> None:
        steps = frame - self.frame
        bbox = np.asarray(face.bbox, np.float64).reshape(4)
        landmarks = np.asarray(face.landmarks, np.float64).reshape(5, 2)
        if steps > 0:
            # The first measured motion is taken as it is; later ones are averaged in.
            weight = 1.0 if self.observations == 1 else alpha
            self.box_velocity += weight * ((bbox - self.bbox) / steps - self.box_velocity)
            self.landmark_velocity += weight * ((landmarks - self.landmarks) / steps - self.landmark_velocity)
        self.observations += 1
        self.frame, self.bbox, self.landmarks = frame, bbox, landmarks
        if detected:
            self.score = float(face.score)
            self.last_detected = frame
            if face.embedding is not None:
                unit = np.asarray(face.embedding, np.float64)
                norm = float(np.linalg.norm(unit))
                if norm > 0:
                    unit = unit / norm
                    self.embedding_sum = unit if self.embedding_sum is None else self.embedding_sum + unit

    def face(self, frame: int, source: Source) -> TrackedFace:
        bbox, landmarks = (self.bbox, self.landmarks) if frame == self.frame else self.predict(frame)
        return TrackedFace(
            frame,
            self.track_id,
            bbox.astype(np.float32),
            landmarks.astype(np.float32),
            self.score,
            source,
            self.embedding(),
        )


class Tracker:
    """Streaming association of per-frame faces into tracks with stable ids (0, 1, 2... in order of
    appearance). Memory is bounded by the number of live tracks."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._live: dict[int, _State] = {}
        self._next_id = 0
        self._frame: int | None = None

    def live(self) -> list[TrackedFace]:
        """Each live track at its last observation (frame, box, landmarks), by id: what a follower moves
        into the next frame. Tracks that are being coasted are included with their old frame index."""
        return [s.face(s.frame, "tracked") for s in self._live.values()]

    def predict(self, frame_index: int) -> dict[int, Box]:
        """Each live track's box at ``frame_index`` by its constant-velocity motion, by id."""
        return {k: s.predict(frame_index)[0].astype(np.float32) for k, s in self._live.items()}

    def update(
        self,
        frame_index: int,
        detections: Sequence[Face] = (),
        followed: Mapping[int, Face] | None = None,
    ) -> list[TrackedFace]:
        """Advance to ``frame_index`` (strictly increasing) and return this frame's faces, by track id.

        ``detections``: the detector's faces on this frame; each joins the best live track (see
        :func:`associate`; a track's box there is its followed box, else its motion prediction) or
        starts a new one (source ``detected``). ``followed``: new positions of live tracks by id from a
        follower (e.g. optical flow); used for tracks no detection matched (source ``tracked``) while the
        track's last detection is at most ``max_undetected`` frames old and the followed box does not
        overlap (IoU >= ``min_iou``) a detection another track took. A live track with neither is
        missed: coasted (when ``coast``) while it has missed at most ``max_gap`` frames, ended after
        that.
        """
        if self._frame is not None and frame_index <= self._frame:
            raise InvalidInputError(f"frames must be in increasing order: {frame_index} after {self._frame}")
        self._frame = frame_index
        cfg = self.config
        followed = followed or {}
        states = list(self._live.values())
        predicted = [
            np.asarray(followed[s.track_id].bbox, np.float64)
            if s.track_id in followed
            else s.predict(frame_index)[0]
            for s in states
        ]
        detection_boxes = np.array([f.bbox for f in detections], np.float64).reshape(-1, 4)
        pairs = associate(
            np.array(predicted).reshape(-1, 4),
            detection_boxes,
            [s.embedding() for s in states],
            [f.embedding for f in detections],
            min_iou=cfg.min_iou,
            embedding_weight=cfg.embedding_weight,
            max_embedding_distance=cfg.max_embedding_distance,
        )
        out: list[TrackedFace] = []
        matched = {states[i].track_id: detections[j] for i, j in pairs}
        claimed = {j for _, j in pairs}
        for state in states:
            det = matched.get(state.track_id)
            follow = followed.get(state.track_id)
            if det is not None:
                state.observe(frame_index, det, True, cfg.velocity_smoothing)
                out.append(state.face(frame_index, "detected"))
            elif (
                follow is not None
                and frame_index - state.last_detected <= cfg.max_undetected
                and not _covered(follow.bbox, detection_boxes, cfg.min_iou)
            ):
                state.observe(frame_index, follow, False, cfg.velocity_smoothing)
                out.append(state.face(frame_index, "tracked"))
            elif frame_index - state.frame > cfg.max_gap:
                del self._live[state.track_id]
            elif cfg.coast:
                out.append(state.face(frame_index, "tracked"))
        for j, det in enumerate(detections):
            if j in claimed:
                continue
            state = _State(
                self._next_id,
                frame_index,
                np.asarray(det.bbox, np.float64).reshape(4),
                np.asarray(det.landmarks, np.float64).reshape(5, 2),
                float(det.score),
                frame_index,
            )
            state.observe(frame_index, det, True, cfg.velocity_smoothing)
            self._live[state.track_id] = state
            self._next_id += 1
            out.append(state.face(frame_index, "detected"))
        return sorted(out, key=lambda f: f.track_id)


def _covered(box: npt.ArrayLike, detections: npt.NDArray[np.float64], min_iou: float) -> bool:
    """Whether a followed box lies on a detected face that another track took: the followed face is
    hidden behind that one (or the follower slid onto it)."""
    return bool(detections.size) and float(iou_matrix(box, detections).max()) >= min_iou


class TrackBuilder:
    """Collects a streaming run's observations (detected and followed faces; coasted ones are ignored)
    and builds the offline :class:`Tracks`, filling each track's inner gaps by interpolation."""

    def __init__(self) -> None:
        self._faces: dict[int, list[TrackedFace]] = {}
        self._frames = 0

    def add(self, frame_index: int, faces: Iterable[TrackedFace]) -> None:
        """Record the faces a :class:`Tracker` with ``coast=False`` returned for ``frame_index`` (with
        coasting on, its motion predictions would be recorded as observations)."""
        self._frames = max(self._frames, frame_index + 1)
        for face in faces:
            if face.frame_index != frame_index:
                raise InvalidInputError(f"face of frame {face.frame_index} added as frame {frame_index}")
            self._faces.setdefault(face.track_id, []).append(face)

    def build(self, frame_count: int | None = None) -> Tracks:
        """The tracks, gaps filled, each face carrying its track's final embedding."""
        count = self._frames if frame_count is None else frame_count
        tracks = []
        for track_id in sorted(self._faces):
            observed = self._faces[track_id]
            if not observed:
                continue
            embedding = _mean_embedding([f.embedding for f in observed if f.source == "detected"])
            faces = tuple(replace(f, embedding=embedding) for f in fill_gaps(observed))
            tracks.append(Track(track_id, faces, embedding))
        return Tracks(tuple(tracks), count)


def _mean_embedding(embeddings: Sequence[Embedding | None]) -> Embedding | None:
    vectors = [np.asarray(e, np.float64) for e in embeddings if e is not None]
    if not vectors:
        return None
    units = [v / n for v in vectors if (n := float(np.linalg.norm(v))) > 0]
    if not units:
        return None
    mean = np.sum(units, axis=0)
    norm = float(np.linalg.norm(mean))
    return None if norm == 0.0 else (mean / norm).astype(np.float32)


def fill_gaps(faces: Sequence[TrackedFace]) -> list[TrackedFace]:
    """One track's observations (increasing frames, possibly with gaps) with every missing frame between
    two observations filled: box, landmarks and score interpolated linearly, source ``interpolated``."""
    out: list[TrackedFace] = []
    for face in faces:
        if out:
            prev = out[-1]
            if face.frame_index <= prev.frame_index:
                raise InvalidInputError("observations must be in increasing frame order")
            span = face.frame_index - prev.frame_index
            for k in range(1, span):
                w = k / span
                out.append(
                    TrackedFace(
                        prev.frame_index + k,
                        face.track_id,
                        ((1 - w) * prev.bbox + w * face.bbox).astype(np.float32),
                        ((1 - w) * prev.landmarks + w * face.landmarks).astype(np.float32),
                        float((1 - w) * prev.score + w * face.score),
                        "interpolated",
                        face.embedding,
                    )
                )
        out.append(face)
    return out


def track_offline(
    detections_per_frame: Sequence[Sequence[Face]], config: TrackerConfig | None = None
) -> Tracks:
    """Tracks of a whole video from each frame's detections (index = frame index): association as in
    :class:`Tracker` (without coasting), gaps of up to ``max_gap`` frames filled by interpolation."""
    tracker = Tracker(replace(config or TrackerConfig(), coast=False))
    builder = TrackBuilder()
    for frame_index, detections in enumerate(detections_per_frame):
        builder.add(frame_index, tracker.update(frame_index, detections))
    return builder.build(len(detections_per_frame))


# ---------------------------------------------------------------------------------------------- selection
def main_track(tracks: Iterable[Track]) -> Track | None:
    """The track that dominates the video (``one`` mode): the largest sum of box areas over its frames
    (mean area x duration); ties go to the earlier track. None without tracks."""
    best: Track | None = None
    for track in tracks:
        if best is None or track.total_area() > best.total_area():
            best = track
    return best


def match_reference(tracks: Iterable[Track], reference: Embedding, max_distance: float = 0.6) -> list[Track]:
    """Tracks whose mean embedding lies within ``max_distance`` (cosine distance) of ``reference``,
    closest first (``reference`` mode, decided once per track). Tracks without an embedding never match;
    InvalidOptionError when no track has one (no embedder ran)."""
    tracks = list(tracks)
    if tracks and all(t.embedding is None for t in tracks):
        raise InvalidOptionError("reference selection needs face embeddings")
    scored = [
        (cosine_distance(t.embedding, reference), t.track_id, t) for t in tracks if t.embedding is not None
    ]
    return [t for d, _, t in sorted(scored, key=lambda s: (s[0], s[1])) if d <= max_distance]


def select_tracks(
    tracks: Iterable[Track], mode: str, reference: Embedding | None = None, max_distance: float = 0.6
) -> list[Track]:
    """Tracks to process: ``one``: [main track]; ``many``: all, largest total area first; ``reference``:
    :func:`match_reference`. The per-track counterpart of :func:`pipeline.selection.select_faces`."""
    tracks = list(tracks)
    if mode == "one":
        main = main_track(tracks)
        return [] if main is None else [main]
    if mode == "many":
        return sorted(tracks, key=lambda t: (-t.total_area(), t.track_id))
    if mode == "reference":
        if reference is None:
            raise InvalidOptionError("face_selector_mode 'reference' needs a reference face")
        return match_reference(tracks, reference, max_distance)
    raise InvalidOptionError(f"face_selector_mode: unknown {mode!r}, expected one, many or reference")


class TrackSelector:
    """Per-track selection for streaming, one frame at a time.

    ``one``: the track of the largest face when nothing is locked, then that track for as long as it
    lives (a streaming tracker returns a live track in every frame, coasting through short misses), then
    the largest again. ``many``: every face, largest first. ``reference``: each track is decided once,
    on the first frame where it carries an embedding; undecided tracks are not selected. State is kept
    only for tracks present in the latest frame.
    """

    def __init__(self, mode: str, reference: Embedding | None = None, max_distance: float = 0.6) -> None:
        if mode not in ("one", "many", "reference"):
            raise InvalidOptionError(f"face_selector_mode: unknown {mode!r}, expected one, many or reference")
        if mode == "reference" and reference is None:
            raise InvalidOptionError("face_selector_mode 'reference' needs a reference face")
        self.mode = mode
        self.reference = reference
        self.max_distance = max_distance
        self._locked: int | None = None
        self._decided: dict[int, bool] = {}

    def select(self, faces: Sequence[TrackedFace]) -> list[TrackedFace]:
        """The faces of one frame to process."""
        if self.mode == "many":
            return sorted(faces, key=lambda f: (-f.area, f.track_id))
        if self.mode == "one":
            if not faces:
                return []
            current = [f for f in faces if f.track_id == self._locked]
            if not current:
                current = [max(faces, key=lambda f: (f.area, f.score, -f.track_id))]
                self._locked = current[0].track_id
            return current
        present = {f.track_id for f in faces}
        self._decided = {k: v for k, v in self._decided.items() if k in present}
        assert self.reference is not None
        chosen = []
        for face in faces:
            if face.track_id not in self._decided and face.embedding is not None:
                distance = cosine_distance(face.embedding, self.reference)
                self._decided[face.track_id] = distance <= self.max_distance
            if self._decided.get(face.track_id, False):
                chosen.append(face)
        return chosen


# ---------------------------------------------------------------------------------------------- sidecar
SIDECAR_COLUMNS = ("frame", "pts", "track_id", "box", "landmarks", "score", "source")
"""Keys of a sidecar row, in order."""
_PARQUET_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("pts", pa.int64()),
        ("track_id", pa.int64()),
        ("box", pa.list_(pa.float32(), 4)),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("score", pa.float32()),
        ("source", pa.string()),
    ]
)


def face_row(face: TrackedFace, pts: int | None = None, decimals: int = 2) -> dict[str, object]:
    """One sidecar row: ``frame``, ``pts`` (the stream's time base; None when unknown), ``track_id``,
    ``box`` [x1, y1, x2, y2], ``landmarks`` [x0, y0, ..., x4, y4], ``score``, ``source``; pixel values
    rounded to ``decimals``."""
    return {
        "frame": int(face.frame_index),
        "pts": None if pts is None else int(pts),
        "track_id": int(face.track_id),
        "box": [round(float(v), decimals) for v in face.bbox],
        "landmarks": [round(float(v), decimals) for v in np.asarray(face.landmarks).reshape(10)],
        "score": round(float(face.score), 4),
        "source": face.source,
    }


def tracks_to_rows(
    faces: Tracks | Iterable[TrackedFace], pts: Sequence[int] | Mapping[int, int] | None = None
) -> list[dict[str, object]]:
    """Sidecar rows of ``faces`` (or of every face of ``Tracks``), ordered by frame, then track id.
    ``pts[frame_index]`` gives each row's ``pts`` (e.g. from :class:`pipeline.video.VideoFrame`)."""
    items = (
        faces.faces()
        if isinstance(faces, Tracks)
        else sorted(faces, key=lambda f: (f.frame_index, f.track_id))
    )
    rows = []
    for face in items:
        stamp = None
        if pts is not None:
            stamp = pts.get(face.frame_index) if isinstance(pts, Mapping) else pts[face.frame_index]
        rows.append(face_row(face, stamp))
    return rows


def row_to_face(row: Mapping[str, object]) -> TrackedFace:
    """A sidecar row back as a :class:`TrackedFace` (without embedding)."""
    source = row["source"]
    if source not in SOURCES:
        raise InvalidInputError(f"sidecar row: unknown source {source!r}")
    return TrackedFace(
        int(row["frame"]),  # type: ignore[call-overload]
        int(row["track_id"]),  # type: ignore[call-overload]
        np.asarray(row["box"], np.float32).reshape(4),
        np.asarray(row["landmarks"], np.float32).reshape(5, 2),
        float(row["score"]),  # type: ignore[arg-type]
        source,  # type: ignore[arg-type]
    )


def write_sidecar(rows: Iterable[Mapping[str, object]], path: str | Path) -> Path:
    """Write rows as JSON lines (``.jsonl``) or Parquet (``.parquet``, via pyarrow). Returns the path."""
    target = Path(path)
    rows = list(rows)
    if target.suffix == ".jsonl":
        with target.open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        return target
    if target.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=_PARQUET_SCHEMA), target)
        return target
    raise InvalidOptionError(f"sidecar: unknown format {target.suffix!r}, expected .jsonl or .parquet")


def read_sidecar(path: str | Path) -> list[dict[str, object]]:
    """Rows of a sidecar written by :func:`write_sidecar`."""
    source = Path(path)
    if source.suffix == ".jsonl":
        return [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    if source.suffix == ".parquet":
        return pq.read_table(source).to_pylist()
    raise InvalidOptionError(f"sidecar: unknown format {source.suffix!r}, expected .jsonl or .parquet")
