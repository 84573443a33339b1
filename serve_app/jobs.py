"""Durable video jobs over HTTP: uploads, a job store on any ``pyarrow.fs`` filesystem, runner actors that
run the Ray Data batch job (:func:`serve_app.batch.run_batch_job`) on the cluster, and a reconciler.

Routes (wired into the ingress, relative to the application's route prefix):

- ``POST /api/v1/jobs``: multipart ``source_image`` (JPEG, PNG or WebP), ``target_video`` (MP4/MOV,
  Matroska/WebM, AVI, MPEG-TS/PS or FLV, checked by magic bytes), optional ``reference_image`` and the
  swap options of ``POST /api/v1/swap``. Answers 202 ``{"task_id", "status": "queued"}`` as soon as the
  uploads are checked and stored; 400 (corrupt, truncated, no video stream), 413 (body, duration or frame
  size over the limit), 415 (not an image / video).
- ``GET /api/v1/tasks/{task_id}``: status (``queued``, ``running``, ``completed``, ``failed``), progress,
  frame counts, error and ``result_url`` once completed.
- ``GET /api/v1/tasks/{task_id}/result``: the video (``video/mp4``), streamed in chunks; 409 while the job
  is not completed, 404 for an unknown task.

The store (:class:`JobStore`) holds one folder per job, ``<root>/<task_id>/`` with ``record.json``
(replaced atomically: written to a temporary name, then moved), ``source.<ext>``, ``target.<ext>``,
``reference.<ext>`` and ``result.mp4``. Task ids are uuid4 hex strings, checked by :func:`check_task_id`
before any path is built from them; file names in a job folder are fixed.

Runners: each attempt of a job is a named, detached Ray actor (:class:`JobRunner`, ``faceswap-job-<task
id>-<attempt>`` in the ``faceswap-jobs`` namespace), so a job outlives the Serve application that accepted
it. The runner writes ``running``, heartbeats and throttled progress into the record (each write checks
that the record still names this runner), then ``completed`` or ``failed`` with the error, and exits.
Creating the actor under its name is the claim on an attempt: two reconcilers cannot start the same one.

The reconciler (:class:`JobManager`, run by every ingress replica when it starts and then periodically)
finds unfinished jobs whose runner is gone, silent for longer than ``heartbeat_timeout_s`` or never
started, and starts another attempt, or fails the job with the reason after ``max_attempts``; a job
running for longer than ``max_runtime_s`` is stopped and failed. No job stays ``queued`` or ``running``
without a live runner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any, Literal, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pipeline.errors import (
    FaceSwapError,
    InvalidInputError,
    PayloadTooLargeError,
)
from pipeline.imageio import decode_image, sniff_image_type
from pipeline.options import SwapOptions
from pipeline.video import VideoInfo, probe_video
from serve_app.batch import BatchJobConfig, BatchJobResult, run_batch_job
from serve_app.config import AppArgs, JobsArgs
from serve_app.errors import ServiceUnavailableError, error_response, request_id_of
from serve_app.forms import read_multipart
from serve_app.metrics import JobMetrics
from serve_app.routes import JOBS_PATH, RESULT_PATH, RESULT_TYPE, TASK_PATH

log = logging.getLogger(__name__)

RUNNER_NAMESPACE = "faceswap-jobs"
"""Ray namespace of the runner actors."""
RECORD_NAME = "record.json"
RESULT_NAME = "result.mp4"
JOB_FILE_FIELDS = ("source_image", "target_video", "reference_image")
STREAM_CHUNK_BYTES = 1024 * 1024
"""Bytes per chunk when uploads are copied into the store and results are streamed out."""

JobStatus = Literal["queued", "running", "completed", "failed"]
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
TERMINAL: frozenset[str] = frozenset({"completed", "failed"})

_TASK_ID = re.compile(r"[0-9a-f]{32}")
_FILE_NAME = re.compile(r"(record\.json|(source|target|reference|result)\.[a-z0-9]{2,4})")
_IMAGE_EXTENSIONS = MappingProxyType({"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"})
_VIDEO_EXTENSIONS = MappingProxyType(
    {
        "video/mp4": "mp4",
        "video/quicktime": "mov",
        "video/webm": "webm",
        "video/x-matroska": "mkv",
        "video/x-msvideo": "avi",
        "video/mp2t": "ts",
        "video/mpeg": "mpg",
        "video/x-flv": "flv",
    }
)


class JobNotFoundError(FaceSwapError):
    """No job has this task id."""

    status = 404
    code = "not_found"


class JobNotFinishedError(FaceSwapError):
    """The job's result was asked for before the job completed."""

    status = 409
    code = "not_finished"


