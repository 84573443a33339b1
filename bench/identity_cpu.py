"""CPU per swap request with a kept identity (``identity_id``) against the same swap with its source photo.

Usage::

    python -m bench.identity_cpu [--repeats 5] [--source-px 1536] [--json OUT]

The default no-download models (lite profile, bundled photos) in process with one ONNX thread, as the
swap route runs them: uploaded bytes in, JPEG out. The source photo is re-encoded as a ``--source-px``
square PNG (a phone photo is larger), which an identity saves decoding, shrinking, detecting and cropping
on every request. The two ways run interleaved, so a change in the machine's load hits both alike; the
table gives the least CPU time (``process_time``) of ``--repeats`` per way, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable

import cv2

from bench.common import environment, format_table, write_json
from pipeline.bundled import bundled_image
from pipeline.imageio import decode_image, read_image_file
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import PipelineConfig, build_models
from pipeline.sessions import SessionConfig

SOURCE = "astronaut_eileen_collins_nasa.png"
TARGET = "codait_luciano_cc0.png"


def _least_cpu_ms(runs: dict[str, Callable[[], bytes]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.process_time()
            run()
            times[name].append(time.process_time() - started)
    return {name: 1000 * min(values) for name, values in times.items()}


def measure(orchestrator: SwapOrchestrator, source_px: int, repeats: int) -> list[dict[str, object]]:
    photo = read_image_file(str(bundled_image(SOURCE)))
    square = cv2.resize(photo, (source_px, source_px), interpolation=cv2.INTER_CUBIC)
    uploads = {
        "source_image": cv2.imencode(".png", square)[1].tobytes(),
        "target_image": bundled_image(TARGET).read_bytes(),
    }
    targets = {"target_image": uploads["target_image"]}
    encode = {"media_type": "image/jpeg", "quality": 92, "max_pixels": 40_000_000, "label": None}
    rows = []
    for refine in (False, True):
        options = SwapOptions(refine_landmarks=refine)
        identity, _ = asyncio.run(orchestrator.identify(decode_image(uploads["source_image"]), options))

        def by_source(options: SwapOptions = options) -> bytes:
            return asyncio.run(orchestrator.swap_encoded(uploads, options, **encode)).data  # type: ignore[arg-type]

        def by_identity(options: SwapOptions = options, identity: object = identity) -> bytes:
            swap = orchestrator.swap_encoded(targets, options, identity=identity, **encode)  # type: ignore[arg-type]
            return asyncio.run(swap).data

        if by_source() != by_identity():
            raise SystemExit("a swap by identity differs from the swap by source image")
        least = _least_cpu_ms({"source": by_source, "identity": by_identity}, repeats)
        rows.append(
            {
                "refine_landmarks": refine,
                "source_ms": least["source"],
                "identity_ms": least["identity"],
                "ratio": least["identity"] / least["source"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source-px", type=int, default=1536)
    parser.add_argument("--json", help="write the rows and the environment here")
    args = parser.parse_args()
    session = SessionConfig(("cpu",), intra_op_threads=1)
    orchestrator = SwapOrchestrator(
        build_models(PipelineConfig(profile="lite", enhance=False, session=session)).ports()
    )
    rows = measure(orchestrator, args.source_px, args.repeats)
    columns = [
        ("refine_landmarks", "refine_landmarks"),
        ("source_ms", "source_image CPU ms", ".0f"),
        ("identity_ms", "identity_id CPU ms", ".0f"),
        ("ratio", "identity/source", ".2f"),
    ]
    env = environment()
    sys.stdout.write(f"device: {env['device']}; load average {env['load_average_1_5_15m']}\n")
    sys.stdout.write(format_table(rows, columns) + "\n")
    if args.json:
        write_json(args.json, {"environment": env, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
