"""Durable video jobs: the store, records, runner and reconciler in process (no Ray), then the HTTP routes
of a real application on a local Ray (module-scoped, like tests/test_serve.py) with the real test videos:
a job that outlives a restart of the application and streams a playable video, a runner killed twice that
ends failed with a reason, task-id validation and bad uploads."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx  # noqa: E402
import numpy as np
import pytest
import ray  # noqa: E402
from ray import serve  # noqa: E402

from pipeline.errors import (  # noqa: E402
    InvalidInputError,
    NoFaceError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from pipeline.options import SwapOptions  # noqa: E402
from pipeline.video import VideoWriter, probe_video, read_frames  # noqa: E402
from serve_app.app import build_app  # noqa: E402
from serve_app.batch import BatchJobConfig, BatchJobResult, TargetResult  # noqa: E402
from serve_app.config import AppArgs  # noqa: E402
from serve_app.jobs import (  # noqa: E402
    RECORD_NAME,
    RESULT_NAME,
    RUNNER_NAMESPACE,
    JobManager,
    JobNotFoundError,
    JobRecord,
    JobStore,
    ReconcileReport,
    check_task_id,
    check_uploads,
    execute_job,
    new_task_id,
    runner_name,
)
from tests.local_ray import local_serve  # noqa: E402

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


def _png(height: int = 64, width: int = 64) -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((height, width, 3), 127, np.uint8))[1].tobytes()


def _record(task_id: str | None = None, **changes: Any) -> JobRecord:
    values: dict[str, Any] = {
        "task_id": task_id or new_task_id(),
        "status": "queued",
        "created_at": 1000.0,
        "updated_at": 1000.0,
        "options": dataclasses.asdict(SwapOptions()),
        "source": "source.png",
        "target": "target.mp4",
        "frames_total": 75,
    }
    return JobRecord(**{**values, **changes})


def _jobs_args(store: str, **jobs: Any) -> AppArgs:
    return AppArgs.parse({"use_shared_assets": False, "jobs": {"store_uri": store, **jobs}})


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRunners:
    """Runners by name, as the reconciler sees them through RayRunners."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.started: list[tuple[str, str]] = []
        self.stopped: list[str] = []

    def claim(self, name: str) -> object | None:
        if name in self.live:
            return None
        self.live.add(name)
        return name

    def start(self, runner: object, task_id: str, name: str) -> None:
        self.started.append((task_id, name))

    def alive(self, name: str) -> bool:
        return name in self.live

    def stop(self, name: str) -> None:
        self.stopped.append(name)
        self.live.discard(name)


