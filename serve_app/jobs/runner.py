"""One attempt of one video job: decode the target, run the one swap orchestration over the application's
model deployments, encode the result, and report to the attempt's own file in the store.

The runner is a detached Ray actor (:class:`JobRunner`, named and started by the jobs leader through
:class:`serve_app.jobs.launcher.RayRunners`), so a job outlives the Serve application that accepted it;
it ends itself when its attempt ends. It reserves a few CPUs (``jobs.runner_cpus``) for decoding,
warping, pasting back and encoding; the models run in the model deployments, reached through
``serve_app.ports`` over handles to THIS application's deployments, so video and image traffic share
their replicas and batching. A runner keeps ``jobs.batches_in_flight`` batches of
``jobs.frames_per_batch`` frames in flight.

With ``tracking`` (the default) a job makes two passes over the target (:mod:`pipeline.video_faces`):
pass 1 decodes it and plans the faces of every frame, calling the served detector (and, in ``reference``
mode, the embedder) through the orchestration's ports from a worker thread, one keyframe at a time;
pass 2 decodes it again and swaps each batch with its planned faces. Without tracking there is one pass
that detects in every batch. The faces swapped are written as the sidecar ``tracks.jsonl`` beside the
result, and the summary reports the detector calls per frame.

The source identity (and the reference embedding) are computed once per job. Decoded frames are held to
the job limits (``pipeline.video.VideoLimits``): a container that claims less than it holds fails the job
with ``payload_too_large`` or ``invalid_input`` at the first frame over the limit.

Model deployments that are unavailable or overloaded (HTTP 503 class, e.g. while the application is
redeployed) are waited for, up to ``jobs.unavailable_timeout_s``; the heartbeat keeps going meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import ray
from ray import serve

from pipeline.errors import InvalidInputError, UnsupportedOptionError
from pipeline.imageio import decode_image
from pipeline.options import SwapOptions
from pipeline.orchestration import Identity, SwapOrchestrator, SwapResult, crops_for
from pipeline.ports import Ports
from pipeline.provenance import ProvenanceLabel, video_metadata
from pipeline.tracking import write_sidecar
from pipeline.types import Embedding, Face, ImageBGR
from pipeline.video import VideoFrame, VideoLimits, VideoWriter, iter_frame_batches, read_frames
from pipeline.video_faces import FacePlan, detected, plan_video_faces, sidecar_rows
from serve_app.config import AppArgs, JobsArgs
from serve_app.deployments import MODEL_DEPLOYMENTS
from serve_app.errors import ServiceUnavailableError, to_service_error
from serve_app.jobs.records import RESULT_NAME, TRACKS_NAME, AttemptReport, JobSpec, Stage, job_progress
from serve_app.jobs.store import JobStore
from serve_app.jobs.uploads import NamedReader, video_limits
from serve_app.ports import StageHandles, metering, serve_ports

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Progress = Callable[[Stage, int, int], Awaitable[None]]
"""``progress(stage, frames, total)``: ``frames`` of ``total`` have passed ``stage``."""
PortsFactory = Callable[[], Awaitable[Ports]]
"""Builds the ports the orchestration runs on (once per attempt)."""

RETRY_PAUSE_S = 0.5
"""Pause between two tries of a model call that found the deployments unavailable."""


def stage_handles(app_name: str) -> StageHandles:
    """Handles to the model deployments the application ``app_name`` runs now; ServiceUnavailableError
    (waited for by :func:`when_available`) while it is not running."""
    application = serve.status().applications.get(app_name)
    running = application.deployments if application is not None else {}
    handles = {
        stage: serve.get_deployment_handle(deployment.name, app_name)
        for stage, deployment in MODEL_DEPLOYMENTS.items()
        if deployment.name in running
    }
    if "detector" not in handles or "swapper" not in handles:
        raise ServiceUnavailableError(f"the application {app_name!r} is not running")
    return StageHandles(**handles)


async def when_available(call: Callable[[], Awaitable[T]], timeout_s: float, clock: Clock) -> T:
    """``await call()``, tried again while it fails with a 503-class error (a model deployment unavailable
    or overloaded) until ``timeout_s`` has passed; then, or on any other error, the error is raised."""
    deadline = clock() + timeout_s
    while True:
        try:
            return await call()
        except Exception as exc:
            error, _ = to_service_error(exc)
            if error.status != 503 or clock() >= deadline:
                raise
            log.info("model deployments unavailable (%s); trying again", error.message)
        await asyncio.sleep(RETRY_PAUSE_S)


class AttemptReporter:
    """Runner ``attempt``'s writes to its report (``attempt-<n>.json``), one at a time; progress at most
    once per ``progress_interval_s``. The runner is the only writer of this file."""

    def __init__(
        self, store: JobStore, spec: JobSpec, attempt: int, *, clock: Clock, progress_interval_s: float
    ) -> None:
        self._store = store
        self._spec = spec
        self._attempt = attempt
        self._clock = clock
        self._interval = progress_interval_s
        self._lock = asyncio.Lock()
        self._last_progress = -float("inf")
        self.report: AttemptReport | None = None

    async def write(self, **changes: Any) -> AttemptReport:
        async with self._lock:
            now = self._clock()
            if self.report is None:
                self.report = AttemptReport(
                    task_id=self._spec.task_id,
                    attempt=self._attempt,
                    started_at=now,
                    heartbeat_at=now,
                    updated_at=now,
                    frames_total=self._spec.video.frame_count,
                )
            report = self.report.model_copy(update={**changes, "updated_at": now})
            await asyncio.to_thread(self._store.write_report, report)
            self.report = report
            return report

    async def progress(self, stage: Stage, done: int, total: int) -> None:
        """``done`` of ``total`` frames have passed ``stage`` (written at most once per interval, and
        whenever the stage changes)."""
        now = self._clock()
        changed = self.report is None or self.report.stage != stage
        if not changed and now - self._last_progress < self._interval:
            return
        self._last_progress = now
        fraction = job_progress(stage, done, total, self._spec.swap_options().tracking)
        count = {"frames_planned" if stage == "planning" else "frames_done": done}
        await self.write(stage=stage, frames_total=total, progress=fraction, heartbeat_at=now, **count)

    @asynccontextmanager
    async def heartbeats(self, interval_s: float) -> AsyncIterator[None]:
        """Write ``heartbeat_at`` every ``interval_s`` while the block runs."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.write(heartbeat_at=self._clock())
                except Exception as exc:  # a store hiccup: the next beat tries again
                    log.warning("job %s: heartbeat not written (%s)", self._spec.task_id, exc)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


