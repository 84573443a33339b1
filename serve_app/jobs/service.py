"""The job routes of one ingress replica, and its bid for the jobs leadership.

- ``POST /api/v1/jobs``: check and store the uploads, answer 202 with the task id and queue position.
- ``GET /api/v1/tasks/{task_id}``: the task (:func:`serve_app.jobs.records.task_view`).
- ``GET /api/v1/tasks/{task_id}/result``: the video, streamed; 409 until the job completed.
- ``GET /api/v1/tasks/{task_id}/tracks``: the sidecar of the faces swapped (JSON lines, one row per face
  per frame, :mod:`pipeline.video_faces`); 409 until the job completed.
- ``DELETE /api/v1/tasks/{task_id}``: cancel a queued or running job (its runner is stopped) and delete
  its files; a finished job's files are deleted at once.

With auth on, a job belongs to the API key that submitted it (``serve_app.auth.key_id``): for any other key
it does not exist (404 on status, result, tracks and delete). Without auth jobs have no owner.

:meth:`JobService.reconciling` runs while the replica serves: every ``jobs.reconcile_interval_s`` the
replica tries to hold the lease; the holder runs the leader's pass (``serve_app.jobs.manager``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import IO, Any

import pyarrow as pa
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pipeline.errors import FaceSwapError
from pipeline.options import SwapOptions
from serve_app.auth import key_id, presented_key
from serve_app.config import AppArgs
from serve_app.errors import ServiceUnavailableError, error_response, request_id_of
from serve_app.jobs.launcher import Lease, RayLease, RayRunners, RunnerLauncher
from serve_app.jobs.manager import JobManager
from serve_app.jobs.records import (
    RESULT_NAME,
    TRACKS_NAME,
    JobNotFinishedError,
    JobNotFoundError,
    JobSpec,
    TooManyJobsError,
    VideoFacts,
    check_task_id,
    new_task_id,
    owner_key,
    task_url,
    task_view,
)
from serve_app.jobs.store import STREAM_CHUNK_BYTES, JobStore
from serve_app.jobs.uploads import check_uploads, read_job_form, video_limits
from serve_app.metrics import JobMetrics
from serve_app.routes import JOBS_PATH, RESULT_PATH, RESULT_TYPE, TASK_PATH, TRACKS_PATH, TRACKS_TYPE
from serve_app.stores import check_one_node

log = logging.getLogger(__name__)

Clock = Callable[[], float]
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
    """The job routes and the leadership bid of one ingress replica.

    ``check_options`` validates the option fields (see :data:`OptionsCheck`). On a Serve replica the store,
    launcher and lease default to this application's part of the store at ``jobs.store_uri``,
    :class:`RayRunners` for this application (pinned to this node when the store is on its disk) and
    :class:`RayLease`; tests pass their own."""

    def __init__(
        self,
        args: AppArgs,
        check_options: OptionsCheck,
        *,
        store: JobStore | None = None,
        launcher: RunnerLauncher | None = None,
        lease: Lease | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._args = args
        self._jobs = args.jobs
        self._check_options = check_options
        if store is None or launcher is None or lease is None:
            check_one_node("jobs", args.jobs.store_uri)
            app_name = serve.get_replica_context().app_name
            store = store or JobStore.from_uri(args.jobs.store_uri, app_name)
            node_id = ray.get_runtime_context().get_node_id() if store.node_local else None
            launcher = launcher or RayRunners(args.jobs.store_uri, args, app_name, node_id)
            lease = lease or RayLease(args.jobs.store_uri, app_name)
        self.store = store
        self._launcher = launcher
        self._lease = lease
        self._clock = clock
        self._owned = args.auth.enabled
        self._metrics = JobMetrics()
        self._wake: asyncio.Event | None = None
        self.manager: JobManager | None = None
        """The leader's state while this replica leads."""

    def handlers(self) -> list[tuple[str, str, Handler]]:
        """(path, method, handler) of the job routes."""
        return [
            (JOBS_PATH, "POST", self.submit),
            (TASK_PATH, "GET", self.task),
            (TASK_PATH, "DELETE", self.delete),
            (RESULT_PATH, "GET", self.result),
            (TRACKS_PATH, "GET", self.tracks),
        ]

    # -- leadership -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def reconciling(self) -> AsyncIterator[None]:
        """Bid for the leadership at once and then every ``reconcile_interval_s`` while the block runs;
        lead while holding the lease, and give it up when the block ends."""
        self._wake = asyncio.Event()
        loop = asyncio.create_task(self._lead_forever())
        try:
            yield
        finally:
            loop.cancel()
            with suppress(asyncio.CancelledError):
                await loop
            with suppress(Exception):
                await asyncio.to_thread(self._lease.release)

    async def lead_once(self) -> None:
        """One round: hold (or take) the lease and run the leader's pass, or stop leading."""
        if await asyncio.to_thread(self._lease.hold):
            if self.manager is None:
                self.manager = JobManager(self.store, self._jobs, self._launcher, self._clock)
            report = await asyncio.to_thread(self.manager.reconcile)
            self._metrics.record_job_state_counts(report.states)
            if report.started or report.finished or report.deleted:
                log.info("video jobs: %s", report)
        elif self.manager is not None:
            self.manager = None
            self._metrics.record_job_state_counts({})

    async def _lead_forever(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.lead_once()
            except Exception:
                log.exception("the video jobs' leader pass failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._jobs.reconcile_interval_s)
            self._wake.clear()

    def _nudge(self) -> None:
        """Run the next pass now (it matters when this replica leads)."""
        if self._wake is not None:
            self._wake.set()

    # -- requests -----------------------------------------------------------------------------------------
    def _owner(self, request: Request) -> str | None:
        """The id of the request's API key (the ingress authenticated it already); None without auth."""
        return key_id(presented_key(request.headers)) if self._owned else None

    async def submit(self, request: Request) -> Response:
        """``POST /api/v1/jobs``."""
        request_id = request_id_of(request)
        try:
            owner = self._owner(request)
            pace = self._args.ingress.upload_pace()
            async with read_job_form(request, self._jobs.max_upload_bytes, pace) as form:
                options = await self._check_options(form.texts, "reference_image" in form.files)
                with _store_errors():
                    position = await asyncio.to_thread(self._admissible, owner)
                    spec = await asyncio.to_thread(self._create, form.files, options, owner)
        except Exception as exc:
            return error_response(exc, request_id)
        self._nudge()
        log.info("request %s: job %s queued (%s)", request_id, spec.task_id, spec.video)
        location = f"{request.scope.get('root_path', '').rstrip('/')}{task_url(spec.task_id)}"
        return JSONResponse(
            {"task_id": spec.task_id, "status": "queued", "queue_position": position},
            status_code=202,
            headers={"Location": location},
        )

    def _admissible(self, owner: str | None) -> int:
        """The new job's queue position; TooManyJobsError (429) when the key has its maximum of unfinished
        jobs (as of the leader's last pass)."""
        queue = self.store.read_queue()
        if queue is None:
            return 1
        pending = queue.pending_by_owner.get(owner_key(owner), 0)
        limit = self._jobs.max_pending_jobs_per_key
        if pending >= limit:
            raise TooManyJobsError(
                f"this API key has {pending} unfinished jobs, the most allowed is {limit}; "
                "retry when one has finished"
            )
        return len(queue.waiting) + 1

    def _create(self, files: Mapping[str, IO[bytes]], options: SwapOptions, owner: str | None) -> JobSpec:
        limits = self._args.ingress
        checked = check_uploads(
            files,
            max_image_bytes=limits.max_upload_bytes,
            max_pixels=limits.max_pixels,
            limits=video_limits(self._args),
        )
        source, target = checked.name("source"), checked.name("target")
        assert source is not None and target is not None
        spec = JobSpec(
            task_id=new_task_id(),
            owner=owner,
            created_at=self._clock(),
            options=options.to_json(),
            source=source,
            target=target,
            reference=checked.name("reference"),
            video=VideoFacts.of(checked.video),
        )
        store = self.store
        try:
            store.mark_active(spec.task_id)  # first: the leader's sweep never takes a job being written
            for name, file in checked.files.items():
                store.put_file(spec.task_id, name, file)
            store.write_spec(spec)  # last: an active job without a spec is still being submitted
        except BaseException:
            store.delete(spec.task_id)
            raise
        return spec

    def _spec(self, request: Request) -> JobSpec:
        """The job named by the path, if the request's API key owns it (JobNotFoundError otherwise)."""
        task_id = check_task_id(request.path_params["task_id"])
        spec = self.store.read_spec(task_id)
        if spec.owner != self._owner(request):
            raise JobNotFoundError(f"no job with task_id {task_id}")
        return spec

    def _view(self, request: Request) -> dict[str, Any]:
        spec = self._spec(request)
        task_id = spec.task_id
        control = self.store.read_control(task_id)
        finished = control is not None and control.outcome is not None
        cancelled = not finished and self.store.cancelled(task_id)
        attempt = control.attempt if control is not None and not (finished or cancelled) else 0
        return task_view(
            spec,
            control,
            self.store.read_report(task_id, attempt) if attempt else None,
            cancelled=cancelled,
            queue=None if finished or cancelled or attempt else self.store.read_queue(),
            root_path=request.scope.get("root_path", ""),
        )

    async def task(self, request: Request) -> Response:
        """``GET /api/v1/tasks/{task_id}``."""
        try:
            with _store_errors():
                view = await asyncio.to_thread(self._view, request)
        except Exception as exc:
            return error_response(exc, request_id_of(request))
        return JSONResponse(view)

    async def result(self, request: Request) -> Response:
        """``GET /api/v1/tasks/{task_id}/result``: the video in chunks, 409 until the job completed."""
        return await self._finished_file(request, RESULT_NAME, RESULT_TYPE, "mp4")

    async def tracks(self, request: Request) -> Response:
        """``GET /api/v1/tasks/{task_id}/tracks``: the sidecar in chunks, 409 until the job completed."""
        return await self._finished_file(request, TRACKS_NAME, TRACKS_TYPE, "tracks.jsonl")

    async def _finished_file(self, request: Request, name: str, media_type: str, suffix: str) -> Response:
        """The stored file ``name`` of a completed job, streamed as a download ``<task_id>.<suffix>``."""
        try:
            with _store_errors():
                view = await asyncio.to_thread(self._view, request)
                task_id = view["task_id"]
                if view["status"] != "completed":
                    detail = f": {view['error']}" if view["status"] == "failed" else ""
                    raise JobNotFinishedError(
                        f"task {task_id} is {view['status']}{detail}; the result exists once it completed"
                    )
                size = await asyncio.to_thread(self.store.size, task_id, name)
                if size is None:
                    raise JobNotFoundError(f"the {name} of task {task_id} is missing from the store")
                stream = await asyncio.to_thread(self.store.open_input, task_id, name)
        except Exception as exc:
            return error_response(exc, request_id_of(request))
        return StreamingResponse(
            _chunks(stream),
            media_type=media_type,
            headers={
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{task_id}.{suffix}"',
            },
        )

    def _cancel(self, request: Request) -> dict[str, Any]:
        spec = self._spec(request)
        task_id = spec.task_id
        self.store.write_cancel(task_id, self._clock())
        control = self.store.read_control(task_id)
        if control is not None and control.outcome is not None:  # finished: no runner writes any more
            self.store.delete(task_id, control)
            return {"task_id": task_id, "status": control.outcome, "deleted": True}
        if control is not None and control.runner is not None:
            self._launcher.stop(control.runner)  # the leader deletes the files once the runner is gone
        return {"task_id": task_id, "status": "cancelled", "deleted": False}

    async def delete(self, request: Request) -> Response:
        """``DELETE /api/v1/tasks/{task_id}``: 202 with ``status`` (``cancelled``, or the outcome of a
        finished job) and ``deleted`` (the files are gone already, else once its runner stopped)."""
        try:
            with _store_errors():
                body = await asyncio.to_thread(self._cancel, request)
        except Exception as exc:
            return error_response(exc, request_id_of(request))
        self._nudge()
        log.info("job %s: deleted by its owner (%s)", body["task_id"], body["status"])
        return JSONResponse(body, status_code=202)


async def _chunks(stream: pa.NativeFile) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(stream.read, STREAM_CHUNK_BYTES):
            yield chunk
    finally:
        stream.close()
