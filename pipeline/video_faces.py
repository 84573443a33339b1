"""The faces of one video, planned before it is swapped: found (tracked, or detected on every frame),
selected per track, and written as the sidecar of tracks. One plan for every video path (the CLI and
benchmarks in-process, the HTTP video jobs over the served detector, the Ray Data job in its planner).

Offline swaps see the whole video, so they run in two passes over its decoded frames:

1. :func:`plan_video_faces` reads the frames once, in order, and keeps only faces (a few arrays per face
   per frame, never the images). With ``options.tracking`` it runs :func:`pipeline.follow.track_video`:
   the detector every ``detect_every`` frames (sooner when optical-flow following fails), the faces
   followed in between, gaps of up to ``max_gap`` frames interpolated, each track smoothed with the
   zero-phase Savitzky-Golay filter at ``smoothing`` strength. Faces are then selected per track
   (``face_selector_mode``): ``one``, the main track (:func:`pipeline.tracking.main_track`) wherever it
   is; ``reference``, the tracks whose mean embedding matches the reference, decided once per track;
   ``many``, every track. A frame keeps at most ``max_faces``: the selected tracks' best ranked (by
   distance to the reference, else by total area), so a track does not flicker with the per-frame sizes.
   Without tracking, the detector runs on every frame and faces are selected per frame, as for an image.
2. The caller decodes again and swaps each batch with its planned faces:
   ``swap_frames(images, identity, options, faces=plan.faces(start, stop), select=False)``: the
   orchestration processes exactly the planned faces instead of selecting again (in ``reference`` mode it
   would embed every face of every frame once more).

A frame's planned faces are ordered largest first, the order in which the orchestration keeps and pastes
them, so ``plan.per_frame[i]`` lines up with the faces of the swap result of frame ``i``.

The sidecar (:func:`sidecar_rows`) has one row per planned face per frame, as
:func:`pipeline.tracking.face_row` writes it: ``frame``, ``pts``, ``track_id`` (null without tracking),
``box``, ``landmarks`` (10 values), ``score``, ``source`` (``detected``, ``tracked`` or ``interpolated``).
Coordinates are image pixels of the frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.canvas import faces_to_image, make_canvas
from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.follow import Detect, track_video
from pipeline.inprocess import embedder_info
from pipeline.models.base import Detector, Embedder
from pipeline.options import SwapOptions
from pipeline.orchestration import crops_for
from pipeline.selection import select_faces
from pipeline.tracking import Source, TrackedFace, Tracks, face_row, select_tracks
from pipeline.types import Embedding, Face, ImageBGR
from pipeline.video import VideoFrame

Embed = Callable[[ImageBGR, Sequence[Face]], npt.NDArray[np.float32]]
"""An embedder: the (N, D) float32 L2-normalised embeddings of N faces (image pixels) of one image."""


@dataclass(frozen=True)
class PlannedFace:
    """One face to swap in one frame."""

    face: Face
    """Box, landmarks (smoothed when tracked) and score in image pixels; no embedding."""
    track_id: int | None
    """Its track; None without tracking."""
    source: Source
    """How it was found: ``detected`` on this frame, ``tracked`` by optical flow, or ``interpolated``."""


@dataclass(frozen=True)
class FacePlan:
    """The faces to swap in every frame of one video, and what finding them cost."""

    per_frame: tuple[tuple[PlannedFace, ...], ...]
    """One entry per frame (index = frame index): its faces, largest first."""
    pts: tuple[int, ...]
    """Each frame's presentation timestamp (the stream's time base)."""
    tracking: bool
    keyframes: tuple[int, ...]
    """The frames the detector ran on, in order."""
    embedder_calls: int
    """Frames whose faces were embedded (``reference`` mode)."""
    tracks: int
    """Tracks found (before selection); 0 without tracking."""

    @property
    def frame_count(self) -> int:
        return len(self.per_frame)

    @property
    def detector_calls(self) -> int:
        return len(self.keyframes)

    @property
    def calls_per_frame(self) -> float:
        return self.detector_calls / self.frame_count if self.frame_count else 0.0

    @property
    def frames_without_face(self) -> int:
        return sum(1 for faces in self.per_frame if not faces)

    def faces(self, start: int = 0, stop: int | None = None) -> list[list[Face]]:
        """The faces of frames ``start`` to ``stop`` (exclusive), for ``swap_frames(..., faces=...)``.
        InvalidInputError when the range is not inside the plan (the second decode found other frames)."""
        stop = self.frame_count if stop is None else stop
        if not 0 <= start <= stop <= self.frame_count:
            raise InvalidInputError(
                f"frames {start}-{stop - 1} are not in the plan of {self.frame_count} frames"
            )
        return [[p.face for p in faces] for faces in self.per_frame[start:stop]]

    def rows(self) -> list[dict[str, object]]:
        """The sidecar rows of every frame, by frame (see :func:`sidecar_rows`)."""
        return [
            row
            for index, (faces, pts) in enumerate(zip(self.per_frame, self.pts, strict=True))
            for row in sidecar_rows(index, pts, faces)
        ]


def sidecar_rows(frame_index: int, pts: int | None, faces: Sequence[PlannedFace]) -> list[dict[str, object]]:
    """The sidecar rows of one frame's faces, in their order; ``track_id`` is None for untracked faces."""
    rows = []
    for planned in faces:
        face = planned.face
        track = -1 if planned.track_id is None else planned.track_id
        row = face_row(
            TrackedFace(frame_index, track, face.bbox, face.landmarks, face.score, planned.source), pts
        )
        row["track_id"] = planned.track_id
        rows.append(row)
    return rows


