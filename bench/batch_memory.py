"""Peak memory of the Ray Data batch job against a plain single-process frame loop, on synthetic 720p videos
of two or more lengths: the batch job streams, so its peak must not grow with the length of the video.

Usage::

    python -m bench.batch_memory [--lengths 150 600] [--width 1280 --height 720] [--profile auto]
        [--batch-size 8] [--actors 1] [--assets DIR] [--workdir DIR] [--json OUT]

For each length it writes a synthetic H.264 video (a real photo's face, pasted and moving over a panning
textured background; see :func:`write_synthetic_video`), then measures, each in a fresh process:

- ``ray_job``: :func:`serve_app.batch.run_batch_job` on a local Ray started in that process. Memory is
  sampled every ``--interval`` seconds over the process tree (driver, GCS, raylet with its object store,
  the decode and swap workers) from ``/proc/<pid>/smaps_rollup``: the sum of PSS counts every private page
  once and splits shared pages (the plasma object store, libraries) among the processes mapping them, so
  the sum is the tree's real footprint. Also the driver's own peak RSS and private (anonymous) RSS: its
  RSS includes the object store pages it has read frames from, which stay mapped after the objects are
  freed and are counted once in the tree's PSS.
- ``loop``: ``read_frames`` -> detect/select -> ``FacePipeline.process`` -> ``VideoWriter``, one frame at a
  time in one process, with the same models; the same sampling, and its ``VmHWM``.

Prints a table and the growth from the shortest to the longest video per mode, and writes JSON
(``--json``, default ``out/batch_memory.json``). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path

import cv2
import numpy as np

from bench.common import environment, format_table, write_json
from pipeline.errors import FaceSwapError, NoFaceError
from pipeline.imageio import read_image_file
from pipeline.options import SwapOptions
from pipeline.profiles import PROFILES, PipelineConfig, build_pipeline
from pipeline.video import VideoWriter, read_frames

log = logging.getLogger("bench.batch_memory")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = REPO.parent / "shared" / "assets"
FACE_IMAGE = "astronaut_eileen_collins_nasa.png"
"""Pasted into the synthetic video (public domain)."""
SOURCE_IMAGE = "codait_luciano_cc0.png"
"""The face swapped in (CC0)."""
FACE_CROP = (120, 10, 350, 280)
"""x1, y1, x2, y2 of the head (with some context for the detector) in :data:`FACE_IMAGE`."""
MIB = 1024 * 1024

TABLE_COLUMNS = (
    ("mode", "mode"),
    ("frames", "frames"),
    ("seconds", "s"),
    ("fps", "fps"),
    ("peak_tree_pss_mib", "peak PSS MiB"),
    ("peak_tree_anon_mib", "peak anon MiB"),
    ("peak_driver_rss_mib", "driver RSS MiB"),
    ("peak_driver_anon_mib", "driver anon MiB"),
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


# --- memory sampling ----------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from the ppid field of /proc/<pid>/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
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
class MemoryPeaks:
    """Peaks over the samples, in KiB: ``tree_pss`` = sum of PSS of the process and its descendants."""

    tree_pss: int = 0
    tree_anon: int = 0
    driver_rss: int = 0
    driver_anon: int = 0
    processes: int = 0
    samples: int = 0


@dataclass
class Sampler:
    """Samples the process tree of this process every ``interval`` seconds in a background thread."""

    interval: float
    peaks: MemoryPeaks = field(default_factory=MemoryPeaks)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        me = os.getpid()
        pss = anon = 0
        pids = [me, *_children(me)]
        for pid in pids:
            rollup = _kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss", "Pss_Anon"))
            pss += rollup.get("Pss", 0)
            anon += rollup.get("Pss_Anon", 0)
        driver = _kib_fields(f"/proc/{me}/status", ("VmRSS", "RssAnon"))
        p = self.peaks
        p.tree_pss, p.tree_anon = max(p.tree_pss, pss), max(p.tree_anon, anon)
        p.driver_rss = max(p.driver_rss, driver.get("VmRSS", 0))
        p.driver_anon = max(p.driver_anon, driver.get("RssAnon", 0))
        p.processes = max(p.processes, len(pids))
        p.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


@dataclass
class Measurement:
    mode: str
    frames: int
    seconds: float
    fps: float
    peak_tree_pss_mib: float
    peak_tree_anon_mib: float
    peak_driver_rss_mib: float
    peak_driver_anon_mib: float
    driver_hwm_mib: float
    processes: int
    samples: int
    frames_without_face: int


def _measurement(mode: str, frames: int, seconds: float, sampler: Sampler, no_face: int) -> Measurement:
    p = sampler.peaks
    hwm = _kib_fields(f"/proc/{os.getpid()}/status", ("VmHWM",)).get("VmHWM", 0)
    return Measurement(
        mode=mode,
        frames=frames,
        seconds=round(seconds, 2),
        fps=round(frames / seconds, 2) if seconds > 0 else 0.0,
        peak_tree_pss_mib=round(p.tree_pss / 1024, 1),
        peak_tree_anon_mib=round(p.tree_anon / 1024, 1),
        peak_driver_rss_mib=round(p.driver_rss / 1024, 1),
        peak_driver_anon_mib=round(p.driver_anon / 1024, 1),
        driver_hwm_mib=round(hwm / 1024, 1),
        processes=p.processes,
        samples=p.samples,
        frames_without_face=no_face,
    )


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


def _run_job(spec: RunSpec) -> Measurement:
    import ray

    from serve_app.batch import BatchJobConfig, run_batch_job

    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    try:
        config = BatchJobConfig(
            source_image=spec.source,
            targets=(spec.video,),
            output=spec.output,
            pipeline=spec.pipeline,
            batch_size=spec.batch_size,
            num_actors=spec.actors,
            preset="veryfast",
        )
        with Sampler(spec.interval) as sampler:
            started = time.monotonic()
            result = run_batch_job(config, progress=lambda done, total: None)
            seconds = time.monotonic() - started
    finally:
        ray.shutdown()
    return _measurement("ray_job", result.frames, seconds, sampler, result.frames_without_face)


def _run_loop(spec: RunSpec) -> Measurement:
    with Sampler(spec.interval) as sampler:
        started = time.monotonic()
        pipeline = build_pipeline(spec.pipeline)
        options = SwapOptions()
        source = read_image_file(spec.source)
        identity = pipeline.swapper.encode_source(source, pipeline.source_face(source, options))
        frames = no_face = 0
        writer: VideoWriter | None = None
        for frame in read_frames(spec.video):
            if writer is None:
                height, width = frame.image.shape[:2]
                writer = VideoWriter(
                    spec.output, width=width, height=height, audio_from=spec.video, preset="veryfast"
                )
            try:
                faces = pipeline.target_faces(frame.image, options)
            except NoFaceError:
                faces = []
            no_face += not faces
            writer.write(pipeline.process(frame.image, faces, identity, options) if faces else frame.image)
            frames += 1
        assert writer is not None
        writer.close()
        seconds = time.monotonic() - started
    return _measurement("loop", frames, seconds, sampler, no_face)


def _child(mode: str, spec: RunSpec, conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        conn.send(_run_job(spec) if mode == "ray_job" else _run_loop(spec))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(exc)
        raise
    finally:
        conn.close()


def measure(mode: str, spec: RunSpec) -> Measurement:
    """Run ``mode`` (``ray_job`` or ``loop``) in a fresh spawned process and return its measurement."""
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
                "driver_anon_growth_mib": round(long.peak_driver_anon_mib - short.peak_driver_anon_mib, 1),
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[150, 600], help="frames per video")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--profile", choices=PROFILES, default="auto", help="model profile (default auto)")
    parser.add_argument("--models-dir", type=Path, help="directory with model files")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.25, help="memory sampling period, seconds")
    parser.add_argument("--modes", nargs="+", choices=("ray_job", "loop"), default=["ray_job", "loop"])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="folder with images/ (photos)")
    parser.add_argument("--workdir", type=Path, help="where videos are written (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=Path("out/batch_memory.json"), help="JSON results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if min(args.lengths) < 1 or args.batch_size < 1 or args.actors < 1 or args.interval <= 0:
        parser.error("--lengths, --batch-size, --actors and --interval must be positive")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pipeline = PipelineConfig(profile=args.profile, models_dir=args.models_dir, enhance=False)
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="batch-memory-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
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
                        pipeline=pipeline,
                        batch_size=args.batch_size,
                        actors=args.actors,
                        interval=args.interval,
                    )
                    rows.append(measure(mode, spec))
                    log.info("%s", rows[-1])
        except FaceSwapError as exc:
            sys.stderr.write(f"batch memory benchmark failed: {exc}\n")
            return 2
    env = environment()
    growth = _growth(rows)
    sys.stdout.write(f"device: {env['device']}; {args.width}x{args.height}; {env['date_utc']}\n")
    sys.stdout.write(format_table([asdict(r) for r in rows], TABLE_COLUMNS) + "\n\n")
    sys.stdout.write(
        format_table(
            growth,
            [
                ("mode", "mode"),
                ("frames", "frames"),
                ("pss_growth_mib", "peak PSS growth MiB"),
                ("pss_ratio", "ratio"),
                ("driver_rss_growth_mib", "driver RSS growth MiB"),
                ("driver_anon_growth_mib", "driver anon growth MiB"),
            ],
        )
        + "\n"
    )
    payload = {
        "environment": env,
        "settings": {
            "lengths": sorted(set(args.lengths)),
            "size": [args.width, args.height],
            "profile": args.profile,
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
