"""Video face swap with Ray Data versus a single-process frame loop: frames per second and peak memory.

``serve_app.batch.run_batch_job`` against the FaceFusion-style baseline (read frame, detect, swap, write
in one process), same models and videos.

Usage::

    python -m bench.video_bench --models-dir DIR [--providers cpu|cuda] [--videos NAME ...]
        [--batch-size 8] [--actors 1] [--assets DIR] [--workdir DIR] [--json OUT]

Models: the bench models of ``--models-dir`` (ArcFace, inswapper) and the real YuNet detector, as in
``bench.http_bench``; the source face is ``codait_luciano_cc0.png``, the options the defaults
(``face_selector_mode`` ``one``, no enhancer). Videos: ``../shared/assets/video`` (default
``group_pan_1280x720_25fps_h264.mp4``, four faces per frame, and
``astronaut_pan_zoom_640x480_25fps_h264_aac.mp4``, one face and an AAC track; 75 frames each).

Each (video, mode) runs in a fresh process through :func:`bench.batch_memory.measure`, which samples the
PSS of the whole process tree (driver, Ray's GCS/raylet/object store and workers) every ``--interval``
seconds. The ``ray_job`` time starts after ``ray.init`` and includes the identity task, the actor pool's
start and model loading; the ``loop`` time includes its model loading too. On 75-frame videos these fixed
costs are a large part of the total, which is what a short clip costs in practice; longer videos amortise
them (see ``bench.batch_memory`` for memory against video length).

This script also samples the CPU seconds of every process of that tree (:class:`CpuSampler`): CPU per
frame compares the two modes even on a loaded machine where wall times are noisy. It covers the whole
child process, so for ``ray_job`` it includes starting and stopping the local Ray as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.batch_memory import RunSpec, measure
from bench.common import environment, format_table
from bench.http_bench import (
    SOURCE_IMAGE,
    add_model_arguments,
    bench_models,
    pipeline_config,
    report,
    tree_cpu_by_pid,
)
from pipeline.video import probe_video
from serve_app.local import RAY_ENV

log = logging.getLogger("bench.video_bench")

DEFAULT_VIDEOS = ("group_pan_1280x720_25fps_h264.mp4", "astronaut_pan_zoom_640x480_25fps_h264_aac.mp4")
MODES = ("loop", "ray_job")

TABLE_COLUMNS = (
    ("video", "video"),
    ("mode", "mode"),
    ("frames", "frames"),
    ("seconds", "s", ".1f"),
    ("fps", "frames/s", ".2f"),
    ("cpu_ms_per_frame", "CPU ms/frame", ".0f"),
    ("peak_tree_pss_mib", "peak PSS MiB", ".0f"),
    ("peak_driver_rss_mib", "driver peak RSS MiB", ".0f"),
    ("processes", "procs"),
    ("frames_without_face", "no-face frames"),
)
RATIO_COLUMNS = (
    ("video", "video"),
    ("fps_ratio", "ray_job / loop frames/s", ".2f"),
    ("cpu_ratio", "ray_job / loop CPU per frame", ".2f"),
    ("pss_ratio", "ray_job / loop peak PSS", ".2f"),
)


class CpuSampler:
    """Samples the CPU seconds of every descendant of this process every ``interval`` seconds in a
    background thread, keeping each pid's last value: their sum is the CPU the run cost (the last
    ``interval`` of each process that exits is missed)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        for pid, seconds in tree_cpu_by_pid(me).items():
            if pid != me:
                self._seen[pid] = max(seconds, self._seen.get(pid, 0.0))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_s(self) -> float:
        return sum(self._seen.values())


