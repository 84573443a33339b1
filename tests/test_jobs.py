"""Video jobs (serve_app.jobs).

Without Ray: the store and its indexes, the task view, the leader's queue, watch, cancellation and
retention with a fake launcher and an injectable clock (including the interleavings of the runner's and the
leader's writes), the runner on in-process ports over the project's test models (real decoding and
encoding, lying containers made with PyAV), the HTTP routes on a Starlette test client (ownership, queue
position, DELETE, the per-key limit) and the config checks.

With Ray (one local Ray and Serve app for the module, API keys on): a real clip end to end through the
served model deployments, ownership with two keys, the queue, DELETE of a queued and of a running job,
retention, a killed runner, lying containers and bad uploads.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from pipeline.errors import (
    InvalidInputError,
    InvalidOptionError,
    NoFaceError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from pipeline.options import SwapOptions
from pipeline.ports import Ports
from pipeline.profiles import build_models
from pipeline.provenance import read_video_label
from pipeline.tracking import read_sidecar
from pipeline.video import VideoLimits, probe_video, read_frames
from serve_app.auth import key_id
from serve_app.config import AppArgs
from serve_app.forms import options_from_fields
from serve_app.jobs import JobService
from serve_app.jobs.manager import SUBMIT_GRACE_S, JobManager, ReconcileReport
from serve_app.jobs.records import (
    CONTROL_NAME,
    PLANNING_SHARE,
    RESULT_NAME,
    SPEC_NAME,
    TRACKS_NAME,
    AttemptReport,
    JobControl,
    JobNotFoundError,
    JobSpec,
    QueueSnapshot,
    VideoFacts,
    attempt_name,
    check_task_id,
    new_task_id,
    runner_name,
    task_view,
)
from serve_app.jobs.runner import run_attempt, when_available
from serve_app.jobs.store import ACTIVE_DIR, JobStore
from serve_app.jobs.uploads import check_uploads
from serve_app.stores import check_one_node

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
AAC = "astronaut_pan_zoom_640x480_25fps_h264_aac.mp4"
SOURCE = "codait_luciano_cc0.png"
TRAVERSALS = [
    "../x",
    "..",
    "%2e%2e",
    "/etc/passwd",
    "a/../../b",
    "A" * 32,
    "0" * 31,
    "0" * 33,
    "0" * 32 + "\n",
]


# -- media made in the tests ------------------------------------------------------------------------------
def _noise(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random colours: the test SCRFD finds its one face in any image at least 336 x 208."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _mp4(frames: int, size: tuple[int, int] = (352, 240), fps: int = 10, audio: bool = True) -> bytes:
    """H.264 frames of moving noise, and with ``audio`` a 440 Hz AAC tone as long as the video."""
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=16000) if audio else None
        base = _noise(height + frames, width, 1)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[i : i + height]), format="bgr24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            samples = int(16000 * frames / fps)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    tone[None, start : start + 1024], format="flt", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return buffer.getvalue()


def _mjpeg_avi(images: list[np.ndarray], fps: int = 10) -> bytes:
    """An AVI whose header declares the first image's size, holding each image as a JPEG packet as it is
    (a container may carry frames of another size than it declares)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt, stream.time_base = "yuvj420p", Fraction(1, fps)
        for i, image in enumerate(images):
            packet = av.Packet(cv2.imencode(".jpg", image)[1].tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, fps)
            packet.is_keyframe = True
            out.mux(packet)
    return buffer.getvalue()


def _avi_claiming(frames: int, claimed: int) -> bytes:
    """An AVI of ``frames`` frames at 10 fps whose headers claim ``claimed`` (and no index to count)."""
    data = bytearray(_mjpeg_avi([np.full((48, 64, 3), i % 250, np.uint8) for i in range(frames)]))
    struct.pack_into("<I", data, data.find(b"avih") + 8 + 16, claimed)  # dwTotalFrames
    struct.pack_into("<I", data, data.find(b"strh") + 8 + 32, claimed)  # dwLength
    if (odml := data.find(b"dmlh")) >= 0:
        struct.pack_into("<I", data, odml + 8, claimed)
    if (index := data.find(b"idx1")) >= 0:
        data[index : index + 4] = b"JUNK"
    return bytes(data)


def _mp4_claiming_shorter(frames: int, factor: float = 0.3) -> bytes:
    """An MP4 of ``frames`` frames at 10 fps whose movie, track and media durations are scaled by
    ``factor`` (the sample timestamps are not)."""
    data = bytearray(_mp4(frames, (64, 48), audio=False))
    # box -> offset of its duration after the box type: version 0 (32-bit) and version 1 (64-bit)
    fields = {b"mvhd": (16, 24), b"tkhd": (20, 28), b"mdhd": (16, 24)}
    for box, (offset0, offset1) in fields.items():
        at = data.find(box)
        if data[at + 4] == 0:
            (value,) = struct.unpack_from(">I", data, at + 4 + offset0)
            struct.pack_into(">I", data, at + 4 + offset0, int(value * factor))
        else:
            (value,) = struct.unpack_from(">Q", data, at + 4 + offset1)
            struct.pack_into(">Q", data, at + 4 + offset1, int(value * factor))
    return bytes(data)


LYING = {
    "avi-undercounts-frames": (lambda: _avi_claiming(60, 5), "payload_too_large"),
    "mp4-scaled-durations": (lambda: _mp4_claiming_shorter(60), "payload_too_large"),
    "huge-frame-in-small-avi": (
        lambda: _mjpeg_avi([np.zeros((16, 16, 3), np.uint8)] * 3 + [np.zeros((2000, 2000, 3), np.uint8)]),
        "payload_too_large",
    ),
    "frame-size-changes": (
        lambda: _mjpeg_avi([np.zeros((16, 16, 3), np.uint8)] * 3 + [np.zeros((32, 32, 3), np.uint8)] * 3),
        "invalid_input",
    ),
}
"""Containers that claim less than they hold, and the job error each must end in (limits: 5 s and
1,000,000 pixels per frame)."""


def test_the_lying_containers_pass_the_submission_checks() -> None:
    """What the runner must catch: every lying container's claims are within the limits."""
    for name, (make, _) in LYING.items():
        info = probe_video(io.BytesIO(make()))
        assert info.duration_s <= 5 and info.width * info.height <= 1_000_000, (name, info)


