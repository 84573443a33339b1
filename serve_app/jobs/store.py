"""The job store: job folders and two small indexes on any ``pyarrow.fs`` filesystem.

Layout under the root (``<jobs.store_uri>/<application name>``)::

    <task_id>/job.json, control.json, attempt-<n>.json, cancel.json   records (serve_app.jobs.records)
    <task_id>/source.<ext>, target.<ext>, reference.<ext>, result.mp4  the files
    _active/<task_id>                  index: submitted and not finished (written first by a submission)
    _expires/<unix s>-<task_id>-<outcome>  index: finished, deleted by retention at that time
    _queue.json                        the leader's queue (waiting order, unfinished jobs per API key)

The leader reads the indexes, so no replica lists every job folder in its periodic pass. Records are
replaced atomically: on a local filesystem through a temporary file and a rename, on object stores by one
PUT (an object is visible whole or not at all). Task ids are checked before any path is built from them,
and file names in a job folder are fixed (:func:`serve_app.jobs.records.check_file_name`).

All methods block: call them in a thread from async code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from contextlib import suppress
from typing import IO, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import ValidationError

from serve_app.config import JobsArgs
from serve_app.jobs.records import (
    CANCEL_NAME,
    CONTROL_NAME,
    SPEC_NAME,
    AttemptReport,
    JobControl,
    JobNotFoundError,
    JobSpec,
    QueueSnapshot,
    attempt_name,
    check_file_name,
    check_task_id,
    is_task_id,
)

log = logging.getLogger(__name__)

STREAM_CHUNK_BYTES = 1024 * 1024
"""Bytes per chunk when files are copied into and out of the store."""
ACTIVE_DIR = "_active"
EXPIRES_DIR = "_expires"
QUEUE_NAME = "_queue.json"
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

R = TypeVar("R", JobControl, AttemptReport, QueueSnapshot)


class Expiry(NamedTuple):
    """An entry of the expiry index: when the finished job ``task_id`` is deleted, and how it ended."""

    at: float
    task_id: str
    outcome: str


def app_folder(app: str) -> str:
    """The folder of the Serve application ``app`` in a store: its name when that is a plain name, else
    a digest of it."""
    if _APP_NAME.fullmatch(app):
        return app
    return "app-" + hashlib.sha256(app.encode()).hexdigest()[:16]


class JobStore:
    """Job folders ``<root>/<task_id>/`` and the indexes, on ``filesystem``."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, *, node_local: bool = False) -> None:
        self.filesystem = filesystem
        self.root = root.rstrip("/") or "/"
        self.node_local = node_local
        """The store is a plain directory on this node (runners must run here)."""
        self._atomic_rename = isinstance(filesystem, pafs.LocalFileSystem)

    @classmethod
    def from_uri(cls, uri: str, app: str | None = None) -> JobStore:
        """The store at a local directory (made absolute) or a ``pyarrow.fs`` URI such as
        ``s3://bucket/prefix?region=eu-west-1`` or ``file:///mnt/shared/faceswap-jobs``; with ``app``, the
        part of it that belongs to that Serve application (``<uri>/<app>/``), so applications sharing a
        ``store_uri`` never run or clean up each other's jobs."""
        if JobsArgs.is_node_local(uri):
            filesystem: pafs.FileSystem = pafs.LocalFileSystem()
            root = os.path.abspath(os.path.expanduser(uri))
        else:
            filesystem, root = pafs.FileSystem.from_uri(uri)
        if app is not None:
            root = f"{root.rstrip('/')}/{app_folder(app)}"
        return cls(filesystem, root, node_local=JobsArgs.is_node_local(uri))

    # -- paths --------------------------------------------------------------------------------------------
    def path(self, task_id: str, name: str | None = None) -> str:
        """The job's folder, or the file ``name`` in it (one of the fixed job file names)."""
        folder = f"{self.root.rstrip('/')}/{check_task_id(task_id)}"
        return folder if name is None else f"{folder}/{check_file_name(name)}"

    def local_path(self, task_id: str, name: str) -> str | None:
        """A path this process can open directly, when the store is on a local filesystem."""
        return self.path(task_id, name) if self._atomic_rename else None

    def _index(self, directory: str, name: str | None = None) -> str:
        base = f"{self.root.rstrip('/')}/{directory}"
        return base if name is None else f"{base}/{name}"

    # -- bytes ----------------------------------------------------------------------------------------------
    def _write(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` atomically: readers see the old or the new bytes, never a part."""
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if not self._atomic_rename:
            with self.filesystem.open_output_stream(path) as out:
                out.write(data)
            return
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with self.filesystem.open_output_stream(temporary) as out:
                out.write(data)
            self.filesystem.move(temporary, path)
        except BaseException:
            with suppress(OSError):
                self.filesystem.delete_file(temporary)
            raise

    def _read(self, path: str) -> bytes | None:
        try:
            with self.filesystem.open_input_stream(path) as stream:
                data: bytes = stream.read()
        except FileNotFoundError:
            return None
        return data

    def _exists(self, path: str) -> bool:
        return bool(self.filesystem.get_file_info(path).type == pafs.FileType.File)

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

    def read_bytes(self, task_id: str, name: str) -> bytes:
        data = self._read(self.path(task_id, name))
        if data is None:
            raise JobNotFoundError(f"{name} of task {task_id} is missing from the store")
        return data

    def fetch(self, task_id: str, name: str, destination: str) -> None:
        """Copy a job file to the local file ``destination``."""
        with self.open_input(task_id, name) as stream, open(destination, "wb") as out:
            while chunk := stream.read(STREAM_CHUNK_BYTES):
                out.write(chunk)

    def size(self, task_id: str, name: str) -> int | None:
        """Size of a job file in bytes; None when it does not exist."""
        info = self.filesystem.get_file_info(self.path(task_id, name))
        return int(info.size) if info.type == pafs.FileType.File else None

    def open_input(self, task_id: str, name: str) -> pa.NativeFile:
        return self.filesystem.open_input_stream(self.path(task_id, name))

    # -- records ------------------------------------------------------------------------------------------
    def _load(self, kind: type[R], path: str) -> R | None:
        data = self._read(path)
        if data is None:
            return None
        try:
            return kind.from_json(data)  # type: ignore[no-any-return]
        except ValidationError as exc:
            log.warning("%s: unreadable %s (%s)", path, kind.__name__, exc.errors()[:1])
            return None

    def write_spec(self, spec: JobSpec) -> None:
        self._write(self.path(spec.task_id, SPEC_NAME), spec.to_json())

    def read_spec(self, task_id: str) -> JobSpec:
        """The job's submission; JobNotFoundError (404) when there is none (or it is unreadable)."""
        data = self._read(self.path(task_id, SPEC_NAME))
        if data is not None:
            try:
                spec: JobSpec = JobSpec.from_json(data)
                return spec
            except ValidationError as exc:
                log.warning("job %s: unreadable spec (%s)", task_id, exc.errors()[:1])
        raise JobNotFoundError(f"no job with task_id {task_id}")

    def write_control(self, control: JobControl) -> None:
        self._write(self.path(control.task_id, CONTROL_NAME), control.to_json())

    def read_control(self, task_id: str) -> JobControl | None:
        return self._load(JobControl, self.path(task_id, CONTROL_NAME))

    def write_report(self, report: AttemptReport) -> None:
        self._write(self.path(report.task_id, attempt_name(report.attempt)), report.to_json())

    def read_report(self, task_id: str, attempt: int) -> AttemptReport | None:
        return self._load(AttemptReport, self.path(task_id, attempt_name(attempt)))

    def write_cancel(self, task_id: str, requested_at: float) -> None:
        self._write(self.path(task_id, CANCEL_NAME), f'{{"requested_at": {requested_at!r}}}'.encode())

    def cancelled(self, task_id: str) -> bool:
        return self._exists(self.path(task_id, CANCEL_NAME))

    # -- indexes ------------------------------------------------------------------------------------------
    def mark_active(self, task_id: str) -> None:
        self._write(self._index(ACTIVE_DIR, check_task_id(task_id)), b"")

    def unmark_active(self, task_id: str) -> None:
        with suppress(FileNotFoundError):
            self.filesystem.delete_file(self._index(ACTIVE_DIR, check_task_id(task_id)))

    def active(self) -> dict[str, float]:
        """Task id -> when it was marked active (Unix seconds), of every unfinished job."""
        found: dict[str, float] = {}
        for info in self._list(ACTIVE_DIR):
            if is_task_id(info.base_name):
                found[info.base_name] = info.mtime.timestamp() if info.mtime is not None else 0.0
        return found

    @staticmethod
    def _expiry_name(task_id: str, expires_at: float, outcome: str) -> str:
        return f"{int(expires_at):012d}-{check_task_id(task_id)}-{outcome}"

    def add_expiry(self, task_id: str, expires_at: float, outcome: str) -> None:
        self._write(self._index(EXPIRES_DIR, self._expiry_name(task_id, expires_at, outcome)), b"")

    def remove_expiry(self, task_id: str, expires_at: float, outcome: str) -> None:
        name = self._expiry_name(task_id, expires_at, outcome)
        with suppress(FileNotFoundError):
            self.filesystem.delete_file(self._index(EXPIRES_DIR, name))

    def expiries(self) -> list[Expiry]:
        """Every finished job, the soonest to expire first."""
        found = []
        for info in self._list(EXPIRES_DIR):
            at, _, rest = info.base_name.partition("-")
            task_id, _, outcome = rest.partition("-")
            if at.isdigit() and is_task_id(task_id) and outcome in ("completed", "failed"):
                found.append(Expiry(float(at), task_id, outcome))
        return sorted(found)

    def write_queue(self, queue: QueueSnapshot) -> None:
        self._write(self._index(QUEUE_NAME), queue.to_json())

    def read_queue(self) -> QueueSnapshot | None:
        return self._load(QueueSnapshot, self._index(QUEUE_NAME))

    def _list(self, directory: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self._index(directory), allow_not_found=True)
        return [i for i in self.filesystem.get_file_info(selector) if i.type == pafs.FileType.File]

    def task_ids(self) -> list[str]:
        """Names of the folders under the root that are task ids, sorted (no record read): for the
        leader's rare sweep of folders that no index names."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory and is_task_id(info.base_name)
        )

    def delete(self, task_id: str, control: JobControl | None = None) -> None:
        """Remove the job's folder and its index entries (the expiry entry named by a finished ``control``);
        idempotent."""
        with suppress(FileNotFoundError):
            self.filesystem.delete_dir(self.path(task_id))
        self.unmark_active(task_id)
        if control is not None and control.outcome is not None and control.expires_at is not None:
            self.remove_expiry(task_id, control.expires_at, control.outcome)
