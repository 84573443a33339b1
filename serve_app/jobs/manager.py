"""The jobs leader: the queue, the runners' watch, cancellation and retention, run by ONE ingress replica.

The replica holding the lease (``serve_app.jobs.launcher.RayLease``) calls :meth:`JobManager.reconcile`
every ``jobs.reconcile_interval_s`` (and at once after a submission or a cancel it served). A pass:

1. reads the active index (``_active/``): new jobs are loaded (their spec once; their control once, since
   only the leader writes it), a marker whose spec never came (a submission that died half way) is deleted
   after :data:`SUBMIT_GRACE_S`;
2. checks each unfinished job: a tombstone (``cancel.json``) stops its runner and deletes the job; a
   runner's outcome is recorded as final; a runner that is gone, silent for ``heartbeat_timeout_s`` or
   never started is replaced (up to ``max_attempts``, then the job fails ``runner_lost``); a job running
   longer than ``max_runtime_s`` fails ``timeout``;
3. starts waiting jobs in submission order while fewer than ``max_running_jobs`` run in the cluster,
   skipping those whose API key already runs ``max_running_jobs_per_key``;
4. writes the queue (``_queue.json``: waiting order, unfinished jobs per key) when it changed;
5. deletes finished jobs whose retention ended, and every ``sweep_interval_s`` folders no index names.

A decision that needs the runner gone (replace, time out, cancel) stops it first and is taken on a later
pass, once the runner is gone and its report has been read again: a report written before the runner
died (e.g. ``completed``) wins over the decision, and nothing the leader writes is contradicted later.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_app.config import JobsArgs
from serve_app.jobs.launcher import RunnerLauncher
from serve_app.jobs.records import (
    AttemptReport,
    JobControl,
    JobNotFoundError,
    JobSpec,
    QueueSnapshot,
    owner_key,
    runner_name,
)
from serve_app.jobs.store import Expiry, JobStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SUBMIT_GRACE_S = 600.0
"""An active marker whose spec is still missing after this long belongs to a submission that died."""


@dataclass(frozen=True)
class _Stop:
    """Why the leader stopped a job's runner: decided once the runner is gone."""

    reason: str
    code: str | None = None
    """``timeout``: fail the job; None: the runner was lost (start another attempt or give up)."""