def ratio_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, object]]:
    """Per video, ``ray_job`` over ``loop``: frames per second and peak tree PSS."""
    out: list[dict[str, object]] = []
    for video in dict.fromkeys(r["video"] for r in rows):
        by_mode = {r["mode"]: r for r in rows if r["video"] == video}
        job, loop = by_mode.get("ray_job"), by_mode.get("loop")
        if job is None or loop is None or not loop["fps"] or not loop["peak_tree_pss_mib"]:
            continue
        out.append(
            {
                "video": video,
                "fps_ratio": round(job["fps"] / loop["fps"], 3),
                "cpu_ratio": (
                    round(job["cpu_ms_per_frame"] / loop["cpu_ms_per_frame"], 3)
                    if job.get("cpu_ms_per_frame") and loop.get("cpu_ms_per_frame")
                    else None
                ),
                "pss_ratio": round(job["peak_tree_pss_mib"] / loop["peak_tree_pss_mib"], 3),
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    env_start = environment()
    started = time.perf_counter()
    models = bench_models(args.models_dir, args.assets, args.detector)
    pipeline = pipeline_config(models, args.providers, enhance=False)
    source = args.assets / "images" / SOURCE_IMAGE
    rows: list[dict[str, Any]] = []
    videos: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="video-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.videos:
            video = args.assets / "video" / name
            info = probe_video(video)
            videos[name] = {
                "size": [info.width, info.height],
                "frames": info.frame_count,
                "fps": str(info.fps),
            }
            for mode in args.modes:
                spec = RunSpec(
                    video=str(video),
                    output=str(workdir / f"{mode}_{Path(name).stem}.mp4"),
                    source=str(source),
                    pipeline=pipeline,
                    batch_size=args.batch_size,
                    actors=args.actors,
                    interval=args.interval,
                )
                with CpuSampler(args.interval) as cpu:
                    measured = measure(mode, spec)
                cpu_ms = cpu.cpu_s * 1e3 / measured.frames if measured.frames else None
                rows.append(
                    {
                        "video": name,
                        **asdict(measured),
                        "cpu_s": round(cpu.cpu_s, 2),
                        "cpu_ms_per_frame": None if cpu_ms is None else round(cpu_ms, 1),
                    }
                )
                log.info("%s %s: %.2f frames/s", name, mode, measured.fps)
    return {
        "benchmark": "video",
        "environment": env_start,
        "load_average_end": environment()["load_average_1_5_15m"],
        "settings": {
            "models": models.label,
            "overrides": models.overrides,
            "model_facts": models.facts,
            "providers": args.providers,
            "source_image": SOURCE_IMAGE,
            "videos": videos,
            "options": {"face_selector_mode": "one", "enhance": False},
            "batch_size": args.batch_size,
            "actors": args.actors,
            "memory_interval_s": args.interval,
            "encoder": "libx264 preset veryfast (both modes)",
        },
        "results": rows,
        "ratios": ratio_rows(rows),
        "total_s": round(time.perf_counter() - started, 1),
    }


def render(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    settings = payload["settings"]
    return "\n".join(
        [
            f"device: {env['device']}; {settings['models']}; providers {settings['providers']}; "
            f"{env['date_utc']}",
            f"Ray Data: batch_size {settings['batch_size']}, {settings['actors']} swap actor(s); "
            "loop: one process, one frame at a time",
            format_table(payload["results"], TABLE_COLUMNS),
            "",
            format_table(payload["ratios"], RATIO_COLUMNS),
            f"load average 1/5/15 min: start {env['load_average_1_5_15m']}, "
            f"end {payload['load_average_end']}",
            f"total {payload['total_s']:.0f} s",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument(
        "--videos", nargs="+", default=list(DEFAULT_VIDEOS), help="file names in assets/video"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-size", type=int, default=8, help="frames per model batch (Ray Data)")
    parser.add_argument("--actors", type=int, default=1, help="swap actors (Ray Data)")
    parser.add_argument("--interval", type=float, default=0.25, help="memory sampling period, seconds")
    parser.add_argument("--workdir", type=Path, help="where output videos go (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=Path("out/video_bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1 or args.actors < 1 or args.interval <= 0:
        parser.error("--batch-size and --actors must be >= 1, --interval > 0")
    return report("video", run, render, args)


if __name__ == "__main__":
    sys.exit(main())
