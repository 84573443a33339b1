"""Image swap through the Serve graph (HTTP and handle) versus the same pipeline in process.

p50/p95/p99 latency and throughput at concurrency 1, 4 and 16; same models, photos and options.

Usage::

    python -m bench.http_bench --models-dir DIR [--providers cpu|cuda] [--concurrency 1 4 16]
        [--requests 12 24 48] [--modes inprocess handle http] [--detector yunet|scrfd] [--enhance]
        [--swapper-batch 16] [--num-cpus N] [--assets DIR] [--json OUT]

Models: the benchmark models of ``bench.export_models`` in ``--models-dir`` (``bench_arcface``,
``bench_inswapper``, ``bench_gfpgan``; their width is read from its ``models.json``) and the real YuNet or
SCRFD detector from ``../shared/assets/models``, pinned through ``overrides`` in both the Serve app and
the in-process pipeline. The request: source ``codait_luciano_cc0.png`` (one face), target
``pexels_group_meeting_1080865.jpeg`` (five faces; ``face_selector_mode`` ``one`` swaps the largest, the
API's default), JSON response with the JPEG result (the seed's response shape).

Three ways to serve the same work, each doing decode of the two uploads -> swap -> JPEG encode:

- ``inprocess``: one :class:`~pipeline.orchestration.SwapOrchestrator` over in-process ports shared by a
  thread pool of ``concurrency`` workers (one process); the bytes are decoded, swapped and the result
  encoded (with its provenance label) in the worker, the same ``swap_encoded`` the ingress runs.
- ``handle``: the Serve graph through its Python handle (``swap_images``); decoding and encoding happen in
  the client threads, so it differs from ``inprocess`` only by the graph (process hops, object store,
  cross-request batching).
- ``http``: ``POST /api/v1/swap`` multipart through Serve's HTTP proxy with ``httpx`` (keep-alive, one
  connection per worker); the ingress decodes and encodes.

Every level sends a fixed number of requests (``--requests``, one per level) from ``concurrency`` worker
threads after ``concurrency`` warm-up requests; the modes are interleaved per level so that a change in
the machine's load hits all of them alike. Client and server share the machine (on a 2-core box the client
threads, the proxy and the replicas compete for the same cores). Ray runs locally with ``--num-cpus``
CPUs and one logical GPU, whatever the hardware (``--providers cuda`` gives the model deployments real GPU
shares).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from bench.common import environment, format_table, write_json
from pipeline.errors import FaceSwapError
from pipeline.imageio import decode_image, encode_image
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import PipelineConfig, build_models
from pipeline.sessions import SessionConfig
from pipeline.video import read_frames
from serve_app.local import local_serve

log = logging.getLogger("bench.http_bench")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = REPO.parent / "shared" / "assets"
SOURCE_IMAGE = "codait_luciano_cc0.png"
TARGET_IMAGE = "pexels_group_meeting_1080865.jpeg"
DETECTORS = {"yunet": "face_detection_yunet_2026may.onnx", "scrfd": "scrfd_500m_bnkps.onnx"}
APP_NAME = "bench"
SWAP_URL_PATH = "/api/v1/swap"
HOP_CLIP = "group_pan_1280x720_25fps_h264.mp4"
"""The 720p clip whose first frame measures the bytes across hops."""
JPEG_QUALITY = 92
"""The ingress' default ``jpeg_quality``; the in-process mode encodes with the same."""
GPU_SHARES = {"detector": 0.1, "embedder": 0.1, "swapper": 0.4, "enhancer": 0.4}
"""Logical GPU fractions of the model deployments with ``--providers cuda`` (one GPU in all)."""


# --- models and inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModels:
    """Which model files run each stage (``overrides`` for the app and the pipeline) and their facts."""

    overrides: dict[str, str]
    facts: list[dict[str, object]]
    """Entries of ``models.json`` next to the bench models (name, width, params_m, gmacs), when present."""

    @property
    def label(self) -> str:
        widths = sorted({str(f.get("width")) for f in self.facts})
        detector = Path(self.overrides["detector"]).name
        return f"bench models width {'/'.join(widths) or '?'} + real {detector}"


