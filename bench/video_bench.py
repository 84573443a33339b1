"""Video face swap with the Ray Data job versus a single-process frame loop: frames per second, CPU per
frame and peak memory, in one run.

Usage::

    python -m bench.video_bench --models-dir DIR [--providers cpu|cuda] [--videos NAME ...]
        [--repeats 3] [--warm 1] [--batch-size 8] [--actors 1] [--cpus-per-actor 1] [--num-gpus 0]
        [--loop-threads 0] [--no-loop-spin] [--assets DIR] [--workdir DIR] [--json OUT]

- ``ray_job``: :func:`serve_app.batch.job.run_batch_job` (decode stage -> swap actors running the one
  orchestration with in-process ports -> the driver's writer) on a local Ray started in its process, the
  first job of that Ray (cold: Ray Data creates its per-cluster stats, autoscaling and actor-location actors
  and every worker imports Ray Data);
- ``ray_job_warm``: ``--warm`` more jobs in the same Ray session, as on a long-lived cluster where those
  actors exist and idle workers have Ray Data imported (the swap actors still start and load their models);
- ``loop``: ``read_frames`` -> the same orchestration with in-process ports per batch -> ``VideoWriter``,
  one process; its ONNX Runtime sessions as a user gets them by default (one intra-op thread per core,
  spinning) unless ``--loop-threads`` / ``--no-loop-spin`` say otherwise.

Models: the bench models of ``--models-dir`` (ArcFace, inswapper) and the real YuNet detector, as in
``bench.http_bench``; the source face ``codait_luciano_cc0.png``, the default options (``one`` face, no
enhancer), x264 ``veryfast`` in both modes. Videos: ``../shared/assets/video`` (default the 720p 75-frame
``group_pan_1280x720_25fps_h264.mp4``).

Each run is a fresh process (:func:`bench.batch_memory.measure`); the timed window excludes ``ray.init``
(reported as ``ray.init s``) and includes everything after it: the job's actors starting and loading their
models, Ray Data's own actors, every frame; the loop's model loading and every frame. CPU is the CPU
seconds of the whole process tree inside the window. The modes alternate, ``--repeats`` times, so a change
in the machine's load hits both alike; the ratio table compares medians and gives the spread (min-max) of
each mode, and the load average at the end of each run is listed: on a shared machine, read frames/s with
it. On a 75-frame clip the job's fixed start-up (Ray Data's stats and autoscaling actors, worker imports,
model loading) is a large part of its CPU; ``bench.batch_memory`` shows how it amortises on longer videos.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.batch_memory import MODES, WARM, RunSpec, measure
from bench.common import environment, format_table
from bench.http_bench import SOURCE_IMAGE, add_model_arguments, bench_models, pipeline_config, report
from pipeline.video import probe_video
from serve_app.local import RAY_ENV

log = logging.getLogger("bench.video_bench")

DEFAULT_VIDEOS = ("group_pan_1280x720_25fps_h264.mp4",)

RUN_COLUMNS = (
    ("video", "video"),
    ("mode", "mode"),
    ("repeat", "run"),
    ("frames", "frames"),
    ("start_s", "ray.init s", ".1f"),
    ("seconds", "s", ".1f"),
    ("startup_s", "to 1st frames s", ".1f"),
    ("fps", "frames/s", ".2f"),
    ("cpu_ms_per_frame", "CPU ms/frame", ".0f"),
    ("peak_tree_pss_mib", "peak PSS MiB", ".0f"),
    ("processes", "procs"),
    ("load_average", "load 1m", ".1f"),
)
RATIO_COLUMNS = (
    ("video", "video"),
    ("job", "job"),
    ("loop_fps", "loop frames/s", ".2f"),
    ("job_fps", "job frames/s", ".2f"),
    ("fps_ratio", "job/loop frames/s", ".2f"),
    ("loop_cpu", "loop CPU ms/f", ".0f"),
    ("job_cpu", "job CPU ms/f", ".0f"),
    ("cpu_ratio", "job/loop CPU/frame", ".2f"),
    ("pss_ratio", "job/loop peak PSS", ".2f"),
)


def _spread(values: list[float], spec: str) -> str:
    return f"{format(min(values), spec)}-{format(max(values), spec)}"


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def ratio_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Per video and job kind (cold, warm): the medians of the job and of the loop and their ratios
    (frames/s, CPU per frame, peak PSS); and the spread (min-max) of every mode's runs."""
    ratios: list[dict[str, object]] = []
    spreads: list[dict[str, object]] = []
    for video in dict.fromkeys(r["video"] for r in rows):
        runs = {
            mode: [r for r in rows if r["video"] == video and r["mode"] == mode] for mode in (*MODES, WARM)
        }
        loop = runs["loop"]
        for kind in ("ray_job", WARM):
            job = runs[kind]
            if not job or not loop:
                continue
            fps, cpu, pss = (_median(job, k) for k in ("fps", "cpu_ms_per_frame", "peak_tree_pss_mib"))
            loop_fps, loop_cpu, loop_pss = (
                _median(loop, k) for k in ("fps", "cpu_ms_per_frame", "peak_tree_pss_mib")
            )
            ratios.append(
                {
                    "video": video,
                    "job": kind,
                    "loop_fps": loop_fps,
                    "job_fps": fps,
                    "fps_ratio": round(fps / loop_fps, 3),
                    "loop_cpu": loop_cpu,
                    "job_cpu": cpu,
                    "cpu_ratio": round(cpu / loop_cpu, 3),
                    "pss_ratio": round(pss / loop_pss, 3),
                }
            )
        for mode, mode_runs in runs.items():
            if mode_runs:
                spreads.append(
                    {
                        "video": video,
                        "mode": mode,
                        "runs": len(mode_runs),
                        "fps": _spread([r["fps"] for r in mode_runs], ".2f"),
                        "cpu_ms_per_frame": _spread([r["cpu_ms_per_frame"] for r in mode_runs], ".0f"),
                        "peak_tree_pss_mib": _spread([r["peak_tree_pss_mib"] for r in mode_runs], ".0f"),
                    }
                )
    return ratios, spreads