# -- ids, records, store (no Ray) --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [*TRAVERSALS, None, 12])
def test_task_ids_are_checked_before_any_path_is_built(tmp_path: Path, bad: object) -> None:
    store = JobStore.from_uri(str(tmp_path))
    with pytest.raises(InvalidInputError, match="task_id"):
        check_task_id(bad)
    with pytest.raises(InvalidInputError):
        store.path(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        store.read_record(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        runner_name(bad, 1)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_new_ids_pass_the_check_and_file_names_are_fixed(tmp_path: Path) -> None:
    task_id = new_task_id()
    assert check_task_id(task_id) == task_id and len(task_id) == 32
    store = JobStore.from_uri(str(tmp_path))
    assert store.path(task_id, "target.mp4") == f"{tmp_path}/{task_id}/target.mp4"
    for name in ("../record.json", "record.json/..", "x.mp4", "source.png/../../y"):
        with pytest.raises(ValueError, match="not a job file name"):
            store.path(task_id, name)


def test_record_round_trips_and_options_survive_json(tmp_path: Path) -> None:
    options = SwapOptions(blend_ratio=0.7, face_mask_padding=(1, 2, 3, 4), face_selector_mode="many")
    record = _record(options=dataclasses.asdict(options), video={"fps": "25"}, attempts=2)
    store = JobStore.from_uri(str(tmp_path))
    store.write_record(record)
    loaded = store.read_record(record.task_id)
    assert loaded == dataclasses.replace(record, options=json.loads(json.dumps(record.options)))
    assert loaded.swap_options() == options
    # a record written by a newer version (an unknown key) still reads
    data = json.loads((tmp_path / record.task_id / RECORD_NAME).read_bytes())
    data["field_from_the_future"] = 1
    assert JobRecord.from_json(json.dumps(data).encode()).task_id == record.task_id
    with pytest.raises(JobNotFoundError):
        store.read_record(new_task_id())


def test_record_writes_are_atomic_for_concurrent_readers(tmp_path: Path) -> None:
    """A reader never sees a partly written record.json (the write goes to a temporary file and is moved)."""
    store = JobStore.from_uri(str(tmp_path))
    record = _record(summary={"padding": "x" * 200_000})
    store.write_record(record)
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(store.read_record(record.task_id).frames_done)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(150):
            store.write_record(dataclasses.replace(record, frames_done=i))
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 0 and seen == sorted(seen)
    assert os.listdir(tmp_path / record.task_id) == [RECORD_NAME]  # no temporary file left


def test_a_failed_record_write_keeps_the_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore.from_uri(str(tmp_path))
    record = _record(frames_done=5)
    store.write_record(record)

    def broken(self: JobRecord) -> bytes:
        raise RuntimeError("disk full")

    monkeypatch.setattr(JobRecord, "to_json", broken)
    with pytest.raises(RuntimeError):
        store.write_record(dataclasses.replace(record, frames_done=6))
    monkeypatch.undo()
    assert store.read_record(record.task_id).frames_done == 5
    assert os.listdir(tmp_path / record.task_id) == [RECORD_NAME]


def test_store_lists_job_folders_only(tmp_path: Path) -> None:
    store = JobStore.from_uri(f"file://{tmp_path}")
    assert store.task_ids() == []  # the root does not exist yet
    ids = sorted(new_task_id() for _ in range(3))
    for task_id in ids:
        store.write_record(_record(task_id))
    (tmp_path / "notes").mkdir()
    (tmp_path / ("F" * 32)).mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert store.task_ids() == ids
    assert store.uri(ids[0], "source.png") == f"file://{tmp_path}/{ids[0]}/source.png"
    s3 = JobStore(store.filesystem, "bucket/jobs", "s3://bucket/jobs?region=eu-west-1")
    assert s3.uri(ids[0], RESULT_NAME) == f"s3://bucket/jobs/{ids[0]}/{RESULT_NAME}?region=eu-west-1"
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert store.put_file(ids[0], "target.mp4", io.BytesIO(data)) == len(data)
    assert store.size(ids[0], "target.mp4") == len(data)
    with store.open_input(ids[0], "target.mp4") as stream:
        assert stream.read() == data
    assert store.size(ids[0], RESULT_NAME) is None
    store.delete(ids[0])
    assert store.task_ids() == ids[1:]


# -- reconciler (no Ray) -----------------------------------------------------------------------------------
@pytest.fixture
def reconciler(tmp_path: Path) -> tuple[JobStore, JobManager, FakeRunners, FakeClock]:
    store = JobStore.from_uri(str(tmp_path))
    runners, clock = FakeRunners(), FakeClock()
    args = _jobs_args(str(tmp_path), heartbeat_interval_s=5, heartbeat_timeout_s=60, max_attempts=2)
    return store, JobManager(store, args.jobs, runners, clock), runners, clock


def test_queued_jobs_without_a_runner_are_started(reconciler) -> None:
    store, manager, runners, clock = reconciler
    record = _record()
    store.write_record(record)
    assert manager.reconcile() == ReconcileReport(started=1, failed=0, states={"queued": 1})
    name = runner_name(record.task_id, 1)
    assert runners.started == [(record.task_id, name)]
    stored = store.read_record(record.task_id)
    assert (stored.status, stored.attempts, stored.runner) == ("queued", 1, name)
    assert manager.reconcile() == ReconcileReport(0, 0, {"queued": 1})  # its runner is alive: nothing to do


def test_a_running_job_with_a_live_runner_and_fresh_heartbeat_is_left_alone(reconciler) -> None:
    store, manager, runners, clock = reconciler
    name = runner_name(record_id := new_task_id(), 1)
    runners.live.add(name)
    store.write_record(_record(record_id, status="running", attempts=1, runner=name, heartbeat_at=990.0))
    store.write_record(_record(status="completed"))
    assert manager.reconcile() == ReconcileReport(0, 0, {"running": 1, "completed": 1})
    assert runners.stopped == [] and store.read_record(record_id).status == "running"


@pytest.mark.parametrize("cause", ["actor gone", "no heartbeat", "never started"])
def test_a_lost_runner_is_replaced_then_the_job_fails_with_the_reason(reconciler, cause: str) -> None:
    store, manager, runners, clock = reconciler
    task_id = new_task_id()
    first = runner_name(task_id, 1)
    runners.live.add(first)
    status = "queued" if cause == "never started" else "running"
    store.write_record(
        _record(task_id, status=status, attempts=1, runner=first, heartbeat_at=1000.0, frames_done=40)
    )
    if cause == "actor gone":
        runners.live.discard(first)
    clock.now += 61  # past heartbeat_timeout_s
    assert manager.reconcile() == ReconcileReport(1, 0, {"queued": 1})
    second = runner_name(task_id, 2)
    stored = store.read_record(task_id)
    assert (stored.status, stored.attempts, stored.runner, stored.frames_done) == ("queued", 2, second, 0)
    assert runners.stopped == ([] if cause == "actor gone" else [first])  # a silent runner is killed first
    # the second runner is lost too: max_attempts=2 is reached, the job fails with the reason
    runners.live.discard(second)
    store.write_record(dataclasses.replace(stored, status="running", heartbeat_at=clock.now))
    assert manager.reconcile() == ReconcileReport(0, 1, {"failed": 1})
    failed = store.read_record(task_id)
    assert failed.status == "failed" and failed.error_code == "runner_lost"
    assert failed.error == "runner lost: its runner is gone; gave up after 2 attempt(s)"
    assert failed.finished_at == clock.now
    assert manager.reconcile() == ReconcileReport(0, 0, {"failed": 1})  # finished jobs stay as they are


def test_a_job_over_its_runtime_limit_is_stopped_and_failed(reconciler, tmp_path: Path) -> None:
    store, _, runners, clock = reconciler
    manager = JobManager(store, _jobs_args(str(tmp_path), max_runtime_s=100).jobs, runners, clock)
    task_id = new_task_id()
    name = runner_name(task_id, 1)
    runners.live.add(name)
    store.write_record(
        _record(task_id, status="running", attempts=1, runner=name, started_at=890.0, heartbeat_at=1000.0)
    )
    assert manager.reconcile() == ReconcileReport(0, 1, {"failed": 1})
    record = store.read_record(task_id)
    assert (record.status, record.error_code) == ("failed", "timeout") and "100 s" in (record.error or "")
    assert runners.stopped == [name]


def test_two_replicas_cannot_start_the_same_attempt(reconciler, tmp_path: Path) -> None:
    store, first, runners, clock = reconciler
    second = JobManager(store, _jobs_args(str(tmp_path)).jobs, runners, clock)
    snapshot = _record()
    store.write_record(snapshot)
    assert first.start(snapshot) is True
    assert second.start(snapshot) is False  # the attempt's runner name is taken
    # the first attempt's runner finished (its name is free again); a stale snapshot must not rerun the job
    runners.live.clear()
    done = dataclasses.replace(store.read_record(snapshot.task_id), status="completed")
    store.write_record(done)
    assert second.start(snapshot) is False
    assert store.read_record(snapshot.task_id) == done
    assert runners.started == [(snapshot.task_id, runner_name(snapshot.task_id, 1))]
    assert runners.live == set()  # the stale claim was given back


# -- runner (no Ray: the batch job is replaced) ------------------------------------------------------------
def _result(frames: int = 75) -> BatchJobResult:
    target = TargetResult("t", "o", None, frames, 2, frames - 2, 640, 480, Fraction(25))
    return BatchJobResult((target,), {"profile": "lite", "detector": "haar"}, 3.0)


@pytest.fixture
def queued(tmp_path: Path) -> tuple[JobStore, JobRecord, str]:
    store = JobStore.from_uri(str(tmp_path))
    name = runner_name(task_id := new_task_id(), 1)
    record = _record(task_id, attempts=1, runner=name)
    store.write_record(record)
    return store, record, name


def test_runner_marks_running_reports_throttled_progress_and_completes(queued) -> None:
    store, record, name = queued
    args = _jobs_args(store.root, progress_interval_s=3600)
    seen: list[JobRecord] = []

    def run_job(config: BatchJobConfig, progress: Callable[[int, int], None]) -> BatchJobResult:
        assert config.targets == (store.uri(record.task_id, "target.mp4"),)
        assert config.output == store.uri(record.task_id, RESULT_NAME)
        seen.append(store.read_record(record.task_id))
        progress(0, 75)
        progress(30, 75)  # within the interval: not written
        seen.append(store.read_record(record.task_id))
        progress(75, 75)  # the last call is always written
        seen.append(store.read_record(record.task_id))
        return _result()

    final = execute_job(store, record.task_id, name, args, run_job=run_job)
    assert [r.status for r in seen] == ["running"] * 3
    assert seen[0].started_at is not None and seen[0].heartbeat_at is not None
    assert [r.frames_done for r in seen] == [0, 0, 75] and seen[2].progress == 1.0
    assert final is not None and final == store.read_record(record.task_id)
    assert final.status == "completed" and final.result == RESULT_NAME
    assert final.result_url == f"/api/v1/tasks/{record.task_id}/result"
    assert final.summary is not None and final.summary["faces_swapped"] == 73
    assert final.public("/prefix")["result_url"] == f"/prefix/api/v1/tasks/{record.task_id}/result"


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (NoFaceError("source_image: no face found"), "no_face", "source_image: no face found"),
        (KeyError("secret detail"), "internal_error", "the job failed unexpectedly (KeyError)"),
    ],
)
def test_runner_records_a_failed_job_with_its_reason(queued, error, code, message) -> None:
    store, record, name = queued

    def run_job(config: BatchJobConfig, progress: Callable[[int, int], None]) -> BatchJobResult:
        raise error

    final = execute_job(store, record.task_id, name, _jobs_args(store.root), run_job=run_job)
    assert final is not None and (final.status, final.error_code) == ("failed", code)
    assert final.error is not None and final.error.startswith(message) and "secret" not in final.error


