"""Planning a job's targets in the driver: what each one is (a video or a folder of frames), where its
frames are read (staged locally) and where its outputs go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.imageio import read_image_file
from pipeline.video import FrameChunk, plan_chunks, probe_video
from serve_app.batch.config import VIDEO_OUTPUT_SUFFIXES, BatchJobConfig, is_file_output
from serve_app.batch.decode import FrameSource
from serve_app.batch.storage import (
    file_type,
    join,
    resolve_uri,
    same_location,
    stage_frame_files,
    stage_in,
)


@dataclass(frozen=True)
class TargetPlan:
    """One target as the driver planned it."""

    uri: str
    source: FrameSource
    size: tuple[int, int]
    """(width, height) as probed (the decoder checks every frame against the first)."""
    chunks: tuple[FrameChunk, ...]
    """Its pieces of ``batch_size`` frames, counted in the stream's packets (or the folder's files)."""
    has_audio: bool
    output: str
    parquet: str | None
    tracks: str
    """The sidecar of the faces swapped, ``<output name>.tracks.jsonl`` beside the output."""

    @property
    def frames(self) -> int:
        return sum(c.count for c in self.chunks)

    @property
    def frame_bytes(self) -> int:
        return self.size[0] * self.size[1] * 3


def _output_name(uri: str, kind: str) -> str:
    name = PurePosixPath(resolve_uri(uri)[1].rstrip("/"))
    if kind == "frames":
        return f"{name.name}.mp4"
    suffix = name.suffix.lower() if name.suffix.lower() in VIDEO_OUTPUT_SUFFIXES else ".mkv"
    return f"{name.stem}{suffix}"


def _source(
    uri: str, staging: Path, config: BatchJobConfig
) -> tuple[FrameSource, tuple[int, int], tuple[FrameChunk, ...], bool]:
    fs, path = resolve_uri(uri)
    kind = file_type(fs, path, uri)
    if kind == pafs.FileType.Directory:
        files = stage_frame_files(fs, path, uri, staging)
        first = read_image_file(files[0])
        source = FrameSource("frames", str(Path(files[0]).parent), tuple(files), config.frames_fps)
        step = config.batch_size
        chunks = tuple(FrameChunk(s, min(step, len(files) - s)) for s in range(0, len(files), step))
        return source, (first.shape[1], first.shape[0]), chunks, False
    if kind == pafs.FileType.File:
        local = stage_in(fs, path, uri, staging)
        info = probe_video(local)
        chunks = tuple(plan_chunks(local, config.batch_size))
        return FrameSource("video", local), (info.width, info.height), chunks, info.has_audio
    raise InvalidInputError(f"{uri}: no such file or folder")


def plan_targets(config: BatchJobConfig, staging: Path) -> list[TargetPlan]:
    """Probe (and stage, when remote) every target and choose its outputs. Raises the typed errors of
    :func:`pipeline.video.probe_video` for bad videos, InvalidInputError for missing targets or folders
    without frames, InvalidOptionError when two outputs collide or an output would overwrite an input."""
    sources = [_source(uri, staging / f"in-{i}", config) for i, uri in enumerate(config.targets)]
    if is_file_output(config.output):
        outputs = [config.output]
    else:
        outputs = [
            join(config.output, _output_name(uri, s[0].kind))
            for uri, s in zip(config.targets, sources, strict=True)
        ]
    if len(set(outputs)) != len(outputs):
        raise InvalidOptionError(f"two targets would write the same output file in {config.output}")
    for out in outputs:
        if any(same_location(out, target) for target in config.targets):
            raise InvalidOptionError(f"output {out} would overwrite its own input")
    plans = []
    for uri, (source, size, chunks, has_audio), out in zip(config.targets, sources, outputs, strict=True):
        stem = out[: -len(PurePosixPath(out).suffix)]
        parquet = stem + ".parquet" if config.write_parquet else None
        plans.append(TargetPlan(uri, source, size, chunks, has_audio, out, parquet, stem + ".tracks.jsonl"))
    return plans