# -- fakes ------------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRunners:
    """Runners by name, as the leader sees them through RayRunners; nothing runs."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.started: list[tuple[str, int]] = []
        self.stopped: list[str] = []

    def claim(self, name: str) -> object | None:
        if name in self.live:
            return None
        self.live.add(name)
        return name

    def start(self, runner: object, task_id: str, attempt: int) -> None:
        self.started.append((task_id, attempt))

    def alive(self, name: str) -> bool:
        return name in self.live

    def stop(self, name: str) -> None:
        self.stopped.append(name)

    def die(self, name: str) -> None:
        self.live.discard(name)


class FakeLease:
    def __init__(self, held: bool = True) -> None:
        self.held = held

    def hold(self) -> bool:
        return self.held

    def release(self) -> None:
        self.held = False


def _spec(task_id: str | None = None, *, owner: str | None = None, created_at: float = 900.0) -> JobSpec:
    return JobSpec(
        task_id=task_id or new_task_id(),
        owner=owner,
        created_at=created_at,
        options=SwapOptions().to_json(),
        source="source.png",
        target="target.mp4",
        video=VideoFacts(
            media_type="video/mp4",
            width=64,
            height=48,
            fps="25",
            frame_count=75,
            duration_s=3.0,
            has_audio=False,
        ),
    )


def _submit(store: JobStore, spec: JobSpec | None = None, **kwargs: Any) -> JobSpec:
    """A submission as the service stores it: the active marker first, the spec last."""
    spec = spec or _spec(**kwargs)
    store.mark_active(spec.task_id)
    store.write_spec(spec)
    return spec


def _report(spec: JobSpec, attempt: int, at: float, **changes: Any) -> AttemptReport:
    values: dict[str, Any] = {
        "task_id": spec.task_id,
        "attempt": attempt,
        "started_at": at,
        "heartbeat_at": at,
        "updated_at": at,
        "frames_total": 75,
    }
    return AttemptReport(**{**values, **changes})


def _args(store: str, auth: bool = False, **jobs: Any) -> AppArgs:
    values: dict[str, Any] = {
        "jobs": {
            "store_uri": store,
            "heartbeat_interval_s": 5,
            "heartbeat_timeout_s": 60,
            "max_attempts": 2,
            "max_running_jobs": 2,
            "max_running_jobs_per_key": 1,
            "max_pending_jobs_per_key": 3,
            "retention_s": 3600,
            **jobs,
        }
    }
    if auth:
        values["auth"] = {"api_keys": [KEY_A, KEY_B]}
    return AppArgs.parse(values)


@pytest.fixture
def leader(tmp_path: Path) -> tuple[JobStore, JobManager, FakeRunners, FakeClock]:
    store = JobStore.from_uri(str(tmp_path))
    runners, clock = FakeRunners(), FakeClock()
    return store, JobManager(store, _args(str(tmp_path)).jobs, runners, clock), runners, clock


def _view(store: JobStore, task_id: str) -> dict[str, Any]:
    control = store.read_control(task_id)
    attempt = control.attempt if control is not None else 0
    return task_view(
        store.read_spec(task_id),
        control,
        store.read_report(task_id, attempt) if attempt else None,
        cancelled=store.cancelled(task_id),
        queue=store.read_queue(),
    )


# -- ids, records, store ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [*TRAVERSALS, None, 12])
def test_task_ids_are_checked_before_any_path_is_built(tmp_path: Path, bad: object) -> None:
    store = JobStore.from_uri(str(tmp_path))
    with pytest.raises(InvalidInputError, match="task_id"):
        check_task_id(bad)
    for call in (store.path, store.read_spec, store.read_control, store.cancelled, store.mark_active):
        with pytest.raises(InvalidInputError):
            call(bad)  # type: ignore[operator]
    with pytest.raises(InvalidInputError):
        runner_name(bad, 1)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_file_names_in_a_job_folder_are_fixed(tmp_path: Path) -> None:
    task_id = new_task_id()
    store = JobStore.from_uri(str(tmp_path))
    assert store.path(task_id, "target.mp4") == f"{tmp_path}/{task_id}/target.mp4"
    assert store.path(task_id, attempt_name(12)).endswith("/attempt-12.json")
    assert store.path(task_id, TRACKS_NAME) == f"{tmp_path}/{task_id}/tracks.jsonl"
    for name in (
        "../job.json",
        "job.json/..",
        "x.mp4",
        "source.png/../../y",
        "attempt-0.json",
        "_queue.json",
        "tracks.json",
        "source.jsonl",
    ):
        with pytest.raises(ValueError, match="not a job file name"):
            store.path(task_id, name)
    with pytest.raises(ValueError):
        attempt_name(0)


def test_records_round_trip_and_ignore_keys_of_a_newer_version(tmp_path: Path) -> None:
    options = SwapOptions.from_mapping(
        {"blend_ratio": 0.7, "face_mask_padding": [1, 2, 3, 4], "face_selector_mode": "many"}
    )
    spec = _spec(owner=key_id(KEY_A)).model_copy(update={"options": options.to_json()})
    store = JobStore.from_uri(str(tmp_path))
    store.write_spec(spec)
    assert store.read_spec(spec.task_id) == spec and store.read_spec(spec.task_id).swap_options() == options
    data = json.loads((tmp_path / spec.task_id / SPEC_NAME).read_bytes())
    data["field_from_the_future"] = 1
    assert JobSpec.from_json(json.dumps(data).encode()) == spec
    with pytest.raises(JobNotFoundError):
        store.read_spec(new_task_id())
    (tmp_path / spec.task_id / CONTROL_NAME).write_text('{"task_id": "not an id"}')
    assert store.read_control(spec.task_id) is None  # unreadable: as if absent, logged


def test_record_writes_are_atomic_for_concurrent_readers(tmp_path: Path) -> None:
    """A reader never sees a partly written record (written to a temporary file, then renamed)."""
    store = JobStore.from_uri(str(tmp_path))
    spec = _spec()
    store.write_report(_report(spec, 1, 1000.0, summary={"padding": "x" * 200_000}))
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not stop.is_set():
            report = store.read_report(spec.task_id, 1)
            assert report is not None
            seen.append(report.frames_done)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(150):
            store.write_report(_report(spec, 1, 1000.0, frames_done=i, summary={"padding": "x" * 200_000}))
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 0 and seen == sorted(seen)
    assert os.listdir(tmp_path / spec.task_id) == [attempt_name(1)]  # no temporary file left


def test_store_files_and_indexes(tmp_path: Path) -> None:
    store = JobStore.from_uri(f"file://{tmp_path}")
    assert not store.node_local and JobStore.from_uri(str(tmp_path)).node_local
    assert store.active() == {} and store.expiries() == [] and store.task_ids() == []  # nothing there yet
    ids = sorted(new_task_id() for _ in range(3))
    for task_id in ids:
        _submit(store, _spec(task_id))
    (tmp_path / "notes").mkdir()
    (tmp_path / ("F" * 32)).mkdir()
    (tmp_path / ACTIVE_DIR / "stray").write_text("x")
    assert store.task_ids() == ids and sorted(store.active()) == ids
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert store.put_file(ids[0], "target.mp4", io.BytesIO(data)) == len(data)
    assert store.size(ids[0], "target.mp4") == len(data) and store.read_bytes(ids[0], "target.mp4") == data
    store.fetch(ids[0], "target.mp4", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == data
    assert store.size(ids[0], RESULT_NAME) is None
    store.add_expiry(ids[1], 5000.0, "completed")
    store.add_expiry(ids[2], 4000.0, "failed")
    assert [(e.at, e.task_id, e.outcome) for e in store.expiries()] == [
        (4000.0, ids[2], "failed"),
        (5000.0, ids[1], "completed"),
    ]
    store.delete(ids[0])
    done = JobControl(task_id=ids[1], outcome="completed", expires_at=5000.0)
    store.delete(ids[1], done)
    assert store.task_ids() == ids[2:] and sorted(store.active()) == ids[2:]
    assert [e.task_id for e in store.expiries()] == [ids[2]]
    store.write_queue(QueueSnapshot(updated_at=1.0, waiting=ids[2:], pending_by_owner={"": 1}))
    queue = store.read_queue()
    assert queue is not None and queue.position(ids[2]) == 1 and queue.position(ids[0]) is None


def test_each_application_has_its_own_part_of_a_store(tmp_path: Path) -> None:
    plain, odd = JobStore.from_uri(str(tmp_path), "faceswap"), JobStore.from_uri(str(tmp_path), "a/../b")
    assert plain.root == f"{tmp_path}/faceswap" and plain.node_local
    assert odd.root.startswith(f"{tmp_path}/app-") and "/" not in odd.root.removeprefix(f"{tmp_path}/")
    shared = JobStore.from_uri(f"file://{tmp_path}?x=1", "faceswap")
    assert shared.root == f"{tmp_path}/faceswap" and not shared.node_local
    spec = _submit(plain)
    assert set(os.listdir(tmp_path / "faceswap")) == {ACTIVE_DIR, spec.task_id}


# -- the task view ----------------------------------------------------------------------------------------
def test_the_task_view_takes_each_writer_in_its_precedence() -> None:
    spec = _spec()
    queue = QueueSnapshot(updated_at=1.0, waiting=[new_task_id(), spec.task_id])
    view = task_view(spec, None, None, queue=queue, root_path="/p/")
    assert (view["status"], view["queue_position"], view["attempts"]) == ("queued", 2, 0)
    assert task_view(spec, None, None, queue=QueueSnapshot(updated_at=1.0))["queue_position"] == 1
    claimed = JobControl(task_id=spec.task_id, attempt=1, runner="r", claimed_at=1000.0)
    assert task_view(spec, claimed, None, queue=queue)["queue_position"] == 0  # its runner is starting
    running = _report(spec, 1, 1000.0, frames_done=30, progress=0.4)
    view = task_view(spec, claimed, running)
    assert (view["status"], view["frames_done"], view["progress"], view["queue_position"]) == (
        "running",
        30,
        0.4,
        None,
    )
    assert task_view(spec, claimed, running, cancelled=True)["status"] == "cancelled"
    done = running.model_copy(update={"status": "completed", "frames_done": 75, "progress": 1.0})
    view = task_view(spec, claimed, done, root_path="/p/")
    assert (view["status"], view["result_url"]) == ("completed", f"/p/api/v1/tasks/{spec.task_id}/result")
    assert view["tracks_url"] == f"/p/api/v1/tasks/{spec.task_id}/tracks"
    # the leader's outcome wins over any report, and a report of another attempt is ignored
    failed = claimed.model_copy(update={"outcome": "failed", "error": "boom", "error_code": "timeout"})
    view = task_view(spec, failed, done)
    assert (view["status"], view["error_code"], view["result_url"]) == ("failed", "timeout", None)
    assert view["tracks_url"] is None
    second = claimed.model_copy(update={"attempt": 2})
    assert task_view(spec, second, done)["status"] == "queued"


# -- the leader: queue ------------------------------------------------------------------------------------
def test_jobs_start_in_order_within_the_cluster_and_key_limits(leader) -> None:
    store, manager, runners, clock = leader
    a1, a2, b1, c1 = (
        _submit(store, owner=owner, created_at=900.0 + i) for i, owner in enumerate(["A", "A", "B", "C"])
    )
    report = manager.reconcile()  # 2 in the cluster, 1 per key: A's first, then B's (A's second waits)
    assert report == ReconcileReport(
        started=2, states={"queued": 2, "running": 2, "completed": 0, "failed": 0}
    )
    assert runners.started == [(a1.task_id, 1), (b1.task_id, 1)]
    queue = store.read_queue()
    assert queue is not None and queue.waiting == [a2.task_id, c1.task_id]
    assert queue.pending_by_owner == {"A": 2, "B": 1, "C": 1}
    assert _view(store, a2.task_id)["queue_position"] == 1 and _view(store, c1.task_id)["queue_position"] == 2
    assert _view(store, a1.task_id)["status"] == "queued" and _view(store, a1.task_id)["queue_position"] == 0
    # B's job completes: C's starts (A is still at its key's limit)
    store.write_report(_report(b1, 1, clock.now, status="completed", finished_at=clock.now))
    clock.now += 1
    assert manager.reconcile().started == 1
    assert runners.started[-1] == (c1.task_id, 1)
    assert store.read_queue().waiting == [a2.task_id]  # type: ignore[union-attr]
    control = store.read_control(b1.task_id)
    assert (
        control is not None and control.outcome == "completed" and control.expires_at == clock.now - 1 + 3600
    )
    assert b1.task_id not in store.active() and [e.task_id for e in store.expiries()] == [b1.task_id]


def test_an_idle_leader_writes_nothing_and_clears_a_stale_queue(leader) -> None:
    store, manager, runners, clock = leader
    assert manager.reconcile() == ReconcileReport(
        states={"queued": 0, "running": 0, "completed": 0, "failed": 0}
    )
    assert list(Path(store.root).iterdir()) == []  # an unused store stays empty
    store.write_queue(QueueSnapshot(updated_at=1.0, waiting=[new_task_id()], pending_by_owner={"A": 9}))
    JobManager(store, _args(str(store.root)).jobs, runners, clock).reconcile()  # the next leader's first pass
    assert store.read_queue() == QueueSnapshot(updated_at=clock.now)


def test_a_pass_reads_only_the_indexes_of_active_jobs(leader, monkeypatch: pytest.MonkeyPatch) -> None:
    store, manager, runners, clock = leader
    _submit(store)
    manager.reconcile()  # the first pass also sweeps the folders
    calls: list[str] = []
    monkeypatch.setattr(store, "task_ids", lambda: calls.append("listed every folder") or [])
    for _ in range(5):
        clock.now += 2
        manager.reconcile()
    assert calls == []


# -- the leader: runners ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cause", ["runner gone", "no heartbeat", "never started"])
def test_a_lost_runner_is_replaced_then_the_job_fails_with_the_reason(leader, cause: str) -> None:
    store, manager, runners, clock = leader
    spec = _submit(store)
    manager.reconcile()
    first = runner_name(spec.task_id, 1)
    if cause != "never started":
        store.write_report(_report(spec, 1, clock.now, frames_done=40))
    if cause == "runner gone":
        runners.die(first)
    clock.now += 61  # past heartbeat_timeout_s
    if cause != "runner gone":  # a silent runner is stopped first; the decision waits until it is gone
        assert manager.reconcile().started == 0 and runners.stopped == [first]
        runners.die(first)
    assert manager.reconcile().started == 1
    assert runners.started[-1] == (spec.task_id, 2)
    view = _view(store, spec.task_id)
    assert (view["status"], view["attempts"], view["frames_done"]) == ("queued", 2, 0)
    control = store.read_control(spec.task_id)
    assert control is not None and control.previous_error is not None
    # the second runner is lost too: max_attempts=2 is reached, the job fails with the reason
    store.write_report(_report(spec, 2, clock.now))
    runners.die(runner_name(spec.task_id, 2))
    assert manager.reconcile().finished == 1
    view = _view(store, spec.task_id)
    assert (view["status"], view["error_code"]) == ("failed", "runner_lost")
    assert view["error"] == "runner lost: its runner is gone; gave up after 2 attempt(s)"
    assert manager.reconcile() == ReconcileReport(
        states={"queued": 0, "running": 0, "completed": 0, "failed": 1}
    )


def test_a_job_over_its_runtime_limit_is_stopped_then_failed(tmp_path: Path) -> None:
    store, runners, clock = JobStore.from_uri(str(tmp_path)), FakeRunners(), FakeClock()
    manager = JobManager(store, _args(str(tmp_path), max_runtime_s=100).jobs, runners, clock)
    spec = _submit(store)
    manager.reconcile()
    clock.now += 101
    store.write_report(_report(spec, 1, clock.now - 101, heartbeat_at=clock.now))
    manager.reconcile()
    assert (
        runners.stopped == [runner_name(spec.task_id, 1)]
        and _view(store, spec.task_id)["status"] == "running"
    )
    runners.die(runner_name(spec.task_id, 1))
    manager.reconcile()
    view = _view(store, spec.task_id)
    assert (view["status"], view["error_code"], view["attempts"]) == ("failed", "timeout", 1)
    assert "100 s" in view["error"]


def test_a_runner_that_completes_while_being_timed_out_completes(tmp_path: Path) -> None:
    """The leader decided to time the job out and stopped its runner; the runner wrote "completed" before it
    died. The leader reads the report again once the runner is gone: the job completed."""
    store, runners, clock = JobStore.from_uri(str(tmp_path)), FakeRunners(), FakeClock()
    manager = JobManager(store, _args(str(tmp_path), max_runtime_s=100).jobs, runners, clock)
    spec = _submit(store)
    manager.reconcile()
    store.write_report(_report(spec, 1, clock.now))
    clock.now += 101
    store.write_report(_report(spec, 1, clock.now - 101, heartbeat_at=clock.now))
    manager.reconcile()  # over the limit: stopped
    store.write_report(_report(spec, 1, 1000.0, status="completed", frames_done=75, finished_at=clock.now))
    runners.die(runner_name(spec.task_id, 1))
    clock.now += 2
    assert manager.reconcile().finished == 1
    view = _view(store, spec.task_id)
    assert (view["status"], view["error"]) == ("completed", None)


def test_a_late_write_of_a_runner_the_leader_gave_up_on_changes_nothing(leader) -> None:
    """The leader failed the job after its runner was gone; a runner that was not quite gone writes
    "completed" afterwards. The job stays failed, and the next passes leave it failed."""
    store, manager, runners, clock = leader
    spec = _submit(store)
    manager.reconcile()
    for attempt in (1, 2):
        runners.die(runner_name(spec.task_id, attempt))
        clock.now += 1
        manager.reconcile()
    assert _view(store, spec.task_id)["status"] == "failed"
    store.write_report(_report(spec, 2, clock.now, status="completed", finished_at=clock.now))
    clock.now += 1
    assert manager.reconcile().finished == 0
    assert _view(store, spec.task_id)["status"] == "failed"
    assert JobManager(store, _args(str(store.root)).jobs, runners, clock).reconcile().finished == 0
    assert _view(store, spec.task_id)["status"] == "failed"


def test_an_old_runner_cannot_touch_the_current_attempt(leader) -> None:
    """Attempt 1's runner was replaced; what it writes later lands in its own report, which neither the
    task nor the leader reads any more."""
    store, manager, runners, clock = leader
    spec = _submit(store)
    manager.reconcile()
    runners.die(runner_name(spec.task_id, 1))
    clock.now += 1
    manager.reconcile()
    store.write_report(_report(spec, 2, clock.now, frames_done=10))
    store.write_report(_report(spec, 1, clock.now, status="completed", frames_done=75, finished_at=clock.now))
    clock.now += 1
    assert manager.reconcile().finished == 0
    view = _view(store, spec.task_id)
    assert (view["status"], view["attempts"], view["frames_done"]) == ("running", 2, 10)


def test_a_new_leader_carries_on_without_restarting_live_runners(leader) -> None:
    store, first, runners, clock = leader
    spec = _submit(store)
    first.reconcile()
    store.write_report(_report(spec, 1, clock.now))
    second = JobManager(store, _args(str(store.root)).jobs, runners, clock)
    clock.now += 10
    assert second.reconcile().started == 0 and runners.started == [(spec.task_id, 1)]
    store.write_report(_report(spec, 1, clock.now, status="completed", finished_at=clock.now))
    assert second.reconcile().finished == 1


def test_a_claim_left_by_a_leader_that_stopped_half_way_is_cleared(leader) -> None:
    """A leader claimed attempt 1's runner name and stopped before it wrote the control: the next leader
    finds the name taken, stops that runner and claims it on its next pass."""
    store, manager, runners, clock = leader
    spec = _submit(store)
    runners.live.add(runner_name(spec.task_id, 1))
    assert manager.reconcile().started == 0 and runners.stopped == [runner_name(spec.task_id, 1)]
    runners.die(runner_name(spec.task_id, 1))
    assert manager.reconcile().started == 1 and runners.started == [(spec.task_id, 1)]


# -- the leader: cancel, retention, sweep -----------------------------------------------------------------
def test_cancelled_jobs_are_deleted_once_their_runner_is_gone(leader) -> None:
    store, manager, runners, clock = leader
    running, queued, other = (_submit(store, owner="A", created_at=900.0 + i) for i in range(3))
    manager.reconcile()
    assert [t for t, _ in runners.started] == [running.task_id]
    store.write_cancel(queued.task_id, clock.now)
    store.write_cancel(running.task_id, clock.now)
    assert _view(store, running.task_id)["status"] == "cancelled"
    manager.reconcile()  # the queued job goes at once; the running one's runner is stopped first
    assert not (Path(store.root) / queued.task_id).exists() and queued.task_id not in store.active()
    assert (
        runners.stopped == [runner_name(running.task_id, 1)] and (Path(store.root) / running.task_id).exists()
    )
    assert [t for t, _ in runners.started] == [running.task_id]  # A's slot stays taken until it is gone
    runners.die(runner_name(running.task_id, 1))
    clock.now += 1
    report = manager.reconcile()
    assert (report.deleted, report.started) == (1, 1) and runners.started[-1] == (other.task_id, 1)
    assert not (Path(store.root) / running.task_id).exists() and sorted(store.active()) == [other.task_id]


def test_a_cancel_that_races_the_final_outcome_still_deletes(leader) -> None:
    """DELETE saw the job unfinished and wrote its tombstone just after the leader looked for one, while
    the leader recorded the outcome: the leader deletes the job right after recording it."""
    store, manager, runners, clock = leader
    spec = _submit(store)
    manager.reconcile()
    store.write_report(_report(spec, 1, clock.now, status="completed", finished_at=clock.now))
    read_report = store.read_report

    def delete_arrives(task_id: str, attempt: int) -> AttemptReport | None:
        store.write_cancel(task_id, clock.now)
        return read_report(task_id, attempt)

    store.read_report = delete_arrives  # type: ignore[method-assign]
    assert manager.reconcile().finished == 1
    assert not (Path(store.root) / spec.task_id).exists() and store.expiries() == []


def test_finished_jobs_are_deleted_when_their_retention_ends(leader) -> None:
    store, manager, runners, clock = leader
    spec = _submit(store)
    manager.reconcile()
    store.write_report(_report(spec, 1, clock.now, status="failed", error="x", finished_at=clock.now))
    manager.reconcile()
    assert _view(store, spec.task_id)["status"] == "failed"
    clock.now += 3599
    assert manager.reconcile().deleted == 0
    clock.now += 2
    assert manager.reconcile().deleted == 1
    assert not (Path(store.root) / spec.task_id).exists() and store.expiries() == []
    with pytest.raises(JobNotFoundError):
        store.read_spec(spec.task_id)


def test_the_sweep_deletes_what_no_index_names(leader, tmp_path: Path) -> None:
    store, manager, runners, clock = leader
    kept = _submit(store)
    stray = new_task_id()
    store.put_file(stray, "target.mp4", io.BytesIO(b"left by a crash"))
    abandoned = new_task_id()
    store.mark_active(abandoned)  # a submission that died before its spec
    store.put_file(abandoned, "source.png", io.BytesIO(b"x"))
    manager.reconcile()
    assert store.task_ids() == sorted([kept.task_id, abandoned])  # the stray folder is gone
    clock.now += SUBMIT_GRACE_S + 1
    os.utime(Path(store.root) / ACTIVE_DIR / abandoned, (clock.now - SUBMIT_GRACE_S - 1,) * 2)
    manager.reconcile()
    assert store.task_ids() == [kept.task_id] and list(store.active()) == [kept.task_id]


# -- the runner (no Ray: in-process ports over the test models) -------------------------------------------
def _ports_factory(detector: Path, test_models: dict[str, Path]) -> Callable[[], Any]:
    """In-process ports over ``detector`` with the test embedder and the tinting test swapper, no enhancer."""
    args = AppArgs.parse(
        {
            "overrides": {
                "detector": str(detector),
                "embedder": str(test_models["arcface"]),
                "swapper": str(test_models["inswapper_tint"]),
            },
            "providers": ["cpu"],
            "intra_op_threads": 1,
            "enhance": False,
        }
    )
    models = build_models(args.pipeline_config()).ports()

    async def factory() -> Ports:
        return models

    return factory


@pytest.fixture(scope="module")
def ports(test_models: dict[str, Path]) -> Callable[[], Any]:
    return _ports_factory(test_models["scrfd"], test_models)


def _stored_job(
    store: JobStore, video: bytes, source: np.ndarray, reference: np.ndarray | None = None, **options: Any
) -> JobSpec:
    info = probe_video(io.BytesIO(video))
    spec = JobSpec(
        task_id=new_task_id(),
        owner=None,
        created_at=1000.0,
        options=SwapOptions.from_mapping(options).to_json(),
        source="source.png",
        target="target.mp4",
        reference=None if reference is None else "reference.png",
        video=VideoFacts.of(info),
    )
    store.put_file(spec.task_id, "source.png", io.BytesIO(_png(source)))
    store.put_file(spec.task_id, "target.mp4", io.BytesIO(video))
    if reference is not None:
        store.put_file(spec.task_id, "reference.png", io.BytesIO(_png(reference)))
    _submit(store, spec)
    return spec


def _runner_args(store: str, **jobs: Any) -> AppArgs:
    return _args(
        store,
        max_duration_s=5,
        max_frame_pixels=1_000_000,
        frames_per_batch=4,
        batches_in_flight=2,
        progress_interval_s=0,
        preset="ultrafast",
        **jobs,
    )


def _sidecar(store: JobStore, task_id: str, folder: Path) -> list[dict[str, Any]]:
    (folder / "tracks.jsonl").write_bytes(store.read_bytes(task_id, TRACKS_NAME))
    return read_sidecar(folder / "tracks.jsonl")


def test_the_runner_swaps_every_frame_keeps_the_audio_and_labels_the_result(
    tmp_path: Path, ports: Callable[[], Any]
) -> None:
    store = JobStore.from_uri(str(tmp_path / "store"))
    video = _mp4(30, fps=10)
    spec = _stored_job(store, video, _noise(240, 352, 7), blend_ratio=1.0)
    writes: list[AttemptReport] = []
    write_report = store.write_report
    store.write_report = lambda r: (writes.append(r), write_report(r))[1]  # type: ignore[method-assign]
    report = asyncio.run(run_attempt(store, spec.task_id, 1, _runner_args(store.root), ports))
    assert (report.status, report.error, report.frames_done, report.progress) == ("completed", None, 30, 1.0)
    assert report.summary is not None and report.summary["faces_swapped"] == 30
    assert report.summary["components"]["swapper"] == "test_inswapper_tint"
    assert report.summary["tracking"] and report.summary["detector_calls"] < 30
    rows = _sidecar(store, spec.task_id, tmp_path)
    assert [r["frame"] for r in rows] == list(range(30)) and {r["track_id"] for r in rows} == {0}
    assert sorted({w.frames_done for w in writes if w.status == "running"}) == [
        0,
        4,
        8,
        12,
        16,
        20,
        24,
        28,
        30,
    ]
    running = [w for w in writes if w.status == "running"]
    planning = [w for w in running if w.stage == "planning"]
    assert [w.frames_planned for w in planning] == list(range(1, 31)), "planning progress not reported"
    assert all(w.progress <= PLANNING_SHARE for w in planning) and planning[-1].progress == PLANNING_SHARE
    assert [w.stage for w in running if w.stage is not None][-1] == "swapping"
    fractions = [w.progress for w in writes]
    assert fractions == sorted(fractions), "progress went backwards"
    result = tmp_path / "result.mp4"
    result.write_bytes(store.read_bytes(spec.task_id, RESULT_NAME))
    info = probe_video(result)
    assert (info.frame_count, info.fps, info.width, info.height, info.has_audio) == (30, 10, 352, 240, True)
    label = read_video_label(result)
    assert label is not None and label.task_id == spec.task_id and label.models["swapper"]
    swapped = [f.image for f in read_frames(result)]
    originals = [f.image for f in read_frames(io.BytesIO(video))]
    changed = [
        np.mean(np.abs(a.astype(int) - b).max(axis=2) > 40) for a, b in zip(swapped, originals, strict=True)
    ]
    assert all(0.005 < c < 0.5 for c in changed), changed  # the face region changed, the rest did not


def test_the_runner_without_tracking_detects_every_frame(tmp_path: Path, ports: Callable[[], Any]) -> None:
    store = JobStore.from_uri(str(tmp_path / "store"))
    spec = _stored_job(store, _mp4(12, fps=10, audio=False), _noise(240, 352, 7), tracking="false")
    report = asyncio.run(run_attempt(store, spec.task_id, 1, _runner_args(store.root), ports))
    assert report.status == "completed" and report.summary is not None, report
    summary = report.summary
    assert (summary["tracking"], summary["detector_calls_per_frame"], summary["tracks"]) == (False, 1.0, 0)
    rows = _sidecar(store, spec.task_id, tmp_path)
    expected = [(i, None, "detected") for i in range(12)]
    assert [(r["frame"], r["track_id"], r["source"]) for r in rows] == expected


@pytest.fixture(scope="module")
def real_ports(assets: Path, test_models: dict[str, Path]) -> Callable[[], Any]:
    """The real YuNet detector with the test embedder and the tinting test swapper, in-process."""
    return _ports_factory(assets / "models" / "face_detection_yunet_2026may.onnx", test_models)


@pytest.mark.assets
def test_the_runner_tracks_the_faces_of_a_real_clip(
    tmp_path: Path, assets: Path, real_ports: Callable[[], Any]
) -> None:
    """Tracking is on by default: one track through the clip, a sidecar row per frame, the detector on at
    most 0.35 of the frames (its calls made through the orchestration's ports from pass 1's thread)."""
    store = JobStore.from_uri(str(tmp_path / "store"))
    source = cv2.imread(str(assets / "images" / SOURCE))
    spec = _stored_job(store, (assets / "video" / AAC).read_bytes(), source)
    report = asyncio.run(run_attempt(store, spec.task_id, 1, _runner_args(store.root), real_ports))
    assert report.status == "completed" and report.summary is not None, report
    summary = report.summary
    assert (summary["tracking"], summary["tracks"], summary["faces_swapped"]) == (True, 1, 75)
    assert summary["detector_calls_per_frame"] <= 0.35
    assert summary["detector_calls"] == round(summary["detector_calls_per_frame"] * 75)
    rows = _sidecar(store, spec.task_id, tmp_path)
    assert [r["frame"] for r in rows] == list(range(75)) and {r["track_id"] for r in rows} == {0}
    assert [r["pts"] for r in rows] == [f.pts for f in read_frames(assets / "video" / AAC)]
    assert {r["source"] for r in rows} == {"detected", "tracked"}
    assert all(len(r["box"]) == 4 and len(r["landmarks"]) == 10 for r in rows)


@pytest.mark.assets
def test_the_runner_matches_tracks_to_the_reference_once(
    tmp_path: Path, assets: Path, real_ports: Callable[[], Any]
) -> None:
    """Reference mode on the group clip (4 faces): pass 1 embeds the keyframes' faces through the ports;
    one track matches a crop of one face of the first frame and is the only one swapped, in every frame."""
    video = (assets / "video" / "group_pan_1280x720_25fps_h264.mp4").read_bytes()
    first = next(read_frames(io.BytesIO(video))).image
    reference = first[200:500, 100:400]  # the face left of the middle, with a margin
    store = JobStore.from_uri(str(tmp_path / "store"))
    spec = _stored_job(
        store,
        video,
        cv2.imread(str(assets / "images" / SOURCE)),
        reference,
        face_selector_mode="reference",
        reference_face_distance="0.3",
    )
    report = asyncio.run(run_attempt(store, spec.task_id, 1, _runner_args(store.root), real_ports))
    assert report.status == "completed" and report.summary is not None, report
    assert (report.summary["tracks"], report.summary["faces_swapped"]) == (4, 75)
    rows = _sidecar(store, spec.task_id, tmp_path)
    assert [r["frame"] for r in rows] == list(range(75)) and len({r["track_id"] for r in rows}) == 1
    assert 100 < rows[0]["box"][0] < rows[0]["box"][2] < 400


@pytest.mark.parametrize("case", sorted(LYING))
def test_the_runner_holds_decoded_frames_to_the_limits(
    tmp_path: Path, ports: Callable[[], Any], case: str
) -> None:
    make, code = LYING[case]
    store = JobStore.from_uri(str(tmp_path))
    spec = _stored_job(store, make(), _noise(240, 352, 7))
    report = asyncio.run(run_attempt(store, spec.task_id, 1, _runner_args(store.root), ports))
    assert (report.status, report.error_code) == ("failed", code), report
    assert report.error is not None and report.error.startswith("target_video: ")
    assert str(tmp_path) not in report.error  # no server path in what the client reads
    assert store.size(spec.task_id, RESULT_NAME) is None


def test_the_runner_reports_a_source_without_a_face(tmp_path: Path, ports: Callable[[], Any]) -> None:
    store = JobStore.from_uri(str(tmp_path))
    spec = _stored_job(store, _mp4(5, audio=False), _noise(240, 352, 7), detector_score=0.99)  # over 0.95
    report = asyncio.run(run_attempt(store, spec.task_id, 1, _runner_args(store.root), ports))
    assert (report.status, report.error_code) == ("failed", NoFaceError.code)
    assert report.error == "no face found in the source image"


def test_the_runner_waits_for_unavailable_deployments_only() -> None:
    clock = FakeClock()
    failures = [OverloadedError("busy"), OverloadedError("busy")]

    async def flaky() -> str:
        if failures:
            clock.now += 1
            raise failures.pop()
        return "done"

    assert asyncio.run(when_available(flaky, 5, clock)) == "done"

    async def down() -> str:
        clock.now += 1
        raise OverloadedError("busy")

    with pytest.raises(OverloadedError):
        asyncio.run(when_available(down, 1.5, clock))

    async def broken() -> str:
        raise NoFaceError("no face")

    with pytest.raises(NoFaceError):
        asyncio.run(when_available(broken, 100, clock))


def test_the_runner_heartbeats_while_it_waits(tmp_path: Path) -> None:
    store = JobStore.from_uri(str(tmp_path))
    spec = _submit(store)
    args = _runner_args(
        store.root, heartbeat_interval_s=0.05, heartbeat_timeout_s=1, unavailable_timeout_s=0.6
    )

    async def unavailable() -> Ports:
        raise OverloadedError("the model deployments are being replaced")

    beats: list[float] = []
    write_report = store.write_report
    store.write_report = lambda r: (beats.append(r.heartbeat_at), write_report(r))[1]  # type: ignore[method-assign]
    report = asyncio.run(run_attempt(store, spec.task_id, 1, args, unavailable, clock=time.time))
    assert (report.status, report.error_code) == ("failed", "overloaded")
    assert len(set(beats)) >= 5  # the heartbeat moved on while the runner waited


# -- upload checks ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_video() -> bytes:
    return _mp4(20, (64, 48), fps=10)


def _check(files: dict[str, bytes], **limits: Any) -> Any:
    video = VideoLimits(limits.pop("max_duration_s", 10.0), limits.pop("max_frame_pixels", 4_000_000))
    values = {"max_image_bytes": 1_000_000, "max_pixels": 4_000_000, **limits}
    return check_uploads({k: io.BytesIO(v) for k, v in files.items()}, limits=video, **values)


def test_upload_checks_accept_a_video_and_name_the_stored_files(small_video: bytes) -> None:
    checked = _check({"source_image": _png(_noise(64, 64, 1)), "target_video": small_video})
    assert sorted(checked.files) == ["source.png", "target.mp4"]
    assert (checked.name("target"), checked.name("reference")) == ("target.mp4", None)
    assert (checked.video.frame_count, checked.video.has_audio) == (20, True)


@pytest.mark.parametrize(
    ("files", "limits", "error", "match"),
    [
        ({"target_video": "video"}, {}, InvalidInputError, "source_image: required"),
        ({"source_image": "png"}, {}, InvalidInputError, "target_video: required"),
        (
            {"source_image": "png", "target_video": b"hello, not a video" * 40},
            {},
            UnsupportedMediaError,
            "target_video: not a supported video container",
        ),
        (
            {"source_image": "png", "target_video": "truncated"},
            {},
            InvalidInputError,
            "target_video: (truncated|corrupt)",
        ),
        (
            {"source_image": "png", "target_video": "video"},
            {"max_duration_s": 1.5},
            PayloadTooLargeError,
            "2.0 s",
        ),
        (
            {"source_image": "png", "target_video": "video"},
            {"max_frame_pixels": 3000},
            PayloadTooLargeError,
            "64x48",
        ),
        ({"source_image": b"GIF89a....", "target_video": "video"}, {}, UnsupportedMediaError, "source_image"),
        (
            {"source_image": "png", "target_video": "video"},
            {"max_image_bytes": 10},
            PayloadTooLargeError,
            r"source_image: \d+ bytes is over the image limit of 10",
        ),
    ],
    ids=["no-source", "no-target", "text", "truncated", "too-long", "too-many-pixels", "gif", "big-image"],
)
def test_upload_checks_reject_bad_files(small_video: bytes, files, limits, error, match) -> None:
    real = {
        "png": _png(_noise(64, 64, 1)),
        "video": small_video,
        "truncated": small_video[: len(small_video) // 2],
    }
    with pytest.raises(error, match=match):
        _check({k: real.get(v, v) if isinstance(v, str) else v for k, v in files.items()}, **limits)


# -- the routes (no Ray: a Starlette test client, a fake launcher and lease) -------------------------------
@pytest.fixture
def service(
    tmp_path: Path, small_video: bytes
) -> Iterator[tuple[JobService, TestClient, FakeRunners, FakeClock]]:
    runners, clock = FakeRunners(), FakeClock()

    async def check_options(texts: Any, has_reference: bool) -> SwapOptions:
        return options_from_fields(texts)

    args = _args(str(tmp_path), auth=True)
    jobs = JobService(
        args,
        check_options,
        store=JobStore.from_uri(str(tmp_path)),
        launcher=runners,
        lease=FakeLease(),
        clock=clock,
    )
    app = Starlette(
        routes=[Route(path, handler, methods=[method]) for path, method, handler in jobs.handlers()]
    )
    with TestClient(app) as client:
        yield jobs, client, runners, clock


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _post_job(client: TestClient, key: str, video: bytes, **data: str) -> httpx.Response:
    files = {
        "source_image": ("s.png", _png(_noise(64, 64, 1)), "image/png"),
        "target_video": ("v.mp4", video, "video/mp4"),
    }
    return client.post("/api/v1/jobs", files=files, data=data, headers=_auth(key))


def test_jobs_belong_to_the_key_that_submitted_them(service, small_video: bytes) -> None:
    jobs, client, runners, clock = service
    response = _post_job(client, KEY_A, small_video, blend_ratio="0.5")
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert response.json() == {"task_id": task_id, "status": "queued", "queue_position": 1}
    assert response.headers["location"] == f"/api/v1/tasks/{task_id}"
    assert jobs.store.read_spec(task_id).owner == key_id(KEY_A)
    assert jobs.store.read_spec(task_id).swap_options().blend_ratio == 0.5
    for method, path in (("GET", ""), ("GET", "/result"), ("GET", "/tracks"), ("DELETE", "")):
        other = client.request(method, f"/api/v1/tasks/{task_id}{path}", headers=_auth(KEY_B))
        assert other.status_code == 404 and other.json()["code"] == "not_found", (method, path)
        assert task_id in other.json()["error"]
    assert client.get(f"/api/v1/tasks/{task_id}", headers=_auth(KEY_A)).json()["status"] == "queued"
    assert client.get(f"/api/v1/tasks/{task_id}/result", headers=_auth(KEY_A)).status_code == 409
    assert client.get(f"/api/v1/tasks/{task_id}/tracks", headers=_auth(KEY_A)).status_code == 409
    assert jobs.store.read_spec(task_id).task_id == task_id  # B's DELETE did nothing


def test_queue_positions_the_key_limit_and_delete(service, small_video: bytes) -> None:
    jobs, client, runners, clock = service
    first = _post_job(client, KEY_A, small_video).json()["task_id"]
    clock.now += 1
    second = _post_job(client, KEY_A, small_video).json()["task_id"]
    asyncio.run(jobs.lead_once())  # one job per key runs: A's second waits first in the queue
    assert runners.started == [(first, 1)]
    task = client.get(f"/api/v1/tasks/{second}", headers=_auth(KEY_A)).json()
    assert (task["status"], task["queue_position"], task["attempts"]) == ("queued", 1, 0)
    clock.now += 1
    third = _post_job(client, KEY_A, small_video)
    assert third.json()["queue_position"] == 2
    asyncio.run(jobs.lead_once())
    refused = _post_job(client, KEY_A, small_video)  # A has 3 unfinished jobs: its limit
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_jobs"
    assert _post_job(client, KEY_B, small_video).status_code == 202  # B's own limit
    # DELETE the queued job: cancelled, then gone once the leader passed
    deleted = client.delete(f"/api/v1/tasks/{second}", headers=_auth(KEY_A))
    assert deleted.status_code == 202 and deleted.json() == {
        "task_id": second,
        "status": "cancelled",
        "deleted": False,
    }
    assert client.get(f"/api/v1/tasks/{second}", headers=_auth(KEY_A)).json()["status"] == "cancelled"
    asyncio.run(jobs.lead_once())
    assert client.get(f"/api/v1/tasks/{second}", headers=_auth(KEY_A)).status_code == 404
    assert not (Path(jobs.store.root) / second).exists()
    # DELETE the running job: its runner is stopped at once; the files go once it is gone
    assert client.delete(f"/api/v1/tasks/{first}", headers=_auth(KEY_A)).json()["status"] == "cancelled"
    assert runners.stopped == [runner_name(first, 1)]
    runners.die(runner_name(first, 1))
    asyncio.run(jobs.lead_once())
    assert client.get(f"/api/v1/tasks/{first}", headers=_auth(KEY_A)).status_code == 404


def test_a_finished_job_streams_its_result_and_delete_removes_it_at_once(service, small_video: bytes) -> None:
    jobs, client, runners, clock = service
    task_id = _post_job(client, KEY_A, small_video).json()["task_id"]
    asyncio.run(jobs.lead_once())
    spec = jobs.store.read_spec(task_id)
    sidecar = b'{"frame":0,"pts":0,"track_id":0}\n'
    jobs.store.put_file(task_id, TRACKS_NAME, io.BytesIO(sidecar))
    jobs.store.put_file(task_id, RESULT_NAME, io.BytesIO(small_video))
    jobs.store.write_report(
        _report(spec, 1, clock.now, status="completed", frames_done=20, finished_at=clock.now)
    )
    task = client.get(f"/api/v1/tasks/{task_id}", headers=_auth(KEY_A)).json()  # before the leader's pass
    assert (task["status"], task["result_url"]) == ("completed", f"/api/v1/tasks/{task_id}/result")
    result = client.get(task["result_url"], headers=_auth(KEY_A))
    assert result.status_code == 200 and result.content == small_video
    assert result.headers["content-type"] == "video/mp4"
    tracks = client.get(task["tracks_url"], headers=_auth(KEY_A))
    assert tracks.status_code == 200 and tracks.content == sidecar
    assert tracks.headers["content-type"].startswith("application/jsonl")
    assert tracks.headers["content-disposition"] == f'attachment; filename="{task_id}.tracks.jsonl"'
    asyncio.run(jobs.lead_once())
    assert client.get(f"/api/v1/tasks/{task_id}", headers=_auth(KEY_A)).json()["expires_at"] is not None
    deleted = client.delete(f"/api/v1/tasks/{task_id}", headers=_auth(KEY_A)).json()
    assert deleted == {"task_id": task_id, "status": "completed", "deleted": True}
    assert client.get(f"/api/v1/tasks/{task_id}", headers=_auth(KEY_A)).status_code == 404
    assert jobs.store.expiries() == [] and jobs.store.task_ids() == []


def test_a_replica_without_the_lease_does_not_lead(tmp_path: Path) -> None:
    store, runners, lease = JobStore.from_uri(str(tmp_path)), FakeRunners(), FakeLease(held=False)

    async def check_options(texts: Any, has_reference: bool) -> SwapOptions:
        return options_from_fields(texts)

    jobs = JobService(_args(str(tmp_path)), check_options, store=store, launcher=runners, lease=lease)
    _submit(store)
    asyncio.run(jobs.lead_once())
    assert jobs.manager is None and runners.started == []
    lease.held = True
    asyncio.run(jobs.lead_once())
    assert jobs.manager is not None and len(runners.started) == 1
    lease.held = False
    asyncio.run(jobs.lead_once())
    assert jobs.manager is None


# -- configuration ----------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "ingress",
    [{"num_replicas": 2}, {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}],
    ids=["replicas", "autoscaling"],
)
def test_a_store_on_one_node_is_refused_with_several_ingress_replicas(ingress: dict[str, Any]) -> None:
    shared = {"store_uri": "s3://bucket/prefix?region=eu-west-1"}
    for section in ("jobs", "identities"):
        other = "identities" if section == "jobs" else "jobs"
        with pytest.raises(InvalidOptionError, match=f"{section}.store_uri .* is a directory on one node"):
            AppArgs.parse({"ingress": ingress, section: {"store_uri": "/var/lib/faceswap"}, other: shared})
    for uri in ("s3://bucket/jobs?region=eu-west-1", "file:///mnt/shared/jobs"):
        store = {"store_uri": uri}
        args = AppArgs.parse({"ingress": ingress, "jobs": store, "identities": store})
        assert args.jobs.store_uri == args.identities.store_uri == uri


def test_a_store_on_one_node_is_refused_on_a_cluster_of_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check a replica makes when it starts: the config cannot know the cluster's nodes."""
    import serve_app.jobs.service as service_module

    async def check_options(texts: Any, has_reference: bool) -> SwapOptions:
        return options_from_fields(texts)

    nodes = [{"Alive": True}, {"Alive": True}, {"Alive": False}]
    monkeypatch.setattr(service_module.ray, "nodes", lambda: nodes)
    with pytest.raises(InvalidOptionError, match="this Ray cluster has 2 nodes"):
        JobService(_args(str(tmp_path)), check_options)
    check_one_node("jobs", f"file://{tmp_path}")  # a shared filesystem is fine anywhere
    nodes.pop(0)
    check_one_node("jobs", str(tmp_path))


