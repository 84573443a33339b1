"""Model micro-benchmarks: time per batch of each benchmark model and real detector, per batch size.

Usage::

    python -m bench.micro --models-dir DIR [--providers cpu|cuda] [--batch-sizes 1,4,16,32]
        [--seconds S] [--max-call-seconds S] [--threads N] [--assets DIR] [--json OUT]

``DIR`` holds the ``bench_<name>.onnx`` files of :mod:`bench.export_models`; the real YuNet and SCRFD
detectors come from ``--assets`` (default ``../shared/assets``) when present. Every session is built by
:func:`pipeline.sessions.create_session` and run through the project's wrapper (path ``wrapper``:
pre- and post-processing included) or, for batched detector inputs the wrappers do not take, as a raw
session (path ``session``):

- ``inswapper``: :class:`InswapperSwapper` ``swap_crops`` on (N, 128, 128, 3) crops and N source embeddings;
- ``arcface``: :class:`ArcFaceEmbedder` ``embed_crops`` on (N, 112, 112, 3) crops;
- ``gfpgan``: :class:`GfpganEnhancer` ``enhance_crops`` on (N, 512, 512, 3) crops;
- ``yunet`` / ``scrfd``: ``detect`` on a real group photo (one image per call, batch 1 only), and
  ``scrfd`` also as a raw session on N letterboxed 640x640 copies (its graph takes a dynamic batch).

Each cell warms up (at least one call), then times calls for ``--seconds`` (at least one) and reports
the median. A cell whose projected call time (per item at the previous batch size x batch) exceeds
``--max-call-seconds`` is skipped and listed as such. Crops are seeded random pixels: the benchmark
models have random weights, so only their compute matters.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from bench.common import environment, format_table, write_json
from pipeline.canvas import make_canvas, pad_canvas
from pipeline.errors import FaceSwapError
from pipeline.models.detectors import ScrfdDetector, YunetDetector
from pipeline.models.embedder import ArcFaceEmbedder
from pipeline.models.enhancer import GfpganEnhancer
from pipeline.models.swapper import InswapperSwapper, load_emap
from pipeline.sessions import SessionConfig, create_session
from pipeline.types import ImageBGR

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = REPO.parent / "shared" / "assets"
DETECTOR_IMAGE = "pexels_group_meeting_1080865.jpeg"
YUNET_FILE = "face_detection_yunet_2026may.onnx"
SCRFD_FILE = "scrfd_500m_bnkps.onnx"
SCRFD_SIZE = 640

Call = Callable[[], object]


@dataclass(frozen=True)
class Cell:
    """The result of one (target, batch size): timings in milliseconds per call of ``batch`` items."""

    model: str
    file: str
    path: str
    provider: str
    batch: int
    status: str
    iterations: int | None = None
    first_ms: float | None = None
    ms_median: float | None = None
    ms_min: float | None = None
    ms_mean: float | None = None
    ms_per_item: float | None = None
    items_per_s: float | None = None
    load_s: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Target:
    """One thing to time: ``make_call(batch)`` prepares inputs and returns a no-argument call."""

    model: str
    file: str
    path: str
    provider: str
    load_s: float
    batch_sizes: tuple[int, ...]
    make_call: Callable[[int], Call]
    note: str = ""

    def cell(self, batch: int, status: str, **fields: Any) -> Cell:
        return Cell(self.model, self.file, self.path, self.provider, batch, status, **fields)


def time_call(call: Call, seconds: float, max_warmup: int = 10) -> tuple[float, list[float]]:
    """Warm up (one call, then more until a quarter of ``seconds`` or ``max_warmup`` calls), then time
    calls for ``seconds`` (at least one). Returns (first call seconds, timed call seconds)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    warm = 1
    while time.perf_counter() - start < seconds / 4 and warm < max_warmup:
        call()
        warm += 1
    times: list[float] = []
    begin = time.perf_counter()
    while not times or time.perf_counter() - begin < seconds:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return first, times


def run_target(target: Target, seconds: float, max_call_seconds: float) -> list[Cell]:
    """Time ``target`` at each of its batch sizes (ascending), skipping projected-too-slow cells."""
    cells: list[Cell] = []
    per_item_s: float | None = None
    for batch in sorted(target.batch_sizes):
        projected = None if per_item_s is None else per_item_s * batch
        if projected is not None and projected > max_call_seconds:
            note = f"skipped: projected {projected:.1f} s per call > --max-call-seconds {max_call_seconds:g}"
            cells.append(target.cell(batch, "skipped", note=note))
            log.info("%s %s batch %d: %s", target.model, target.path, batch, note)
            continue
        first, times = time_call(target.make_call(batch), seconds)
        median = statistics.median(times)
        per_item_s = median / batch
        cells.append(
            target.cell(
                batch,
                "ok",
                iterations=len(times),
                first_ms=round(first * 1e3, 3),
                ms_median=round(median * 1e3, 3),
                ms_min=round(min(times) * 1e3, 3),
                ms_mean=round(statistics.fmean(times) * 1e3, 3),
                ms_per_item=round(per_item_s * 1e3, 3),
                items_per_s=round(1.0 / per_item_s, 3),
                load_s=round(target.load_s, 3),
                note=target.note,
            )
        )
        log.info("%s %s batch %d: %.1f ms per call", target.model, target.path, batch, median * 1e3)
    return cells


