"""Keyframe detection: run the detector every ``detect_every`` frames (or sooner when following fails) and
follow the faces by optical flow in between.

Following (:func:`follow_face`) moves a face from one frame to the next: corners inside its box plus its
5 landmarks are tracked with pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``) forward and backward;
points whose forward-backward error exceeds ``fb_threshold`` pixels are dropped, and a similarity
transform (rotation, uniform scale, translation) is fitted to the rest with RANSAC
(``cv2.estimateAffinePartial2D``). The landmarks and the box move by that transform. The confidence is the
fraction of points that survive both checks. The follow fails (an occluder, a turn, a cut, a face passing
in front) under ``min_confidence``, with fewer than ``min_landmarks`` of the 5 landmarks among the
survivors, or when the moved box leaps more than ``max_jump`` face sizes from the track's motion
prediction; the next detection is then brought forward to this frame. Everything runs on a crop around
the face in greyscale, so a follow step costs a few milliseconds of CPU.

:class:`KeyframeTracker` is the streaming form (causal: coasting through short misses and One-Euro
smoothing); :func:`track_video` is the offline form (gaps interpolated, zero-phase Savitzky-Golay
smoothing). Both report the detector calls they made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidOptionError
from pipeline.smoothing import TrackSmoother, smooth_tracks
from pipeline.tracking import (
    TrackBuilder,
    TrackedFace,
    Tracker,
    TrackerConfig,
    Tracks,
    iou_matrix,
    move_geometry,
)
from pipeline.types import Face, ImageBGR

GrayImage = npt.NDArray[np.uint8]
"""(H, W) uint8 greyscale."""
Detect = Callable[[ImageBGR], list[Face]]
"""A detector: faces of one ``ImageBGR`` frame in image pixels."""

DEFAULT_DETECT_EVERY = 4
DEFAULT_MAX_GAP = 5
DEFAULT_SMOOTHING = 0.5


@dataclass(frozen=True)
class FollowConfig:
    """Optical-flow following of one face between consecutive frames."""

    work_size: int = 96
    """The crop is scaled down (never up) so that the face box's larger side is at most this many pixels:
    the cost per face stays flat for large faces. Pixel settings below are in this working scale."""
    max_corners: int = 40
    """Shi-Tomasi corners taken inside the face box (besides the 5 landmarks)."""
    window: int = 15
    """Lucas-Kanade window side in pixels."""
    levels: int = 2
    """Pyramid levels above the working resolution."""
    fb_threshold: float = 1.0
    """Largest forward-backward error in pixels for a point to count."""
    ransac_threshold: float = 1.5
    """RANSAC reprojection threshold in pixels of the similarity fit."""
    min_confidence: float = 0.5
    """Least fraction of points kept by both checks for the follow to succeed."""
    min_landmarks: int = 3
    """Least number of the 5 landmarks kept by both checks: when something passes in front of the face,
    its landmarks stop moving with the rest, and the follow fails."""
    margin: float = 0.5
    """The crop around the box: grown by this fraction of the box's larger side on every side."""
    max_jump: float = 0.06
    """Largest distance, in face sizes (square root of the box area), between the followed box's centre
    and the track's motion prediction (when given): a follow that suddenly reverses or leaps has slid onto
    something else, e.g. a face passing in front. On the test clips the largest honest value is 0.03."""

    def __post_init__(self) -> None:
        if self.max_corners < 0 or self.window < 3 or self.levels < 0 or self.work_size < 16:
            raise InvalidOptionError(
                "follow: max_corners >= 0, window >= 3, levels >= 0 and work_size >= 16 are required"
            )
        if self.fb_threshold <= 0 or self.ransac_threshold <= 0 or self.margin < 0 or self.max_jump <= 0:
            raise InvalidOptionError(
                "follow: fb_threshold, ransac_threshold and max_jump must be > 0, margin >= 0"
            )
        if not 0 <= self.min_landmarks <= 5:
            raise InvalidOptionError(f"follow: min_landmarks must be in [0, 5], got {self.min_landmarks}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InvalidOptionError(f"follow: min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass(frozen=True)
class Followed:
    """A face moved into the next frame."""

    face: Face
    """The moved face (the score is kept; no embedding), image pixels of the new frame."""
    confidence: float
    """Fraction of the tracked points consistent with the fitted motion, in [0, 1]."""
    motion: npt.NDArray[np.float64] | None
    """(2, 3) similarity, image pixels of the previous frame -> the new one; None when the follow failed."""


def _crop(face: Face, shape: tuple[int, ...], margin: float) -> tuple[int, int, int, int]:
    """Integer x1, y1, x2, y2 of the box grown by ``margin`` x its larger side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    grow = margin * max(x2 - x1, y2 - y1, 1.0)
    height, width = shape[:2]
    return (
        max(0, math.floor(x1 - grow)),
        max(0, math.floor(y1 - grow)),
        min(width, math.ceil(x2 + grow)),
        min(height, math.ceil(y2 + grow)),
    )


def follow_face(
    previous: GrayImage,
    current: GrayImage,
    face: Face,
    config: FollowConfig | None = None,
    expected: npt.ArrayLike | None = None,
) -> Followed:
    """Move ``face`` (image pixels of ``previous``) into ``current``; both (H, W) uint8 greyscale of the
    same size. ``expected``: the track's predicted (4,) box in ``current``, for the ``max_jump`` check. A
    failed follow returns the face unmoved with ``motion`` None."""
    cfg = config or FollowConfig()
    cx1, cy1, cx2, cy2 = _crop(face, previous.shape, cfg.margin)
    failed = Followed(Face(face.bbox, face.landmarks, face.score), 0.0, None)
    box = np.asarray(face.bbox, np.float64)
    side = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0)
    scale = min(1.0, cfg.work_size / side)
    size = (max(1, round((cx2 - cx1) * scale)), max(1, round((cy2 - cy1) * scale)))
    if min(size) < cfg.window:
        return failed
    offset = np.array([cx1, cy1], np.float64)
    before, after = (
        np.asarray(
            cv2.resize(np.ascontiguousarray(g[cy1:cy2, cx1:cx2]), size, interpolation=cv2.INTER_AREA)
            if scale < 1.0
            else np.ascontiguousarray(g[cy1:cy2, cx1:cx2]),
            np.uint8,
        )
        for g in (previous, current)
    )
    points = [((np.asarray(face.landmarks, np.float64).reshape(5, 2) - offset) * scale).astype(np.float32)]
    if cfg.max_corners > 0:
        mask = np.zeros(before.shape, np.uint8)
        bx1, by1, bx2, by2 = ((box - np.tile(offset, 2)) * scale).round().astype(int)
        mask[max(by1, 0) : max(by2, 0), max(bx1, 0) : max(bx2, 0)] = 255
        corners = cv2.goodFeaturesToTrack(
            before, cfg.max_corners, qualityLevel=0.01, minDistance=max(3.0, side * scale / 15), mask=mask
        )
        if corners is not None:
            points.append(corners.reshape(-1, 2).astype(np.float32))
    start = np.concatenate(points).reshape(-1, 1, 2)
    moved, ok = _lucas_kanade(before, after, start, cfg)
    back, ok_back = _lucas_kanade(after, before, moved, cfg)
    fb_error = np.linalg.norm((back - start).reshape(-1, 2), axis=1)
    good = (ok.ravel() == 1) & (ok_back.ravel() == 1) & (fb_error < cfg.fb_threshold)
    if good.sum() < 3:
        return failed
    src = start.reshape(-1, 2)[good]
    dst = moved.reshape(-1, 2)[good]
    matrix, inliers = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=cfg.ransac_threshold
    )
    if matrix is None or inliers is None:
        return failed
    kept = np.zeros(len(start), bool)
    kept[np.flatnonzero(good)[inliers.ravel() == 1]] = True
    confidence = float(kept.sum()) / len(start)
    if confidence < cfg.min_confidence or int(kept[:5].sum()) < cfg.min_landmarks:
        return Followed(failed.face, confidence, None)
    # The working-crop similarity u' = A u + b, with u = scale (x - offset), as an image-to-image one:
    # x' = A x + (b / scale + offset - A offset).
    motion = matrix.astype(np.float64)
    motion[:, 2] = motion[:, 2] / scale + offset - motion[:, :2] @ offset
    bbox, moved_landmarks = move_geometry(motion, face.bbox, face.landmarks)
    if expected is not None and _jump(bbox, np.asarray(expected, np.float64)) > cfg.max_jump:
        return Followed(failed.face, confidence, None)
    return Followed(Face(bbox, moved_landmarks, face.score), confidence, motion)


def _lucas_kanade(
    before: GrayImage, after: GrayImage, points: npt.NDArray[np.float32], cfg: FollowConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """``points`` (N, 1, 2) of ``before`` found in ``after`` by pyramidal Lucas-Kanade, and their status
    (N, 1), 1 where found."""
    moved, status, _ = cv2.calcOpticalFlowPyrLK(
        before,
        after,
        points,
        np.empty_like(points),
        winSize=(cfg.window, cfg.window),
        maxLevel=cfg.levels,
        criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01),
    )
    return np.asarray(moved, np.float32), np.asarray(status, np.uint8)


def _jump(box: npt.ArrayLike, expected: npt.NDArray[np.float64]) -> float:
    """Distance between the centres of two (4,) boxes in units of ``expected``'s size."""
    b = np.asarray(box, np.float64)
    size = math.sqrt(max(float((expected[2] - expected[0]) * (expected[3] - expected[1])), 1.0))
    return float(np.linalg.norm((b[:2] + b[2:] - expected[:2] - expected[2:]) / 2)) / size


def _overlaps_another(track_id: int, boxes: dict[int, npt.NDArray[np.float32]]) -> bool:
    """Whether track ``track_id``'s (4,) box overlaps the box of any other track (``boxes`` by id)."""
    others = [box for key, box in boxes.items() if key != track_id]
    return bool(others) and bool(iou_matrix(boxes[track_id], np.stack(others)).max() > 0.0)


class KeyframeTracker:
    """Streaming face tracking with keyframe detection.

    Per frame (:meth:`process`, frames in increasing order): every live track observed on the previous
    frame is followed by optical flow. The detector runs when ``detect_every`` frames have passed since
    its last run, when a follow failed (at once, unless the face is behind another one: then as for a
    missed face), and, while a track is missed (e.g. occluded), every ``detect_every // 2`` frames and on
    the last frame before the track would end, so it is picked up again soon after. Detections join
    tracks as in :class:`~pipeline.tracking.Tracker`; tracks no detection matched keep their followed
    position (source ``tracked``). Missed tracks coast on their motion for up to ``max_gap`` frames. The
    output is smoothed per track with the One-Euro filter at ``smoothing`` strength (0 = raw),
    motion-compensated by the optical flow. :meth:`step` is the same without smoothing, for offline use.

    The tracker's ``max_undetected`` is raised to at least ``2 * detect_every`` (a followed face is
    confirmed only at keyframes). ``keyframes`` (the frames the detector ran on), ``detector_calls`` and
    ``frames`` say what was done.
    """

    def __init__(
        self,
        detect: Detect,
        *,
        detect_every: int = DEFAULT_DETECT_EVERY,
        max_gap: int = DEFAULT_MAX_GAP,
        smoothing: float = DEFAULT_SMOOTHING,
        tracker: TrackerConfig | None = None,
        follow: FollowConfig | None = None,
    ) -> None:
        if not isinstance(detect_every, int) or detect_every < 1:
            raise InvalidOptionError(f"detect_every must be an integer >= 1, got {detect_every!r}")
        self.detect = detect
        self.detect_every = detect_every
        self.follow = follow or FollowConfig()
        config = tracker or TrackerConfig()
        # A followed track is confirmed only at keyframes: allow at least two keyframe intervals.
        undetected = max(config.max_undetected, 2 * detect_every)
        self._tracker = Tracker(replace(config, max_gap=max_gap, max_undetected=undetected))
        self._smoother = TrackSmoother(smoothing)
        self._previous: tuple[int, GrayImage] | None = None
        self._last_output: dict[int, TrackedFace] = {}
        self._last_detection: int | None = None
        self.keyframes: list[int] = []
        self.frames = 0

    @property
    def detector_calls(self) -> int:
        return len(self.keyframes)

    def step(self, frame_index: int, image: ImageBGR, final: bool = False) -> list[TrackedFace]:
        """This frame's faces, unsmoothed (image pixels, by track id). On the ``final`` frame of a video the
        detector also runs when a face was lost since its last run (nothing after it could fill the gap)."""
        return self._step(frame_index, image, final)[0]

    def process(self, frame_index: int, image: ImageBGR) -> list[TrackedFace]:
        """This frame's faces, smoothed per track (image pixels, by track id): One-Euro, motion-compensated
        by each track's optical flow where it was followed."""
        faces, motion = self._step(frame_index, image)
        return self._smoother.apply(faces, motion)

    def _step(
        self, frame_index: int, image: ImageBGR, final: bool = False
    ) -> tuple[list[TrackedFace], dict[int, npt.NDArray[np.float64]]]:
        gray: GrayImage = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.uint8)
        due = self._last_detection is None or frame_index - self._last_detection >= self.detect_every
        followed: dict[int, Face] = {}
        motion: dict[int, npt.NDArray[np.float64]] = {}
        since = None if self._last_detection is None else frame_index - self._last_detection
        # A face missed or lost is looked for again at twice the keyframe rate, and on its last chance.
        retry = final or since is None or since >= max(1, self.detect_every // 2)
        expected = self._tracker.predict(frame_index)
        for face in self._tracker.live():
            if self._previous is None or face.frame_index != self._previous[0]:
                # Missed on the previous frame: looked for as a retry, or once its gap is over max_gap.
                due = due or retry or frame_index - face.frame_index > self._tracker.config.max_gap
                continue
            result = follow_face(
                self._previous[1], gray, face.to_face(), self.follow, expected[face.track_id]
            )
            if result.motion is None:
                # Lost behind another face (two crossing): looked for as a missed face is; else at once.
                due = due or retry or not _overlaps_another(face.track_id, expected)
                continue
            followed[face.track_id] = result.face
            motion[face.track_id] = result.motion
        detections: list[Face] = []
        if due:
            detections = self.detect(image)
            self.keyframes.append(frame_index)
            self._last_detection = frame_index
        faces = self._tracker.update(frame_index, detections, followed)
        for face in faces:
            last = self._last_output.get(face.track_id)
            if (
                face.track_id not in motion
                and face.source == "tracked"
                and last is not None
                and last.frame_index == frame_index - 1
            ):
                # Coasted: the motion is the prediction's own step, a translation.
                shift = (face.landmarks - last.landmarks).mean(axis=0)
                motion[face.track_id] = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
        self._last_output = {f.track_id: f for f in faces}
        self._previous = (frame_index, gray)
        self.frames += 1
        return faces, motion


@dataclass(frozen=True)
class TrackingResult:
    """What :func:`track_video` found and what it cost."""

    tracks: Tracks
    keyframes: tuple[int, ...]
    """The frames the detector ran on, in order."""
    frames: int

    @property
    def detector_calls(self) -> int:
        return len(self.keyframes)

    @property
    def calls_per_frame(self) -> float:
        return self.detector_calls / self.frames if self.frames else 0.0


def track_video(
    frames: Iterable[tuple[int, ImageBGR]],
    detect: Detect,
    *,
    detect_every: int = DEFAULT_DETECT_EVERY,
    max_gap: int = DEFAULT_MAX_GAP,
    smoothing: float = DEFAULT_SMOOTHING,
    tracker: TrackerConfig | None = None,
    follow: FollowConfig | None = None,
) -> TrackingResult:
    """Offline tracking of a whole video given as (frame index, image) pairs in increasing order:
    keyframe detection and following as in :class:`KeyframeTracker` (without coasting),
    gaps of up to ``max_gap`` frames interpolated, then zero-phase Savitzky-Golay smoothing at
    ``smoothing`` strength.
    Holds one greyscale frame, the next image and the observed faces, not the video."""
    stepper = KeyframeTracker(
        detect,
        detect_every=detect_every,
        max_gap=max_gap,
        smoothing=0.0,
        tracker=replace(tracker or TrackerConfig(), coast=False),
        follow=follow,
    )
    builder = TrackBuilder()
    count = 0
    ahead = iter(frames)
    current = next(ahead, None)
    while current is not None:  # one frame of look-ahead: the final frame is known as such
        following = next(ahead, None)
        frame_index, image = current
        builder.add(frame_index, stepper.step(frame_index, image, final=following is None))
        count = max(count, frame_index + 1)
        current = following
    tracks = smooth_tracks(builder.build(count), smoothing)
    return TrackingResult(tracks, tuple(stepper.keyframes), stepper.frames)