@pytest.mark.parametrize(
    ("jobs", "where"),
    [
        ({"max_running_jobs": 2, "max_running_jobs_per_key": 3}, "max_running_jobs_per_key"),
        ({"max_pending_jobs_per_key": 1, "max_running_jobs_per_key": 2}, "max_pending_jobs_per_key"),
        ({"heartbeat_interval_s": 40}, "heartbeat_timeout_s"),
        ({"preset": "fastest"}, "preset"),
        ({"batch_size": 8}, "batch_size"),
        ({"retention_s": 0}, "retention_s"),
    ],
)
def test_jobs_args_are_checked(jobs: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidOptionError, match=where):
        AppArgs.parse({"jobs": jobs})


def test_the_shipped_configs_keep_jobs_and_identities_where_their_replicas_see_them() -> None:
    apps = {}
    for name in ("serve.yaml", "serve.local.yaml"):
        config = yaml.safe_load((REPO / "configs" / name).read_text())
        apps[name] = AppArgs.parse(config["applications"][0]["args"])
    assert (
        apps["serve.yaml"].jobs.store_uri.startswith("s3://") and not apps["serve.yaml"].jobs.node_local_store
    )
    assert apps["serve.yaml"].identities.store_uri.startswith("s3://")
    assert apps["serve.local.yaml"].jobs.node_local_store
    assert (
        apps["serve.local.yaml"].ingress.num_replicas in (None, 1)
        and apps["serve.local.yaml"].ingress.autoscaling is None
    )