@dataclass(frozen=True)
class VideoSummary:
    """What swapping one video did."""

    frames: int
    faces_swapped: int
    frames_without_face: int
    elapsed_s: float
    width: int
    height: int
    components: dict[str, str | None]
    hop_bytes: int
    """Array bytes sent to and received from the model deployments."""
    tracking: bool
    detector_calls: int
    """Frames the detector ran on (keyframes with tracking; every frame without)."""
    tracks: int
    """Face tracks found (before selection); 0 without tracking."""

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "faces_swapped": self.faces_swapped,
            "frames_without_face": self.frames_without_face,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.frames / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "width": self.width,
            "height": self.height,
            "components": self.components,
            "hop_bytes": self.hop_bytes,
            "tracking": self.tracking,
            "detector_calls": self.detector_calls,
            "detector_calls_per_frame": round(self.detector_calls / self.frames, 4) if self.frames else 0.0,
            "tracks": self.tracks,
        }


@dataclass(frozen=True)
class VideoJob:
    """What one video swap needs besides the orchestration: files are local paths."""

    target: str
    """The target video (its audio is copied into the output)."""
    has_audio: bool
    fps: Fraction
    output: str
    tracks: str
    """Where the sidecar of the faces swapped goes (JSON lines)."""
    options: SwapOptions
    identity: Identity | None
    reference: Embedding | None
    limits: VideoLimits
    metadata: dict[str, str]


def _write_frames(writer: VideoWriter, results: Sequence[SwapResult]) -> None:
    for result in results:
        writer.write(result.image)


