"""The Ray Data batch job against a single-process frame loop on videos of growing length: peak memory must
not grow with the length of the video (the job streams), and the fixed start-up costs amortise.

Usage::

    python -m bench.batch_memory --models-dir DIR [--lengths 150 600] [--width 1280 --height 720]
        [--batch-size 8] [--actors 1] [--assets DIR] [--workdir DIR] [--json OUT]

For each length it writes a synthetic H.264 video (a real photo's face, pasted and moving over a panning
textured background; see :func:`write_synthetic_video`), then measures both modes, each in a fresh process
(:func:`measure`), with the bench models of ``--models-dir`` and the real YuNet (as ``bench.video_bench``):

- ``ray_job``: :func:`serve_app.batch.job.run_batch_job` on a local Ray started in that process;
- ``loop``: ``read_frames`` -> the same orchestration (:class:`~pipeline.orchestration.SwapOrchestrator`
  over in-process ports) per batch of frames -> ``VideoWriter``, in one process.

The timed window starts after ``ray.init`` (and after the driver's imports, in both modes) and ends when
the output is written; the loop's window includes building its models, as the job's includes its actors
building theirs. Over the window a sampler thread reads, every ``--interval`` seconds, ``/proc`` of the
process and all its descendants (driver, GCS, raylet with its object store, Ray's agents, the decode and
swap workers): the sum of PSS (every private page once, shared pages such as the plasma store split among
the processes mapping them: the tree's real footprint) and each process's CPU seconds (the last value seen
per process counts, so processes that exit during the window are included; the sampler's own CPU is not).

Prints a table and the growth from the shortest to the longest video per mode, and writes JSON
(``--json``, default ``out/batch_memory.json``). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path

import cv2
import numpy as np

from bench.common import environment, format_table, write_json
from bench.http_bench import SOURCE_IMAGE, add_model_arguments, bench_models, pipeline_config
from pipeline.errors import FaceSwapError
from pipeline.profiles import PipelineConfig
from pipeline.video import VideoWriter

log = logging.getLogger("bench.batch_memory")

FACE_IMAGE = "astronaut_eileen_collins_nasa.png"
"""Pasted into the synthetic video (public domain)."""
FACE_CROP = (120, 10, 350, 280)
"""x1, y1, x2, y2 of the head (with some context for the detector) in :data:`FACE_IMAGE`."""
MIB = 1024 * 1024
MODES = ("loop", "ray_job")
WARM = "ray_job_warm"
"""A job run after another in the same Ray session: Ray Data's per-cluster actors (stats, autoscaling
coordinator, actor location tracker) exist and idle workers have Ray Data imported, as on a long-lived
cluster."""

TABLE_COLUMNS = (
    ("mode", "mode"),
    ("frames", "frames"),
    ("seconds", "s", ".1f"),
    ("fps", "frames/s", ".2f"),
    ("cpu_ms_per_frame", "CPU ms/frame", ".0f"),
    ("peak_tree_pss_mib", "peak PSS MiB", ".0f"),
    ("peak_driver_rss_mib", "driver RSS MiB", ".0f"),
    ("processes", "procs"),
    ("frames_without_face", "no-face frames"),
)


def write_synthetic_video(
    path: Path, frames: int, width: int, height: int, assets: Path, seed: int = 0
) -> None:
    """H.264 at 25 fps: a window panning over a smoothed-noise texture, with the head of
    :data:`FACE_IMAGE` (scaled to about 45% of the frame height) moving along a Lissajous path."""
    rng = np.random.default_rng(seed)
    pan = 200
    noise = rng.integers(0, 256, (height + pan, width + pan, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 6).astype(np.float32)
    low, high = float(blurred.min()), float(blurred.max())
    texture = (40 + (blurred - low) * (175 / max(high - low, 1.0))).astype(np.uint8)
    photo = cv2.imread(str(assets / "images" / FACE_IMAGE), cv2.IMREAD_COLOR)
    if photo is None:
        raise FileNotFoundError(assets / "images" / FACE_IMAGE)
    x1, y1, x2, y2 = FACE_CROP
    scale = 0.45 * height / (y2 - y1)
    head = cv2.resize(photo[y1:y2, x1:x2], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    hh, hw = head.shape[:2]
    with VideoWriter(
        path, width=width, height=height, fps=Fraction(25), crf=23, preset="ultrafast"
    ) as writer:
        for i in range(frames):
            t = i / 25.0
            ox, oy = int(pan / 2 * (1 + np.sin(0.3 * t))), int(pan / 2 * (1 + np.cos(0.2 * t)))
            frame = texture[oy : oy + height, ox : ox + width].copy()
            cx = int((width - hw) / 2 * (1 + 0.6 * np.sin(0.5 * t)))
            cy = int((height - hh) / 2 * (1 + 0.4 * np.sin(0.7 * t)))
            frame[cy : cy + hh, cx : cx + hw] = head
            writer.write(frame)


# --- sampling the process tree ------------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process, from ``/proc/<pid>/stat``."""
    ticks = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return table


