"""Fault tests on one real local Ray (4 logical CPUs, 1 logical GPU) for the module, and a smoke run of the
bounded load test (``bench/load_test.py``).

The ``faults`` application at ``/``: the project's test models, no enhancer, two replicas of each model
deployment whose batches wait up to a second (so that a wave of requests sits inside them when one is
killed).

- For each model deployment in turn (detector, embedder, swapper), one of its two replicas is killed with
  SIGKILL while 24 swaps wait in its batches: every request still succeeds (the ingress sends a call whose
  replica died once more, to the other replica), and Serve replaces the replica by itself.
- The application is deleted and deployed again while a video job runs: the job still ends, completed or
  failed with a reason, within a bounded time.

Each prints a table of what it saw.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.local_ray import local_serve  # noqa: E402

pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
import httpx  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.schema import ReplicaState  # noqa: E402

from bench.load_test import Payload, render, run_load  # noqa: E402
from pipeline.video import probe_video  # noqa: E402
from serve_app.app import build_app  # noqa: E402
from tests import corpus  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]

APP = "faults"
MODEL_DEPLOYMENTS = ("FaceDetector", "FaceEmbedder", "FaceSwapper")
REPLICAS = 2
IN_FLIGHT = 24
CLIENT_TIMEOUT_S = 60.0
"""Every request of these tests gives up after this long: a hang shows up as a failed request."""
RECOVERY_TIMEOUT_S = 150.0
JOB_TIMEOUT_S = 240.0


def _png(height: int, width: int, seed: int) -> bytes:
    """Smooth random colours as PNG bytes (the test SCRFD finds its one face in any image)."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)
    return cv2.imencode(".png", image)[1].tobytes()


SOURCE = _png(360, 480, 1)