def _open_target(job: VideoJob) -> tuple[Iterator[VideoFrame], Callable[[], None]]:
    """The decoded frames of ``job.target`` (held to the job's limits) and a function that closes them."""
    raw = open(job.target, "rb")  # closed by the returned function, with the decoder
    target = io.BufferedReader(NamedReader(raw, "target_video"))
    decoded = read_frames(target, limits=job.limits)  # a generator: closing it closes the container

    def close() -> None:
        decoded.close()  # type: ignore[attr-defined]
        target.close()
        raw.close()

    return decoded, close


async def plan_faces(
    orchestrator: SwapOrchestrator, job: VideoJob, jobs: JobsArgs, progress: Progress, frames_total: int
) -> FacePlan:
    """Pass 1: decode ``job.target`` and plan the faces of every frame (:func:`plan_video_faces`) in a
    worker thread, with ``progress("planning", frames, total)`` after each frame. The plan's detector and
    embedder calls run on this event loop through the orchestration's ports (the served models), each
    waited for while the deployments are unavailable."""
    loop = asyncio.get_running_loop()
    options = job.options

    def on_loop(make: Callable[[], Awaitable[T]]) -> T:
        waited = when_available(make, jobs.unavailable_timeout_s, time.monotonic)
        return asyncio.run_coroutine_threadsafe(waited, loop).result()

    def counted(frames: Iterable[VideoFrame]) -> Iterator[VideoFrame]:
        for count, frame in enumerate(frames, 1):
            yield frame
            asyncio.run_coroutine_threadsafe(
                progress("planning", count, max(frames_total, count)), loop
            ).result()

    def detect(image: ImageBGR) -> list[Face]:
        return on_loop(lambda: orchestrator.detect([image], options.detector_score))[0]

    def embed(image: ImageBGR, faces: Sequence[Face]) -> npt.NDArray[np.float32]:
        embedder = orchestrator.ports.embedder
        if embedder is None:  # orchestrator.check refuses reference mode before this
            raise UnsupportedOptionError("face_selector_mode 'reference' needs an embedding model")
        crops, _ = crops_for(image, faces, embedder.info.crop)
        return on_loop(lambda: embedder.embed(crops))

    def run() -> FacePlan:
        frames, close = _open_target(job)
        try:
            return plan_video_faces(
                counted(frames),
                detect,
                options,
                max_faces=orchestrator.face_limit(options),
                embed=embed if options.face_selector_mode == "reference" else None,
                reference=job.reference,
            )
        finally:
            close()

    return await asyncio.to_thread(run)


async def swap_video(
    orchestrator: SwapOrchestrator,
    job: VideoJob,
    jobs: JobsArgs,
    progress: Progress,
    frames_total: int,
    clock: Clock = time.monotonic,
) -> VideoSummary:
    """Swap every frame of ``job.target`` into ``job.output`` (H.264, the target's audio copied) and write
    the sidecar of the faces swapped to ``job.tracks``. With ``tracking``, pass 1 plans the faces
    (:func:`plan_faces`); then decode in a worker thread, keep ``jobs.batches_in_flight`` batches in the
    orchestration (with their planned faces), write in order. ``progress(stage, done, total)`` as frames
    are planned and after each batch written; ``frames_total`` is the container's claim."""
    started = clock()
    plan: FacePlan | None = None
    with metering() as meter:
        if job.options.tracking:
            plan = await plan_faces(orchestrator, job, jobs, progress, frames_total)
        written = await _swap_pass(orchestrator, job, jobs, progress, frames_total, plan)
    await asyncio.to_thread(write_sidecar, written.rows, job.tracks)
    return VideoSummary(
        frames=written.frames,
        faces_swapped=written.faces,
        frames_without_face=written.frames_without_face,
        elapsed_s=clock() - started,
        width=written.width,
        height=written.height,
        components=orchestrator.components,
        hop_bytes=meter.total,
        tracking=plan is not None,
        detector_calls=plan.detector_calls if plan is not None else written.frames,
        tracks=plan.tracks if plan is not None else 0,
    )