def _session(path: Path, config: SessionConfig) -> tuple[ort.InferenceSession, float, str]:
    start = time.perf_counter()
    session = create_session(path, config)
    return session, time.perf_counter() - start, session.get_providers()[0].removesuffix("ExecutionProvider")


def _crops(batch: int, size: int, seed: int) -> np.ndarray:
    """(batch, size, size, 3) uint8 seeded random BGR crops."""
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _embed_calls(embedder: ArcFaceEmbedder) -> Callable[[int], Call]:
    def make(batch: int) -> Call:
        crops = _crops(batch, embedder.crop_size, batch)
        return lambda: embedder.embed_crops(crops)

    return make


def _swap_calls(swapper: InswapperSwapper) -> Callable[[int], Call]:
    def make(batch: int) -> Call:
        crops = _crops(batch, swapper.crop_size, batch)
        embeddings = np.random.default_rng(batch).standard_normal((batch, 512), np.float32)
        return lambda: swapper.swap_crops(crops, embeddings)

    return make


def _enhance_calls(enhancer: GfpganEnhancer) -> Callable[[int], Call]:
    def make(batch: int) -> Call:
        crops = _crops(batch, enhancer.crop_size, batch)
        return lambda: enhancer.enhance_crops(crops)

    return make


def build_targets(
    models_dir: Path, assets: Path | None, config: SessionConfig, batch_sizes: Sequence[int]
) -> tuple[list[Target], list[str]]:
    """The targets whose files exist, and a note for each one left out."""
    targets: list[Target] = []
    missing: list[str] = []
    sizes = tuple(batch_sizes)
    arcface_path = models_dir / "bench_arcface.onnx"
    inswapper_path = models_dir / "bench_inswapper.onnx"
    gfpgan_path = models_dir / "bench_gfpgan.onnx"
    if arcface_path.is_file():
        session, load_s, provider = _session(arcface_path, config)
        embedder = ArcFaceEmbedder(session, name="bench_arcface")
        targets.append(
            Target("arcface", arcface_path.name, "wrapper", provider, load_s, sizes, _embed_calls(embedder))
        )
    else:
        missing.append(f"{arcface_path} missing")
    if inswapper_path.is_file():
        session, load_s, provider = _session(inswapper_path, config)
        swapper = InswapperSwapper(session, load_emap(inswapper_path), name="bench_inswapper")
        targets.append(
            Target("inswapper", inswapper_path.name, "wrapper", provider, load_s, sizes, _swap_calls(swapper))
        )
    else:
        missing.append(f"{inswapper_path} missing")
    if gfpgan_path.is_file():
        session, load_s, provider = _session(gfpgan_path, config)
        enhancer = GfpganEnhancer(session, name="bench_gfpgan")
        targets.append(
            Target("gfpgan", gfpgan_path.name, "wrapper", provider, load_s, sizes, _enhance_calls(enhancer))
        )
    else:
        missing.append(f"{gfpgan_path} missing")
    targets.extend(_detector_targets(assets, config, sizes, missing))
    return targets, missing


def _detector_targets(
    assets: Path | None, config: SessionConfig, sizes: tuple[int, ...], missing: list[str]
) -> list[Target]:
    image_path = assets / "images" / DETECTOR_IMAGE if assets else None
    loaded = cv2.imread(str(image_path), cv2.IMREAD_COLOR) if image_path and image_path.is_file() else None
    if assets is None or loaded is None:
        missing.append(f"real detectors skipped: no {DETECTOR_IMAGE} under {assets}/images")
        return []
    image: ImageBGR = np.ascontiguousarray(loaded, dtype=np.uint8)
    targets: list[Target] = []
    yunet_path = assets / "models" / YUNET_FILE
    if yunet_path.is_file():
        session, load_s, provider = _session(yunet_path, config)
        yunet = YunetDetector(session)
        note = f"{len(yunet.detect(image))} faces in {DETECTOR_IMAGE}; graph batch fixed at 1"
        targets.append(
            Target(
                "yunet",
                yunet_path.name,
                "wrapper",
                provider,
                load_s,
                (1,),
                lambda _b: lambda: yunet.detect(image),
                note,
            )
        )
    else:
        missing.append(f"{yunet_path} missing")
    scrfd_path = assets / "models" / SCRFD_FILE
    if scrfd_path.is_file():
        session, load_s, provider = _session(scrfd_path, config)
        scrfd = ScrfdDetector(session, input_size=(SCRFD_SIZE, SCRFD_SIZE))
        note = f"{len(scrfd.detect(image))} faces in {DETECTOR_IMAGE}"
        targets.append(
            Target(
                "scrfd",
                scrfd_path.name,
                "wrapper",
                provider,
                load_s,
                (1,),
                lambda _b: lambda: scrfd.detect(image),
                note,
            )
        )
        padded = pad_canvas(make_canvas(image, scrfd.canvas)[0], SCRFD_SIZE, SCRFD_SIZE)
        blob = ((cv2.cvtColor(padded, cv2.COLOR_BGR2RGB).astype(np.float32) - 127.5) / 128.0).transpose(
            2, 0, 1
        )

        def scrfd_session_call(batch: int) -> Call:
            feed = {scrfd.input_name: np.ascontiguousarray(np.broadcast_to(blob, (batch, *blob.shape)))}
            return lambda: scrfd.session.run(None, feed)

        targets.append(
            Target(
                "scrfd",
                scrfd_path.name,
                "session",
                provider,
                load_s,
                sizes,
                scrfd_session_call,
                f"raw session, N x 3 x {SCRFD_SIZE} x {SCRFD_SIZE}, no decoding",
            )
        )
    else:
        missing.append(f"{scrfd_path} missing")
    return targets