def _swap_files(seed: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    """A swap of its own source (no identity reuse: every request embeds) onto its own target."""
    return [
        ("source_image", ("source.png", _png(360, 480, 10_000 + seed), "image/png")),
        ("target_image", ("target.png", _png(400, 560, seed), "image/png")),
    ]


@dataclass(frozen=True)
class Outcome:
    """One request's answer: status (0: no HTTP answer), error code, whether an error body was the JSON
    ``{"success": false, "error", "code", "request_id"}`` with the response's request id, latency."""

    status: int
    code: str
    json_error: bool
    ms: float


def _swap(client: httpx.Client, url: str, seed: int) -> Outcome:
    started = time.perf_counter()
    try:
        response = client.post(f"{url}/api/v1/swap", files=_swap_files(seed))
    except httpx.HTTPError as exc:
        return Outcome(0, type(exc).__name__, False, 1000 * (time.perf_counter() - started))
    ms = 1000 * (time.perf_counter() - started)
    if response.status_code == 200:
        body = response.json()
        return Outcome(200, "ok" if body.get("faces_swapped") == 1 else "bad-body", False, ms)
    try:
        body = response.json()
    except ValueError:
        return Outcome(response.status_code, "non-json", False, ms)
    json_error = (
        isinstance(body, dict)
        and set(body) == {"success", "error", "code", "request_id"}
        and body["success"] is False
        and bool(body["error"])
        and body["request_id"] == response.headers.get("x-request-id")
    )
    return Outcome(
        response.status_code, str(body.get("code")) if isinstance(body, dict) else "?", json_error, ms
    )


def _wave(url: str, seeds: range) -> list[Outcome]:
    """One concurrent swap per seed, each from its own thread and connection."""

    def one(seed: int) -> Outcome:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
            return _swap(client, url, seed)

    with ThreadPoolExecutor(len(seeds)) as pool:
        return list(pool.map(one, seeds))


def _replica_pids(deployment: str) -> dict[str, int]:
    """Actor id -> process id of the live replicas of ``deployment``, from the GCS actor table (the
    state API would need the dashboard, which these tests do not start)."""
    return {
        actor_id: int(info["Pid"])
        for actor_id, info in ray._private.state.actors().items()
        if info["ActorClassName"] == f"ServeReplica:{APP}:{deployment}" and info["State"] == "ALIVE"
    }


def _replica(actor_id: str) -> Any:
    """The handle of the replica actor ``actor_id``."""
    return ray.get_actor(ray._private.state.actors()[actor_id]["Name"], namespace="serve")


def _ongoing(replica: Any) -> int:
    """Requests the replica actor is serving now (its own count)."""
    return int(ray.get(replica.get_num_ongoing_requests.remote(), timeout=30))


def _running(deployment: str) -> int:
    status = serve.status().applications[APP].deployments[deployment]
    return int(status.replica_states.get(ReplicaState.RUNNING, 0))


def _retries_logged() -> int:
    """How often the ingress replicas logged a retry on another replica (their log files)."""
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    return sum(
        path.read_text(errors="replace").count("replica lost")
        for path in logs.glob(f"replica_{APP}_SwapIngress_*.log")
    )


def _summarise(phase: str, outcomes: list[Outcome]) -> dict[str, str]:
    counts = Counter(f"{o.status} {o.code}" for o in outcomes)
    return {
        "phase": phase,
        "requests": str(len(outcomes)),
        "outcomes": ", ".join(f"{key} x{n}" for key, n in sorted(counts.items())),
        "max ms": f"{max(o.ms for o in outcomes):.0f}",
    }


def _table(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with local_serve() as url:
        yield url


@pytest.fixture(scope="module")
def app_args(test_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {
        "use_shared_assets": False,
        "overrides": {
            "detector": str(test_models["scrfd"]),
            "embedder": str(test_models["arcface"]),
            "swapper": str(test_models["inswapper_tint"]),
        },
        "enhance": False,
        "providers": ["cpu"],
        "intra_op_threads": 1,
        "ingress": {"num_cpus": 0},
        **{
            stage: {
                "num_cpus": 0,
                "num_replicas": REPLICAS,
                "max_ongoing_requests": 64,
                "batch": {"max_batch_size": 32, "batch_wait_timeout_s": 1.0},
            }
            for stage in ("detector", "embedder", "swapper")
        },
        "jobs": {
            "store_uri": str(tmp_path_factory.mktemp("fault_jobs")),
            "max_duration_s": 30,
            "heartbeat_interval_s": 1,
            "heartbeat_timeout_s": 10,
            "reconcile_interval_s": 1,
            "progress_interval_s": 0.2,
            "preset": "ultrafast",
        },
    }


@pytest.fixture(scope="module")
def app(cluster: str, app_args: dict[str, Any]) -> str:
    serve.run(build_app(app_args), name=APP, route_prefix="/")
    return cluster


# -- tests ------------------------------------------------------------------------------------------------
def test_bounded_load_test_smoke(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    payload = Payload(files=tuple(_swap_files(seed=5)))
    result = run_load(app, payload, requests=12, concurrency=4, time_limit_s=90, timeout_s=CLIENT_TIMEOUT_S)
    with capsys.disabled():
        sys.stdout.write(f"\nbounded load test (smoke):\n{render(result)}\n")
    assert result.unexpected == 0, result.errors
    assert result.sent == result.ok == 12 and result.not_sent == 0
    p50, p95, p99, top = result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms
    assert p50 is not None and p95 is not None and p99 is not None and top is not None
    assert p50 <= p95 <= p99 <= top
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://192.0.2.1:8000", payload, requests=1, concurrency=1, time_limit_s=1)


@pytest.mark.parametrize("deployment", MODEL_DEPLOYMENTS)
def test_killing_a_model_replica_under_load_fails_no_request(
    app: str, deployment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # seeds of this deployment's own: a source seen before would come from the ingress's identity cache
    seeds = 1000 * (1 + MODEL_DEPLOYMENTS.index(deployment))
    assert _wave(app, range(seeds, seeds + 2))[0].status == 200  # warm
    before = _replica_pids(deployment)
    assert len(before) == REPLICAS
    replicas = {actor_id: _replica(actor_id) for actor_id in sorted(before)}
    retries = _retries_logged()

    with ThreadPoolExecutor(1) as runner:
        in_flight = runner.submit(_wave, app, range(seeds + 100, seeds + 100 + IN_FLIGHT))
        # the victim: the first replica that holds some of the wave's calls (they wait up to 1 s for their
        # batch); Serve's router may send a short wave's calls to either replica, or all to one
        victim_id = None
        while victim_id is None and not in_flight.done():
            victim_id = next((actor for actor, replica in replicas.items() if _ongoing(replica)), None)
        assert victim_id is not None, "the wave ended before it reached a replica"
        victim_pid = before[victim_id]
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first = in_flight.result(timeout=CLIENT_TIMEOUT_S + 30)

    second = _wave(app, range(seeds + 200, seeds + 208))
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        after = _replica_pids(deployment)
        if len(after) == REPLICAS and victim_id not in after and _running(deployment) == REPLICAS:
            break
        time.sleep(0.5)
    recovered_s = time.monotonic() - killed_at
    third = _wave(app, range(seeds + 300, seeds + 308))
    retried = _retries_logged() - retries

    rows = [
        _summarise("in flight at the kill", first),
        _summarise("right after", second),
        _summarise("after the replacement", third),
    ]
    with capsys.disabled():
        sys.stdout.write(
            f"\n{deployment} replica pid {victim_pid} killed (SIGKILL); {retried} calls retried on the other "
            f"replica; {REPLICAS} replicas running again after {recovered_s:.1f} s\n{_table(rows)}\n"
        )
    after = _replica_pids(deployment)
    assert len(after) == REPLICAS and victim_id not in after and victim_pid not in after.values()
    assert retried > 0, "no call was in flight on the killed replica"
    outcomes = first + second + third
    assert [(o.status, o.code) for o in outcomes] == [(200, "ok")] * len(outcomes), outcomes


def _task(client: httpx.Client, url: str, task_id: str) -> dict[str, Any]:
    response = client.get(f"{url}/api/v1/tasks/{task_id}")
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def _submit(client: httpx.Client, url: str, video: bytes) -> str:
    """Submit a video job of :data:`SOURCE` onto ``video``; its task id."""
    files = [
        ("source_image", ("source.png", SOURCE, "image/png")),
        ("target_video", ("target.mp4", video, "video/mp4")),
    ]
    response = client.post(f"{url}/api/v1/jobs", files=files)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def test_restarting_the_application_during_a_video_job(
    app: str, app_args: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    frames = 200
    video = corpus.mp4_video(frames=frames, size=(192, 144), fps=20)
    timeline: list[dict[str, str]] = []
    started = time.monotonic()

    def note(event: str, task: dict[str, Any] | None = None) -> None:
        task = task or {}
        timeline.append(
            {
                "t s": f"{time.monotonic() - started:.1f}",
                "event": event,
                "status": str(task.get("status", "")),
                "frames": f"{task.get('frames_done', '')}/{task.get('frames_total', '')}" if task else "",
                "attempts": str(task.get("attempts", "")),
                "error": str(task.get("error") or ""),
            }
        )

    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        task_id = _submit(client, app, video)
        task = _task(client, app, task_id)
        note("submitted", task)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while task["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
            task = _task(client, app, task_id)
        note("before the restart", task)
        restarted_while = task["status"]

        serve.delete(APP)
        note("application deleted")
        serve.run(build_app(app_args), name=APP, route_prefix="/")
        task = _task(client, app, task_id)
        note("application deployed again", task)
        while task["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.25)
            task = _task(client, app, task_id)
        note("final", task)
        result = client.get(f"{app}/api/v1/tasks/{task_id}/result") if task["status"] == "completed" else None

    with capsys.disabled():
        sys.stdout.write(f"\nvideo job {task_id} across an application restart\n{_table(timeline)}\n")
    assert restarted_while == "running", "the job was not running when the application was deleted"
    assert task["status"] in ("completed", "failed"), f"the job did not end in {JOB_TIMEOUT_S} s: {task}"
    if task["status"] == "failed":
        assert task["error"] and task["error_code"], task
    else:
        assert result is not None and result.status_code == 200
        assert result.headers["content-type"] == "video/mp4"
        info = probe_video(io.BytesIO(result.content))
        assert (info.frame_count, info.width, info.height) == (frames, 192, 144)


def test_killing_a_job_runner_retries_the_job(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The runner of a running job is killed (its process, SIGKILL): the leader notices the runner is gone,
    starts attempt 2, and the job completes (or fails with its reason); it is never lost or stuck."""
    frames = 160
    video = corpus.mp4_video(frames=frames, size=(192, 144), fps=20)
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        task_id = _submit(client, app, video)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        task = _task(client, app, task_id)
        while task["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            task = _task(client, app, task_id)
        runner = f"faceswap-job-{task_id}-1"
        pid = next(
            int(info["Pid"])
            for info in ray._private.state.actors().values()
            if info["Name"] == runner and info["State"] == "ALIVE"
        )
        os.kill(pid, signal.SIGKILL)
        killed_at = task
        while task["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.25)
            task = _task(client, app, task_id)
    with capsys.disabled():
        sys.stdout.write(
            f"\njob {task_id}: runner {runner} (pid {pid}) killed at {killed_at['frames_done']}/{frames} "
            "frames; "
            f"ended {task['status']} after {task['attempts']} attempts ({task.get('error') or 'no error'})\n"
        )
    assert task["attempts"] >= 2, task
    assert task["status"] == "completed" or (task["status"] == "failed" and task["error_code"]), task