@dataclass
class _Written:
    """What the swap pass wrote."""

    frames: int = 0
    faces: int = 0
    frames_without_face: int = 0
    width: int = 0
    height: int = 0
    rows: list[dict[str, object]] = field(default_factory=list)
    """The sidecar rows of the faces swapped, by frame."""


async def _swap_pass(
    orchestrator: SwapOrchestrator,
    job: VideoJob,
    jobs: JobsArgs,
    progress: Progress,
    frames_total: int,
    plan: FacePlan | None,
) -> _Written:
    """Decode, swap (with the planned faces, when there is a plan) and write every frame."""
    decoded, close = _open_target(job)
    batches: Iterator[list[VideoFrame]] = iter_frame_batches(decoded, jobs.frames_per_batch)

    async def swap(batch: list[VideoFrame]) -> list[SwapResult]:
        images: list[ImageBGR] = [frame.image for frame in batch]
        faces = None if plan is None else plan.faces(batch[0].index, batch[-1].index + 1)
        return await when_available(
            lambda: orchestrator.swap_frames(
                images, job.identity, job.options, job.reference, faces, select=plan is None
            ),
            jobs.unavailable_timeout_s,
            time.monotonic,
        )

    pending: deque[tuple[list[VideoFrame], asyncio.Future[list[SwapResult]]]] = deque()
    writer: VideoWriter | None = None
    written = _Written()
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < jobs.batches_in_flight:
                batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    exhausted = True
                else:
                    pending.append((batch, asyncio.ensure_future(swap(batch))))
            if not pending:
                break
            batch, future = pending.popleft()
            results = await future
            if writer is None:
                height, width = results[0].image.shape[:2]
                writer = VideoWriter(
                    job.output,
                    width=width,
                    height=height,
                    fps=job.fps,
                    crf=jobs.crf,
                    preset=jobs.preset,
                    audio_from=job.target if job.has_audio else None,
                    metadata=job.metadata,
                )
            await asyncio.to_thread(_write_frames, writer, results)
            for frame, result in zip(batch, results, strict=True):
                planned = plan.per_frame[frame.index] if plan is not None else detected(result.faces)
                written.rows += sidecar_rows(frame.index, frame.pts, planned)
            written.frames += len(results)
            written.faces += sum(r.faces_swapped for r in results)
            written.frames_without_face += sum(1 for r in results if not r.faces)
            await progress("swapping", written.frames, max(frames_total, written.frames))
        if writer is None:  # read_frames raises before this for a video without frames
            raise InvalidInputError("target_video: no decodable video frames")
        if plan is not None and written.frames != plan.frame_count:
            raise InvalidInputError(
                f"target_video: {written.frames} frames decoded, {plan.frame_count} the first time"
            )
        await asyncio.to_thread(writer.close)
        written.width, written.height = writer.width, writer.height
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        for _, future in pending:
            future.cancel()
        await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        close()
    return written


async def _prepare(
    store: JobStore, spec: JobSpec, args: AppArgs, orchestrator: SwapOrchestrator, staging: Path
) -> VideoJob:
    """Decode the source (and reference) image, compute the identity once, and find the target locally."""
    options = spec.swap_options()
    orchestrator.check(options, has_source=True, has_reference=spec.reference is not None)
    max_pixels = args.ingress.max_pixels

    async def image(name: str, field: str) -> ImageBGR:
        data = await asyncio.to_thread(store.read_bytes, spec.task_id, name)
        return await asyncio.to_thread(decode_image, data, field=field, max_pixels=max_pixels)

    timeout_s, clock = args.jobs.unavailable_timeout_s, time.monotonic
    identity = None
    if options.swap:
        source = await image(spec.source, "source_image")
        identity = await when_available(
            lambda: orchestrator.source_identity(source, options), timeout_s, clock
        )
    reference = None
    if options.face_selector_mode == "reference" and spec.reference is not None:
        reference_image = await image(spec.reference, "reference_image")
        reference = await when_available(
            lambda: orchestrator.reference_embedding(reference_image, options), timeout_s, clock
        )
    target = store.local_path(spec.task_id, spec.target)
    if target is None:
        target = str(staging / spec.target)
        await asyncio.to_thread(store.fetch, spec.task_id, spec.target, target)
    label = ProvenanceLabel(
        models={k: v for k, v in orchestrator.components.items() if v is not None}, task_id=spec.task_id
    )
    return VideoJob(
        target=target,
        has_audio=spec.video.has_audio,
        fps=Fraction(spec.video.fps),
        output=str(staging / RESULT_NAME),
        tracks=str(staging / TRACKS_NAME),
        options=options,
        identity=identity,
        reference=reference,
        limits=video_limits(args),
        metadata=video_metadata(label) if args.ingress.provenance else {},
    )