class RunnerSupersededError(Exception):
    """The job record no longer names this runner (the reconciler replaced it, or the job finished)."""


def new_task_id() -> str:
    return uuid.uuid4().hex


def check_task_id(task_id: object) -> str:
    """``task_id`` when it is 32 lowercase hex digits (a uuid4 hex), else InvalidInputError (400)."""
    if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
        raise InvalidInputError("task_id: expected 32 lowercase hexadecimal digits")
    return task_id


def runner_name(task_id: str, attempt: int) -> str:
    """Name of the runner actor of one attempt of a job."""
    return f"faceswap-job-{check_task_id(task_id)}-{attempt}"


def task_url(task_id: str) -> str:
    return TASK_PATH.replace("{task_id}", check_task_id(task_id))


def result_url(task_id: str) -> str:
    return RESULT_PATH.replace("{task_id}", check_task_id(task_id))


# --- records ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """The state of one job, as stored in ``record.json``. Times are Unix seconds."""

    task_id: str
    status: JobStatus
    created_at: float
    updated_at: float
    options: Mapping[str, Any]
    """The SwapOptions as JSON values (``dataclasses.asdict``)."""
    source: str
    """File names in the job's folder."""
    target: str
    reference: str | None = None
    video: Mapping[str, Any] = field(default_factory=dict)
    """What probing the target found: media_type, width, height, fps, frame_count, duration_s, has_audio."""
    frames_total: int = 0
    frames_done: int = 0
    progress: float = 0.0
    """0..1."""
    error: str | None = None
    error_code: str | None = None
    result: str | None = None
    """File name of the output video once completed."""
    result_url: str | None = None
    """API path of the result (below the application's route prefix) once completed."""
    summary: Mapping[str, Any] | None = None
    """Frames, faces swapped, frames without a face, fps and components of the finished batch job."""
    attempts: int = 0
    """Runner attempts started so far."""
    runner: str | None = None
    """Actor name of the current attempt's runner."""
    heartbeat_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def __post_init__(self) -> None:
        check_task_id(self.task_id)
        if self.status not in ACTIVE | TERMINAL:
            raise ValueError(f"unknown job status {self.status!r}")

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def swap_options(self) -> SwapOptions:
        return SwapOptions.from_mapping(self.options)

    def to_json(self) -> bytes:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(values, sort_keys=True, default=dict).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        """Parse a record; keys this version does not know are ignored (records written by a newer one)."""
        values = json.loads(data)
        if not isinstance(values, dict):
            raise ValueError("a job record must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def public(self, root_path: str = "") -> dict[str, Any]:
        """The task as ``GET /api/v1/tasks/{task_id}`` shows it; ``root_path`` is the route prefix."""

        def iso(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, UTC).isoformat() if t is not None else None

        return {
            "task_id": self.task_id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "error": self.error,
            "error_code": self.error_code,
            "result_url": f"{root_path.rstrip('/')}{self.result_url}" if self.result_url else None,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "summary": dict(self.summary) if self.summary is not None else None,
        }


def video_facts(info: VideoInfo) -> dict[str, Any]:
    return {
        "media_type": info.media_type,
        "width": info.width,
        "height": info.height,
        "fps": str(info.fps),
        "frame_count": info.frame_count,
        "duration_s": round(info.duration_s, 3),
        "has_audio": info.has_audio,
    }


# --- store --------------------------------------------------------------------------------------------------


def _check_file_name(name: str) -> str:
    if _FILE_NAME.fullmatch(name) is None:
        raise ValueError(f"not a job file name: {name!r}")
    return name


class JobStore:
    """Job folders ``<root>/<task_id>/`` on a ``pyarrow.fs`` filesystem. Blocking calls: run them in a
    thread from async code. Every method checks the task id before it builds a path from it."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, root_uri: str) -> None:
        self.filesystem = filesystem
        self.root = root.rstrip("/") or "/"
        self.root_uri = root_uri

    @classmethod
    def from_uri(cls, uri: str) -> JobStore:
        """A store at a local directory (made absolute) or a ``pyarrow.fs`` URI such as
        ``s3://bucket/prefix?region=eu-west-1`` or ``file:///var/lib/faceswap/jobs``."""
        if "://" not in uri:
            root = os.path.abspath(os.path.expanduser(uri))
            return cls(pafs.LocalFileSystem(), root, root)
        filesystem, root = pafs.FileSystem.from_uri(uri)
        return cls(filesystem, root, uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, task_id: str, name: str | None = None) -> str:
        """The job's folder, or the file ``name`` in it (one of the fixed job file names)."""
        folder = f"{self.root.rstrip('/')}/{check_task_id(task_id)}"
        return folder if name is None else f"{folder}/{_check_file_name(name)}"

    def uri(self, task_id: str, name: str) -> str:
        """The file as a path or URI that :func:`serve_app.batch.resolve_uri` opens (a URI's query kept)."""
        if "://" not in self.root_uri:
            return self.path(task_id, name)
        base, _, query = self.root_uri.partition("?")
        uri = f"{base.rstrip('/')}/{check_task_id(task_id)}/{_check_file_name(name)}"
        return f"{uri}?{query}" if query else uri

    def put_file(self, task_id: str, name: str, source: IO[bytes]) -> int:
        """Copy ``source`` from byte 0 into the job's folder in chunks; returns the bytes copied."""
        path = self.path(task_id, name)
        self.filesystem.create_dir(self.path(task_id), recursive=True)
        source.seek(0)
        copied = 0
        with self.filesystem.open_output_stream(path) as out:
            while chunk := source.read(STREAM_CHUNK_BYTES):
                out.write(chunk)
                copied += len(chunk)
        return copied

    def write_record(self, record: JobRecord) -> None:
        """Replace ``record.json`` atomically: readers see the old or the new record, never a part of one."""
        final = self.path(record.task_id, RECORD_NAME)
        temporary = f"{final}.tmp-{uuid.uuid4().hex}"
        self.filesystem.create_dir(self.path(record.task_id), recursive=True)
        try:
            with self.filesystem.open_output_stream(temporary) as out:
                out.write(record.to_json())
            self.filesystem.move(temporary, final)
        except BaseException:
            with suppress(OSError):
                self.filesystem.delete_file(temporary)
            raise

    def read_record(self, task_id: str) -> JobRecord:
        """The job's record; JobNotFoundError (404) when it has none."""
        path = self.path(task_id, RECORD_NAME)
        try:
            with self.filesystem.open_input_stream(path) as stream:
                data = stream.read()
        except FileNotFoundError:
            raise JobNotFoundError(f"no job with task_id {task_id}") from None
        return JobRecord.from_json(data)

    def task_ids(self) -> list[str]:
        """Names of the folders under the root that are valid task ids, sorted (records not read)."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory and _TASK_ID.fullmatch(info.base_name)
        )

    def size(self, task_id: str, name: str) -> int | None:
        """Size of a job file in bytes; None when it does not exist."""
        info = self.filesystem.get_file_info(self.path(task_id, name))
        return int(info.size) if info.type == pafs.FileType.File else None

    def open_input(self, task_id: str, name: str) -> pa.NativeFile:
        return self.filesystem.open_input_stream(self.path(task_id, name))

    def delete(self, task_id: str) -> None:
        """Remove the job's folder (a submission that failed half way)."""
        with suppress(FileNotFoundError):
            self.filesystem.delete_dir(self.path(task_id))


# --- runner: one attempt of one job -------------------------------------------------------------------------

Progress = Callable[[int, int], None]
RunJob = Callable[[BatchJobConfig, Progress], BatchJobResult]
Clock = Callable[[], float]


def batch_config(store: JobStore, record: JobRecord, args: AppArgs) -> BatchJobConfig:
    """The Ray Data batch job of ``record``: its files in the store, the application's models and the
    ``jobs`` settings; the output is ``result.mp4`` in the job's folder."""
    jobs = args.jobs
    task_id = record.task_id
    return BatchJobConfig(
        source_image=store.uri(task_id, record.source),
        targets=(store.uri(task_id, record.target),),
        output=store.uri(task_id, RESULT_NAME),
        options=record.swap_options(),
        pipeline=args.pipeline_config(),
        reference_image=store.uri(task_id, record.reference) if record.reference else None,
        batch_size=jobs.batch_size,
        num_actors=jobs.num_actors,
        num_gpus=jobs.num_gpus,
        cpus_per_actor=jobs.cpus_per_actor,
        crf=jobs.crf,
        preset=jobs.preset,
    )


class _RecordWriter:
    """A runner's writes to its job record: one at a time, each only while the stored record still names
    this runner and is unfinished (else RunnerSupersededError), progress at most once per interval."""

    def __init__(self, store: JobStore, task_id: str, runner: str, progress_interval_s: float, clock: Clock):
        self._store = store
        self._task_id = task_id
        self._runner = runner
        self._interval = progress_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_progress = -float("inf")
        self.record = store.read_record(task_id)

    def update(self, **changes: Any) -> JobRecord:
        with self._lock:
            stored = self._store.read_record(self._task_id)
            if stored.runner != self._runner or stored.finished:
                raise RunnerSupersededError(
                    f"job {self._task_id}: the record names runner {stored.runner} ({stored.status})"
                )
            self.record = replace(stored, **changes, updated_at=self._clock())
            self._store.write_record(self.record)
            return self.record

    def progress(self, done: int, total: int) -> None:
        """The batch job's progress callback; the last call (done == total) is always written."""
        now = self._clock()
        if done < total and now - self._last_progress < self._interval:
            return
        self._last_progress = now
        fraction = min(done / total, 1.0) if total > 0 else 0.0
        self.update(frames_done=done, frames_total=total, progress=fraction, heartbeat_at=now)


@contextmanager
def _heartbeats(writer: _RecordWriter, interval_s: float, clock: Clock) -> Iterator[None]:
    """Write ``heartbeat_at`` every ``interval_s`` from a thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                writer.update(heartbeat_at=clock())
            except RunnerSupersededError:
                return
            except Exception as exc:  # a store hiccup: the next beat tries again
                log.warning("job %s: heartbeat not written (%s)", writer.record.task_id, exc)

    thread = threading.Thread(target=beat, name="faceswap-job-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _attempt(run_job: RunJob, config: BatchJobConfig, writer: _RecordWriter, clock: Clock) -> dict[str, Any]:
    """Run the batch job; the record changes that finish the attempt."""
    task_id = writer.record.task_id
    try:
        result = run_job(config, writer.progress)
    except RunnerSupersededError:
        raise
    except FaceSwapError as exc:
        log.info("job %s failed: %s %s", task_id, exc.code, exc.message)
        return {"status": "failed", "error": exc.message, "error_code": exc.code, "finished_at": clock()}
    except Exception as exc:
        log.exception("job %s failed unexpectedly", task_id)
        return {
            "status": "failed",
            "error": f"the job failed unexpectedly ({type(exc).__name__}); see the runner's log",
            "error_code": "internal_error",
            "finished_at": clock(),
        }
    now = clock()
    return {
        "status": "completed",
        "progress": 1.0,
        "frames_done": result.frames,
        "frames_total": result.frames,
        "result": RESULT_NAME,
        "result_url": result_url(task_id),
        "summary": {
            "frames": result.frames,
            "faces_swapped": result.faces_swapped,
            "frames_without_face": result.frames_without_face,
            "elapsed_s": round(result.elapsed_s, 3),
            "fps": round(result.fps, 2),
            "components": dict(result.components),
        },
        "heartbeat_at": now,
        "finished_at": now,
    }


def execute_job(
    store: JobStore,
    task_id: str,
    runner: str,
    args: AppArgs,
    *,
    run_job: RunJob = run_batch_job,
    clock: Clock = time.time,
) -> JobRecord | None:
    """Run one attempt of a job as runner ``runner``: mark it running, run the batch job with heartbeats
    and progress in the record, then mark it completed or failed (with the typed error's message and code).
    Returns the final record, or None when the record stopped naming this runner (nothing more written)."""
    jobs = args.jobs
    try:
        writer = _RecordWriter(store, task_id, runner, jobs.progress_interval_s, clock)
        now = clock()
        record = writer.update(
            status="running", started_at=now, heartbeat_at=now, frames_done=0, progress=0.0, error=None
        )
        with _heartbeats(writer, jobs.heartbeat_interval_s, clock):
            try:
                config = batch_config(store, record, args)
            except FaceSwapError as exc:
                outcome: dict[str, Any] = {
                    "status": "failed",
                    "error": exc.message,
                    "error_code": exc.code,
                    "finished_at": clock(),
                }
            else:
                outcome = _attempt(run_job, config, writer, clock)
        return writer.update(**outcome)
    except RunnerSupersededError as exc:
        log.warning("runner %s stops: %s", runner, exc)
        return None


class JobRunner:
    """The Ray actor of one attempt of one job, created detached and named by :class:`RayRunners`. It
    takes no CPU of its own (it coordinates and encodes; the swap actors of the Ray Data job reserve the
    resources) and exits when the attempt ends."""

    def __init__(self, store_uri: str, args: AppArgs) -> None:
        self._store_uri = store_uri
        self._args = args

    def run(self, task_id: str, name: str) -> None:
        try:
            execute_job(JobStore.from_uri(self._store_uri), task_id, name, self._args)
        except Exception:  # the record stays unfinished: the reconciler sees this runner gone
            log.exception("runner %s crashed", name)
        finally:
            ray.actor.exit_actor()


class RunnerLauncher(Protocol):
    """Creates, finds and stops runners by name (:class:`RayRunners` on a cluster)."""

    def claim(self, name: str) -> object | None:
        """Create the runner ``name`` (not started yet); None when a runner of that name exists."""

    def start(self, runner: object, task_id: str, name: str) -> None:
        """Start a claimed runner on the job (returns at once)."""

    def alive(self, name: str) -> bool:
        """Whether a runner of that name exists (starting or running)."""

    def stop(self, name: str) -> None:
        """Kill the runner ``name`` if it exists."""


class RayRunners:
    """Runners as named, detached :class:`JobRunner` actors in the ``faceswap-jobs`` namespace. With a
    local job store they are placed on ``node_id`` (the node whose disk holds the store)."""

    def __init__(self, store_uri: str, args: AppArgs, node_id: str | None = None) -> None:
        self._store_uri = store_uri
        self._args = args
        self._node_id = node_id
        self._actor_class = ray.remote(JobRunner)

    def claim(self, name: str) -> object | None:
        options: dict[str, Any] = {"name": name, "namespace": RUNNER_NAMESPACE, "lifetime": "detached"}
        if self._node_id is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self._node_id, soft=False)
        try:
            actor = self._actor_class.options(num_cpus=0, max_restarts=0, **options)
            return actor.remote(self._store_uri, self._args)
        except ValueError:  # the name is taken: another replica claimed this attempt first
            return None

    def start(self, runner: object, task_id: str, name: str) -> None:
        runner.run.remote(task_id, name)  # type: ignore[attr-defined]

    def alive(self, name: str) -> bool:
        try:
            ray.get_actor(name, namespace=RUNNER_NAMESPACE)
        except ValueError:
            return False
        return True

    def stop(self, name: str) -> None:
        try:
            actor = ray.get_actor(name, namespace=RUNNER_NAMESPACE)
        except ValueError:
            return
        ray.kill(actor, no_restart=True)


# --- reconciler ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconciler pass did and saw."""

    started: int
    """Attempts started (new jobs whose runner had not started, lost runners replaced)."""
    failed: int
    """Jobs failed (runner lost too often, over the runtime limit)."""
    states: Mapping[str, int]
    """Jobs in the store by status, after the pass."""


class JobManager:
    """Starts job attempts and reconciles unfinished jobs with their runners (see the module docstring).
    Safe to run in several replicas at once: an attempt is claimed by creating its named runner, and every
    write re-reads the record first and gives up when it changed."""

    def __init__(self, store: JobStore, jobs: JobsArgs, launcher: RunnerLauncher, clock: Clock = time.time):
        self._store = store
        self._jobs = jobs
        self._launcher = launcher
        self._clock = clock
        self._finished: dict[str, str] = {}
        """Status by id of the jobs seen finished: their records never change again (not read again)."""

    @staticmethod
    def _same(a: JobRecord, b: JobRecord) -> bool:
        return (a.status, a.attempts, a.runner) == (b.status, b.attempts, b.runner)

    def start(self, record: JobRecord) -> bool:
        """Start the next attempt of ``record`` (as the caller read it): claim its runner, write the record
        as queued with that runner, start it. False when another caller got there first."""
        attempt = record.attempts + 1
        name = runner_name(record.task_id, attempt)
        runner = self._launcher.claim(name)
        if runner is None:
            return False
        try:
            current = self._store.read_record(record.task_id)
            if not self._same(current, record):
                self._launcher.stop(name)
                return False
            self._store.write_record(
                replace(
                    current,
                    status="queued",
                    attempts=attempt,
                    runner=name,
                    heartbeat_at=None,
                    started_at=None,
                    frames_done=0,
                    progress=0.0,
                    updated_at=self._clock(),
                )
            )
        except BaseException:
            self._launcher.stop(name)
            raise
        self._launcher.start(runner, record.task_id, name)
        log.info("job %s: attempt %d started (%s)", record.task_id, attempt, name)
        return True

    def _fail(self, record: JobRecord, message: str, code: str) -> bool:
        current = self._store.read_record(record.task_id)
        if not self._same(current, record):
            return False
        now = self._clock()
        self._store.write_record(
            replace(current, status="failed", error=message, error_code=code, finished_at=now, updated_at=now)
        )
        log.warning("job %s failed: %s", record.task_id, message)
        return True

    def reconcile(self) -> ReconcileReport:
        """One pass over the store: every unfinished job checked (see :meth:`_check`)."""
        started = failed = 0
        active: Counter[str] = Counter()
        for task_id in self._store.task_ids():
            if task_id in self._finished:
                continue
            try:
                record = self._store.read_record(task_id)
            except JobNotFoundError:  # being submitted: files first, the record last
                continue
            except (ValueError, TypeError) as exc:
                log.warning("job %s: unreadable record (%s)", task_id, exc)
                continue
            if record.finished:
                self._finished[task_id] = record.status
                continue
            try:
                action = self._check(record)
            except Exception:  # one job's problem must not stop the pass
                log.exception("job %s: reconciling failed", task_id)
                action = None
            if action == "started":
                started += 1
                active["queued"] += 1
            elif action == "failed":
                failed += 1
                active["failed"] += 1
            else:
                active[record.status] += 1
        states = Counter(self._finished.values()) + active
        return ReconcileReport(started=started, failed=failed, states=dict(states))

    def _check(self, record: JobRecord) -> str | None:
        """Bring one unfinished job in line with its runner: None (fine as it is), "started" or "failed"."""
        jobs = self._jobs
        now = self._clock()
        alive = record.runner is not None and self._launcher.alive(record.runner)
        if record.status == "running":
            silent_s = now - (record.heartbeat_at or record.updated_at)
            if not alive:
                reason = "its runner is gone"
            elif silent_s > jobs.heartbeat_timeout_s:
                reason = f"its runner sent no heartbeat for {silent_s:.0f} s"
            elif record.started_at is not None and now - record.started_at > jobs.max_runtime_s:
                assert record.runner is not None
                self._launcher.stop(record.runner)
                message = f"timed out: still running after {jobs.max_runtime_s:g} s"
                return "failed" if self._fail(record, message, "timeout") else None
            else:
                return None
        elif record.runner is None:
            reason = "not started yet"
        elif not alive:
            reason = "its runner is gone"
        elif now - record.updated_at > jobs.heartbeat_timeout_s:
            reason = "its runner did not start"
        else:
            return None
        if alive:
            assert record.runner is not None
            self._launcher.stop(record.runner)
        if record.attempts < jobs.max_attempts:
            if record.attempts:
                log.warning("job %s: %s; starting attempt %d", record.task_id, reason, record.attempts + 1)
            return "started" if self.start(record) else None
        message = f"runner lost: {reason}; gave up after {record.attempts} attempt(s)"
        return "failed" if self._fail(record, message, "runner_lost") else None


# --- uploads ------------------------------------------------------------------------------------------------


class _NamedReader(io.RawIOBase):
    """Reads ``file`` under the name ``name``, the prefix of :func:`probe_video`'s messages (a spooled
    upload's own name is None or a file descriptor)."""

    def __init__(self, file: IO[bytes], name: str) -> None:
        super().__init__()
        self._file = file
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


@dataclass(frozen=True)
class CheckedUploads:
    """Uploads that passed :func:`check_uploads`: file objects by their name in the job folder."""

    files: Mapping[str, IO[bytes]]
    video: VideoInfo


def _file_size(file: IO[bytes]) -> int:
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    return size


def check_uploads(
    files: Mapping[str, IO[bytes]], *, max_image_bytes: int, max_pixels: int, max_duration_s: float
) -> CheckedUploads:
    """Check a job's uploads (blocking: decodes the images, probes the video).

    ``source_image`` and ``target_video`` are required, ``reference_image`` optional. Images: JPEG, PNG or
    WebP by magic bytes (415), at most ``max_image_bytes`` and ``max_pixels`` (413), decodable (400). The
    video: a known container by magic bytes (415), not truncated or corrupt and with a decodable video
    stream (400), at most ``max_duration_s`` long and ``max_pixels`` per frame (413)."""
    for required in ("source_image", "target_video"):
        if required not in files:
            raise InvalidInputError(f"{required}: required")
    stored: dict[str, IO[bytes]] = {}
    for field_name, stem in (("source_image", "source"), ("reference_image", "reference")):
        file = files.get(field_name)
        if file is None:
            continue
        size = _file_size(file)
        if size > max_image_bytes:
            raise PayloadTooLargeError(
                f"{field_name}: {size} bytes is over the image limit of {max_image_bytes}"
            )
        data = file.read()
        decode_image(data, field=field_name, max_pixels=max_pixels)
        media_type = sniff_image_type(data)
        assert media_type is not None  # decode_image accepted it
        stored[f"{stem}.{_IMAGE_EXTENSIONS[media_type]}"] = file
    video = files["target_video"]
    with io.BufferedReader(_NamedReader(video, "target_video")) as named:
        info = probe_video(named)
    if info.duration_s > max_duration_s:
        raise PayloadTooLargeError(
            f"target_video: {info.duration_s:.1f} s long, over the limit of {max_duration_s:g} s"
        )
    if info.width * info.height > max_pixels:
        raise PayloadTooLargeError(
            f"target_video: {info.width}x{info.height} frames are over the limit of {max_pixels} pixels"
        )
    stored[f"target.{_VIDEO_EXTENSIONS[info.media_type]}"] = video
    return CheckedUploads(files=stored, video=info)


@dataclass(frozen=True)
class JobForm:
    """A parsed job request: upload file objects (spooled to disk past 1 MiB) and the text fields."""

    files: Mapping[str, IO[bytes]]
    texts: Mapping[str, str]


@asynccontextmanager
async def read_job_form(request: Request, max_bytes: int) -> AsyncIterator[JobForm]:
    """Read a multipart job request, enforcing ``max_bytes`` while the body streams in. The uploads are
    temporary files, deleted when the block ends."""
    async with read_multipart(request, max_bytes, JOB_FILE_FIELDS, "source_image and target_video") as form:
        yield JobForm(files={key: upload.file for key, upload in form.files.items()}, texts=form.texts)


# --- HTTP ---------------------------------------------------------------------------------------------------

OptionsCheck = Callable[[Mapping[str, str], bool], Awaitable[SwapOptions]]
"""(text fields, has a reference image) -> validated SwapOptions, raising the typed errors: the ingress'
option parsing and its check of what the deployed models support."""
Handler = Callable[[Request], Awaitable[Response]]


@contextmanager
def _store_errors() -> Iterator[None]:
    """Filesystem errors of the store (other than a missing job) are a 503: the store is unreachable."""
    try:
        yield
    except FaceSwapError:
        raise
    except OSError as exc:
        log.warning("job store error: %s", exc)
        raise ServiceUnavailableError("the job store is unavailable, retry later") from None


class JobService:
    """The job routes and the reconciler of one ingress replica; each reconciler pass sets the
    ``faceswap_jobs`` gauge (jobs by status).

    ``check_options`` validates the option fields (see :data:`OptionsCheck`); ``store`` and ``launcher``
    default to the store at ``args.jobs.store_uri`` and :class:`RayRunners` (runners pinned to this node
    when the store is a local directory)."""

    def __init__(
        self,
        args: AppArgs,
        check_options: OptionsCheck,
        *,
        store: JobStore | None = None,
        launcher: RunnerLauncher | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._args = args
        self._jobs = args.jobs
        self._check_options = check_options
        self.store = store or JobStore.from_uri(args.jobs.store_uri)
        if launcher is None:
            node_id = ray.get_runtime_context().get_node_id() if self.store.is_local else None
            launcher = RayRunners(args.jobs.store_uri, args, node_id)
        self.manager = JobManager(self.store, self._jobs, launcher, clock)
        self._metrics = JobMetrics()
        self._clock = clock

    def handlers(self) -> list[tuple[str, str, Handler]]:
        """(path, method, handler) of the job routes."""
        return [
            (JOBS_PATH, "POST", self.submit),
            (TASK_PATH, "GET", self.task),
            (RESULT_PATH, "GET", self.result),
        ]

    @asynccontextmanager
    async def reconciling(self) -> AsyncIterator[None]:
        """Reconcile at once and then every ``reconcile_interval_s`` while the block runs."""
        loop = asyncio.create_task(self._reconcile_forever())
        try:
            yield
        finally:
            loop.cancel()
            with suppress(asyncio.CancelledError):
                await loop

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                report = await asyncio.to_thread(self.manager.reconcile)
                self._metrics.record_job_state_counts(report.states)
                if report.started or report.failed:
                    log.info("jobs reconciled: %s", report)
            except Exception:
                log.exception("reconciling the video jobs failed")
            await asyncio.sleep(self._jobs.reconcile_interval_s)

    async def submit(self, request: Request) -> Response:
        """``POST /api/v1/jobs``: check and store the uploads, write the queued record, start a runner."""
        request_id = request_id_of(request)
        try:
            async with read_job_form(request, self._jobs.max_upload_bytes) as form:
                options = await self._check_options(form.texts, "reference_image" in form.files)
                with _store_errors():
                    record = await asyncio.to_thread(self._create, form.files, options)
        except Exception as exc:
            return error_response(exc, request_id)
        try:
            await asyncio.to_thread(self.manager.start, record)
        except Exception:  # the record is stored: the reconciler starts the job
            log.exception("job %s: starting its runner failed; the reconciler retries", record.task_id)
        log.info("request %s: job %s queued (%s)", request_id, record.task_id, record.video)
        location = f"{request.scope.get('root_path', '').rstrip('/')}{task_url(record.task_id)}"
        return JSONResponse(
            {"task_id": record.task_id, "status": record.status},
            status_code=202,
            headers={"Location": location},
        )

    def _create(self, files: Mapping[str, IO[bytes]], options: SwapOptions) -> JobRecord:
        limits = self._args.ingress
        checked = check_uploads(
            files,
            max_image_bytes=limits.max_upload_bytes,
            max_pixels=limits.max_pixels,
            max_duration_s=self._jobs.max_duration_s,
        )
        task_id = new_task_id()
        names = {name.partition(".")[0]: name for name in checked.files}
        now = self._clock()
        record = JobRecord(
            task_id=task_id,
            status="queued",
            created_at=now,
            updated_at=now,
            options=dataclasses.asdict(options),
            source=names["source"],
            target=names["target"],
            reference=names.get("reference"),
            video=video_facts(checked.video),
            frames_total=checked.video.frame_count,
        )
        try:
            for name, file in checked.files.items():
                self.store.put_file(task_id, name, file)
            self.store.write_record(record)  # last: a folder without a record is not a job
        except BaseException:
            self.store.delete(task_id)
            raise
        return record

    async def _record(self, request: Request) -> JobRecord:
        task_id = check_task_id(request.path_params["task_id"])
        with _store_errors():
            return await asyncio.to_thread(self.store.read_record, task_id)

    async def task(self, request: Request) -> Response:
        """``GET /api/v1/tasks/{task_id}``."""
        try:
            record = await self._record(request)
        except Exception as exc:
            return error_response(exc, request_id_of(request))
        return JSONResponse(record.public(request.scope.get("root_path", "")))

    async def result(self, request: Request) -> Response:
        """``GET /api/v1/tasks/{task_id}/result``: the video in chunks, 409 until the job completed."""
        try:
            record = await self._record(request)
            if record.status != "completed" or record.result is None:
                detail = f": {record.error}" if record.status == "failed" else ""
                raise JobNotFinishedError(
                    f"task {record.task_id} is {record.status}{detail}; the result exists once it completed"
                )
            with _store_errors():
                size = await asyncio.to_thread(self.store.size, record.task_id, record.result)
                if size is None:
                    raise JobNotFoundError(f"the result of task {record.task_id} is missing from the store")
                stream = await asyncio.to_thread(self.store.open_input, record.task_id, record.result)
        except Exception as exc:
            return error_response(exc, request_id_of(request))
        return StreamingResponse(
            _chunks(stream),
            media_type=RESULT_TYPE,
            headers={
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{record.task_id}.mp4"',
            },
        )


async def _chunks(stream: pa.NativeFile) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(stream.read, STREAM_CHUNK_BYTES):
            yield chunk
    finally:
        stream.close()
