"""What the job store holds about a job, who writes each part, and the task as the API shows it.

A job's state is split so that every file has exactly one writer (no read-modify-write across writers):

- :class:`JobSpec` (``job.json``): the submission, written once by the replica that accepted it.
- :class:`JobControl` (``control.json``): the decisions of the one jobs leader (``serve_app.jobs.manager``):
  which attempt runs under which runner, and the final outcome once the leader recorded it.
- :class:`AttemptReport` (``attempt-<n>.json``): what runner ``n`` reports: running, heartbeat, progress,
  and its outcome. Runner ``n`` never writes another attempt's file, so an old runner cannot touch the
  current attempt.
- ``cancel.json``: the tombstone ``DELETE`` writes; the job is cancelled and its files deleted.

:func:`task_view` derives the task from these in one place. The leader's final outcome wins over any
report; it only records a failure after the runner is gone and its report was read again, so a runner's
``completed`` is never replaced by the leader's ``failed``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import FaceSwapError, InvalidInputError
from pipeline.options import SwapOptions
from pipeline.video import VideoInfo
from serve_app.routes import RESULT_PATH, TASK_PATH, TRACKS_PATH

TaskStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
Outcome = Literal["completed", "failed"]
Stage = Literal["planning", "swapping"]
PLANNING_SHARE = 0.2
"""The part of a tracked job's progress that planning its faces (pass 1) counts for: it decodes every
frame and runs the detector on keyframes only, a fraction of what swapping them costs."""


def job_progress(stage: Stage, done: int, total: int, tracking: bool) -> float:
    """The fraction of a job done when ``done`` of ``total`` frames have passed ``stage``."""
    part = min(done / total, 1.0) if total > 0 else 0.0
    if not tracking:
        return part
    return PLANNING_SHARE * part if stage == "planning" else PLANNING_SHARE + (1 - PLANNING_SHARE) * part


SPEC_NAME = "job.json"
CONTROL_NAME = "control.json"
CANCEL_NAME = "cancel.json"
RESULT_NAME = "result.mp4"
TRACKS_NAME = "tracks.jsonl"
"""The sidecar of the faces swapped (:mod:`pipeline.video_faces`), stored before the result."""
MAX_ATTEMPTS = 99
"""Highest attempt number a file name may carry (``attempt-<n>.json``)."""

_TASK_ID = re.compile(r"[0-9a-f]{32}")
_FILE_NAME = re.compile(
    r"job\.json|control\.json|cancel\.json|attempt-[1-9][0-9]?\.json"
    r"|(source|target|reference|result)\.[a-z0-9]{2,4}|tracks\.jsonl"
)


class JobNotFoundError(FaceSwapError):
    """No job has this task id (or it belongs to another API key)."""

    status = 404
    code = "not_found"


class JobNotFinishedError(FaceSwapError):
    """The job's result was asked for before the job completed."""

    status = 409
    code = "not_finished"


class TooManyJobsError(FaceSwapError):
    """The API key already has its maximum of queued and running jobs."""

    status = 429
    code = "too_many_jobs"


def new_task_id() -> str:
    return uuid.uuid4().hex


def check_task_id(task_id: object) -> str:
    """``task_id`` when it is 32 lowercase hex digits (a uuid4 hex), else InvalidInputError (400)."""
    if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
        raise InvalidInputError("task_id: expected 32 lowercase hexadecimal digits")
    return task_id


def is_task_id(name: str) -> bool:
    return _TASK_ID.fullmatch(name) is not None


def check_file_name(name: str) -> str:
    """``name`` when it is one of the fixed job file names, else ValueError."""
    if _FILE_NAME.fullmatch(name) is None:
        raise ValueError(f"not a job file name: {name!r}")
    return name


def attempt_name(attempt: int) -> str:
    """File name of attempt ``attempt``'s report."""
    if not 1 <= attempt <= MAX_ATTEMPTS:
        raise ValueError(f"attempt must be in [1, {MAX_ATTEMPTS}], got {attempt}")
    return f"attempt-{attempt}.json"


def runner_name(task_id: str, attempt: int) -> str:
    """Name of the runner actor of one attempt of a job."""
    return f"faceswap-job-{check_task_id(task_id)}-{attempt}"


def task_url(task_id: str) -> str:
    return TASK_PATH.replace("{task_id}", check_task_id(task_id))


def result_url(task_id: str) -> str:
    return RESULT_PATH.replace("{task_id}", check_task_id(task_id))


def tracks_url(task_id: str) -> str:
    return TRACKS_PATH.replace("{task_id}", check_task_id(task_id))