TABLE_COLUMNS = (
    ("model", "model"),
    ("path", "path"),
    ("provider", "provider"),
    ("batch", "batch"),
    ("iterations", "iters"),
    ("ms_median", "ms/batch"),
    ("ms_per_item", "ms/item"),
    ("items_per_s", "items/s"),
    ("note", "note"),
)


@dataclass(frozen=True)
class MicroRun:
    """A whole micro-benchmark run: environment facts, settings, one cell per (target, batch)."""

    environment: dict[str, object]
    settings: dict[str, object]
    cells: list[Cell]
    notes: list[str]
    total_s: float

    def to_json(self) -> dict[str, object]:
        return {
            "benchmark": "micro",
            "environment": self.environment,
            "settings": self.settings,
            "results": [asdict(c) for c in self.cells],
            "notes": self.notes,
            "total_s": self.total_s,
        }


def run_benchmarks(
    models_dir: Path,
    *,
    providers: str = "cpu",
    batch_sizes: Sequence[int] = (1, 4, 16, 32),
    seconds: float = 2.0,
    max_call_seconds: float = 10.0,
    threads: int = 0,
    assets: Path | None = DEFAULT_ASSETS,
) -> MicroRun:
    """Run every available target. ``providers`` ``cuda`` is strict: it raises
    :class:`~pipeline.errors.ProviderError` when CUDA is not active."""
    config = SessionConfig(
        providers=("cuda", "cpu") if providers == "cuda" else ("cpu",),
        strict=providers == "cuda",
        intra_op_threads=threads,
    )
    started = time.perf_counter()
    targets, notes = build_targets(Path(models_dir), assets, config, batch_sizes)
    cells = [cell for target in targets for cell in run_target(target, seconds, max_call_seconds)]
    settings: dict[str, object] = {
        "models_dir": str(models_dir),
        "assets": None if assets is None else str(assets),
        "providers": list(config.providers),
        "batch_sizes": list(batch_sizes),
        "seconds_per_cell": seconds,
        "max_call_seconds": max_call_seconds,
        "intra_op_threads": threads,
    }
    return MicroRun(environment(), settings, cells, notes, round(time.perf_counter() - started, 1))


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers, got {text!r}") from exc
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="folder of bench_<name>.onnx")
    parser.add_argument("--providers", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 4, 16, 32])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell (default 2)")
    parser.add_argument("--max-call-seconds", type=float, default=10.0, help="skip cells projected slower")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, 0 = all cores")
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="real detectors and photo")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.seconds <= 0 or args.max_call_seconds <= 0 or args.threads < 0:
        parser.error("--seconds and --max-call-seconds must be positive, --threads >= 0")
    try:
        run = run_benchmarks(
            args.models_dir,
            providers=args.providers,
            batch_sizes=args.batch_sizes,
            seconds=args.seconds,
            max_call_seconds=args.max_call_seconds,
            threads=args.threads,
            assets=args.assets,
        )
    except FaceSwapError as exc:
        sys.stderr.write(f"micro benchmark failed: {exc}\n")
        return 2
    env = run.environment
    sys.stdout.write(f"device: {env['device']}; onnxruntime {env['onnxruntime']}; {env['date_utc']}\n")
    sys.stdout.write(format_table([asdict(c) for c in run.cells], TABLE_COLUMNS) + "\n")
    for note in run.notes:
        sys.stdout.write(f"note: {note}\n")
    sys.stdout.write(f"total {run.total_s:.0f} s\n")
    if args.json:
        sys.stdout.write(f"wrote {write_json(args.json, run.to_json())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