def bench_models(
    models_dir: Path, assets: Path, detector: str = "yunet", enhance: bool = False
) -> BenchModels:
    """The overrides that pin the benchmark models of ``models_dir`` and a real detector of ``assets``;
    FileNotFoundError names the first file that is missing."""
    files = {
        "detector": assets / "models" / DETECTORS[detector],
        "embedder": models_dir / "bench_arcface.onnx",
        "swapper": models_dir / "bench_inswapper.onnx",
    }
    if enhance:
        files["enhancer"] = models_dir / "bench_gfpgan.onnx"
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing (export with: python -m bench.export_models {models_dir})"
            )
    facts: list[dict[str, object]] = []
    manifest = models_dir / "models.json"
    if manifest.is_file():
        keep = ("name", "file", "width", "params_m", "gmacs", "onnx_bytes")
        facts = [{k: m.get(k) for k in keep} for m in json.loads(manifest.read_text())["models"]]
    return BenchModels({stage: str(path) for stage, path in files.items()}, facts)


def session_config(providers: str) -> SessionConfig:
    """CPU, or CUDA strictly (a silent CPU fallback would make GPU numbers meaningless)."""
    if providers == "cuda":
        return SessionConfig(providers=("cuda", "cpu"), strict=True)
    return SessionConfig(providers=("cpu",))


def pipeline_config(models: BenchModels, providers: str, enhance: bool) -> PipelineConfig:
    return PipelineConfig(
        overrides=models.overrides,
        use_shared_assets=False,
        session=session_config(providers),
        enhance=enhance,
    )


def app_args(
    models: BenchModels,
    providers: str,
    *,
    enhance: bool,
    swapper_batch: int,
    batch_wait_timeout_s: float = 0.01,
) -> dict[str, Any]:
    """``build_app`` args: one replica per deployment, no CPU reservations (the bench box may have 2 cores),
    GPU shares only with CUDA, the swapper batching up to ``swapper_batch`` requests per model call."""
    gpu = providers == "cuda"

    def model_deployment(stage: str, batch: int, ongoing: int) -> dict[str, Any]:
        return {
            "num_cpus": 0,
            "num_gpus": GPU_SHARES[stage] if gpu else 0,
            "max_ongoing_requests": ongoing,
            "max_queued_requests": -1,
            "batch": {"max_batch_size": batch, "batch_wait_timeout_s": batch_wait_timeout_s},
        }

    args: dict[str, Any] = {
        "use_shared_assets": False,
        "overrides": models.overrides,
        "providers": ["cuda", "cpu"] if gpu else ["cpu"],
        "strict_providers": gpu,
        "enhance": enhance,
        "ingress": {"num_cpus": 0, "max_ongoing_requests": 128, "max_inflight_swaps": 128},
        "detector": model_deployment("detector", 8, 64),
        "embedder": model_deployment("embedder", 8, 64),
        "swapper": model_deployment("swapper", swapper_batch, 64),
    }
    if enhance:
        args["enhancer"] = model_deployment("enhancer", swapper_batch, 64)
    return args


@dataclass(frozen=True)
class Photos:
    """The request's uploads as files (bytes) and decoded (BGR)."""

    source_name: str
    target_name: str
    source_bytes: bytes
    target_bytes: bytes


def load_photos(assets: Path, source: str = SOURCE_IMAGE, target: str = TARGET_IMAGE) -> Photos:
    images = assets / "images"
    return Photos(source, target, (images / source).read_bytes(), (images / target).read_bytes())


def _mime(name: str) -> str:
    return "image/png" if name.lower().endswith(".png") else "image/jpeg"


# --- local Ray + Serve --------------------------------------------------------------------------------------


def deploy(args: dict[str, Any]) -> Any:
    """Deploy (or redeploy) the swap graph as :data:`APP_NAME` at ``/``; returns the ingress handle."""
    from ray import serve

    from serve_app.app import build_app

    started = time.perf_counter()
    handle = serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    log.info("deployed in %.1f s", time.perf_counter() - started)
    return handle


def deployment_stats(name: str) -> dict[str, Any]:
    """``stats()`` of a model deployment of the app (batching counters of its replica)."""
    from ray import serve

    stats: dict[str, Any] = serve.get_deployment_handle(name, APP_NAME).stats.remote().result(timeout_s=60)
    return stats