class _Record(BaseModel):
    """A stored JSON record: frozen, and keys this version does not know are ignored (a newer writer)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes) -> Any:
        return cls.model_validate_json(data)


class VideoFacts(_Record):
    """What probing the target found (the container's claims; the runner checks the decoded frames)."""

    media_type: str
    width: int
    height: int
    fps: str
    """A fraction, e.g. ``30000/1001``."""
    frame_count: int
    duration_s: float
    has_audio: bool

    @classmethod
    def of(cls, info: VideoInfo) -> VideoFacts:
        return cls(
            media_type=info.media_type,
            width=info.width,
            height=info.height,
            fps=str(info.fps),
            frame_count=info.frame_count,
            duration_s=round(info.duration_s, 3),
            has_audio=info.has_audio,
        )


class JobSpec(_Record):
    """``job.json``: the submission. Times are Unix seconds."""

    task_id: str = Field(pattern=_TASK_ID.pattern)
    owner: str | None
    """``serve_app.auth.key_id`` of the API key that submitted it; None when auth is off."""
    created_at: float
    options: dict[str, Any]
    """:meth:`SwapOptions.to_json`."""
    source: str
    """File names in the job's folder."""
    target: str
    reference: str | None = None
    video: VideoFacts

    def swap_options(self) -> SwapOptions:
        return SwapOptions.from_mapping(self.options)


class JobControl(_Record):
    """``control.json``: the leader's decisions. ``attempt`` 0 means waiting in the queue."""

    task_id: str = Field(pattern=_TASK_ID.pattern)
    attempt: int = Field(default=0, ge=0, le=MAX_ATTEMPTS)
    runner: str | None = None
    claimed_at: float | None = None
    previous_error: str | None = None
    """Why the previous attempt was replaced."""
    outcome: Outcome | None = None
    """Final once set: the job is finished."""
    error: str | None = None
    error_code: str | None = None
    summary: dict[str, Any] | None = None
    frames_done: int = 0
    frames_total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    """When retention deletes the finished job and its files."""
    updated_at: float | None = None


class AttemptReport(_Record):
    """``attempt-<n>.json``: what runner ``n`` reports about its attempt."""

    task_id: str = Field(pattern=_TASK_ID.pattern)
    attempt: int = Field(ge=1, le=MAX_ATTEMPTS)
    status: Literal["running", "completed", "failed"] = "running"
    started_at: float
    heartbeat_at: float
    updated_at: float
    stage: Stage | None = None
    """What the runner is doing: ``planning`` the faces (pass 1, with tracking), then ``swapping``."""
    frames_planned: int = 0
    frames_done: int = 0
    """Frames swapped and written."""
    frames_total: int = 0
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    error: str | None = None
    error_code: str | None = None
    summary: dict[str, Any] | None = None
    finished_at: float | None = None

    @property
    def outcome(self) -> Outcome | None:
        return None if self.status == "running" else self.status


class QueueSnapshot(_Record):
    """``<root>/queue.json``, written by the leader after each pass: the waiting jobs in the order they
    will start, and the unfinished jobs of each API key (the anonymous owner under ``""``)."""

    updated_at: float
    waiting: list[str] = Field(default_factory=list)
    pending_by_owner: dict[str, int] = Field(default_factory=dict)

    def position(self, task_id: str) -> int | None:
        """1-based place of ``task_id`` among the waiting jobs; None when it is not waiting."""
        try:
            return self.waiting.index(task_id) + 1
        except ValueError:
            return None


def owner_key(owner: str | None) -> str:
    """The owner as a :class:`QueueSnapshot` key."""
    return owner or ""


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat() if t is not None else None


def task_view(
    spec: JobSpec,
    control: JobControl | None,
    report: AttemptReport | None,
    *,
    cancelled: bool = False,
    queue: QueueSnapshot | None = None,
    root_path: str = "",
) -> dict[str, Any]:
    """The task as ``GET /api/v1/tasks/{task_id}`` shows it. ``report`` is the current attempt's (ignored
    unless ``control.attempt`` names it); ``root_path`` is the route prefix. Precedence: the leader's
    outcome, then the tombstone, then the runner's outcome, then running, then queued."""
    control = control or JobControl(task_id=spec.task_id)
    if report is not None and (report.task_id != spec.task_id or report.attempt != control.attempt):
        report = None
    status: TaskStatus
    source: JobControl | AttemptReport | None = None
    if control.outcome is not None:
        status, source = control.outcome, control
    elif cancelled:
        status = "cancelled"
    elif report is not None:
        status, source = report.outcome or "running", report
    else:
        status = "queued"
    position = None
    if status == "queued":
        waiting = queue.position(spec.task_id) if queue is not None else None
        if control.attempt:
            position = 0  # claimed: its runner is starting
        elif waiting is not None:
            position = waiting
        else:  # not seen by the leader yet: behind everything that is waiting
            position = len(queue.waiting) + 1 if queue is not None else 1
    frames_total = spec.video.frame_count
    frames_done, progress, stage, frames_planned = 0, 0.0, None, 0
    if isinstance(source, AttemptReport):
        frames_done, frames_total, progress = source.frames_done, source.frames_total, source.progress
        if status == "running":
            stage, frames_planned = source.stage, source.frames_planned
    elif isinstance(source, JobControl):
        frames_done, frames_total = source.frames_done, source.frames_total
        progress = 1.0 if source.outcome == "completed" else 0.0
    completed = status == "completed"
    updated = [spec.created_at, control.updated_at or 0.0, report.updated_at if report is not None else 0.0]
    return {
        "task_id": spec.task_id,
        "status": status,
        "queue_position": position,
        "progress": round(progress, 4),
        "stage": stage,
        "frames_planned": frames_planned,
        "frames_done": frames_done,
        "frames_total": frames_total,
        "error": source.error if source is not None else None,
        "error_code": source.error_code if source is not None else None,
        "result_url": f"{root_path.rstrip('/')}{result_url(spec.task_id)}" if completed else None,
        "tracks_url": f"{root_path.rstrip('/')}{tracks_url(spec.task_id)}" if completed else None,
        "attempts": control.attempt,
        "created_at": _iso(spec.created_at),
        "updated_at": _iso(max(updated)),
        "started_at": _iso(report.started_at if report is not None else control.started_at),
        "finished_at": _iso(source.finished_at if source is not None else None),
        "expires_at": _iso(control.expires_at),
        "summary": dict(source.summary) if source is not None and source.summary is not None else None,
    }