@dataclass
class _Job:
    spec: JobSpec
    control: JobControl
    stopping: _Stop | None = None

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    @property
    def order(self) -> tuple[float, str]:
        return self.spec.created_at, self.spec.task_id


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass did and saw."""

    started: int = 0
    """Attempts started (queued jobs admitted, lost runners replaced)."""
    finished: int = 0
    """Jobs recorded as completed or failed."""
    deleted: int = 0
    """Jobs deleted (cancelled, expired, abandoned submissions, stray folders)."""
    states: Mapping[str, int] = field(default_factory=dict)
    """Jobs by state after the pass: queued, running and the retained completed and failed."""


class JobManager:
    """The leader's state and pass (see the module docstring). One instance per leadership: a replica that
    becomes the leader starts with a new one, which reads the store afresh."""

    def __init__(
        self, store: JobStore, jobs: JobsArgs, launcher: RunnerLauncher, clock: Clock = time.time
    ) -> None:
        self._store = store
        self._args = jobs
        self._launcher = launcher
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._expiries: list[Expiry] | None = None
        """A heap of the finished jobs, loaded on the first pass."""
        self._next_sweep = -float("inf")
        self._queue: QueueSnapshot | None = None
        self._counts: Counter[str] = Counter()

    def reconcile(self) -> ReconcileReport:
        """One pass; a job whose check fails is logged and checked again on the next pass."""
        now = self._clock()
        self._counts = Counter()
        if self._expiries is None:
            self._expiries = self._store.expiries()
        active = self._store.active()
        for gone in set(self._jobs) - set(active):
            del self._jobs[gone]
        for task_id, marked_at in sorted(active.items()):
            if task_id not in self._jobs:
                self._load(task_id, marked_at, now)
        for job in sorted(self._jobs.values(), key=lambda j: j.order):
            try:
                self._check(job, now)
            except Exception:
                log.exception("job %s: checking it failed", job.task_id)
        self._admit(now)
        self._publish(now)
        self._expire(now)
        if now >= self._next_sweep:
            self._sweep()
            self._next_sweep = now + self._args.sweep_interval_s
        return ReconcileReport(
            started=self._counts["started"],
            finished=self._counts["finished"],
            deleted=self._counts["deleted"],
            states=self.states(),
        )

    def states(self) -> dict[str, int]:
        running = sum(1 for job in self._jobs.values() if job.control.attempt)
        retained = Counter(e.outcome for e in self._expiries or [])
        return {
            "queued": len(self._jobs) - running,
            "running": running,
            "completed": retained["completed"],
            "failed": retained["failed"],
        }

    # -- one job ------------------------------------------------------------------------------------------
    def _load(self, task_id: str, marked_at: float, now: float) -> None:
        try:
            spec = self._store.read_spec(task_id)
        except JobNotFoundError:
            if now - marked_at > SUBMIT_GRACE_S:
                log.warning("job %s: its submission never completed; deleting it", task_id)
                self._delete(task_id, None)
            return
        control = self._store.read_control(task_id) or JobControl(task_id=task_id)
        self._jobs[task_id] = _Job(spec, control)

    def _check(self, job: _Job, now: float) -> None:
        control = job.control
        if control.outcome is not None:  # recorded by an earlier leader that stopped before indexing it
            self._index_finished(job.task_id, control)
            return
        if self._store.cancelled(job.task_id):
            self._cancel(job)
            return
        if not control.attempt:
            return
        assert control.runner is not None
        alive = self._launcher.alive(control.runner)
        report = self._store.read_report(job.task_id, control.attempt)  # read after alive: see its last word
        if report is not None and report.outcome is not None:
            self._finish_from(job, report, now)
            if alive:  # it ends itself; in case it cannot, it holds its CPUs no longer
                self._launcher.stop(control.runner)
            return
        if alive:
            if job.stopping is not None:  # stopped on an earlier pass and not gone yet
                self._launcher.stop(control.runner)
                return
            stop = self._overdue(control, report, now)
            if stop is not None:
                log.warning("job %s: %s; stopping runner %s", job.task_id, stop.reason, control.runner)
                job.stopping = stop
                self._launcher.stop(control.runner)
            return
        stop = job.stopping or _Stop("its runner is gone")
        if stop.code is not None:
            self._finish(job, now, outcome="failed", error=stop.reason, error_code=stop.code, report=report)
        elif control.attempt < self._args.max_attempts:
            log.warning("job %s: %s; starting attempt %d", job.task_id, stop.reason, control.attempt + 1)
            self._start(job, now, previous_error=stop.reason)
        else:
            message = f"runner lost: {stop.reason}; gave up after {control.attempt} attempt(s)"
            self._finish(job, now, outcome="failed", error=message, error_code="runner_lost", report=report)

    def _overdue(self, control: JobControl, report: AttemptReport | None, now: float) -> _Stop | None:
        timeout = self._args.heartbeat_timeout_s
        if report is None:
            waited = now - (control.claimed_at or now)
            return _Stop("its runner did not start") if waited > timeout else None
        if now - report.started_at > self._args.max_runtime_s:
            return _Stop(f"timed out: still running after {self._args.max_runtime_s:g} s", "timeout")
        silent = now - report.heartbeat_at
        if silent > timeout:
            return _Stop(f"its runner sent no heartbeat for {silent:.0f} s")
        return None

    def _start(self, job: _Job, now: float, previous_error: str | None = None) -> bool:
        """Claim and start the job's next attempt; False when its runner name is taken (a claim left by a
        leader that stopped half way: it is stopped, and the next pass claims again)."""
        if self._store.cancelled(job.task_id):
            return False
        attempt = job.control.attempt + 1
        name = runner_name(job.task_id, attempt)
        runner = self._launcher.claim(name)
        if runner is None:
            log.warning("job %s: runner %s already exists; stopping it", job.task_id, name)
            self._launcher.stop(name)
            return False
        control = job.control.model_copy(
            update={
                "attempt": attempt,
                "runner": name,
                "claimed_at": now,
                "previous_error": previous_error or job.control.previous_error,
                "updated_at": now,
            }
        )
        try:
            self._store.write_control(control)
        except BaseException:
            self._launcher.stop(name)
            raise
        job.control, job.stopping = control, None
        self._launcher.start(runner, job.task_id, attempt)
        self._counts["started"] += 1
        log.info("job %s: attempt %d started (%s)", job.task_id, attempt, name)
        return True

    def _finish_from(self, job: _Job, report: AttemptReport, now: float) -> None:
        assert report.outcome is not None
        self._finish(
            job,
            now,
            outcome=report.outcome,
            error=report.error,
            error_code=report.error_code,
            report=report,
            summary=report.summary,
            finished_at=report.finished_at,
        )

    def _finish(
        self,
        job: _Job,
        now: float,
        *,
        outcome: str,
        error: str | None,
        error_code: str | None,
        report: AttemptReport | None,
        summary: dict[str, Any] | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Record the job's outcome (final), index it for retention and take it off the active index."""
        finished_at = finished_at or now
        control = job.control.model_copy(
            update={
                "outcome": outcome,
                "error": error,
                "error_code": error_code,
                "summary": summary,
                "frames_done": report.frames_done if report is not None else 0,
                "frames_total": report.frames_total if report is not None else job.spec.video.frame_count,
                "started_at": report.started_at if report is not None else None,
                "finished_at": finished_at,
                "expires_at": finished_at + self._args.retention_s,
                "updated_at": now,
            }
        )
        self._store.write_control(control)
        job.control = control
        self._counts["finished"] += 1
        log.log(
            logging.INFO if outcome == "completed" else logging.WARNING,
            "job %s %s%s",
            job.task_id,
            outcome,
            f": {error}" if error else "",
        )
        self._index_finished(job.task_id, control)

    def _index_finished(self, task_id: str, control: JobControl) -> None:
        assert control.outcome is not None and control.expires_at is not None
        self._store.add_expiry(task_id, control.expires_at, control.outcome)
        self._store.unmark_active(task_id)
        self._jobs.pop(task_id, None)
        assert self._expiries is not None
        heapq.heappush(self._expiries, Expiry(control.expires_at, task_id, control.outcome))
        if self._store.cancelled(task_id):  # a DELETE that saw the job unfinished: it is deleted here
            self._delete(task_id, control)

    def _cancel(self, job: _Job) -> None:
        runner = job.control.runner
        if runner is not None and self._launcher.alive(runner):
            job.stopping = _Stop("cancelled")
            self._launcher.stop(runner)
            return  # deleted once the runner is gone: it can write no more files then
        log.info("job %s cancelled; deleting it", job.task_id)
        self._delete(job.task_id, job.control)

    def _delete(self, task_id: str, control: JobControl | None) -> None:
        self._store.delete(task_id, control)
        self._jobs.pop(task_id, None)
        if self._expiries is not None and control is not None and control.outcome is not None:
            self._expiries = [e for e in self._expiries if e.task_id != task_id]
            heapq.heapify(self._expiries)
        self._counts["deleted"] += 1

    # -- the queue and retention --------------------------------------------------------------------------
    def _admit(self, now: float) -> None:
        running = [job for job in self._jobs.values() if job.control.attempt]
        per_key = Counter(owner_key(job.spec.owner) for job in running)
        total = len(running)
        for job in self._waiting():
            if total >= self._args.max_running_jobs:
                break
            key = owner_key(job.spec.owner)
            if per_key[key] >= self._args.max_running_jobs_per_key:
                continue
            try:
                started = self._start(job, now)
            except Exception:
                log.exception("job %s: starting it failed", job.task_id)
                continue
            if started:
                total += 1
                per_key[key] += 1

    def _waiting(self) -> list[_Job]:
        """The jobs waiting to start, in the order they start (submission order)."""
        return sorted((job for job in self._jobs.values() if not job.control.attempt), key=lambda j: j.order)

    def _publish(self, now: float) -> None:
        snapshot = QueueSnapshot(
            updated_at=now,
            waiting=[job.task_id for job in self._waiting()],
            pending_by_owner=dict(Counter(owner_key(job.spec.owner) for job in self._jobs.values())),
        )
        if self._queue is None:  # first pass: what an earlier leader left (None: no file, an empty queue)
            self._queue = self._store.read_queue() or QueueSnapshot(updated_at=now)
        if self._queue.model_copy(update={"updated_at": now}) != snapshot:
            self._store.write_queue(snapshot)
            self._queue = snapshot

    def _expire(self, now: float) -> None:
        assert self._expiries is not None
        while self._expiries and self._expiries[0].at <= now:
            expiry = heapq.heappop(self._expiries)
            log.info("job %s: retention ended; deleting it", expiry.task_id)
            self._store.delete(expiry.task_id)
            self._store.remove_expiry(expiry.task_id, expiry.at, expiry.outcome)
            self._counts["deleted"] += 1

    def _sweep(self) -> None:
        """Delete job folders that no index names (left by a crash between two writes). The folders are
        listed before the indexes, and a submission marks its job active before it writes files."""
        folders = self._store.task_ids()
        self._expiries = self._store.expiries()
        known = set(self._store.active()) | {e.task_id for e in self._expiries}
        for task_id in sorted(set(folders) - known):
            log.warning("job folder %s is in no index; deleting it", task_id)
            self._store.delete(task_id)
            self._counts["deleted"] += 1