def _tree(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _kib_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(path) as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in names:
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return values


@dataclass
class Peaks:
    """Peaks over the samples (KiB) and the CPU seconds of the window."""

    tree_pss: int = 0
    driver_rss: int = 0
    processes: int = 0
    samples: int = 0
    cpu_s: float = 0.0


@dataclass
class Sampler:
    """Samples this process's tree every ``interval`` seconds in a background thread, from ``with`` to its
    end: peak PSS, the driver's peak RSS, and the CPU seconds every process of the tree spent inside the
    window (minus the sampler's own)."""

    interval: float
    peaks: Peaks = field(default_factory=Peaks)
    _cpu_start: dict[int, float] = field(default_factory=dict)
    _cpu_last: dict[int, float] = field(default_factory=dict)
    _own_cpu_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        me = os.getpid()
        table = _process_table()
        pids = _tree(me, table)
        pss = sum(_kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss",)).get("Pss", 0) for pid in pids)
        p = self.peaks
        p.tree_pss = max(p.tree_pss, pss)
        p.driver_rss = max(p.driver_rss, _kib_fields(f"/proc/{me}/status", ("VmRSS",)).get("VmRSS", 0))
        p.processes = max(p.processes, len(pids))
        p.samples += 1
        for pid in pids:
            if pid in table:
                self._cpu_last[pid] = table[pid][1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
        self._sample()
        self._own_cpu_s = time.thread_time()

    def __enter__(self) -> Sampler:
        self._sample()
        self._cpu_start = dict(self._cpu_last)
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        spent = sum(cpu - self._cpu_start.get(pid, 0.0) for pid, cpu in self._cpu_last.items())
        self.peaks.cpu_s = spent - self._own_cpu_s


# --- the two ways of processing a video, each run in a fresh process ----------------------------------------


@dataclass(frozen=True)
class RunSpec:
    video: str
    output: str
    source: str
    pipeline: PipelineConfig
    batch_size: int
    actors: int
    interval: float
    cpus_per_actor: float = 1.0
    """CPUs (and ONNX Runtime threads) per swap actor."""
    num_gpus: float = 0.0
    """GPUs per swap actor (needed with CUDA: Ray hides the GPUs from actors that reserve none)."""
    loop_threads: int = 0
    """ONNX Runtime intra-op threads of the loop (0: one per core, the default)."""
    loop_spin: bool = True
    """Whether the loop's idle ONNX Runtime threads spin (the default)."""
    preset: str = "veryfast"
    jobs: int = 1
    """ray_job: jobs run one after another in one Ray session (the first cold, the others warm)."""


@dataclass
class Measurement:
    mode: str
    frames: int
    seconds: float
    fps: float
    cpu_s: float
    cpu_ms_per_frame: float
    peak_tree_pss_mib: float
    peak_driver_rss_mib: float
    processes: int
    samples: int
    frames_without_face: int
    start_s: float = 0.0
    """Before the window: ``ray.init`` (ray_job), nothing (loop)."""
    startup_s: float | None = None
    """ray_job: from the start of the window to the first frames written."""
    load_average: float = 0.0
    """1-minute load average at the end."""


def _measurement(
    mode: str, frames: int, seconds: float, sampler: Sampler, no_face: int, **extra: object
) -> Measurement:
    p = sampler.peaks
    return Measurement(
        mode=mode,
        frames=frames,
        seconds=round(seconds, 2),
        fps=round(frames / seconds, 2) if seconds > 0 else 0.0,
        cpu_s=round(p.cpu_s, 2),
        cpu_ms_per_frame=round(p.cpu_s * 1e3 / frames, 1) if frames else 0.0,
        peak_tree_pss_mib=round(p.tree_pss / 1024, 1),
        peak_driver_rss_mib=round(p.driver_rss / 1024, 1),
        processes=p.processes,
        samples=p.samples,
        frames_without_face=no_face,
        load_average=round(os.getloadavg()[0], 2),
        **extra,  # type: ignore[arg-type]
    )


def _run_jobs(spec: RunSpec) -> list[Measurement]:
    import ray

    from serve_app.batch.config import BatchJobConfig
    from serve_app.batch.job import run_batch_job

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    started = time.monotonic()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    start_s = time.monotonic() - started
    config = BatchJobConfig(
        source_image=spec.source,
        targets=(spec.video,),
        output=spec.output,
        pipeline=spec.pipeline,
        batch_size=spec.batch_size,
        num_actors=spec.actors,
        cpus_per_actor=spec.cpus_per_actor,
        num_gpus=spec.num_gpus,
        preset=spec.preset,
    )
    out: list[Measurement] = []
    try:
        for run in range(spec.jobs):
            with Sampler(spec.interval) as sampler:
                started = time.monotonic()
                result = run_batch_job(config)
                seconds = time.monotonic() - started
            out.append(
                _measurement(
                    WARM if run else "ray_job",
                    result.frames,
                    seconds,
                    sampler,
                    result.frames_without_face,
                    start_s=0.0 if run else round(start_s, 2),
                    startup_s=round(result.startup_s, 2),
                )
            )
    finally:
        ray.shutdown()
    return out


def _run_loop(spec: RunSpec) -> Measurement:
    from pipeline.imageio import read_image_file
    from pipeline.options import SwapOptions
    from pipeline.orchestration import SwapOrchestrator
    from pipeline.profiles import build_models
    from pipeline.video import VideoWriter, iter_frame_batches, probe_video, read_frames

    session = replace(spec.pipeline.session, intra_op_threads=spec.loop_threads, spin=spec.loop_spin)
    with Sampler(spec.interval) as sampler:
        started = time.monotonic()
        orchestrator = SwapOrchestrator(build_models(replace(spec.pipeline, session=session)).ports())
        options = SwapOptions()
        identity = asyncio.run(orchestrator.source_identity(read_image_file(spec.source), options))
        info = probe_video(spec.video)
        frames = no_face = 0
        with VideoWriter(
            spec.output, width=info.width, height=info.height, audio_from=spec.video, preset=spec.preset
        ) as writer:
            for batch in iter_frame_batches(read_frames(spec.video), spec.batch_size):
                images = [f.image for f in batch]
                for result in asyncio.run(orchestrator.swap_frames(images, identity, options)):
                    writer.write(result.image)
                    no_face += not result.faces
                    frames += 1
        seconds = time.monotonic() - started
    return _measurement("loop", frames, seconds, sampler, no_face)


def _child(mode: str, spec: RunSpec, conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        conn.send(_run_jobs(spec) if mode == "ray_job" else [_run_loop(spec)])
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(exc)
        raise
    finally:
        conn.close()


def measure(mode: str, spec: RunSpec) -> list[Measurement]:
    """Run ``mode`` (``ray_job`` or ``loop``) in a fresh spawned process and return its measurements: one
    for ``loop``, ``spec.jobs`` for ``ray_job`` (the first cold, the others :data:`WARM`)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(mode, spec, sender), name=f"bench-{mode}")
    process.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = RuntimeError(f"{mode} process died with exit code {process.exitcode}")
    process.join()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# --- command line -------------------------------------------------------------------------------------------


def _growth(rows: list[Measurement]) -> list[dict[str, object]]:
    out = []
    for mode in dict.fromkeys(r.mode for r in rows):
        runs = sorted((r for r in rows if r.mode == mode), key=lambda r: r.frames)
        short, long = runs[0], runs[-1]
        out.append(
            {
                "mode": mode,
                "frames": f"{short.frames} -> {long.frames}",
                "pss_growth_mib": round(long.peak_tree_pss_mib - short.peak_tree_pss_mib, 1),
                "pss_ratio": round(long.peak_tree_pss_mib / short.peak_tree_pss_mib, 3),
                "driver_rss_growth_mib": round(long.peak_driver_rss_mib - short.peak_driver_rss_mib, 1),
                "cpu_ms_per_frame": f"{short.cpu_ms_per_frame:.0f} -> {long.cpu_ms_per_frame:.0f}",
            }
        )
    return out


GROWTH_COLUMNS = (
    ("mode", "mode"),
    ("frames", "frames"),
    ("pss_growth_mib", "peak PSS growth MiB"),
    ("pss_ratio", "ratio"),
    ("driver_rss_growth_mib", "driver RSS growth MiB"),
    ("cpu_ms_per_frame", "CPU ms/frame"),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--lengths", type=int, nargs="+", default=[150, 600], help="frames per video")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.25, help="sampling period, seconds")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--workdir", type=Path, help="where videos are written (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=Path("out/batch_memory.json"), help="JSON results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if min(args.lengths) < 1 or args.batch_size < 1 or args.actors < 1 or args.interval <= 0:
        parser.error("--lengths, --batch-size, --actors and --interval must be positive")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="batch-memory-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            models = bench_models(args.models_dir, args.assets, args.detector)
            for frames in sorted(set(args.lengths)):
                video = workdir / f"synthetic_{args.width}x{args.height}_{frames}.mp4"
                started = time.monotonic()
                write_synthetic_video(video, frames, args.width, args.height, args.assets)
                log.info("wrote %s in %.1f s", video, time.monotonic() - started)
                for mode in args.modes:
                    spec = RunSpec(
                        video=str(video),
                        output=str(workdir / f"{mode}_{frames}.mp4"),
                        source=str(args.assets / "images" / SOURCE_IMAGE),
                        pipeline=pipeline_config(models, args.providers, enhance=False),
                        batch_size=args.batch_size,
                        actors=args.actors,
                        interval=args.interval,
                    )
                    rows += measure(mode, spec)
                    log.info("%s", rows[-1])
        except (FaceSwapError, FileNotFoundError) as exc:
            sys.stderr.write(f"batch memory benchmark failed: {exc}\n")
            return 2
    env = environment()
    growth = _growth(rows)
    sys.stdout.write(f"device: {env['device']}; {args.width}x{args.height}; {env['date_utc']}\n")
    sys.stdout.write(format_table([asdict(r) for r in rows], TABLE_COLUMNS) + "\n\n")
    sys.stdout.write(format_table(growth, GROWTH_COLUMNS) + "\n")
    payload = {
        "environment": env,
        "settings": {
            "lengths": sorted(set(args.lengths)),
            "size": [args.width, args.height],
            "models": models.label,
            "batch_size": args.batch_size,
            "actors": args.actors,
            "interval_s": args.interval,
        },
        "runs": [asdict(r) for r in rows],
        "growth": growth,
    }
    sys.stdout.write(f"wrote {write_json(args.json, payload)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
