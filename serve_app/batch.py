"""Offline batch face swap with Ray Data: one source face onto every frame of one or many target videos (or
folders of frames), written as videos with the original audio and, optionally, per-frame Parquet.

    python -m serve_app.batch SOURCE TARGET... -o OUT [--enhance] [--actors N] [--num-gpus 0.5] [--parquet]

The same command runs on a cluster: ``ray job submit --working-dir . -- python -m serve_app.batch ...
--address auto``. Paths may be local paths or any ``pyarrow.fs`` URI (``file://``, ``s3://``, ...).

How a job runs (:func:`run_batch_job`):

1. The driver probes each target and plans it as pieces of ``batch_size`` frames from one demux pass
   (packet pts, no decoding). Remote inputs are first copied to a local staging folder. The driver never
   holds more than the batches it is writing.
2. One Ray task, shaped like a swap actor, detects the source face and encodes the identity once (and the
   reference embedding in ``reference`` mode); the identity goes to every actor.
3. Ray Data: the piece rows (tiny) -> ``map_batches(DecodeFrames)``: one stateful decode actor on the
   driver's node (where the files are) that keeps each video open and decodes it sequentially, one piece
   per task, seeking (keyframe, then decode and drop) only when a piece does not follow the previous one
   -> ``map_batches(SwapFrames, compute=ActorPoolStrategy(size=num_actors))``: stateful actors that build
   the models once and run detect -> select -> one batched swap over all faces of all frames of the batch
   -> optional batched enhance. Order is preserved (``preserve_order``). Small tasks and an object store
   budget of a few batches per actor (:func:`object_store_budget`) keep decoding from running ahead, so
   memory does not grow with the length of the video.
4. The driver iterates the result in order and writes each target's video with :class:`VideoWriter`
   (source audio copied packet for packet, provenance label in the container tags), plus Parquet rows
   (frame index, pts, face count, boxes, scores; PNG frames only when asked), reporting progress.

Frames without a face pass through unchanged and are counted; no face in the SOURCE image fails the job
with :class:`NoFaceError`. Errors raised in Ray workers surface as the typed :mod:`pipeline.errors`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TextIO

import av
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy, DataContext

from pipeline.cli import add_swap_arguments, exit_code, swap_options_from_args
from pipeline.errors import (
    FaceSwapError,
    InvalidInputError,
    InvalidOptionError,
)
from pipeline.identities import Identity
from pipeline.imageio import decode_image, encode_image, read_image_file
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import PipelineConfig, build_models
from pipeline.provenance import ProvenanceLabel, video_metadata
from pipeline.sessions import SessionConfig
from pipeline.types import Embedding, ImageBGR
from pipeline.video import X264_PRESETS, VideoFrame, VideoInfo, VideoWriter, probe_video
from serve_app.errors import unwrap

log = logging.getLogger(__name__)

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Image files a folder-of-frames target is made of (sorted by name)."""
VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")
"""An ``output`` ending in one of these is the output file of a single target; anything else is a folder."""