# --- load generation ----------------------------------------------------------------------------------------


Call = Callable[[], int]
"""One request: returns the number of faces swapped; raises on failure."""


def tree_cpu_by_pid(root: int | None = None) -> dict[int, float]:
    """User + system CPU seconds used so far by process ``root`` (default: this one) and each of its live
    descendants, by pid, from ``/proc/<pid>/stat``; empty where there is no ``/proc``."""
    root = os.getpid() if root is None else root
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14, 15 of stat
    tree: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in used:
            tree[pid] = used[pid]
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds of ``root`` and its live descendants (:func:`tree_cpu_by_pid`).

    With a local Ray started by this process, the tree holds the GCS, the raylet, the Serve controller,
    proxy and replicas and the Ray Data workers, so the difference over a timed level is the CPU that
    level cost everything involved, client threads included, however loaded the machine is."""
    return sum(tree_cpu_by_pid(root).values())


@dataclass
class LevelResult:
    """One (mode, concurrency) level: latencies of the timed requests in milliseconds."""

    mode: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    throughput_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    cpu_ms_per_request: float | None
    """CPU time of this process tree (see :func:`tree_cpu_seconds`) over the timed part, per success."""
    hop_kb_per_request: float | None = None
    """Array kilobytes a request sent to and received from the model deployments (``X-Hop-Bytes``)."""
    faces_swapped: list[int] = field(default_factory=list)
    """Distinct faces_swapped values seen."""
    first_error: str = ""


def run_level(
    mode: str,
    call: Call,
    concurrency: int,
    requests: int,
    warmup: int | None = None,
    hops: list[int] | None = None,
) -> LevelResult:
    """``warmup`` (default ``concurrency``) untimed requests, then ``requests`` from ``concurrency`` threads
    pulling from one shared counter. Throughput = successful requests / wall time of the timed part.
    ``hops``: where ``call`` appends each request's hop bytes (averaged over the timed part)."""
    lock = threading.Lock()
    latencies: list[float] = []
    faces: set[int] = set()
    errors: list[str] = []
    remaining = [0]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                n = call()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                faces.add(n)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"bench-{mode}") as pool:
        remaining[0] = concurrency if warmup is None else warmup
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
        latencies.clear()
        if hops is not None:
            hops.clear()
        warm_errors = len(errors)
        remaining[0] = requests
        cpu_start = tree_cpu_seconds()
        started = time.perf_counter()
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
        wall = time.perf_counter() - started
        cpu = tree_cpu_seconds() - cpu_start
    timed_errors = errors[warm_errors:]
    ms = np.array(latencies) * 1e3

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 1) if len(ms) else None

    result = LevelResult(
        mode=mode,
        concurrency=concurrency,
        requests=requests,
        ok=len(latencies),
        errors=len(timed_errors),
        wall_s=round(wall, 3),
        throughput_rps=round(len(latencies) / wall, 3) if wall > 0 else 0.0,
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        mean_ms=round(statistics.fmean(ms), 1) if len(ms) else None,
        max_ms=round(float(ms.max()), 1) if len(ms) else None,
        cpu_ms_per_request=round(cpu * 1e3 / len(latencies), 1) if latencies else None,
        hop_kb_per_request=round(statistics.fmean(hops) / 1024, 1) if hops else None,
        faces_swapped=sorted(faces),
        first_error=(errors[0] if errors else ""),
    )
    log.info("%s c=%d: %.2f req/s, p50 %s ms", mode, concurrency, result.throughput_rps, result.p50_ms)
    return result


def inprocess_call(orchestrator: SwapOrchestrator, photos: Photos, options: SwapOptions) -> Call:
    """The ingress' work in one process: decode both uploads, swap, encode a labelled JPEG."""
    uploads = {"source_image": photos.source_bytes, "target_image": photos.target_bytes}

    def call() -> int:
        encoded = asyncio.run(
            orchestrator.swap_encoded(
                uploads, options, media_type="image/jpeg", quality=JPEG_QUALITY, label={"request_id": "bench"}
            )
        )
        return int(encoded.result.faces_swapped)

    return call


