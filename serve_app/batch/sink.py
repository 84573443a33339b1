"""The driver's end of a batch job: the swapped frames, in order, written as each target's video (audio
copied from the source, provenance label in the container tags), its sidecar of the faces swapped
(``<name>.tracks.jsonl``: one JSON line per face per frame, :mod:`pipeline.video_faces`) and, optionally,
Parquet rows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InvalidInputError
from pipeline.imageio import encode_image
from pipeline.provenance import ProvenanceLabel, video_metadata
from pipeline.video import VideoWriter
from serve_app.batch.config import BatchJobConfig, TargetResult
from serve_app.batch.storage import local_output, upload
from serve_app.batch.targets import TargetPlan

PARQUET_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("pts", pa.int64()),
        ("time_s", pa.float64()),
        ("faces", pa.int32()),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        ("scores", pa.list_(pa.float32())),
        ("landmarks", pa.list_(pa.list_(pa.float32(), 10))),
        ("track_ids", pa.list_(pa.int64())),
        ("sources", pa.list_(pa.string())),
        ("keyframe", pa.bool_()),
    ]
)
"""One row per frame; the lists hold one entry per face swapped, in the same order (``landmarks``: x0, y0,
... x4, y4, rounded as in the sidecar; ``track_ids``: null entries without tracking; ``sources``: detected,
tracked or interpolated; ``keyframe``: whether the detector ran on the frame). ``image_png`` (binary) is
added when the job stores the frames."""

Progress = Callable[[int, int], None]


def components_of(batch: Mapping[str, np.ndarray]) -> dict[str, str | None]:
    """The models that swapped ``batch`` (its ``components`` column)."""
    return json.loads(str(batch["components"][0]))


class TargetSink:
    """Writes one target's output video, its sidecar (and Parquet) to local files as frames come, then
    uploads them when the output is remote. The files open at the first frame (the video's size is the
    frame's)."""

    def __init__(self, plan: TargetPlan, index: int, config: BatchJobConfig, staging: Path) -> None:
        self.plan = plan
        self.frames = 0
        self.frames_without_face = 0
        self.faces_swapped = 0
        self.detector_calls = 0
        self._config = config
        self._staging = staging / f"out-{index}"
        self._uploads: list[tuple[str, str]] = []
        self._writer: VideoWriter | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._parquet_path: str | None = None
        self._tracks: IO[str] | None = None
        self._tracks_path: str | None = None

    def _local(self, uri: str) -> str:
        path, remote = local_output(uri, self._staging)
        if remote:
            self._uploads.append((path, uri))
        return path

    def _open(self, image: np.ndarray, components: dict[str, str | None]) -> VideoWriter:
        config, plan = self._config, self.plan
        label = ProvenanceLabel(models={k: v for k, v in components.items() if v is not None})
        writer = VideoWriter(
            self._local(plan.output),
            width=image.shape[1],
            height=image.shape[0],
            fps=None if plan.source.kind == "video" else plan.source.fps,
            crf=config.crf,
            preset=config.preset,
            audio_from=plan.source.path if plan.source.kind == "video" else None,
            metadata=video_metadata(label) if config.provenance else {},
        )
        try:
            self._tracks_path = self._local(plan.tracks)
            self._tracks = open(self._tracks_path, "w", encoding="utf-8")  # closed by close() or abort()
        except BaseException:
            writer.abort()
            raise
        if plan.parquet is not None:
            schema = PARQUET_SCHEMA
            if config.parquet_images:
                schema = schema.append(pa.field("image_png", pa.binary()))
            self._parquet_path = self._local(plan.parquet)
            try:
                self._parquet = pq.ParquetWriter(self._parquet_path, schema)
            except BaseException:
                writer.abort()
                raise
        return writer

    def write(self, batch: Mapping[str, np.ndarray], rows: range) -> None:
        """Write rows ``rows`` of a swapped batch (all of this target, in order)."""
        if self._writer is None:
            self._writer = self._open(batch["image"][rows.start], components_of(batch))
        for i in rows:
            self._writer.write(np.ascontiguousarray(batch["image"][i]))
        faces = batch["faces"][rows.start : rows.stop]
        self.frames += len(rows)
        self.frames_without_face += int(np.count_nonzero(faces == 0))
        self.faces_swapped += int(faces.sum())
        self.detector_calls += int(np.count_nonzero(batch["keyframe"][rows.start : rows.stop]))
        tracks = [json.loads(str(batch["tracks"][i])) for i in rows]
        assert self._tracks is not None
        lines = (json.dumps(row, separators=(",", ":")) + "\n" for frame in tracks for row in frame)
        self._tracks.writelines(lines)
        if self._parquet is not None:
            columns: dict[str, Any] = {
                "frame": batch["index"][rows.start : rows.stop],
                "pts": batch["pts"][rows.start : rows.stop],
                "time_s": batch["time_s"][rows.start : rows.stop],
                "faces": faces,
                "boxes": [np.asarray(batch["boxes"][i], np.float32).reshape(-1, 4).tolist() for i in rows],
                "scores": [np.asarray(batch["scores"][i], np.float32).tolist() for i in rows],
                "landmarks": [[row["landmarks"] for row in frame] for frame in tracks],
                "track_ids": [[row["track_id"] for row in frame] for frame in tracks],
                "sources": [[row["source"] for row in frame] for frame in tracks],
                "keyframe": batch["keyframe"][rows.start : rows.stop],
            }
            if self._config.parquet_images:
                columns["image_png"] = [encode_image(batch["image"][i], "image/png") for i in rows]
            self._parquet.write_table(pa.table(columns, schema=self._parquet.schema))

    def close(self) -> TargetResult:
        """Finish the files, upload them when remote, and say what was written."""
        if self._writer is None:
            raise InvalidInputError(f"{self.plan.uri}: no frames decoded")
        self._writer.close()
        if self._tracks is not None:
            self._tracks.close()
        if self._parquet is not None:
            self._parquet.close()
        for local, uri in self._uploads:
            upload(local, uri)
        plan = self.plan
        return TargetResult(
            target=plan.uri,
            output=plan.output,
            parquet=plan.parquet,
            frames=self.frames,
            frames_without_face=self.frames_without_face,
            faces_swapped=self.faces_swapped,
            tracks=plan.tracks,
            detector_calls=self.detector_calls,
            width=self._writer.width,
            height=self._writer.height,
            fps=self._writer.fps,
        )

    def abort(self) -> None:
        """Delete the partial outputs."""
        if self._writer is not None:
            self._writer.abort()
        if self._tracks is not None:
            self._tracks.close()
        if self._parquet is not None:
            self._parquet.close()
        for path in (self._tracks_path, self._parquet_path):
            if path is not None:
                Path(path).unlink(missing_ok=True)


@dataclass(frozen=True)
class Written:
    """What :func:`write_outputs` wrote."""

    targets: tuple[TargetResult, ...]
    components: dict[str, str | None]
    first_frames_at: float
    """``time.monotonic()`` when the first frames were written."""


def write_outputs(
    batches: Iterable[Mapping[str, np.ndarray]],
    plans: list[TargetPlan],
    config: BatchJobConfig,
    staging: Path,
    progress: Progress,
) -> Written:
    """Write the swapped ``batches`` (in order: target by target, frame by frame) to each target's outputs.

    ``progress(done, total)`` is called as each batch arrives, with the frames written before it, and once
    at the end: the first call marks the end of the start-up, and the intervals between calls are the
    job's steady pace (a rate measured from the first call is the throughput, not diluted by the start-up
    nor inflated by the first batch). ``total`` is the planned frame count (the decode stage fails a
    target that has fewer). A failing target's partial outputs are deleted; targets finished before it keep
    theirs."""
    total = sum(p.frames for p in plans)
    results: list[TargetResult] = []
    components: dict[str, str | None] = {}
    sink: TargetSink | None = None
    first_at = 0.0
    done = 0
    try:
        for batch in batches:
            if not components:
                components = components_of(batch)
                first_at = time.monotonic()
            progress(done, total)
            n = len(batch["index"])
            row = 0
            while row < n:
                target = int(batch["target"][row])
                if sink is None or target != len(results):
                    if sink is not None:
                        results.append(sink.close())
                    if target != len(results):
                        raise InvalidInputError(f"{plans[len(results)].uri}: no frames decoded")
                    sink = TargetSink(plans[target], target, config, staging)
                end = row + 1
                while end < n and int(batch["target"][end]) == target:
                    end += 1
                expected = np.arange(sink.frames, sink.frames + end - row)
                if not np.array_equal(batch["index"][row:end], expected):
                    raise RuntimeError(f"frames out of order in target {target}: {batch['index'][row:end]}")
                sink.write(batch, range(row, end))
                row = end
            done += n
        if sink is not None:
            results.append(sink.close())
            sink = None
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if len(results) != len(plans):
        raise InvalidInputError(f"{plans[len(results)].uri}: no frames decoded")
    progress(done, done)
    return Written(tuple(results), components, first_at)
