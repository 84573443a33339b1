"""The ordered decode stage of a batch job: a stateful Ray Data actor (``map_batches`` over numpy batches)
that turns piece rows into frame batches.

The driver plans every target as pieces of ``batch_size`` frames (:func:`pipeline.video.plan_chunks`) and
the dataset holds one small row per piece: ``target`` (int32), ``start`` (int64: its first frame),
``count`` (int64) and ``start_pts`` (int64, -1: unknown). The actor keeps the current target's reader open
between pieces, so pieces that come in order (they do: one actor, order preserved) decode each video once,
sequentially; a piece that does not follow the previous one is reached by a keyframe seek. Each piece is a
small task, so Ray Data's budget stops decoding while the swap stage is behind and memory does not grow with
the length of the video. With ``tracking``, the faces of every frame are planned beside this stage by the
planner actor (:mod:`.plan`) and joined to the frames in the swap stage, so this worker stays light.

A frame batch holds ``target`` (int32), ``index`` (int64), ``pts`` (int64), ``time_s`` (float64) and
``image`` ((N, H, W, 3) uint8 BGR). This module imports no model code: the decode worker stays light.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.video import FrameChunk, VideoFrame, read_frame_files, read_frames

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class FrameSource:
    """Where the decode stage reads one target's frames: a local video file, or local image files."""

    kind: Literal["video", "frames"]
    path: str
    """The local video file, or the local folder of the frames."""
    files: tuple[str, ...] = ()
    """The frame files in order (``frames``)."""
    fps: Fraction = Fraction(25)
    """The frame rate of a folder of frames (a video's own rate is in the file)."""

    def frames(self, start: int = 0, start_pts: int | None = None) -> Iterator[VideoFrame]:
        """The frames from frame ``start`` on, in presentation order (``start_pts``: see
        :func:`pipeline.video.read_frames`)."""
        if self.kind == "video":
            return read_frames(self.path, start=start, start_pts=start_pts)
        return read_frame_files(self.files, self.fps, start=start)


def piece_rows(pieces: Sequence[tuple[int, FrameChunk]]) -> list[dict[str, int]]:
    """The dataset rows of ``pieces`` ((target, chunk) in job order)."""
    return [
        {
            "target": target,
            "start": chunk.start,
            "count": chunk.count,
            "start_pts": -1 if chunk.start_pts is None else chunk.start_pts,
        }
        for target, chunk in pieces
    ]


def frame_batch(targets: Sequence[int], frames: Sequence[VideoFrame]) -> Batch:
    """The batch of ``frames``, frame ``i`` of target number ``targets[i]``."""
    return {
        "target": np.array(targets, np.int32),
        "index": np.array([f.index for f in frames], np.int64),
        "pts": np.array([f.pts for f in frames], np.int64),
        "time_s": np.array([f.time_s for f in frames], np.float64),
        "image": np.stack([f.image for f in frames]),
    }


class DecodeFrames:
    """The decode stage: piece rows in, the pieces' frames out (one batch per call)."""

    def __init__(self, sources: Sequence[FrameSource]) -> None:
        self._sources = list(sources)
        self._frames: Iterator[VideoFrame] = iter(())
        self._next = (-1, -1)  # (target, frame) that ``_frames`` yields next

    def __call__(self, rows: Batch) -> Batch:
        frames: list[VideoFrame] = []
        targets: list[int] = []
        for target, start, count, start_pts in zip(
            *(rows[k].tolist() for k in ("target", "start", "count", "start_pts")), strict=True
        ):
            if self._next != (target, start):
                self._frames = self._sources[target].frames(start, None if start_pts < 0 else start_pts)
            piece = list(itertools.islice(self._frames, count))
            if len(piece) < count:
                raise InvalidInputError(
                    f"{self._sources[target].path}: only {len(piece)} of the {count} frames from frame "
                    f"{start} could be decoded"
                )
            self._next = (target, start + count)
            frames += piece
            targets += [target] * count
        return frame_batch(targets, frames)
