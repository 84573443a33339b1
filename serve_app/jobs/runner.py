"""One attempt of one video job: decode the target, run the one swap orchestration over the application's
model deployments, encode the result, and report to the attempt's own file in the store.

The runner is a detached Ray actor (:class:`JobRunner`, named and started by the jobs leader through
:class:`serve_app.jobs.launcher.RayRunners`), so a job outlives the Serve application that accepted it;
it ends itself when its attempt ends. It reserves a few CPUs (``jobs.runner_cpus``) for decoding,
warping, pasting back and encoding; the models run in the model deployments, reached through
``serve_app.ports`` over handles to THIS application's deployments, so video and image traffic share
their replicas and batching. A runner keeps ``jobs.batches_in_flight`` batches of
``jobs.frames_per_batch`` frames in flight.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray import serve

from pipeline.errors import InvalidInputError
from pipeline.imageio import decode_image
from pipeline.options import SwapOptions
from pipeline.orchestration import Identity, SwapOrchestrator, SwapResult
from pipeline.ports import Ports
from pipeline.provenance import ProvenanceLabel, video_metadata
from pipeline.types import Embedding, ImageBGR
from pipeline.video import VideoFrame, VideoLimits, VideoWriter, iter_frame_batches, read_frames
from serve_app.config import AppArgs, JobsArgs
from serve_app.deployments import MODEL_DEPLOYMENTS
from serve_app.errors import ServiceUnavailableError, to_service_error
from serve_app.jobs.records import RESULT_NAME, AttemptReport, JobSpec
from serve_app.jobs.store import JobStore
from serve_app.jobs.uploads import NamedReader, video_limits
from serve_app.ports import StageHandles, metering, serve_ports

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
PortsFactory = Callable[[], Awaitable[Ports]]
"""Builds the ports the orchestration runs on (once per attempt)."""

RETRY_PAUSE_S = 0.5
"""Pause between two tries of a model call that found the deployments unavailable."""

"""Deployment names of ``serve_app.deployments`` (``@serve.deployment(name=...)``) by stage."""


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

    async def progress(self, done: int, total: int) -> None:
        now = self._clock()
        if now - self._last_progress < self._interval:
            return
        self._last_progress = now
        fraction = min(done / total, 1.0) if total > 0 else 0.0
        await self.write(frames_done=done, frames_total=total, progress=fraction, heartbeat_at=now)

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
        }


@dataclass(frozen=True)
class VideoJob:
    """What one video swap needs besides the orchestration: files are local paths."""

    target: str
    """The target video (its audio is copied into the output)."""
    has_audio: bool
    fps: Fraction
    output: str
    options: SwapOptions
    identity: Identity | None
    reference: Embedding | None
    limits: VideoLimits
    metadata: dict[str, str]


def _write_frames(writer: VideoWriter, results: Sequence[SwapResult]) -> None:
    for result in results:
        writer.write(result.image)


async def swap_video(
    orchestrator: SwapOrchestrator,
    job: VideoJob,
    jobs: JobsArgs,
    progress: Callable[[int, int], Awaitable[None]],
    frames_total: int,
    clock: Clock = time.monotonic,
) -> VideoSummary:
    """Swap every frame of ``job.target`` into ``job.output`` (H.264, the target's audio copied): decode
    in a worker thread, keep ``jobs.batches_in_flight`` batches in the orchestration, write in order.
    ``progress(done, total)`` after each batch written; ``frames_total`` is the container's claim."""
    started = clock()
    raw = open(job.target, "rb")  # closed below, with the decoder
    target = io.BufferedReader(NamedReader(raw, "target_video"))
    decoded = read_frames(target, limits=job.limits)  # a generator: closing it closes the container
    batches: Iterator[list[VideoFrame]] = iter_frame_batches(decoded, jobs.frames_per_batch)

    async def swap(batch: list[VideoFrame]) -> list[SwapResult]:
        images: list[ImageBGR] = [frame.image for frame in batch]
        return await when_available(
            lambda: orchestrator.swap_frames(images, job.identity, job.options, job.reference),
            jobs.unavailable_timeout_s,
            time.monotonic,
        )

    pending: deque[asyncio.Future[list[SwapResult]]] = deque()
    writer: VideoWriter | None = None
    frames = faces = without_face = 0
    exhausted = False
    try:
        with metering() as meter:
            while True:
                while not exhausted and len(pending) < jobs.batches_in_flight:
                    batch = await asyncio.to_thread(next, batches, None)
                    if batch is None:
                        exhausted = True
                    else:
                        pending.append(asyncio.ensure_future(swap(batch)))
                if not pending:
                    break
                results = await pending.popleft()
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
                frames += len(results)
                faces += sum(r.faces_swapped for r in results)
                without_face += sum(1 for r in results if not r.faces)
                await progress(frames, max(frames_total, frames))
            if writer is None:  # read_frames raises before this for a video without frames
                raise InvalidInputError("target_video: no decodable video frames")
            await asyncio.to_thread(writer.close)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        decoded.close()  # type: ignore[attr-defined]
        target.close()
        raw.close()
    return VideoSummary(
        frames=frames,
        faces_swapped=faces,
        frames_without_face=without_face,
        elapsed_s=clock() - started,
        width=writer.width,
        height=writer.height,
        components=orchestrator.components,
        hop_bytes=meter.total,
    )


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
                await asyncio.to_thread(_store_result, store, task_id, job.output)
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


def _store_result(store: JobStore, task_id: str, path: str) -> None:
    with open(path, "rb") as result:
        store.put_file(task_id, RESULT_NAME, result)


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