async def run_attempt(
    store: JobStore,
    task_id: str,
    attempt: int,
    args: AppArgs,
    ports: PortsFactory,
    *,
    clock: Clock = time.time,
) -> AttemptReport:
    """Run attempt ``attempt`` of job ``task_id`` and report it: ``running`` with heartbeats and progress,
    then ``completed`` (the result stored as ``result.mp4``) or ``failed`` with the typed error's message
    and code. Returns the final report."""
    jobs = args.jobs
    spec = await asyncio.to_thread(store.read_spec, task_id)
    reporter = AttemptReporter(
        store, spec, attempt, clock=clock, progress_interval_s=jobs.progress_interval_s
    )
    await reporter.write()
    outcome: dict[str, Any]
    async with reporter.heartbeats(jobs.heartbeat_interval_s):
        try:
            with tempfile.TemporaryDirectory(prefix=f"faceswap-job-{task_id}-") as staging:
                orchestrator = SwapOrchestrator(
                    await when_available(ports, jobs.unavailable_timeout_s, time.monotonic),
                    max_faces=args.ingress.max_faces,
                    cpu=asyncio.to_thread,
                )
                job = await _prepare(store, spec, args, orchestrator, Path(staging))
                summary = await swap_video(orchestrator, job, jobs, reporter.progress, spec.video.frame_count)
                await asyncio.to_thread(_store_results, store, task_id, job)
            outcome = {
                "status": "completed",
                "frames_done": summary.frames,
                "frames_total": summary.frames,
                "progress": 1.0,
                "summary": summary.to_json(),
            }
            log.info("job %s attempt %d completed: %s", task_id, attempt, outcome["summary"])
        except Exception as exc:
            error, _ = to_service_error(exc, task_id)
            log.info("job %s attempt %d failed: %s %s", task_id, attempt, error.code, error.message)
            outcome = {"status": "failed", "error": error.message, "error_code": error.code}
    now = clock()
    return await reporter.write(**outcome, heartbeat_at=now, finished_at=now)


def _store_results(store: JobStore, task_id: str, job: VideoJob) -> None:
    """The sidecar first: a job whose result is stored has its sidecar too."""
    for name, path in ((TRACKS_NAME, job.tracks), (RESULT_NAME, job.output)):
        with open(path, "rb") as file:
            store.put_file(task_id, name, file)


class JobRunner:
    """The Ray actor of one attempt of one job, created detached and named by ``RayRunners``; it runs
    :func:`run_attempt` over the model deployments of application ``app_name`` and exits."""

    def __init__(self, store_uri: str, args: AppArgs, app_name: str) -> None:
        self._store_uri = store_uri
        self._args = args
        self._app_name = app_name

    async def run(self, task_id: str, attempt: int) -> None:
        args = self._args
        try:
            await run_attempt(
                JobStore.from_uri(self._store_uri, self._app_name),
                task_id,
                attempt,
                args,
                lambda: serve_ports(stage_handles(self._app_name), args.profile_label),
            )
        except Exception:  # no report written: the leader sees this runner gone
            log.exception("runner of job %s attempt %d crashed", task_id, attempt)
        finally:
            # ray.actor.exit_actor() does not end an actor that used a DeploymentHandle (Ray 2.60: the
            # handle's router keeps the process up), so the runner ends itself the way the leader would.
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