def test_a_replaced_runner_stops_without_writing(queued) -> None:
    store, record, name = queued

    def run_job(config: BatchJobConfig, progress: Callable[[int, int], None]) -> BatchJobResult:
        # meanwhile the reconciler gave the job to attempt 2
        store.write_record(dataclasses.replace(store.read_record(record.task_id), attempts=2, runner="other"))
        progress(75, 75)
        raise AssertionError("progress must raise once the record names another runner")

    assert execute_job(store, record.task_id, name, _jobs_args(store.root), run_job=run_job) is None
    stored = store.read_record(record.task_id)
    assert (stored.runner, stored.status, stored.frames_done) == ("other", "running", 0)


def test_runner_heartbeats_while_the_batch_job_runs(queued) -> None:
    store, record, name = queued
    args = _jobs_args(store.root, heartbeat_interval_s=0.02, heartbeat_timeout_s=1)
    beats: list[float | None] = []

    def run_job(config: BatchJobConfig, progress: Callable[[int, int], None]) -> BatchJobResult:
        started = store.read_record(record.task_id).started_at
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(set(beats)) < 3:
            beats.append(store.read_record(record.task_id).heartbeat_at)
            time.sleep(0.01)
        assert started is not None and all(b is not None and b >= started for b in beats)
        return _result()

    assert execute_job(store, record.task_id, name, args, run_job=run_job) is not None
    assert len(set(beats)) >= 3  # the heartbeat moved on while the job ran, without progress calls