def handle_call(handle: Any, photos: Photos, options: SwapOptions) -> Call:
    """Decode in the client thread, ``swap_images`` through the ingress handle, encode JPEG."""
    # the method handle is made here: client threads that each made it would race to create routers
    swap_images = handle.swap_images

    def call() -> int:
        source = decode_image(photos.source_bytes, field="source_image")
        target = decode_image(photos.target_bytes, field="target_image")
        result = swap_images.remote(source, target, options).result(timeout_s=600)
        encode_image(result.image, "image/jpeg", JPEG_QUALITY)
        return int(result.faces_swapped)

    return call


def form_fields(options: SwapOptions) -> dict[str, str]:
    """The multipart text fields that ask for ``options`` (selector mode and enhancement)."""
    return {
        "face_selector_mode": options.face_selector_mode,
        "enhance_output": "true" if options.enhance else "false",
    }


def http_call(
    client: httpx.Client, url: str, photos: Photos, options: SwapOptions, hops: list[int] | None = None
) -> Call:
    """``POST /api/v1/swap`` multipart; JSON answer with the base64 JPEG, checked for success. Appends each
    response's ``X-Hop-Bytes`` to ``hops``."""
    files = {
        "source_image": (photos.source_name, photos.source_bytes, _mime(photos.source_name)),
        "target_image": (photos.target_name, photos.target_bytes, _mime(photos.target_name)),
    }
    data = form_fields(options)

    def call() -> int:
        response = client.post(url, files=files, data=data, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        body = response.json()
        if not body.get("success") or not body.get("result_image", "").startswith("data:image/jpeg;base64,"):
            raise RuntimeError(f"unexpected body {str(body)[:200]}")
        if hops is not None:
            hops.append(int(response.headers["x-hop-bytes"]))
        return int(body["faces_swapped"])

    return call


def _http_result_image(client: httpx.Client, url: str, photos: Photos, options: SwapOptions) -> np.ndarray:
    files = {
        "source_image": (photos.source_name, photos.source_bytes, _mime(photos.source_name)),
        "target_image": (photos.target_name, photos.target_bytes, _mime(photos.target_name)),
    }
    response = client.post(url, files=files, data=form_fields(options), headers={"Accept": "image/png"})
    response.raise_for_status()
    return decode_image(response.content)


def hop_bytes_on_a_frame(client: httpx.Client, url: str, photos: Photos, assets: Path) -> dict[str, object]:
    """The bytes one swap sends across Ray hops for one face on a 720p video frame (the first frame of the
    shipped group clip, ``face_selector_mode=one``, no enhancer), against the decoded frame's bytes."""
    frame = next(read_frames(assets / "video" / HOP_CLIP)).image
    _, png = cv2.imencode(".png", frame)
    files = {
        "source_image": (photos.source_name, photos.source_bytes, _mime(photos.source_name)),
        "target_image": ("frame.png", png.tobytes(), "image/png"),
    }
    response = client.post(
        url, files=files, data={"face_selector_mode": "one"}, headers={"Accept": "image/jpeg"}
    )
    response.raise_for_status()
    hop = int(response.headers["x-hop-bytes"])
    return {
        "hop_frame": f"{HOP_CLIP} frame 0, {frame.shape[1]}x{frame.shape[0]}, one face, no enhancer",
        "hop_bytes_per_request": hop,
        "decoded_frame_bytes": int(frame.nbytes),
        "hop_bytes_vs_frame": round(hop / frame.nbytes, 4),
    }


# --- the benchmark ------------------------------------------------------------------------------------------


TABLE_COLUMNS = (
    ("mode", "mode"),
    ("concurrency", "conc"),
    ("ok", "ok"),
    ("errors", "err"),
    ("throughput_rps", "req/s", ".2f"),
    ("p50_ms", "p50 ms", ".0f"),
    ("p95_ms", "p95 ms", ".0f"),
    ("p99_ms", "p99 ms", ".0f"),
    ("mean_ms", "mean ms", ".0f"),
    ("cpu_ms_per_request", "CPU ms/req", ".0f"),
    ("hop_kb_per_request", "hop KB/req", ".0f"),
)
OVERHEAD_COLUMNS = (
    ("concurrency", "conc"),
    ("mode", "vs inprocess"),
    ("throughput_ratio", "req/s ratio", ".2f"),
    ("p50_delta_ms", "p50 delta ms", "+.0f"),
    ("p95_delta_ms", "p95 delta ms", "+.0f"),
    ("cpu_ratio", "CPU/req ratio", ".2f"),
)


def overhead_rows(results: Sequence[LevelResult]) -> list[dict[str, object]]:
    """Per concurrency, each Serve mode against ``inprocess``: throughput ratio and latency deltas."""
    rows: list[dict[str, object]] = []
    base = {r.concurrency: r for r in results if r.mode == "inprocess"}
    for r in results:
        b = base.get(r.concurrency)
        if r.mode == "inprocess" or b is None or not b.throughput_rps or r.p50_ms is None or b.p50_ms is None:
            continue
        rows.append(
            {
                "concurrency": r.concurrency,
                "mode": r.mode,
                "throughput_ratio": round(r.throughput_rps / b.throughput_rps, 3),
                "p50_delta_ms": round(r.p50_ms - b.p50_ms, 1),
                "p95_delta_ms": round((r.p95_ms or 0) - (b.p95_ms or 0), 1),
                "cpu_ratio": (
                    round(r.cpu_ms_per_request / b.cpu_ms_per_request, 3)
                    if r.cpu_ms_per_request and b.cpu_ms_per_request
                    else None
                ),
            }
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, object]:
    env_start = environment()
    started = time.perf_counter()
    models = bench_models(args.models_dir, args.assets, args.detector, args.enhance)
    photos = load_photos(args.assets)
    options = SwapOptions.from_mapping({"face_selector_mode": args.selector}).with_enhance(args.enhance)
    settings: dict[str, object] = {
        "models": models.label,
        "overrides": models.overrides,
        "model_facts": models.facts,
        "providers": args.providers,
        "source_image": photos.source_name,
        "target_image": photos.target_name,
        "options": {"face_selector_mode": args.selector, "enhance": args.enhance},
        "concurrency": args.concurrency,
        "requests": args.requests,
        "modes": args.modes,
        "swapper_max_batch_size": args.swapper_batch,
        "ray_num_cpus": args.num_cpus or os.cpu_count(),
        "ray_num_gpus_logical": 1,
        "client": "httpx.Client, one keep-alive connection per worker thread, same machine",
        "response": "JSON with base64 JPEG (quality 92); in-process and handle modes encode the same JPEG",
    }
    orchestrator = SwapOrchestrator(
        build_models(pipeline_config(models, args.providers, args.enhance)).ports()
    )
    results: list[LevelResult] = []
    check: dict[str, object] = {}
    stats: dict[str, object] = {}
    with local_serve(args.num_cpus) as base_url:
        handle = deploy(
            app_args(models, args.providers, enhance=args.enhance, swapper_batch=args.swapper_batch)
        )
        limits = httpx.Limits(
            max_connections=max(args.concurrency) + 4, max_keepalive_connections=max(args.concurrency) + 4
        )
        with httpx.Client(timeout=600, limits=limits) as client:
            ready = client.get(f"{base_url}/readyz")
            ready.raise_for_status()
            url = f"{base_url}{SWAP_URL_PATH}"
            # The same models must give the same picture through HTTP (PNG, lossless) as in process.
            served = _http_result_image(client, url, photos, options)
            local = asyncio.run(
                orchestrator.swap(
                    decode_image(photos.source_bytes), decode_image(photos.target_bytes), options
                )
            )
            diff = np.abs(served.astype(np.int16) - local.image.astype(np.int16))
            check = {
                "max_abs_diff_http_vs_inprocess": int(diff.max()),
                "mean_abs_diff": round(float(diff.mean()), 4),
                **hop_bytes_on_a_frame(client, url, photos, args.assets),
            }
            log.info("served vs in-process result: %s", check)
            hops: list[int] = []
            calls: dict[str, Call] = {
                "inprocess": inprocess_call(orchestrator, photos, options),
                "handle": handle_call(handle, photos, options),
                "http": http_call(client, url, photos, options, hops),
            }
            for concurrency, requests in zip(args.concurrency, args.requests, strict=True):
                for mode in args.modes:
                    metered = hops if mode == "http" else None
                    results.append(run_level(mode, calls[mode], concurrency, requests, hops=metered))
        stats = {
            "FaceSwapper": deployment_stats("FaceSwapper"),
            "FaceDetector": deployment_stats("FaceDetector"),
        }
    for record in stats.values():
        if isinstance(record, dict):
            record.pop("sizes", None)
    return {
        "benchmark": "http",
        "environment": env_start,
        "load_average_end": environment()["load_average_1_5_15m"],
        "settings": settings,
        "result_check": check,
        "results": [asdict(r) for r in results],
        "overhead": overhead_rows(results),
        "deployment_stats": stats,
        "total_s": round(time.perf_counter() - started, 1),
    }


def render(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    settings = payload["settings"]
    lines = [
        f"device: {env['device']}; {settings['models']}; providers {settings['providers']}; "
        f"{env['date_utc']}",
        f"request: {settings['source_image']} -> {settings['target_image']}, {settings['options']}; "
        f"swapper max_batch_size {settings['swapper_max_batch_size']}",
        format_table(payload["results"], TABLE_COLUMNS),
        "",
        "Serve vs in-process (same concurrency):",
        format_table(payload["overhead"], OVERHEAD_COLUMNS),
    ]
    swapper = payload["deployment_stats"].get("FaceSwapper", {})
    if swapper.get("calls"):
        lines.append(
            f"swapper: {swapper['requests']} requests in {swapper['calls']} model calls "
            f"(mean {swapper['requests'] / swapper['calls']:.2f}, largest {swapper['largest']})"
        )
    lines.append(f"result check: {payload['result_check']}")
    lines.append(
        f"load average 1/5/15 min: start {env['load_average_1_5_15m']}, end {payload['load_average_end']}"
    )
    lines.append(f"total {payload['total_s']:.0f} s")
    return "\n".join(lines)


def positive_ints(text: str) -> list[int]:
    """argparse type: a comma or space separated list of positive integers."""
    values = [int(v) for v in text.replace(",", " ").split()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark models, assets, providers and detector: shared by the Serve-graph benchmarks."""
    parser.add_argument("--models-dir", type=Path, required=True, help="folder of bench_<name>.onnx")
    parser.add_argument(
        "--assets", type=Path, default=DEFAULT_ASSETS, help="../shared/assets (photos, detectors)"
    )
    parser.add_argument("--providers", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="yunet")


def report(
    name: str,
    run: Callable[[argparse.Namespace], dict[str, object]],
    render: Callable[[dict[str, Any]], str],
    args: argparse.Namespace,
) -> int:
    """Run a benchmark, print its tables and write its JSON to ``args.json``; exit status 2 on failure."""
    try:
        payload = run(args)
    except (FaceSwapError, FileNotFoundError) as exc:
        sys.stderr.write(f"{name} benchmark failed: {exc}\n")
        return 2
    sys.stdout.write(render(payload) + "\n")
    sys.stdout.write(f"wrote {write_json(args.json, payload)}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--selector", choices=("one", "many"), default="one", help="face_selector_mode")
    parser.add_argument("--enhance", action="store_true", help="also run the (bench) GFPGAN enhancer")
    parser.add_argument("--concurrency", type=positive_ints, default=[1, 4, 16], help="e.g. 1,4,16")
    parser.add_argument(
        "--requests", type=positive_ints, default=[12, 24, 48], help="timed requests per level"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=("inprocess", "handle", "http"), default=["inprocess", "handle", "http"]
    )
    parser.add_argument("--swapper-batch", type=int, default=16, help="swapper max_batch_size (default 16)")
    parser.add_argument("--num-cpus", type=int, help="CPUs Ray may schedule (default: all cores)")
    parser.add_argument("--json", type=Path, default=Path("out/http_bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(args.requests) != len(args.concurrency):
        parser.error("--requests needs one count per --concurrency level")
    if args.swapper_batch < 1:
        parser.error("--swapper-batch must be >= 1")
    return report("http", run, render, args)


if __name__ == "__main__":
    sys.exit(main())