# -- a real local Serve app (one Ray for the module) ------------------------------------------------------
APP = "jobs"
DEADLINE_S = 180.0
RETENTION_S = 12.0


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    from tests.local_ray import local_serve

    with local_serve(num_gpus=0) as url:
        yield url


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job_store")


@pytest.fixture(scope="module")
def app(serve_url: str, test_models: dict[str, Path], store_dir: Path) -> str:
    """Test models (one face in any frame, a tinted swap), no enhancer, API keys A and B, fast runners, a
    short retention, two jobs at once in the cluster and one per key."""
    from ray import serve

    from serve_app.app import build_app

    args = {
        "overrides": {
            "detector": str(test_models["scrfd"]),
            "embedder": str(test_models["arcface"]),
            "swapper": str(test_models["inswapper_tint"]),
        },
        "providers": ["cpu"],
        "intra_op_threads": 1,
        "enhance": False,
        "auth": {"api_keys": [KEY_A, KEY_B]},
        "ingress": {"num_cpus": 0},
        "detector": {"num_cpus": 0},
        "embedder": {"num_cpus": 0},
        "swapper": {"num_cpus": 0},
        "jobs": {
            "store_uri": str(store_dir),
            "max_upload_bytes": 2_000_000,
            "max_duration_s": 5,
            "max_frame_pixels": 1_000_000,
            "max_running_jobs": 2,
            "max_running_jobs_per_key": 1,
            "max_pending_jobs_per_key": 8,
            "retention_s": RETENTION_S,
            "max_attempts": 2,
            "heartbeat_interval_s": 1,
            "heartbeat_timeout_s": 10,
            "reconcile_interval_s": 0.5,
            "progress_interval_s": 0.5,
            "runner_cpus": 0.5,
            "preset": "ultrafast",
        },
    }
    serve.run(build_app(args), name=APP, route_prefix="/")
    return serve_url


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def _send(
    http: httpx.Client, url: str, key: str, video: tuple[str, bytes], source: bytes, **data: str
) -> str:
    files = {
        "source_image": ("source.png", source, "image/png"),
        "target_video": (video[0], video[1], "video/mp4"),
    }
    response = http.post(f"{url}/api/v1/jobs", files=files, data=data, headers=_auth(key))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["queue_position"] >= 1
    assert response.headers["location"] == f"/api/v1/tasks/{body['task_id']}"
    return check_task_id(body["task_id"])


