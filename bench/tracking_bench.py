"""Face tracking against per-frame detection on clips with known landmark truth.

Usage::

    python -m bench.tracking_bench [--assets DIR] [--clips NAME ...] [--detect-every 4] [--max-gap 5]
        [--smoothing 0.5] [--stream-smoothing 0.5] [--workdir DIR] [--json OUT]

Clips (:mod:`bench.clips`): the shipped ``astronaut`` and ``group`` videos, and clips made with the same
generator: ``santa`` (another photo), ``fast`` (faster motion), ``occluded`` (a grey box over the face for
1, 3 and 5 frames) ``crossing`` (two faces from two photos passing each other, one partly over the other) and
``crossing_behind`` (the same, one hidden behind the other for about 16 frames). Generated clips are
encoded to ``--workdir`` (default: a temporary folder) and decoded back; all frames are decoded before
timing, so frames/s covers detection and tracking only.

Methods, all with the real YuNet 2026may detector (ONNX Runtime, CPU) at score 0.5. The first three run
the integrated plan of the video paths (:func:`pipeline.video_faces.plan_video_faces`, what the HTTP video
jobs and the Ray Data job swap with) twice: with ``face_selector_mode`` ``many`` (every face: the error,
jitter, unswapped and speed columns) and ``one`` (the ``one`` columns):

- ``per_frame``: ``tracking`` false: the detector on every frame; ``one`` = the largest face of each frame.
- ``tracking``: the defaults (keyframe detection every ``--detect-every`` frames, optical-flow following
  in between, gaps up to ``--max-gap`` interpolated, Savitzky-Golay at ``--smoothing``); ``one`` = the
  main track of the video.
- ``tracking_k1``: the same with the detector on every frame (what smoothing alone does).
- ``streaming``: :class:`pipeline.follow.KeyframeTracker` ``process`` (causal: coasting, One-Euro at
  ``--stream-smoothing``; no video path uses it yet); ``one`` mode = :class:`pipeline.tracking.TrackSelector`.

Measures, per clip and method (truth: :class:`bench.clips.Truth`; each output face is matched to the
nearest true person within 0.25 face sizes):

- ``rms_px``: RMS landmark error against the truth over every (frame, person) that has a face and lies in
  the frame, in pixels; ``err_ratio`` against ``per_frame``.
- ``jitter_px``: RMS of the second difference over time of each person's landmark positions (triples of
  consecutive frames with a face), in pixels; ``jitter_ratio`` against ``per_frame``. ``truth_jitter`` is
  the truth's own value (the camera's acceleration), the floor.
- ``calls_per_frame``: detector calls per frame.
- ``missing``: (frame, person) pairs with the person visible, or hidden for at most 5 frames in a row,
  but no face: frames left unswapped (hidden longer, the person counts as gone).
- ``one_switches``: in ``one`` mode, frames whose chosen person differs from the previous frame's;
  ``one_missing``: frames where ``one`` mode chose nothing while a person was to be swapped.
- ``fps``: frames per second of detection plus tracking (wall time; noisy on a shared machine), and
  ``cpu_ms_per_frame``: CPU time of this process per frame (all threads, ONNX Runtime's included).

Targets (issue 13), checked per clip in ``meets``: for ``tracking`` against ``per_frame``, jitter at most
0.5x, error at most 1.05x, at most 0.35 detector calls per frame, no frame unswapped, no switch in ``one``
mode.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.clips import CLIPS, ClipRenderer, Truth, clip, clip_video
from bench.common import environment, format_table, write_json
from pipeline.follow import KeyframeTracker
from pipeline.models.detectors import YunetDetector
from pipeline.options import SwapOptions
from pipeline.sessions import SessionConfig, create_session
from pipeline.tracking import TrackedFace, TrackSelector
from pipeline.types import Face, ImageBGR
from pipeline.video import VideoFrame, read_frames
from pipeline.video_faces import local_detect, plan_video_faces

log = logging.getLogger("bench.tracking_bench")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = REPO.parent / "shared" / "assets"
YUNET_FILE = "face_detection_yunet_2026may.onnx"
DETECTOR_SCORE = 0.5
MATCH_RADIUS = 0.25
"""A face matches a true person when its mean landmark distance is under this many face sizes (the
person's eye-to-mouth span x 2)."""

SHORT_OCCLUSION = 5
"""Frames a person may be hidden and still count as a face to swap (the issue's 1-5 frame occluder)."""

METHODS = ("per_frame", "tracking", "tracking_k1", "streaming")
TARGETS = {"jitter_ratio": 0.5, "err_ratio": 1.05, "calls_per_frame": 0.35, "missing": 0, "one_switches": 0}
"""The issue's targets for ``tracking`` against ``per_frame`` (upper bounds)."""
MAX_FACES = 16

TABLE_COLUMNS = (
    ("clip", "clip"),
    ("method", "method"),
    ("calls_per_frame", "calls/frame", ".2f"),
    ("rms_px", "RMS err px", ".2f"),
    ("err_ratio", "err x", ".2f"),
    ("jitter_px", "jitter px", ".2f"),
    ("jitter_ratio", "jitter x", ".2f"),
    ("truth_jitter", "truth jitter", ".2f"),
    ("missing", "unswapped"),
    ("one_switches", "one: switches"),
    ("one_missing", "one: none"),
    ("fps", "frames/s", ".0f"),
    ("cpu_ms_per_frame", "CPU ms/frame", ".0f"),
    ("meets", "targets"),
)

Outputs = list[list[Face | TrackedFace]]
"""Per frame: the faces a method returns."""


class CountingDetector:
    """YuNet at a fixed score threshold (the orchestration's canvas); counts calls."""

    def __init__(self, detector: YunetDetector, score: float) -> None:
        self.detect = local_detect(detector, score)
        self.calls = 0

    def __call__(self, image: ImageBGR) -> list[Face]:
        self.calls += 1
        return self.detect(image)


# ---------------------------------------------------------------------------------------------- metrics
def _face_size(landmarks: np.ndarray) -> float:
    """Twice the distance from the eyes' midpoint to the mouth corners' midpoint of (5, 2) landmarks."""
    eyes = landmarks[:2].mean(axis=0)
    mouth = landmarks[3:].mean(axis=0)
    return 2.0 * float(np.linalg.norm(mouth - eyes))


def assign(outputs: Outputs, truth: Truth) -> np.ndarray:
    """(T, P, 5, 2) float64: each person's matched output landmarks per frame, NaN where none matched.
    Faces are matched greedily, nearest first, within :data:`MATCH_RADIUS` face sizes."""
    frames, people = truth.landmarks.shape[:2]
    est = np.full((frames, people, 5, 2), np.nan)
    for t, faces in enumerate(outputs[:frames]):
        pairs = []
        for i, face in enumerate(faces):
            lm = np.asarray(face.landmarks, np.float64)
            for p in range(people):
                if not truth.inside[t, p]:
                    continue
                true = truth.landmarks[t, p]
                d = float(np.linalg.norm(lm - true, axis=1).mean())
                if d < MATCH_RADIUS * _face_size(true):
                    pairs.append((d, i, p))
        used_f, used_p = set(), set()
        for _, i, p in sorted(pairs):
            if i not in used_f and p not in used_p:
                used_f.add(i)
                used_p.add(p)
                est[t, p] = np.asarray(faces[i].landmarks, np.float64)
    return est


def rms_error(est: np.ndarray, truth: Truth) -> float:
    have = ~np.isnan(est[..., 0, 0]) & truth.inside
    if not have.any():
        return float("nan")
    sq = ((est[have] - truth.landmarks[have]) ** 2).sum(axis=-1)
    return float(np.sqrt(sq.mean()))


def jitter(series: np.ndarray) -> float:
    """RMS over persons, frames and landmarks of |x[t+1] - 2 x[t] + x[t-1]| (px), for (T, P, 5, 2)
    series with NaN gaps (triples with a gap are skipped)."""
    d2 = series[2:] - 2 * series[1:-1] + series[:-2]
    norms = np.linalg.norm(d2, axis=-1)
    norms = norms[~np.isnan(norms)]
    return float(np.sqrt(np.mean(norms**2))) if norms.size else float("nan")


def person_of(face: Face | TrackedFace, t: int, truth: Truth) -> int | None:
    """The true person a single face is nearest to (within the match radius), or None."""
    lm = np.asarray(face.landmarks, np.float64)
    best: tuple[float, int] | None = None
    for p in range(truth.landmarks.shape[1]):
        true = truth.landmarks[t, p]
        d = float(np.linalg.norm(lm - true, axis=1).mean())
        if d < MATCH_RADIUS * _face_size(true) and (best is None or d < best[0]):
            best = (d, p)
    return None if best is None else best[1]


def one_mode_stats(chosen: Sequence[Face | TrackedFace | None], truth: Truth) -> tuple[int, int]:
    """(switches, frames with no choice while someone is in the frame) of a ``one`` mode choice per frame."""
    switches, missing, previous = 0, 0, None
    expected = truth.expected(SHORT_OCCLUSION)
    for t, face in enumerate(chosen):
        if face is None:
            missing += int(expected[t].any())
            continue
        person = person_of(face, t, truth)
        if previous is not None and person != previous:
            switches += 1
        previous = person
    return switches, missing


def measure(outputs: Outputs, chosen: Sequence[Face | TrackedFace | None], truth: Truth) -> dict[str, object]:
    est = assign(outputs, truth)
    missing = int((truth.expected(SHORT_OCCLUSION) & np.isnan(est[..., 0, 0])).sum())
    switches, one_missing = one_mode_stats(chosen, truth)
    return {
        "rms_px": rms_error(est, truth),
        "jitter_px": jitter(est),
        "truth_jitter": jitter(np.where(truth.inside[..., None, None], truth.landmarks, np.nan)),
        "missing": missing,
        "one_switches": switches,
        "one_missing": one_missing,
    }


# ---------------------------------------------------------------------------------------------- methods
def run_plan(frames: Sequence[VideoFrame], detect, options: SwapOptions) -> Outputs:
    """Every planned face of each frame (:func:`plan_video_faces`, the video paths' pass 1)."""
    plan = plan_video_faces(frames, detect, options, max_faces=MAX_FACES)
    return [[p.face for p in faces] for faces in plan.per_frame]


def plan_options(method: str, args: argparse.Namespace, mode: str) -> SwapOptions:
    settings = {"max_gap": args.max_gap, "smoothing": args.smoothing, "face_selector_mode": mode}
    if method == "per_frame":
        return SwapOptions(tracking=False, face_selector_mode=mode)
    return SwapOptions(detect_every=1 if method == "tracking_k1" else args.detect_every, **settings)


def run_streaming(frames: Sequence[ImageBGR], detect, detect_every: int, max_gap: int, smoothing: float):
    tracker = KeyframeTracker(detect, detect_every=detect_every, max_gap=max_gap, smoothing=smoothing)
    selector = TrackSelector("one")
    outputs: Outputs = []
    chosen: list[Face | TrackedFace | None] = []
    for index, image in enumerate(frames):
        faces = tracker.process(index, image)
        outputs.append(list(faces))
        picked = selector.select(faces)
        chosen.append(picked[0] if picked else None)
    return outputs, chosen


def bench_clip(
    name: str, assets: Path, workdir: Path, detector: YunetDetector, args: argparse.Namespace
) -> list[dict[str, object]]:
    spec = clip(name)
    renderer = ClipRenderer(assets, spec, lambda image: detector.detect(image, DETECTOR_SCORE))
    truth = renderer.truth()
    video = clip_video(assets, spec, renderer, workdir)
    decoded = list(read_frames(video))
    frames = [f.image for f in decoded]
    if len(frames) != spec.frame_count:
        raise RuntimeError(f"{video}: {len(frames)} frames, expected {spec.frame_count}")
    detector.detect(frames[0], DETECTOR_SCORE)  # warm-up: the session's first run is slow
    rows = []
    for method in args.methods:
        detect = CountingDetector(detector, DETECTOR_SCORE)
        started, cpu_started = time.perf_counter(), time.process_time()
        if method == "streaming":
            outputs, chosen = run_streaming(
                frames, detect, args.detect_every, args.max_gap, args.stream_smoothing
            )
        else:
            outputs = run_plan(decoded, detect, plan_options(method, args, "many"))
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        if method != "streaming":  # the one-mode plan, untimed: the same detections, selected per track
            one = run_plan(
                decoded, CountingDetector(detector, DETECTOR_SCORE), plan_options(method, args, "one")
            )
            chosen = [faces[0] if faces else None for faces in one]
        row: dict[str, object] = {"clip": name, "method": method, "frames": len(frames)}
        row.update(measure(outputs, chosen, truth))
        row["calls_per_frame"] = detect.calls / len(frames)
        row["fps"] = len(frames) / seconds
        row["cpu_ms_per_frame"] = 1000 * cpu_seconds / len(frames)
        rows.append(row)
        log.info("%s %s: %s", name, method, {k: row[k] for k in ("rms_px", "jitter_px", "missing")})
    base = rows[0] if rows and rows[0]["method"] == "per_frame" else None
    for row in rows:
        if base is not None:
            row["err_ratio"] = float(row["rms_px"]) / float(base["rms_px"])  # type: ignore[arg-type]
            row["jitter_ratio"] = float(row["jitter_px"]) / float(base["jitter_px"])  # type: ignore[arg-type]
        if base is not None and row["method"] == "tracking":
            missed = [k for k, bound in TARGETS.items() if float(row[k]) > bound]  # type: ignore[arg-type]
            row["meets"] = "all" if not missed else "not " + ", ".join(missed)
    return rows


def run(args: argparse.Namespace) -> dict[str, object]:
    model = args.assets / "models" / YUNET_FILE
    if not model.is_file():
        raise FileNotFoundError(f"{model} is missing")
    detector = YunetDetector(create_session(model, SessionConfig(providers=("cpu",))))
    env = environment()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tracking_bench_") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in args.clips:
            results.extend(bench_clip(name, args.assets, workdir, detector, args))
    settings = {
        "detect_every": args.detect_every,
        "max_gap": args.max_gap,
        "smoothing": args.smoothing,
        "stream_smoothing": args.stream_smoothing,
        "detector": f"{YUNET_FILE} score {DETECTOR_SCORE}",
    }
    return {"environment": env, "settings": settings, "results": results}


def render(payload: dict[str, object]) -> str:
    env = payload["environment"]
    settings = payload["settings"]
    assert isinstance(env, dict) and isinstance(settings, dict)
    return "\n".join(
        [
            f"device: {env['device']}; {env['date_utc']}; load average {env['load_average_1_5_15m']}",
            "settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
            format_table(payload["results"], TABLE_COLUMNS),  # type: ignore[arg-type]
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="../shared/assets")
    parser.add_argument(
        "--clips", nargs="+", choices=[c.name for c in CLIPS], default=[c.name for c in CLIPS]
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--detect-every", type=int, default=4)
    parser.add_argument("--max-gap", type=int, default=5)
    parser.add_argument("--smoothing", type=float, default=0.5, help="offline Savitzky-Golay strength")
    parser.add_argument("--stream-smoothing", type=float, default=0.5, help="streaming One-Euro strength")
    parser.add_argument("--workdir", type=Path, help="where generated clips go (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=Path("out/tracking_bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "per_frame" in args.methods:
        args.methods = ["per_frame"] + [m for m in args.methods if m != "per_frame"]
    payload = run(args)
    sys.stdout.write(render(payload) + "\n")
    sys.stdout.write(f"wrote {write_json(args.json, payload)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