# --- configuration and result -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BatchJobConfig:
    """What one batch job does. Paths are local paths or ``pyarrow.fs`` URIs (``file://``, ``s3://``)."""

    source_image: str
    """Image with the face to put into the targets (its largest face)."""
    targets: tuple[str, ...]
    """Video files and/or folders of frames (image files, in name order); a single string is accepted."""
    output: str
    """Output folder (``<name>.mp4`` per target; ``.mkv`` for sources other than MP4/MOV/MKV), or an
    output file ending in .mp4/.mov/.mkv when there is one target."""
    options: SwapOptions = field(default_factory=SwapOptions)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    reference_image: str | None = None
    """Image of the target person, required by ``face_selector_mode="reference"``."""
    batch_size: int = 8
    """Frames per model batch (and per block between the stages)."""
    num_actors: int = 1
    """Size of the swap actor pool (``ActorPoolStrategy(size=...)``)."""
    num_gpus: float = 0.0
    """GPUs per actor, fractional allowed (0.5: two actors share one GPU). With GPUs, actors take no CPU."""
    cpus_per_actor: float = 1.0
    """CPUs per actor when ``num_gpus`` is 0."""
    crf: int = 18
    preset: str = "medium"
    frames_fps: Fraction = Fraction(25)
    """Frame rate of the video written for a folder-of-frames target."""
    write_parquet: bool = False
    """Also write ``<name>.parquet`` per target: frame, pts, time_s, faces, boxes, scores."""
    parquet_images: bool = False
    """Also store each output frame as PNG bytes (``image_png``) in the Parquet file."""
    provenance: bool = True
    """Label each output video as synthetic (container ``comment`` / ``description`` tags)."""

    def __post_init__(self) -> None:
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "frames_fps", Fraction(self.frames_fps))
        if not self.source_image:
            raise InvalidOptionError("source_image: a path or URI is needed")
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise InvalidOptionError("targets: at least one video path, frames folder or URI is needed")
        if len(set(targets)) != len(targets):
            raise InvalidOptionError("targets: the same target is listed twice")
        if not self.output:
            raise InvalidOptionError("output: a folder or file path is needed")
        if _is_file_output(self.output) and len(targets) > 1:
            raise InvalidOptionError(
                f"output {self.output} is a file name but there are {len(targets)} targets; give a folder"
            )
        if self.options.face_selector_mode == "reference" and not self.reference_image:
            raise InvalidOptionError("face_selector_mode 'reference' needs reference_image")
        for name, value in (("batch_size", self.batch_size), ("num_actors", self.num_actors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{name}: expected an integer >= 1, got {value!r}")
        if not math.isfinite(self.num_gpus) or self.num_gpus < 0:
            raise InvalidOptionError(f"num_gpus: expected a number >= 0, got {self.num_gpus!r}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise InvalidOptionError(f"num_gpus: fractions only below 1 (Ray's rule), got {self.num_gpus}")
        if not math.isfinite(self.cpus_per_actor) or self.cpus_per_actor <= 0:
            raise InvalidOptionError(f"cpus_per_actor: expected a number > 0, got {self.cpus_per_actor!r}")
        if not 0 <= self.crf <= 51:
            raise InvalidOptionError(f"crf: expected 0..51, got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise InvalidOptionError(
                f"preset: expected one of {', '.join(X264_PRESETS)}, got {self.preset!r}"
            )
        if self.frames_fps <= 0:
            raise InvalidOptionError(f"frames_fps: expected a positive rate, got {self.frames_fps}")
        if self.parquet_images and not self.write_parquet:
            raise InvalidOptionError("parquet_images needs write_parquet")

    @property
    def actor_resources(self) -> dict[str, float]:
        """``num_cpus`` / ``num_gpus`` of each swap actor (and of the identity task)."""
        if self.num_gpus > 0:
            return {"num_cpus": 0.0, "num_gpus": self.num_gpus}
        return {"num_cpus": self.cpus_per_actor, "num_gpus": 0.0}


@dataclass(frozen=True)
class TargetResult:
    """What the job wrote for one target."""

    target: str
    output: str
    parquet: str | None
    frames: int
    frames_without_face: int
    """Frames passed through unchanged because no (selected) face was found."""
    faces_swapped: int
    width: int
    height: int
    fps: Fraction


@dataclass(frozen=True)
class BatchJobResult:
    """All targets of a job, in the order given."""

    targets: tuple[TargetResult, ...]
    components: dict[str, str | None]
    """Profile and model names that ran (as in the provenance label)."""
    elapsed_s: float

    @property
    def frames(self) -> int:
        return sum(t.frames for t in self.targets)

    @property
    def frames_without_face(self) -> int:
        return sum(t.frames_without_face for t in self.targets)

    @property
    def faces_swapped(self) -> int:
        return sum(t.faces_swapped for t in self.targets)

    @property
    def fps(self) -> float:
        """Frames per second over the whole job, model loading included."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "frames_without_face": self.frames_without_face,
            "faces_swapped": self.faces_swapped,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.fps, 2),
            "components": dict(self.components),
            "targets": [
                {
                    "target": t.target,
                    "output": t.output,
                    "parquet": t.parquet,
                    "frames": t.frames,
                    "frames_without_face": t.frames_without_face,
                    "faces_swapped": t.faces_swapped,
                    "size": [t.width, t.height],
                    "fps": str(t.fps),
                }
                for t in self.targets
            ],
        }


# --- storage: pyarrow.fs paths, staged locally when remote --------------------------------------------------


def _is_file_output(output: str) -> bool:
    return PurePosixPath(output.rstrip("/")).suffix.lower() in VIDEO_OUTPUT_SUFFIXES


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or a ``pyarrow.fs`` URI. Local paths are made absolute."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InvalidInputError(f"{uri}: unsupported or invalid URI ({exc})") from None


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _file_type(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileType:
    try:
        return fs.get_file_info(path).type
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot read ({exc})") from None


def _read_bytes(uri: str) -> bytes:
    fs, path = resolve_uri(uri)
    if _file_type(fs, path, uri) != pafs.FileType.File:
        raise InvalidInputError(f"{uri}: no such file")
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot read ({exc})") from None


def _read_image(uri: str, field_name: str) -> ImageBGR:
    return decode_image(_read_bytes(uri), field=f"{field_name} {uri}")


def _stage_in(fs: pafs.FileSystem, path: str, uri: str, staging: Path) -> str:
    """A local path for the file ``path``: itself on a local filesystem, else a copy in ``staging``."""
    if _is_local(fs):
        return path
    local = staging / PurePosixPath(path).name
    staging.mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot download ({exc})") from None
    return str(local)


# --- decode planning and decoding (no Ray) ------------------------------------------------------------------


@dataclass(frozen=True)
class FrameChunk:
    """A contiguous range of frames in presentation order."""

    start: int
    """Index of the first frame."""
    count: int | None
    """Number of frames; None = to the end of the stream."""
    start_pts: int | None
    """pts of the first frame (from the container), or None when the stream's packets carry no usable
    pts: then the frames are found by decoding from the start."""


def _count_decoded(path: str) -> int:
    try:
        with av.open(path) as container:
            return sum(1 for _ in container.decode(container.streams.video[0]))
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{path}: corrupt video data ({exc})") from None


def plan_video_pieces(path: str | os.PathLike[str], piece_frames: int) -> tuple[VideoInfo, list[FrameChunk]]:
    """Probe a video and split it into pieces of ``piece_frames`` frames (the last one shorter), each with
    the pts of its first frame, from one demux pass (packet pts, no decoding).

    For streams whose packets lack pts or repeat them, the frames are counted by decoding once and the
    pieces carry no pts. Raises the typed errors of :func:`pipeline.video.probe_video` for bad files."""
    name = os.fspath(path)
    info = probe_video(name)
    pts: list[int | None] = []
    try:
        with av.open(name) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size and not packet.is_discard:
                    pts.append(packet.pts)
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{name}: corrupt video data ({exc})") from None
    known = sorted(p for p in pts if p is not None)
    exact = bool(pts) and len(known) == len(pts) and len(set(known)) == len(known)
    total = len(known) if exact else _count_decoded(name)
    return info, [
        FrameChunk(s, min(piece_frames, total - s), known[s] if exact else None)
        for s in range(0, total, piece_frames)
    ]


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return Fraction(25)


def _frames_of(path: str, seek_pts: int | None) -> Iterator[tuple[av.VideoFrame, Fraction, int, Fraction]]:
    """Decoded frames with (time_base, start_time, pts step per frame), after seeking to the keyframe at
    or before ``seek_pts`` when given."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = Fraction(stream.time_base or Fraction(1, 1))
            origin = stream.start_time or 0
            step = 1 / (_stream_fps(stream) * tb)
            if seek_pts is not None:
                container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                yield frame, tb, origin, step
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{path}: corrupt video data ({exc})") from None


def _video_frame(frame: av.VideoFrame, index: int, tb: Fraction, origin: int, step: Fraction) -> VideoFrame:
    """As :func:`pipeline.video.read_frames` makes them (a missing pts is extrapolated from the rate)."""
    pts = frame.pts if frame.pts is not None else origin + round(index * step)
    image = np.ascontiguousarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
    return VideoFrame(index=index, pts=pts, time_s=float((pts - origin) * tb), image=image)


def _decode_after_seek(path: str, chunk: FrameChunk) -> Iterator[VideoFrame]:
    """The chunk's frames after a keyframe seek; yields nothing when the seek landed after the chunk's
    first frame (the caller then decodes from the start)."""
    assert chunk.start_pts is not None
    emitted = 0
    for frame, tb, origin, step in _frames_of(path, chunk.start_pts):
        if emitted == 0:
            if frame.pts is not None and frame.pts < chunk.start_pts:
                continue
            if frame.pts != chunk.start_pts:
                log.info("%s: seek to pts %d missed, decoding from the start", path, chunk.start_pts)
                return
        yield _video_frame(frame, chunk.start + emitted, tb, origin, step)
        emitted += 1
        if emitted == chunk.count:
            return


def _decode_from_start(path: str, chunk: FrameChunk) -> Iterator[VideoFrame]:
    emitted = 0
    for position, (frame, tb, origin, step) in enumerate(_frames_of(path, None)):
        if position < chunk.start:
            continue
        if emitted == 0 and chunk.start_pts is not None and frame.pts != chunk.start_pts:
            raise InvalidInputError(
                f"{path}: frame {chunk.start} has pts {frame.pts}, the container says {chunk.start_pts}"
            )
        yield _video_frame(frame, position, tb, origin, step)
        emitted += 1
        if emitted == chunk.count:
            return


def decode_video_chunk(path: str | os.PathLike[str], chunk: FrameChunk) -> Iterator[VideoFrame]:
    """The frames of ``chunk`` in presentation order, with the indices, pts and pixels that
    :func:`pipeline.video.read_frames` gives them: seek to the keyframe at or before the chunk's first
    frame, decode sequentially, drop frames before it; decode from the start when the seek misses or the
    chunk has no pts. A generator: decoding happens as frames are pulled.

    Raises InvalidInputError for corrupt data or when the stream ends before the chunk does."""
    name = os.fspath(path)
    emitted = 0
    frames: Iterator[VideoFrame] = iter(())
    if chunk.start > 0 and chunk.start_pts is not None:
        frames = _decode_after_seek(name, chunk)
        first = next(frames, None)
        if first is None:
            frames = _decode_from_start(name, chunk)
        else:
            emitted = 1
            yield first
    else:
        frames = _decode_from_start(name, chunk)
    for frame in frames:
        emitted += 1
        yield frame
    if chunk.count is not None and emitted < chunk.count:
        raise InvalidInputError(
            f"{name}: only {emitted} of {chunk.count} frames from frame {chunk.start} could be decoded"
        )
    if emitted == 0:
        raise InvalidInputError(f"{name}: no decodable video frames")


def read_frame_files(
    paths: Sequence[str], start: int, size: tuple[int, int], fps: Fraction
) -> Iterator[VideoFrame]:
    """Image files as frames ``start``, ``start + 1``, ...: pts = index, time = index / fps. Every image
    must be ``size`` = (width, height) (a video has one frame size), else InvalidInputError."""
    for offset, path in enumerate(paths):
        image = read_image_file(path)
        if (image.shape[1], image.shape[0]) != size:
            raise InvalidInputError(
                f"{path}: {image.shape[1]}x{image.shape[0]} frame in a {size[0]}x{size[1]} frame sequence"
            )
        index = start + offset
        yield VideoFrame(index=index, pts=index, time_s=float(index / fps), image=image)


# --- the job's targets and the decode stage ---------------------------------------------------------------


@dataclass(frozen=True)
class FrameSource:
    """Where the decode stage reads one target's frames: a local video file, or local image files."""

    kind: Literal["video", "frames"]
    path: str
    """Local video file, or local folder of the frames."""
    files: tuple[str, ...]
    """The frame files in order (``frames``)."""
    size: tuple[int, int]
    """(width, height) of every frame."""
    fps: Fraction


@dataclass
class _Target:
    """A target as planned in the driver: its frames, its pieces, where its outputs go."""

    uri: str
    source: FrameSource
    pieces: list[FrameChunk]
    has_audio: bool
    output_uri: str = ""
    parquet_uri: str | None = None

    @property
    def frame_count(self) -> int:
        return sum(p.count or 0 for p in self.pieces)


def _output_name(uri: str, kind: str) -> str:
    name = PurePosixPath(resolve_uri(uri)[1].rstrip("/"))
    if kind == "frames":
        return f"{name.name}.mp4"
    suffix = name.suffix.lower() if name.suffix.lower() in VIDEO_OUTPUT_SUFFIXES else ".mkv"
    return f"{name.stem}{suffix}"


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)


def _plan_video(uri: str, local: str, config: BatchJobConfig) -> _Target:
    info, pieces = plan_video_pieces(local, config.batch_size)
    source = FrameSource("video", local, (), (info.width, info.height), info.fps)
    return _Target(uri, source, pieces, info.has_audio)


def _plan_frames(uri: str, fs: pafs.FileSystem, path: str, staging: Path, config: BatchJobConfig) -> _Target:
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot list ({exc})") from None
    names = sorted(
        PurePosixPath(i.path).name
        for i in infos
        if i.type == pafs.FileType.File and PurePosixPath(i.path).suffix.lower() in FRAME_SUFFIXES
    )
    if not names:
        raise InvalidInputError(f"{uri}: no frames ({', '.join(FRAME_SUFFIXES)} files) in this folder")
    files = [_stage_in(fs, f"{path.rstrip('/')}/{n}", f"{uri.rstrip('/')}/{n}", staging) for n in names]
    first = read_image_file(files[0])
    source = FrameSource(
        "frames", os.path.dirname(files[0]), tuple(files), (first.shape[1], first.shape[0]), config.frames_fps
    )
    n, step = len(files), config.batch_size
    return _Target(uri, source, [FrameChunk(s, min(step, n - s), s) for s in range(0, n, step)], False)


def _plan_targets(config: BatchJobConfig, staging: Path) -> list[_Target]:
    targets: list[_Target] = []
    for index, uri in enumerate(config.targets):
        fs, path = resolve_uri(uri)
        kind = _file_type(fs, path, uri)
        if kind == pafs.FileType.Directory:
            targets.append(_plan_frames(uri, fs, path, staging / f"in-{index}", config))
        elif kind == pafs.FileType.File:
            targets.append(_plan_video(uri, _stage_in(fs, path, uri, staging / f"in-{index}"), config))
        else:
            raise InvalidInputError(f"{uri}: no such file or folder")
    if _is_file_output(config.output):
        outputs = [config.output]
    else:
        outputs = [_join(config.output, _output_name(t.uri, t.source.kind)) for t in targets]
    if len(set(outputs)) != len(outputs):
        raise InvalidOptionError(f"two targets would write the same output file in {config.output}")
    inputs = {(type(fs).__name__, path) for fs, path in map(resolve_uri, config.targets)}
    for out in outputs:
        fs, path = resolve_uri(out)
        if (type(fs).__name__, path) in inputs:
            raise InvalidOptionError(f"output {out} would overwrite its own input")
    for target, out in zip(targets, outputs, strict=True):
        target.output_uri = out
        if config.write_parquet:
            target.parquet_uri = out[: -len(PurePosixPath(out).suffix)] + ".parquet"
    return targets


def _piece_rows(targets: list[_Target]) -> list[dict[str, int]]:
    """One row per piece, all targets in order: what the decode stage is asked for."""
    return [
        {
            "target": index,
            "start": piece.start,
            "count": piece.count or 0,
            "start_pts": -1 if piece.start_pts is None else piece.start_pts,
        }
        for index, target in enumerate(targets)
        for piece in target.pieces
    ]


class DecodeFrames:
    """The stateful decode stage: piece rows (``target``, ``start``, ``count``, ``start_pts``; -1 = none)
    in, frames out: ``target`` (int32), ``index`` (int64), ``pts`` (int64), ``time_s`` (float64),
    ``image`` ((H, W, 3) uint8 BGR).

    One actor on the driver's node (where the inputs are) keeps the current target open between pieces,
    so pieces asked for in order decode each video once, sequentially; a piece that does not follow the
    previous one is found by a keyframe seek (:func:`decode_video_chunk`). Each piece is a small task, so
    Ray Data's backpressure stops decoding when the swap stage falls behind."""

    def __init__(self, sources: Sequence[FrameSource]) -> None:
        self._sources = list(sources)
        self._frames: Iterator[VideoFrame] = iter(())
        self._position = (-1, -1)
        """(target, index of the next frame) of ``_frames``."""

    def _open(self, target: int, start: int, start_pts: int) -> Iterator[VideoFrame]:
        source = self._sources[target]
        if source.kind == "video":
            return decode_video_chunk(
                source.path, FrameChunk(start, None, None if start_pts < 0 else start_pts)
            )
        return read_frame_files(source.files[start:], start, source.size, source.fps)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames: list[VideoFrame] = []
        targets: list[int] = []
        for target, start, count, start_pts in zip(
            batch["target"].tolist(),
            batch["start"].tolist(),
            batch["count"].tolist(),
            batch["start_pts"].tolist(),
            strict=True,
        ):
            if self._position != (target, start):
                self._frames = self._open(target, start, start_pts)
            piece = list(itertools.islice(self._frames, count))
            if len(piece) < count:
                raise InvalidInputError(
                    f"{self._sources[target].path}: only {len(piece)} of the {count} frames from frame "
                    f"{start} could be decoded"
                )
            self._position = (target, start + count)
            frames.extend(piece)
            targets.extend([target] * count)
        return {
            "target": np.array(targets, np.int32),
            "index": np.array([f.index for f in frames], np.int64),
            "pts": np.array([f.pts for f in frames], np.int64),
            "time_s": np.array([f.time_s for f in frames], np.float64),
            "image": _column([f.image for f in frames]),
        }


# --- Ray Data: the swap stage -------------------------------------------------------------------------------


def _column(arrays: list[np.ndarray]) -> np.ndarray:
    """A batch column: stacked when every row has one shape, else an object array of the rows."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


class SwapFrames:
    """The stateful swap stage: builds the models once per actor, then detect -> select -> batched swap ->
    optional batched enhance for each batch of frames.

    Adds ``faces`` (int32: faces processed), ``boxes`` ((4 * faces,) float32 x1, y1, x2, y2 per face) and
    ``scores`` ((faces,) float32) to the batch and replaces ``image`` by the result."""

    def __init__(
        self,
        pipeline_config: PipelineConfig,
        options: SwapOptions,
        identity: Identity | None,
        reference: Embedding | None,
    ) -> None:
        self._orchestrator = SwapOrchestrator(build_models(pipeline_config).ports())
        self._options = options
        self._identity = identity
        self._reference = reference

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [np.ascontiguousarray(image) for image in batch["image"]]
        results = asyncio.run(
            self._orchestrator.swap_frames(images, self._identity, self._options, self._reference)
        )
        faces = [r.faces for r in results]
        return {
            "target": batch["target"],
            "index": batch["index"],
            "pts": batch["pts"],
            "time_s": batch["time_s"],
            "image": _column([r.image for r in results]),
            "faces": np.array([len(f) for f in faces], np.int32),
            "boxes": _column([np.array([f.bbox for f in fs], np.float32).reshape(-1) for fs in faces]),
            "scores": _column([np.array([f.score for f in fs], np.float32) for fs in faces]),
        }


def _encode_source(
    pipeline_config: PipelineConfig,
    options: SwapOptions,
    source: ImageBGR,
    reference: ImageBGR | None,
) -> tuple[Identity | None, Embedding | None, dict[str, str | None]]:
    """(identity, reference embedding, components): run once per job, as a Ray task shaped like an actor."""
    orchestrator = SwapOrchestrator(build_models(pipeline_config).ports())
    orchestrator.check(options, has_source=True, has_reference=reference is not None)
    identity = asyncio.run(orchestrator.source_identity(source, options)) if options.swap else None
    ref = None
    if options.face_selector_mode == "reference":
        assert reference is not None  # BatchJobConfig requires it
        ref = asyncio.run(orchestrator.reference_embedding(reference, options))
    return identity, ref, orchestrator.components


# --- writing ------------------------------------------------------------------------------------------------

_PARQUET_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("pts", pa.int64()),
        ("time_s", pa.float64()),
        ("faces", pa.int32()),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        ("scores", pa.list_(pa.float32())),
    ]
)


class _TargetSink:
    """Writes one target's output video (and Parquet) to local files, then uploads them when remote."""

    def __init__(
        self, target: _Target, index: int, config: BatchJobConfig, metadata: dict[str, str], staging: Path
    ) -> None:
        self.target = target
        self._index = index
        self.frames = 0
        self.frames_without_face = 0
        self.faces_swapped = 0
        self._uploads: list[tuple[str, str]] = []
        self._staging = staging
        video_path = self._local_output(target.output_uri)
        width, height = target.source.size
        self._writer = VideoWriter(
            video_path,
            width=width,
            height=height,
            fps=target.source.fps,
            crf=config.crf,
            preset=config.preset,
            audio_from=target.source.path if target.has_audio else None,
            metadata=metadata,
        )
        self._parquet: pq.ParquetWriter | None = None
        self._images = config.parquet_images
        if target.parquet_uri is not None:
            schema = (
                _PARQUET_SCHEMA.append(pa.field("image_png", pa.binary()))
                if self._images
                else _PARQUET_SCHEMA
            )
            self._parquet_path = self._local_output(target.parquet_uri)
            try:
                self._parquet = pq.ParquetWriter(self._parquet_path, schema)
            except BaseException:
                self._writer.abort()
                raise

    def _local_output(self, uri: str) -> str:
        """The path to write ``uri`` at: itself when local, else a staging file uploaded on close."""
        fs, path = resolve_uri(uri)
        if _is_local(fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return path
        local = self._staging / f"out-{self._index}" / PurePosixPath(path).name
        local.parent.mkdir(parents=True, exist_ok=True)
        self._uploads.append((str(local), uri))
        return str(local)

    def write(self, batch: Mapping[str, np.ndarray], rows: range) -> None:
        faces = batch["faces"][rows.start : rows.stop]
        for i in rows:
            self._writer.write(np.ascontiguousarray(batch["image"][i]))
        self.frames += len(rows)
        self.frames_without_face += int(np.count_nonzero(faces == 0))
        self.faces_swapped += int(faces.sum())
        if self._parquet is not None:
            columns: dict[str, Any] = {
                "frame": batch["index"][rows.start : rows.stop],
                "pts": batch["pts"][rows.start : rows.stop],
                "time_s": batch["time_s"][rows.start : rows.stop],
                "faces": faces,
                "boxes": [np.asarray(batch["boxes"][i], np.float32).reshape(-1, 4).tolist() for i in rows],
                "scores": [np.asarray(batch["scores"][i], np.float32).tolist() for i in rows],
            }
            if self._images:
                columns["image_png"] = [encode_image(batch["image"][i], "image/png") for i in rows]
            self._parquet.write_table(pa.table(columns, schema=self._parquet.schema))

    def close(self) -> TargetResult:
        self._writer.close()
        if self._parquet is not None:
            self._parquet.close()
        for local, uri in self._uploads:
            fs, path = resolve_uri(uri)
            try:
                fs.create_dir(str(PurePosixPath(path).parent), recursive=True)
                pafs.copy_files(
                    local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
                )
            except OSError as exc:
                raise InvalidInputError(f"{uri}: cannot upload ({exc})") from None
        t = self.target
        return TargetResult(
            target=t.uri,
            output=t.output_uri,
            parquet=t.parquet_uri,
            frames=self.frames,
            frames_without_face=self.frames_without_face,
            faces_swapped=self.faces_swapped,
            width=t.source.size[0],
            height=t.source.size[1],
            fps=t.source.fps,
        )

    def abort(self) -> None:
        self._writer.abort()
        if self._parquet is not None:
            self._parquet.close()
            Path(self._parquet_path).unlink(missing_ok=True)


# --- progress -----------------------------------------------------------------------------------------------


class FrameProgress:
    """A one-line text progress bar (frames done / total, percent, frames per second, time left) redrawn
    with ``\\r`` on ``stream`` (stderr by default), at most once per ``min_interval`` seconds and always at
    the end (then the line ends). fps counts from the first call."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        min_interval: float = 0.5,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._min_interval = min_interval
        self._width = width
        self._clock = clock
        self._start: float | None = None
        self._last_draw: float | None = None
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        complete = done >= total
        if self._finished or (
            not complete and self._last_draw is not None and now - self._last_draw < self._min_interval
        ):
            return
        self._last_draw = now
        self._finished = complete
        self._stream.write("\r" + self.render(done, total, now - self._start) + ("\n" if complete else ""))
        self._stream.flush()

    def render(self, done: int, total: int, elapsed_s: float) -> str:
        """The line for ``done`` of ``total`` frames after ``elapsed_s`` seconds, without the ``\\r``."""
        fraction = min(done / total, 1.0) if total > 0 else 1.0
        filled = int(fraction * self._width)
        fps = done / elapsed_s if elapsed_s > 0 else 0.0
        left = f" ETA {math.ceil((total - done) / fps)}s" if fps > 0 and done < total else ""
        bar = "#" * filled + "." * (self._width - filled)
        return f"frames [{bar}] {done}/{total} {fraction:6.1%} {fps:.1f} fps{left}"


# --- the job ------------------------------------------------------------------------------------------------


def object_store_budget(config: BatchJobConfig, batch_bytes: int) -> int:
    """Object store bytes the job's dataset may use: room for two batches per actor (one being processed,
    one queued) plus four in the decode and write stages, so decoding cannot run ahead of the swap by more
    than that, whatever the length of the video. At least 64 MiB."""
    return max(64 * 1024 * 1024, batch_bytes * (2 * config.num_actors + 4))


def _dataset(
    config: BatchJobConfig,
    pipeline_config: PipelineConfig,
    targets: list[_Target],
    identity: npt.NDArray[np.float32] | None,
    reference: Embedding | None,
) -> ray.data.Dataset:
    """Pieces -> decode -> swap, with order preserved, blocks of one batch, the object store use bounded
    and the UDFs' own exceptions raised (typed errors stay typed). These settings go to the dataset's own
    copy of the DataContext (deep-copied when it is created); the process-wide context is restored right
    after."""
    context = DataContext.get_current()
    options = context.execution_options
    saved = (
        options.preserve_order,
        options.resource_limits,
        context.target_max_block_size,
        context.enable_progress_bars,
        context.raise_original_map_exception,
    )
    batch_bytes = config.batch_size * max(t.source.size[0] * t.source.size[1] * 3 for t in targets)
    budget = object_store_budget(config, batch_bytes)
    options.preserve_order = True
    options.resource_limits = saved[1].copy(object_store_memory=min(budget, saved[1].object_store_memory))
    context.target_max_block_size = batch_bytes + 1024 * 1024
    context.enable_progress_bars = False
    context.raise_original_map_exception = True
    try:
        pieces = _piece_rows(targets)
        here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
        frames = ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
            DecodeFrames,
            fn_constructor_kwargs={"sources": [t.source for t in targets]},
            compute=ActorPoolStrategy(size=1),
            batch_size=1,
            batch_format="numpy",
            num_cpus=1,
            label_selector=here,
        )
        return frames.map_batches(
            SwapFrames,
            fn_constructor_kwargs={
                "pipeline_config": pipeline_config,
                "options": config.options,
                "identity": identity,
                "reference": reference,
            },
            compute=ActorPoolStrategy(size=config.num_actors),
            batch_size=config.batch_size,
            batch_format="numpy",
            num_cpus=config.actor_resources["num_cpus"],
            num_gpus=config.actor_resources["num_gpus"],
        )
    finally:
        (
            options.preserve_order,
            options.resource_limits,
            context.target_max_block_size,
            context.enable_progress_bars,
            context.raise_original_map_exception,
        ) = saved


def _write_outputs(
    dataset: ray.data.Dataset,
    targets: list[_Target],
    config: BatchJobConfig,
    metadata: dict[str, str],
    staging: Path,
    progress: Callable[[int, int], None],
) -> list[TargetResult]:
    """Iterate the swapped frames in order and write each target's outputs."""
    total = sum(t.frame_count for t in targets)
    results: list[TargetResult] = []
    sink: _TargetSink | None = None
    done = 0
    progress(0, total)
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            n = len(batch["index"])
            row = 0
            while row < n:
                target = int(batch["target"][row])
                if sink is None or sink.target is not targets[target]:
                    if sink is not None:
                        results.append(sink.close())
                    if target != len(results):
                        raise RuntimeError(f"frames of target {target} arrived after target {len(results)}")
                    sink = _TargetSink(targets[target], target, config, metadata, staging)
                end = row
                while end < n and int(batch["target"][end]) == target:
                    end += 1
                expected = np.arange(sink.frames, sink.frames + end - row)
                if not np.array_equal(batch["index"][row:end], expected):
                    raise RuntimeError(f"frames out of order in target {target}: {batch['index'][row:end]}")
                sink.write(batch, range(row, end))
                row = end
            done += n
            progress(done, max(total, done))
        if sink is not None:
            results.append(sink.close())
            sink = None
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if len(results) != len(targets):
        raise InvalidInputError(f"{targets[len(results)].uri}: no frames decoded")
    return results


def run_batch_job(
    config: BatchJobConfig, progress: Callable[[int, int], None] | None = None
) -> BatchJobResult:
    """Run one batch job on the connected Ray cluster (Ray Data starts a local one when none is).

    ``progress(done, total)`` is called as frames are written (default: a text bar on stderr).
    Raises the typed errors of :mod:`pipeline.errors`: InvalidInputError / UnsupportedMediaError for bad
    inputs, NoFaceError when the source image has no face, InvalidOptionError, ModelNotFoundError, ...
    Outputs of targets finished before an error are kept; the failing target's partial files are deleted.
    """
    started = time.monotonic()
    report = progress if progress is not None else FrameProgress()
    source = _read_image(config.source_image, "source_image")
    reference = _read_image(config.reference_image, "reference_image") if config.reference_image else None
    with tempfile.TemporaryDirectory(prefix="faceswap-batch-") as tmp:
        staging = Path(tmp)
        targets = _plan_targets(config, staging)
        pipeline_config = replace(config.pipeline, enhance=config.options.enhance)
        encode = ray.remote(_encode_source).options(**config.actor_resources)
        try:
            identity, ref, components = ray.get(
                encode.remote(pipeline_config, config.options, source, reference)
            )
            label = ProvenanceLabel(models={k: v for k, v in components.items() if v is not None})
            metadata = video_metadata(label) if config.provenance else {}
            dataset = _dataset(config, pipeline_config, targets, identity, ref)
            results = _write_outputs(dataset, targets, config, metadata, staging, report)
        except ray.exceptions.RayError as error:
            typed = unwrap(error)
            if not isinstance(typed, FaceSwapError):
                raise
            log.debug("batch job failed in a Ray worker: %s", error)
            raise typed from None
    return BatchJobResult(tuple(results), components, time.monotonic() - started)


# --- command line -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.batch",
        description="Swap the face of SOURCE into every frame of each TARGET video (or folder of frames) "
        "with Ray Data. Exit codes: 0 ok, 2 bad input or options, 3 no face in the source, 4 model missing.",
    )
    parser.add_argument("source", help="image with the source face (path or URI, e.g. s3://bucket/face.jpg)")
    parser.add_argument("targets", nargs="+", metavar="target", help="video file or folder of frames")
    parser.add_argument(
        "-o", "--output", required=True, help="output folder, or .mp4/.mov/.mkv for one target"
    )
    add_swap_arguments(parser)
    parser.add_argument(
        "--providers",
        help="ONNX Runtime providers, e.g. cuda,cpu (default: cuda,cpu with --num-gpus, else cpu)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="frames per model batch (default 8)")
    parser.add_argument("--actors", type=int, default=1, help="swap actors in the pool (default 1)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor, e.g. 0.5 (default 0)")
    parser.add_argument(
        "--crf", type=int, default=18, help="H.264 quality, 0-51, lower is better (default 18)"
    )
    parser.add_argument(
        "--preset", default="medium", choices=X264_PRESETS, help="x264 preset (default medium)"
    )
    parser.add_argument("--frames-fps", type=Fraction, default=Fraction(25), help="fps for folders of frames")
    parser.add_argument("--parquet", action="store_true", help="also write per-frame metadata as Parquet")
    parser.add_argument("--parquet-images", action="store_true", help="store PNG frames in the Parquet too")
    parser.add_argument(
        "--no-provenance",
        dest="provenance",
        action="store_false",
        help="do not label the outputs as synthetic",
    )
    parser.add_argument(
        "--address", help="Ray cluster to join, e.g. auto (under ray job submit); default: start a local Ray"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log model and provider details")
    return parser


def _config_from_args(args: argparse.Namespace) -> BatchJobConfig:
    options = swap_options_from_args(args)
    providers = args.providers or ("cuda,cpu" if args.num_gpus > 0 else "cpu")
    pipeline = PipelineConfig(
        profile=args.profile,
        models_dir=args.models_dir,
        download=args.download,
        session=SessionConfig(providers=tuple(p for p in providers.split(",") if p)),
        enhance=args.enhance,
    )
    return BatchJobConfig(
        source_image=args.source,
        targets=tuple(args.targets),
        output=args.output,
        options=options,
        pipeline=pipeline,
        reference_image=args.reference,
        batch_size=args.batch_size,
        num_actors=args.actors,
        num_gpus=args.num_gpus,
        crf=args.crf,
        preset=args.preset,
        frames_fps=args.frames_fps,
        write_parquet=args.parquet or args.parquet_images,
        parquet_images=args.parquet_images,
        provenance=args.provenance,
    )


def _init_local_ray(config: BatchJobConfig) -> None:
    """A local Ray over this machine's CPUs (GPUs detected by Ray); checks that the pool fits in it."""
    package_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=os.cpu_count(), runtime_env={"env_vars": {"PYTHONPATH": python_path}})
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    need = config.actor_resources
    if need["num_gpus"] * config.num_actors > gpus:
        raise InvalidOptionError(
            f"{config.num_actors} actors x {need['num_gpus']} GPU do not fit: Ray found {gpus:g} GPU(s) here"
        )
    if need["num_cpus"] * config.num_actors + 1 > cpus:
        raise InvalidOptionError(
            f"{config.num_actors} actors x {need['num_cpus']:g} CPU leave no CPU for the decode actor "
            f"({cpus:g} CPUs); use fewer --actors"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code. Joins a running Ray when this process is connected to one
    (and leaves it running), ``--address`` when given, else starts a local Ray for the job."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    owns_ray = False
    try:
        config = _config_from_args(args)
        if not ray.is_initialized():
            owns_ray = True
            if args.address:
                ray.init(address=args.address)
            else:
                _init_local_ray(config)
        result = run_batch_job(config, FrameProgress() if args.progress else (lambda done, total: None))
    except FaceSwapError as error:
        sys.stderr.write(f"faceswap batch: error: {error.message}\n")
        return exit_code(error)
    finally:
        if owns_ray:
            ray.shutdown()
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