SPREAD_COLUMNS = (
    ("video", "video"),
    ("mode", "mode"),
    ("runs", "runs"),
    ("fps", "frames/s min-max"),
    ("cpu_ms_per_frame", "CPU ms/frame min-max"),
    ("peak_tree_pss_mib", "peak PSS MiB min-max"),
)


def run(args: argparse.Namespace) -> dict[str, object]:
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    env_start = environment()
    started = time.perf_counter()
    models = bench_models(args.models_dir, args.assets, args.detector)
    pipeline = pipeline_config(models, args.providers, enhance=False)
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
            for repeat in range(1, args.repeats + 1):
                for mode in args.modes:
                    spec = RunSpec(
                        video=str(video),
                        output=str(workdir / f"{mode}_{Path(name).stem}.mp4"),
                        source=str(args.assets / "images" / SOURCE_IMAGE),
                        pipeline=pipeline,
                        batch_size=args.batch_size,
                        actors=args.actors,
                        interval=args.interval,
                        cpus_per_actor=args.cpus_per_actor,
                        num_gpus=args.num_gpus,
                        loop_threads=args.loop_threads,
                        loop_spin=args.loop_spin,
                        jobs=1 + args.warm,
                    )
                    for measured in measure(mode, spec):
                        rows.append({"video": name, "repeat": repeat, **asdict(measured)})
                        log.info("%s run %d: %s", name, repeat, rows[-1])
    ratios, spreads = ratio_rows(rows)
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
            "cpus_per_actor": args.cpus_per_actor,
            "num_gpus_per_actor": args.num_gpus,
            "loop_threads": args.loop_threads or "one per core",
            "loop_spin": args.loop_spin,
            "repeats": args.repeats,
            "sampling_interval_s": args.interval,
            "encoder": "libx264 preset veryfast (both modes)",
        },
        "results": rows,
        "ratios": ratios,
        "spreads": spreads,
        "total_s": round(time.perf_counter() - started, 1),
    }


def render(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    settings = payload["settings"]
    return "\n".join(
        [
            f"device: {env['device']}; {settings['models']}; providers {settings['providers']}; "
            f"{env['date_utc']}",
            f"ray_job: batch {settings['batch_size']}, {settings['actors']} swap actor(s) x "
            f"{settings['cpus_per_actor']} CPU (as many ONNX Runtime threads, no spinning); loop: batch "
            f"{settings['batch_size']}, ONNX Runtime threads {settings['loop_threads']}, spinning "
            f"{settings['loop_spin']}; {settings['repeats']} alternating run(s) per mode",
            format_table(payload["results"], RUN_COLUMNS),
            "",
            "medians:",
            format_table(payload["ratios"], RATIO_COLUMNS),
            "",
            format_table(payload["spreads"], SPREAD_COLUMNS),
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
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per mode (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per model batch (both modes)")
    parser.add_argument("--actors", type=int, default=1, help="swap actors (Ray Data)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs and ORT threads per actor")
    parser.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per swap actor (e.g. 1 with --providers cuda)"
    )
    parser.add_argument("--loop-threads", type=int, default=0, help="ORT threads of the loop (0: per core)")
    parser.add_argument(
        "--no-loop-spin", dest="loop_spin", action="store_false", help="loop ORT: no spinning"
    )
    parser.add_argument(
        "--warm", type=int, default=1, help="warm jobs after the cold one in the same Ray session (default 1)"
    )
    parser.add_argument("--interval", type=float, default=0.25, help="sampling period, seconds")
    parser.add_argument("--workdir", type=Path, help="where output videos go (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=Path("out/video_bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1 or args.actors < 1 or args.interval <= 0 or args.repeats < 1:
        parser.error("--batch-size, --actors and --repeats must be >= 1, --interval > 0")
    return report("video", run, render, args)


if __name__ == "__main__":
    sys.exit(main())
