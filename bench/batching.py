"""Batched versus unbatched swapper throughput, through Serve and in process.

The Serve swapper deployment at ``max_batch_size`` 1 versus 8 and 16 under concurrency 16, and
``swap_crops`` called directly in process at batch 1 versus N.

Usage::

    python -m bench.batching --models-dir DIR [--providers cpu|cuda] [--batch-sizes 1 8 16]
        [--concurrency 16] [--requests 64] [--http-requests 48] [--direct-batches 1 4 8 16]
        [--seconds 2] [--min-iterations 5] [--assets DIR] [--json OUT]

Same models and photos as ``bench.http_bench`` (bench models of ``--models-dir`` plus the real YuNet).

- ``serve``: the app is deployed once per ``max_batch_size`` (a redeploy; the batch knobs are the swapper's
  ``user_config``). ``swapper`` rows call ``FaceSwapper.swap`` through a deployment handle with
  precomputed target faces and source identity (``face_selector_mode`` ``one``: one crop per request, so
  any batch bigger than one comes from concurrent requests sharing a model call); ``http`` rows send the
  whole request (``POST /api/v1/swap``) at the same concurrency. The swapper's own counters give the mean
  requests per model call. ``--http-requests 0`` skips the HTTP rows.
- ``direct``: ``InswapperSwapper.swap_crops`` on real aligned crops of the target photo's faces (tiled to
  N) with one thread, timed for ``--seconds`` and at least ``--min-iterations`` calls per batch size:
  what batching can buy at most. Median and best call are both reported: on a shared machine the best
  call is the closer estimate of the model's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import environment, format_table
from bench.http_bench import (
    APP_NAME,
    SWAP_URL_PATH,
    Call,
    LevelResult,
    add_model_arguments,
    app_args,
    bench_models,
    deploy,
    deployment_stats,
    http_call,
    load_photos,
    local_serve,
    pipeline_config,
    positive_ints,
    report,
    run_level,
)
from bench.micro import time_call
from pipeline.imageio import decode_image
from pipeline.inprocess import Models
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator, crops_for
from pipeline.profiles import build_models

log = logging.getLogger("bench.batching")


def _stat_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, float | int]:
    calls = int(after["calls"]) - int(before["calls"])
    requests = int(after["requests"]) - int(before["requests"])
    items = int(after["items"]) - int(before["items"])
    return {
        "model_calls": calls,
        "swap_requests": requests,
        "crops": items,
        "requests_per_call": round(requests / calls, 2) if calls else 0.0,
        "largest_call": int(after["largest"]),
    }


def _row(path: str, max_batch: int, level: LevelResult, delta: dict[str, float | int]) -> dict[str, object]:
    return {"path": path, "max_batch_size": max_batch, **asdict(level), **delta}


def _crops_and_identity(
    orchestrator: SwapOrchestrator, photos: Any, options: SwapOptions
) -> tuple[np.ndarray, np.ndarray]:
    """The swapper crops of the target's selected faces and the source identity, computed in process."""
    source = decode_image(photos.source_bytes, field="source_image")
    target = decode_image(photos.target_bytes, field="target_image")
    identity = asyncio.run(orchestrator.source_identity(source, options))
    detected = asyncio.run(orchestrator.detect([target], options.detector_score))
    faces = asyncio.run(orchestrator.select([target], detected, options))[0]
    crops, _ = crops_for(target, faces, orchestrator.ports.swapper.info.crop)
    return crops, identity.value