# -- upload checks (no Ray) --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video_bytes(assets: Path) -> bytes:
    return (assets / "video" / AAC).read_bytes()


def _check(files: dict[str, bytes], **limits: Any) -> Any:
    values = {"max_image_bytes": 1_000_000, "max_pixels": 4_000_000, "max_duration_s": 10.0, **limits}
    return check_uploads({k: io.BytesIO(v) for k, v in files.items()}, **values)


def test_upload_checks_accept_a_real_video_and_name_the_stored_files(video_bytes: bytes) -> None:
    checked = _check({"source_image": _png(), "target_video": video_bytes})
    assert sorted(checked.files) == ["source.png", "target.mp4"]
    assert (checked.video.frame_count, checked.video.has_audio) == (75, True)


@pytest.mark.parametrize(
    ("files", "limits", "error", "match"),
    [
        ({"target_video": "video"}, {}, InvalidInputError, "source_image: required"),
        ({"source_image": "png"}, {}, InvalidInputError, "target_video: required"),
        ({"source_image": "png", "target_video": b"hello, not a video" * 40}, {}, UnsupportedMediaError, ""),
        (
            {"source_image": "png", "target_video": "truncated"},
            {},
            InvalidInputError,
            "target_video: truncated",
        ),
        (
            {"source_image": "png", "target_video": "video"},
            {"max_duration_s": 2.5},
            PayloadTooLargeError,
            "3.0 s",
        ),
        ({"source_image": "png", "target_video": "video"}, {"max_pixels": 300_000}, PayloadTooLargeError, ""),
        ({"source_image": b"GIF89a....", "target_video": "video"}, {}, UnsupportedMediaError, "source_image"),
        ({"source_image": "png", "target_video": "video"}, {"max_image_bytes": 10}, PayloadTooLargeError, ""),
    ],
    ids=["no-source", "no-target", "text", "truncated", "too-long", "too-many-pixels", "gif", "big-image"],
)
def test_upload_checks_reject_bad_files(video_bytes: bytes, files, limits, error, match) -> None:
    real = {"png": _png(), "video": video_bytes, "truncated": video_bytes[: len(video_bytes) // 2]}
    with pytest.raises(error, match=match):
        _check({k: real.get(v, v) if isinstance(v, str) else v for k, v in files.items()}, **limits)


# -- HTTP on a real local Ray ------------------------------------------------------------------------------
APP = "jobs"
DEADLINE_S = 240.0


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    """A local Ray (4 logical CPUs) with Serve's HTTP proxy on a free 127.0.0.1 port, for this module."""
    with local_serve(num_gpus=0) as url:
        yield url


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job_store")


@pytest.fixture(scope="module")
def app_args(test_models: dict[str, Path], store_dir: Path) -> dict[str, Any]:
    """Test models (one face in any frame of the real video, a tinted swap), no enhancer, fast runners."""
    return {
        "use_shared_assets": False,
        "overrides": {
            "detector": str(test_models["scrfd"]),
            "embedder": str(test_models["arcface"]),
            "swapper": str(test_models["inswapper_tint"]),
        },
        "providers": ["cpu"],
        "intra_op_threads": 1,
        "enhance": False,
        "ingress": {"num_cpus": 0},
        "detector": {"num_cpus": 0},
        "swapper": {"num_cpus": 0},
        "jobs": {
            "store_uri": str(store_dir),
            "max_upload_bytes": 2_000_000,
            "max_duration_s": 10,
            "max_attempts": 2,
            "heartbeat_interval_s": 1,
            "heartbeat_timeout_s": 10,
            "reconcile_interval_s": 1,
            "progress_interval_s": 0.5,
            "preset": "ultrafast",
        },
    }


@pytest.fixture(scope="module")
def app(serve_url: str, app_args: dict[str, Any]) -> str:
    serve.run(build_app(app_args), name=APP, route_prefix="/")
    return serve_url


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """12 s of tiny frames: over the test application's 10 s duration limit, a few kB."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    with VideoWriter(path, width=64, height=48, fps=Fraction(25), preset="ultrafast") as writer:
        for i in range(300):
            writer.write(np.full((48, 64, 3), i % 250, np.uint8))
    return path.read_bytes()


def _submit(http: httpx.Client, url: str, assets: Path, **data: str) -> httpx.Response:
    files = {
        "source_image": (SOURCE, (assets / "images" / SOURCE).read_bytes(), "image/png"),
        "target_video": (AAC, (assets / "video" / AAC).read_bytes(), "video/mp4"),
    }
    return http.post(f"{url}/api/v1/jobs", files=files, data=data)


def _accepted(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    body = response.json()
    assert body == {"task_id": body["task_id"], "status": "queued"}
    assert response.headers["location"] == f"/api/v1/tasks/{body['task_id']}"
    return check_task_id(body["task_id"])


def _poll(
    http: httpx.Client, url: str, task_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET the task until ``done(task)``, for at most DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = http.get(f"{url}/api/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task = response.json()
        if done(task):
            return task
        assert time.monotonic() < deadline, f"task did not get there in {DEADLINE_S} s: {task}"
        time.sleep(0.25)


def _assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == code and body["error"], body
    return body


def _runner(task_id: str, attempt: int) -> Any:
    return ray.get_actor(runner_name(task_id, attempt), namespace=RUNNER_NAMESPACE)


def _wait_gone(task_id: str, attempt: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _runner(task_id, attempt)
        except ValueError:
            return
        time.sleep(0.25)
    raise AssertionError(f"runner {runner_name(task_id, attempt)} is still there")


@pytest.mark.assets
@pytest.mark.ray
@pytest.mark.timeout(400)
def test_a_job_outlives_an_application_restart_and_streams_a_playable_video(
    app: str, http: httpx.Client, assets: Path, app_args: dict[str, Any], store_dir: Path, tmp_path: Path
) -> None:
    task_id = _accepted(_submit(http, app, assets, blend_ratio="0.9"))
    assert sorted(os.listdir(store_dir / task_id)) == [RECORD_NAME, "source.png", "target.mp4"]
    running = _poll(http, app, task_id, lambda t: t["status"] != "queued")
    assert running["status"] == "running" and running["frames_total"] == 75, running
    _assert_error(http.get(f"{app}/api/v1/tasks/{task_id}/result"), 409, "not_finished")
    # restart the application while the job runs: its runner is detached and carries on
    serve.delete(APP)
    assert http.get(f"{app}/api/v1/tasks/{task_id}").status_code == 404  # no application any more
    _runner(task_id, 1)  # raises ValueError when the runner died with the application
    serve.run(build_app(app_args), name=APP, route_prefix="/")
    task = _poll(http, app, task_id, lambda t: t["status"] in ("completed", "failed"))
    assert task["status"] == "completed", task
    assert task["attempts"] == 1 and task["error"] is None
    assert (task["progress"], task["frames_done"], task["frames_total"]) == (1.0, 75, 75)
    assert task["result_url"] == f"/api/v1/tasks/{task_id}/result"
    assert task["summary"]["faces_swapped"] == 75
    _wait_gone(task_id, 1)  # the runner exits when its attempt ends

    response = http.get(f"{app}{task['result_url']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content) > 10_000
    result = tmp_path / "result.mp4"
    result.write_bytes(response.content)
    info = probe_video(result)
    assert (info.frame_count, info.fps, info.width, info.height) == (75, 25, 640, 480)
    assert info.has_audio and abs(info.duration_s - 3.0) < 0.1
    frames = [f.image for f in read_frames(result)]
    originals = [f.image for f in read_frames(assets / "video" / AAC)]
    assert len(frames) == len(originals) == 75
    changed = [
        np.mean(np.abs(a.astype(int) - b).max(axis=2) > 40) for a, b in zip(frames, originals, strict=True)
    ]
    assert all(0.005 < c < 0.5 for c in changed), changed  # the face region changed, the rest did not


@pytest.mark.assets
@pytest.mark.ray
@pytest.mark.timeout(400)
def test_a_killed_runner_is_replaced_and_then_the_job_fails_with_the_reason(
    app: str, http: httpx.Client, assets: Path
) -> None:
    task_id = _accepted(_submit(http, app, assets))
    _poll(http, app, task_id, lambda t: t["status"] == "running")
    ray.kill(_runner(task_id, 1), no_restart=True)
    second = _poll(http, app, task_id, lambda t: t["attempts"] == 2 and t["status"] == "running")
    assert second["frames_done"] <= second["frames_total"]
    ray.kill(_runner(task_id, 2), no_restart=True)
    task = _poll(http, app, task_id, lambda t: t["status"] in ("completed", "failed"))
    assert (task["status"], task["error_code"], task["attempts"]) == ("failed", "runner_lost", 2), task
    assert task["error"] == "runner lost: its runner is gone; gave up after 2 attempt(s)"
    assert task["result_url"] is None
    body = _assert_error(http.get(f"{app}/api/v1/tasks/{task_id}/result"), 409, "not_finished")
    assert "runner lost" in body["error"]


@pytest.mark.ray
@pytest.mark.parametrize(
    "raw",
    ["%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "A" * 32, "0" * 31, "0" * 32 + "%0A", "..%5Cx"],
)
def test_bad_task_ids_are_json_errors(app: str, http: httpx.Client, raw: str) -> None:
    for suffix in ("", "/result"):
        response = http.get(f"{app}/api/v1/tasks/{raw}{suffix}")
        assert response.status_code in (400, 404), (raw, suffix, response.text)
        body = response.json()
        assert body["success"] is False and body["code"] in ("invalid_input", "not_found"), body
        if response.status_code == 400:
            assert body["error"] == "task_id: expected 32 lowercase hexadecimal digits"


@pytest.mark.ray
def test_unknown_tasks_are_404_and_the_routes_are_documented(app: str, http: httpx.Client) -> None:
    unknown = new_task_id()
    _assert_error(http.get(f"{app}/api/v1/tasks/{unknown}"), 404, "not_found")
    _assert_error(http.get(f"{app}/api/v1/tasks/{unknown}/result"), 404, "not_found")
    _assert_error(http.get(f"{app}/api/v1/tasks/%2e%2e"), 400, "invalid_input")
    _assert_error(http.get(f"{app}/api/v1/jobs"), 405, "method_not_allowed")
    paths = http.get(f"{app}/openapi.json").json()["paths"]
    assert set(paths["/api/v1/jobs"]) == {"post"}
    assert set(paths["/api/v1/tasks/{task_id}"]) == {"get"}
    assert set(paths["/api/v1/tasks/{task_id}/result"]) == {"get"}


@pytest.mark.assets
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
    app: str,
    http: httpx.Client,
    assets: Path,
    store_dir: Path,
    long_video: bytes,
    video: Any,
    data: dict[str, str],
    status: int,
    code: str,
) -> None:
    real = (assets / "video" / AAC).read_bytes()
    named = {
        "real": ("v.mp4", real, "video/mp4"),
        "truncated": ("v.mp4", real[: len(real) // 2], "video/mp4"),
        "long": ("long.mp4", long_video, "video/mp4"),
        "gif-source": ("v.mp4", real, "video/mp4"),
    }
    source = b"GIF89a" + bytes(100) if video == "gif-source" else (assets / "images" / SOURCE).read_bytes()
    files = {"source_image": ("s.png", source, "image/png")}
    if video is not None:
        files["target_video"] = named[video] if isinstance(video, str) else video
    before = sorted(os.listdir(store_dir))
    response = http.post(f"{app}/api/v1/jobs", files=files, data=data)
    _assert_error(response, status, code)
    assert sorted(os.listdir(store_dir)) == before
