"""The ordered decode stage of a batch job (a Ray Data ``map_batches`` UDF over numpy batches).

One task per target, in target order, decodes the whole video (or reads the folder of frames) sequentially
with :mod:`pipeline.video` and yields batches of ``batch_size`` frames as it goes; Ray Data's
streaming-generator backpressure pauses it while the swap stage is behind, so memory does not grow with the
length of the video. Because one task sees every frame of its video in order, per-video state (a face
tracker: detections and tracks flowing through the video) belongs here: it would add each frame's faces to
the batch, and the swap stage would pass them to
:meth:`~pipeline.orchestration.SwapOrchestrator.swap_frames` (``faces=...``) instead of detecting.

A frame batch holds ``target`` (int32), ``index`` (int64), ``pts`` (int64), ``time_s`` (float64) and
``image`` ((N, H, W, 3) uint8 BGR). This module imports no model code: the decode worker stays light.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from pipeline.video import VideoFrame, iter_frame_batches, read_frame_files, read_frames

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

    def frames(self) -> Iterator[VideoFrame]:
        """Every frame in presentation order."""
        if self.kind == "video":
            return read_frames(self.path)
        return read_frame_files(self.files, self.fps)


def frame_batch(target: int, frames: Sequence[VideoFrame]) -> Batch:
    """The batch of ``frames`` of target number ``target``."""
    return {
        "target": np.full(len(frames), target, np.int32),
        "index": np.array([f.index for f in frames], np.int64),
        "pts": np.array([f.pts for f in frames], np.int64),
        "time_s": np.array([f.time_s for f in frames], np.float64),
        "image": np.stack([f.image for f in frames]),
    }


def decode_frames(rows: Batch, *, sources: Sequence[FrameSource], batch_size: int) -> Iterator[Batch]:
    """The decode stage: for each ``target`` row, that target's frames in order, ``batch_size`` at a time."""
    for target in rows["target"].tolist():
        for frames in iter_frame_batches(sources[target].frames(), batch_size):
            yield frame_batch(int(target), frames)