def serve_rows(
    args: argparse.Namespace, models: Any, photos: Any, orchestrator: SwapOrchestrator
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Redeploy per ``max_batch_size`` and load the swapper (handle) and the whole graph (HTTP)."""
    from ray import serve

    options = SwapOptions()
    crops, identity = _crops_and_identity(orchestrator, photos, options)
    identities = np.repeat(identity[None], len(crops), axis=0)
    rows: list[dict[str, object]] = []
    deploy_s: dict[str, object] = {}
    with local_serve(args.num_cpus) as base_url:
        limits = httpx.Limits(
            max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4
        )
        with httpx.Client(timeout=600, limits=limits) as client:
            for max_batch in args.batch_sizes:
                started = time.perf_counter()
                deploy(
                    app_args(
                        models,
                        args.providers,
                        enhance=False,
                        swapper_batch=max_batch,
                        batch_wait_timeout_s=args.batch_wait_timeout_s,
                    )
                )
                deploy_s[str(max_batch)] = round(time.perf_counter() - started, 1)
                swapper = serve.get_deployment_handle("FaceSwapper", APP_NAME)

                # the method handle is made here: threads that each made it would race to create routers
                def swap_call(swap: Any = swapper.swap) -> int:
                    out = swap.remote(crops, identities).result(timeout_s=600)
                    return len(out.crops)

                calls: list[tuple[str, Call, int]] = [("swapper", swap_call, args.requests)]
                if args.http_requests:
                    url = f"{base_url}{SWAP_URL_PATH}"
                    calls.append(("http", http_call(client, url, photos, options), args.http_requests))
                for path, call, requests in calls:
                    run_level(path, call, args.concurrency, args.concurrency)  # warm-up
                    before = deployment_stats("FaceSwapper")
                    level = run_level(path, call, args.concurrency, requests, warmup=0)
                    rows.append(
                        _row(path, max_batch, level, _stat_delta(deployment_stats("FaceSwapper"), before))
                    )
    return rows, deploy_s


def direct_rows(args: argparse.Namespace, photos: Any, models: Models) -> list[dict[str, object]]:
    """``swap_crops`` at each batch size on real crops of the target's faces, one thread."""
    options = SwapOptions.from_mapping({"face_selector_mode": "many"})
    crops, identity = _crops_and_identity(SwapOrchestrator(models.ports()), photos, options)
    swapper = models.swapper
    rows: list[dict[str, object]] = []
    base: dict[str, float] = {}
    for batch in args.direct_batches:
        tiled = np.ascontiguousarray(np.resize(crops, (batch, *crops.shape[1:])))
        identities = np.repeat(identity[None], batch, axis=0)
        call = partial(swapper.swap_crops, tiled, identities)
        first, times = time_call(call, args.seconds)
        while len(times) < args.min_iterations:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        per_crop = {"median": statistics.median(times) / batch, "best": min(times) / batch}
        base = base or per_crop
        rows.append(
            {
                "path": "direct swap_crops",
                "batch": batch,
                "iterations": len(times),
                "first_ms": round(first * 1e3, 1),
                "ms_per_call": round(statistics.median(times) * 1e3, 1),
                "ms_per_crop": round(per_crop["median"] * 1e3, 2),
                "best_ms_per_crop": round(per_crop["best"] * 1e3, 2),
                "crops_per_s": round(1 / per_crop["median"], 2),
                "speedup_vs_batch1": round(base["median"] / per_crop["median"], 2),
                "best_speedup_vs_batch1": round(base["best"] / per_crop["best"], 2),
            }
        )
        log.info("direct batch %d: %.1f ms per call", batch, statistics.median(times) * 1e3)
    return rows


SERVE_COLUMNS = (
    ("path", "path"),
    ("max_batch_size", "max_batch"),
    ("concurrency", "conc"),
    ("ok", "ok"),
    ("errors", "err"),
    ("throughput_rps", "req/s", ".2f"),
    ("p50_ms", "p50 ms", ".0f"),
    ("p95_ms", "p95 ms", ".0f"),
    ("cpu_ms_per_request", "CPU ms/req", ".0f"),
    ("requests_per_call", "req/model call", ".2f"),
    ("largest_call", "largest"),
)
DIRECT_COLUMNS = (
    ("batch", "batch"),
    ("iterations", "iters"),
    ("ms_per_call", "ms/call", ".1f"),
    ("ms_per_crop", "ms/crop", ".1f"),
    ("crops_per_s", "crops/s", ".1f"),
    ("speedup_vs_batch1", "vs batch 1", ".2f"),
    ("best_ms_per_crop", "best ms/crop", ".1f"),
    ("best_speedup_vs_batch1", "best vs batch 1", ".2f"),
)


def run(args: argparse.Namespace) -> dict[str, object]:
    env_start = environment()
    started = time.perf_counter()
    models = bench_models(args.models_dir, args.assets, args.detector)
    photos = load_photos(args.assets)
    local = build_models(pipeline_config(models, args.providers, enhance=False))
    direct = direct_rows(args, photos, local)
    served, deploy_s = serve_rows(args, models, photos, SwapOrchestrator(local.ports()))
    return {
        "benchmark": "batching",
        "environment": env_start,
        "load_average_end": environment()["load_average_1_5_15m"],
        "settings": {
            "models": models.label,
            "overrides": models.overrides,
            "model_facts": models.facts,
            "providers": args.providers,
            "source_image": photos.source_name,
            "target_image": photos.target_name,
            "serve_options": {"face_selector_mode": "one"},
            "max_batch_sizes": args.batch_sizes,
            "batch_wait_timeout_s": args.batch_wait_timeout_s,
            "concurrency": args.concurrency,
            "swapper_requests": args.requests,
            "http_requests": args.http_requests,
            "direct_batches": args.direct_batches,
            "direct_seconds": args.seconds,
            "direct_min_iterations": args.min_iterations,
            "ray_num_cpus": args.num_cpus or os.cpu_count(),
        },
        "serve": served,
        "deploy_s": deploy_s,
        "direct": direct,
        "total_s": round(time.perf_counter() - started, 1),
    }


def render(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    settings = payload["settings"]
    return "\n".join(
        [
            f"device: {env['device']}; {settings['models']}; providers {settings['providers']}; "
            f"{env['date_utc']}",
            f"Serve, concurrency {settings['concurrency']}, one face per request, "
            f"batch_wait_timeout_s {settings['batch_wait_timeout_s']}:",
            format_table(payload["serve"], SERVE_COLUMNS),
            "",
            f"In process, InswapperSwapper.swap_crops on real crops ({settings['target_image']}), "
            "one caller:",
            format_table(payload["direct"], DIRECT_COLUMNS),
            f"load average 1/5/15 min: start {env['load_average_1_5_15m']}, "
            f"end {payload['load_average_end']}",
            f"total {payload['total_s']:.0f} s",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-sizes", type=positive_ints, default=[1, 8, 16], help="swapper max_batch_size"
    )
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--requests", type=int, default=64, help="timed swapper-handle requests per batch size"
    )
    parser.add_argument(
        "--http-requests", type=int, default=48, help="timed HTTP requests per batch size, 0 = none"
    )
    parser.add_argument("--direct-batches", type=positive_ints, default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per direct batch size")
    parser.add_argument(
        "--min-iterations", type=int, default=5, help="timed calls per direct batch, at least"
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs Ray may schedule (default: all cores)")
    parser.add_argument("--json", type=Path, default=Path("out/batching.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if min(args.concurrency, args.requests, args.min_iterations) < 1 or args.http_requests < 0:
        parser.error("--concurrency, --requests and --min-iterations must be >= 1, --http-requests >= 0")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    return report("batching", run, render, args)


if __name__ == "__main__":
    sys.exit(main())