def _poll(
    http: httpx.Client, url: str, key: str, task_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET the task until ``done(task)`` (a 404 reads as ``{"status": "gone"}``), for at most DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = http.get(f"{url}/api/v1/tasks/{task_id}", headers=_auth(key))
        assert response.status_code in (200, 404), response.text
        task = response.json() if response.status_code == 200 else {"status": "gone"}
        if done(task):
            return task
        assert time.monotonic() < deadline, f"task did not get there in {DEADLINE_S} s: {task}"
        time.sleep(0.25)


def _finished(task: dict[str, Any]) -> bool:
    return task["status"] in ("completed", "failed")


def _assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["code"] == code and body["error"], body
    return body


def _runner_alive(task_id: str, attempt: int) -> bool:
    import ray

    from serve_app.jobs.launcher import RUNNER_NAMESPACE

    try:
        ray.get_actor(runner_name(task_id, attempt), namespace=RUNNER_NAMESPACE)
    except ValueError:
        return False
    return True


def _poll_runner_gone(task_id: str, attempt: int) -> None:
    deadline = time.monotonic() + 30
    while _runner_alive(task_id, attempt):
        assert time.monotonic() < deadline, f"runner {runner_name(task_id, attempt)} is still there"
        time.sleep(0.25)


def _real(assets: Path) -> tuple[tuple[str, bytes], bytes]:
    return (AAC, (assets / "video" / AAC).read_bytes()), (assets / "images" / SOURCE).read_bytes()


@pytest.mark.ray
@pytest.mark.assets
@pytest.mark.timeout(300)
def test_a_real_clip_runs_on_the_served_models_for_its_key_until_retention(
    app: str, http: httpx.Client, assets: Path, store_dir: Path, tmp_path: Path
) -> None:
    video, source = _real(assets)
    task_id = _send(http, app, KEY_A, video, source, blend_ratio="0.9")
    for method, suffix in (("GET", ""), ("GET", "/result"), ("DELETE", "")):
        response = http.request(method, f"{app}/api/v1/tasks/{task_id}{suffix}", headers=_auth(KEY_B))
        _assert_error(response, 404, "not_found")
    task = _poll(http, app, KEY_A, task_id, _finished)
    assert task["status"] == "completed" and task["error"] is None and task["attempts"] == 1, task
    assert (task["progress"], task["frames_done"], task["frames_total"]) == (1.0, 75, 75)
    summary = task["summary"]
    assert summary["faces_swapped"] == 75 and summary["components"]["swapper"] == "test_inswapper_tint"
    assert summary["hop_bytes"] > 75 * 128 * 128 * 3  # at least the swapper's crops crossed to the models
    assert summary["tracking"] and 0 < summary["detector_calls_per_frame"] < 1  # pass 1 on the served one
    tracks = http.get(f"{app}{task['tracks_url']}", headers=_auth(KEY_A))
    assert tracks.status_code == 200, tracks.text
    rows = [json.loads(line) for line in tracks.text.splitlines()]
    assert [r["frame"] for r in rows] == list(range(75))  # the test detector's one face in every frame
    response = http.get(f"{app}{task['result_url']}", headers=_auth(KEY_A))
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    result = tmp_path / "result.mp4"
    result.write_bytes(response.content)
    info = probe_video(result)
    assert (info.frame_count, info.fps, info.width, info.height) == (75, 25, 640, 480)
    assert info.has_audio and abs(info.duration_s - 3.0) < 0.1
    label = read_video_label(result)
    assert label is not None and label.task_id == task_id
    frames = [f.image for f in read_frames(result)]
    originals = [f.image for f in read_frames(assets / "video" / AAC)]
    changed = [
        np.mean(np.abs(a.astype(int) - b).max(axis=2) > 40) for a, b in zip(frames, originals, strict=True)
    ]
    assert all(0.005 < c < 0.5 for c in changed), changed  # the face region changed, the rest did not
    _poll_runner_gone(task_id, 1)  # the runner exits when its attempt ends
    # retention: gone with its files RETENTION_S after it finished
    _poll(http, app, KEY_A, task_id, lambda t: t["status"] == "gone")
    assert not (store_dir / APP / task_id).exists()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_delete_cancels_a_queued_and_a_running_job(app: str, http: httpx.Client, store_dir: Path) -> None:
    video = ("long.mp4", _mp4(120, (352, 240), fps=25, audio=False))  # 4.8 s: under the 5 s limit
    source = _png(_noise(240, 352, 7))
    first = _send(http, app, KEY_B, video, source)
    second = _send(http, app, KEY_B, video, source)
    waiting = _poll(http, app, KEY_B, second, lambda t: t["queue_position"] == 1)  # B runs one job at a time
    assert (waiting["status"], waiting["attempts"]) == ("queued", 0)
    deleted = http.delete(f"{app}/api/v1/tasks/{second}", headers=_auth(KEY_B))
    assert deleted.status_code == 202 and deleted.json() == {
        "task_id": second,
        "status": "cancelled",
        "deleted": False,
    }
    _poll(http, app, KEY_B, second, lambda t: t["status"] == "gone")
    assert not (store_dir / APP / second).exists()
    running = _poll(http, app, KEY_B, first, lambda t: t["status"] != "queued")
    assert running["status"] == "running" and _runner_alive(first, 1), running
    assert http.delete(f"{app}/api/v1/tasks/{first}", headers=_auth(KEY_B)).json()["status"] == "cancelled"
    _poll(http, app, KEY_B, first, lambda t: t["status"] == "gone")
    assert (
        not _runner_alive(first, 1) and not (store_dir / APP / first).exists()
    )  # stopped before the deletion


@pytest.mark.ray
@pytest.mark.assets
@pytest.mark.timeout(300)
def test_a_killed_runner_is_replaced_and_the_job_completes(
    app: str, http: httpx.Client, assets: Path
) -> None:
    import ray

    from serve_app.jobs.launcher import RUNNER_NAMESPACE

    video, source = _real(assets)
    task_id = _send(http, app, KEY_A, video, source)
    _poll(http, app, KEY_A, task_id, lambda t: t["status"] == "running")
    ray.kill(ray.get_actor(runner_name(task_id, 1), namespace=RUNNER_NAMESPACE), no_restart=True)
    task = _poll(http, app, KEY_A, task_id, _finished)
    assert (task["status"], task["attempts"], task["frames_done"]) == ("completed", 2, 75), task


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_lying_containers_fail_their_jobs_with_a_client_error(app: str, http: httpx.Client) -> None:
    source = _png(_noise(240, 352, 7))
    keys = [KEY_A, KEY_B]
    sent = {
        name: (keys[i % 2], _send(http, app, keys[i % 2], (f"{name}.bin", make()), source))
        for i, (name, (make, _)) in enumerate(sorted(LYING.items()))
    }
    for name, (key, task_id) in sent.items():
        task = _poll(http, app, key, task_id, _finished)
        assert (task["status"], task["error_code"]) == ("failed", LYING[name][1]), (name, task)
        assert task["error"].startswith("target_video: "), task
        _assert_error(
            http.get(f"{app}/api/v1/tasks/{task_id}/result", headers=_auth(key)), 409, "not_finished"
        )


@pytest.mark.ray
def test_one_replica_at_a_time_holds_the_jobs_lease(serve_url: str) -> None:
    """The lease on real Ray: held by one holder, taken by another once the first is gone."""
    from serve_app.jobs.launcher import RayLease

    first, second = RayLease("s3://bucket/lease-test", "a"), RayLease("s3://bucket/lease-test", "a")
    assert first.hold() and not second.hold() and first.hold()
    others = [RayLease("s3://bucket/another-store", "a"), RayLease("s3://bucket/lease-test", "b")]
    assert all(other.hold() for other in others)  # one leader per store and application
    for other in others:
        other.release()
    first.release()  # what the replica's death does to the actor it owns
    deadline = time.monotonic() + 30
    while not second.hold():
        assert time.monotonic() < deadline, "the lease was not free after its holder went"
        time.sleep(0.25)
    assert not first.hold()
    second.release()


@pytest.mark.ray
@pytest.mark.parametrize(
    "raw",
    ["%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "A" * 32, "0" * 31, "0" * 32 + "%0A", "..%5Cx"],
)
def test_bad_task_ids_are_json_errors(app: str, http: httpx.Client, raw: str) -> None:
    for method, suffix in (("GET", ""), ("GET", "/result"), ("DELETE", "")):
        response = http.request(method, f"{app}/api/v1/tasks/{raw}{suffix}", headers=_auth(KEY_A))
        assert response.status_code in (400, 404), (raw, suffix, response.text)
        body = response.json()
        assert body["success"] is False and body["code"] in ("invalid_input", "not_found"), body
        if response.status_code == 400:
            assert body["error"] == "task_id: expected 32 lowercase hexadecimal digits"


@pytest.mark.ray
def test_unknown_tasks_are_404_and_the_routes_are_documented(app: str, http: httpx.Client) -> None:
    unknown = new_task_id()
    for method, suffix in (("GET", ""), ("GET", "/result"), ("GET", "/tracks"), ("DELETE", "")):
        response = http.request(method, f"{app}/api/v1/tasks/{unknown}{suffix}", headers=_auth(KEY_A))
        _assert_error(response, 404, "not_found")
    _assert_error(http.delete(f"{app}/api/v1/tasks/{unknown}"), 401, "unauthorized")
    _assert_error(http.get(f"{app}/api/v1/jobs", headers=_auth(KEY_A)), 405, "method_not_allowed")
    spec = http.get(f"{app}/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/api/v1/jobs"]) == {"post"} and set(paths["/api/v1/tasks/{task_id}"]) == {
        "get",
        "delete",
    }
    assert set(paths["/api/v1/tasks/{task_id}/result"]) == {"get"}
    assert set(paths["/api/v1/tasks/{task_id}/tracks"]) == {"get"}
    assert "tracks_url" in spec["components"]["schemas"]["Task"]["properties"]
    assert "queue_position" in spec["components"]["schemas"]["Task"]["properties"]
    assert "cancelled" in spec["components"]["schemas"]["Task"]["properties"]["status"]["enum"]


@pytest.mark.ray
@pytest.mark.parametrize(
    ("video", "data", "status", "code"),
    [
        (("notes.txt", b"hello, not a video " * 50, "text/plain"), {}, 415, "unsupported_media_type"),
        ("truncated", {}, 400, "invalid_input"),
        ("long", {}, 413, "payload_too_large"),
        (("big.mp4", os.urandom(2_100_000), "video/mp4"), {}, 413, "payload_too_large"),
        (None, {}, 400, "invalid_input"),
        ("real", {"blend_ratio": "2"}, 400, "invalid_option"),
        ("real", {"enhance_output": "true"}, 422, "unsupported_option"),
        ("gif-source", {}, 415, "unsupported_media_type"),
    ],
    ids=["text", "truncated", "too-long", "body-too-large", "no-video", "bad-option", "no-enhancer", "gif"],
)
def test_bad_uploads_are_json_errors_and_queue_nothing(
    app: str, http: httpx.Client, store_dir: Path, video: Any, data: dict[str, str], status: int, code: str
) -> None:
    real = _mp4(10, (64, 48), fps=10)
    named = {
        "real": ("v.mp4", real, "video/mp4"),
        "truncated": ("v.mp4", real[: len(real) // 2], "video/mp4"),
        "long": ("long.mp4", _mp4(60, (64, 48), fps=10, audio=False), "video/mp4"),
        "gif-source": ("v.mp4", real, "video/mp4"),
    }
    source = b"GIF89a" + bytes(100) if video == "gif-source" else _png(_noise(64, 64, 1))
    files = {"source_image": ("s.png", source, "image/png")}
    if video is not None:
        files["target_video"] = named[video] if isinstance(video, str) else video
    before = _job_entries(store_dir / APP)
    response = http.post(f"{app}/api/v1/jobs", files=files, data=data, headers=_auth(KEY_A))
    _assert_error(response, status, code)
    assert _job_entries(store_dir / APP) <= before  # no job folder and no active marker left behind


def _job_entries(store_dir: Path) -> set[str]:
    """The job folders and active markers in the store."""
    folders = {p.name for p in store_dir.glob("*") if p.is_dir() and len(p.name) == 32}
    return folders | {f"active/{p.name}" for p in (store_dir / ACTIVE_DIR).glob("*")}