def detected(faces: Iterable[Face]) -> tuple[PlannedFace, ...]:
    """Faces found by the detector on their own frame, untracked (e.g. a swap result's faces when
    ``tracking`` is off)."""
    return tuple(PlannedFace(_bare(f), None, "detected") for f in faces)


def _bare(face: Face) -> Face:
    """The face's geometry and score, as float32, without embedding or mesh."""
    return Face(
        np.asarray(face.bbox, np.float32).reshape(4),
        np.asarray(face.landmarks, np.float32).reshape(5, 2),
        float(face.score),
    )


# ---------------------------------------------------------------------------------------------- in-process
def local_detect(detector: Detector, score_threshold: float) -> Detect:
    """A :data:`~pipeline.follow.Detect` over an in-process detector model (the canvas the orchestration
    would send, faces mapped back to image pixels)."""

    def detect(image: ImageBGR) -> list[Face]:
        canvas, scale = make_canvas(image, detector.canvas)
        return faces_to_image(detector.detect_canvas(canvas, score_threshold), scale)

    return detect


def local_embed(embedder: Embedder) -> Embed:
    """An :data:`Embed` over an in-process embedder model (crops aligned as the orchestration aligns
    them)."""
    crop = embedder_info(embedder).crop

    def embed(image: ImageBGR, faces: Sequence[Face]) -> npt.NDArray[np.float32]:
        crops, _ = crops_for(image, faces, crop)
        return embedder.embed_crops(crops)

    return embed


# ---------------------------------------------------------------------------------------------- the plan
class _Feed:
    """The frames of a video in order (checked to be 0, 1, 2, ...) as (index, image), remembering each
    one's pts."""

    def __init__(self, frames: Iterable[VideoFrame]) -> None:
        self._frames = frames
        self.pts: list[int] = []

    def __iter__(self) -> Iterator[tuple[int, ImageBGR]]:
        for expected, frame in enumerate(self._frames):
            if frame.index != expected:
                raise InvalidInputError(f"frame {frame.index} came where frame {expected} was expected")
            self.pts.append(frame.pts)
            yield frame.index, frame.image


class _Counted:
    """The detector (with the embedder, when given, attaching each face's embedding), counting the
    embedder's calls."""

    def __init__(self, detect: Detect, embed: Embed | None) -> None:
        self._detect = detect
        self._embed = embed
        self.embedder_calls = 0

    def __call__(self, image: ImageBGR) -> list[Face]:
        faces = self._detect(image)
        if self._embed is None or not faces:
            return faces
        self.embedder_calls += 1
        vectors = self._embed(image, faces)
        return [f.with_embedding(v) for f, v in zip(faces, vectors, strict=True)]


def plan_video_faces(
    frames: Iterable[VideoFrame],
    detect: Detect,
    options: SwapOptions,
    *,
    max_faces: int,
    embed: Embed | None = None,
    reference: Embedding | None = None,
) -> FacePlan:
    """Pass 1 over the decoded ``frames`` of one video (in order from frame 0): the faces to swap in
    every frame, as ``options`` ask (``tracking``, ``smoothing``, ``max_gap``, ``detect_every``,
    ``face_selector_mode``, ``reference_face_distance``), at most ``max_faces`` per frame.

    ``detect`` finds the faces of one frame (image pixels, at the caller's score threshold); ``embed``
    and ``reference`` (the reference face's embedding) are needed in ``reference`` mode only, where every
    detection is embedded. Holds the faces, never the frames."""
    if max_faces < 1:
        raise InvalidOptionError(f"max_faces must be >= 1, got {max_faces}")
    by_reference = options.face_selector_mode == "reference"
    if by_reference and (embed is None or reference is None):
        raise InvalidOptionError("face_selector_mode 'reference' needs an embedder and a reference face")
    feed = _Feed(frames)
    counted = _Counted(detect, embed if by_reference else None)
    if not options.tracking:
        per_frame = tuple(
            detected(_select_faces(counted(image), options, max_faces, reference)) for _, image in feed
        )
        tracks, keyframes = 0, tuple(range(len(per_frame)))
    else:
        result = track_video(
            feed,
            counted,
            detect_every=options.detect_every,
            max_gap=options.max_gap,
            smoothing=options.smoothing,
        )
        per_frame = _select_tracks(result.tracks, options, max_faces, reference)
        tracks, keyframes = len(result.tracks), result.keyframes
    return FacePlan(per_frame, tuple(feed.pts), options.tracking, keyframes, counted.embedder_calls, tracks)


def _select_faces(
    faces: list[Face], options: SwapOptions, limit: int, reference: Embedding | None
) -> list[Face]:
    """One frame's faces as the image path selects them, largest first."""
    chosen = select_faces(faces, options.face_selector_mode, reference, options.reference_face_distance)
    return sorted(chosen[:limit], key=lambda f: -f.area)


def _select_tracks(
    tracks: Tracks, options: SwapOptions, limit: int, reference: Embedding | None
) -> tuple[tuple[PlannedFace, ...], ...]:
    """Each frame's faces of the tracks ``options`` select: at most ``limit``, the best ranked tracks
    present, ordered largest first."""
    chosen = select_tracks(tracks, options.face_selector_mode, reference, options.reference_face_distance)
    frames: list[list[tuple[int, TrackedFace]]] = [[] for _ in range(tracks.frame_count)]
    for rank, track in enumerate(chosen):
        for face in track.faces:
            frames[face.frame_index].append((rank, face))
    out = []
    for present in frames:
        kept = [face for _, face in sorted(present, key=lambda p: p[0])[:limit]]
        out.append(
            tuple(
                PlannedFace(_bare(f.to_face()), f.track_id, f.source)
                for f in sorted(kept, key=lambda f: -f.area)
            )
        )
    return tuple(out)
