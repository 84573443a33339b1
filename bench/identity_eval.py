#!/usr/bin/env python3
"""Does the swap look like the source person? Identity and sharpness over all ordered pairs of the
shared single-face photos (6 photos, 30 pairs), through the project's own orchestration with a profile's
models (default: the no-download default, i.e. what a fresh install runs).

    python -m bench.identity_eval [--assets ../shared/assets] [--profile auto] [--models-dir DIR] [--json OUT]

Identity: the shared 128-d MobileFaceNet (BGR, arcface_112_v2 crops from YuNet's landmarks of the largest
face), independent of the swap. Per pair: cos(output, source), cos(output, target), gain = cos(output,
source) - cos(target, source), whether the output is closer to the source than to the target, and
sharpness = variance of the Laplacian (grey) of the output inside the target's face box / the target's
own. Targets of issue 12: mean gain >= +0.35, closer to the source on >= 80% of pairs, mean sharpness
>= 0.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict, dataclass
from itertools import permutations
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages without installing them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from bench.common import environment, write_json  # noqa: E402
from pipeline.errors import NoFaceError  # noqa: E402
from pipeline.geometry import warp_face  # noqa: E402
from pipeline.models.detectors import YunetDetector  # noqa: E402
from pipeline.models.embedder import ArcFaceEmbedder  # noqa: E402
from pipeline.options import SwapOptions  # noqa: E402
from pipeline.orchestration import SwapOrchestrator  # noqa: E402
from pipeline.profiles import PROFILES, PipelineConfig, build_models  # noqa: E402
from pipeline.sessions import SessionConfig, create_session  # noqa: E402
from pipeline.types import Embedding, Face, ImageBGR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GROUP_PHOTO = "pexels_group_meeting_1080865.jpeg"


@dataclass(frozen=True)
class Row:
    source: str
    target: str
    cos_source: float
    cos_target: float
    gain: float
    sharpness: float

    @property
    def closer(self) -> bool:
        return self.cos_source > self.cos_target


def largest_face(detector: YunetDetector, image: ImageBGR) -> Face:
    faces = detector.detect(image)
    if not faces:
        raise NoFaceError("no face found")
    return max(faces, key=lambda f: f.area)


def swap_with(orchestrator: SwapOrchestrator, source: ImageBGR, target: ImageBGR) -> ImageBGR:
    """The source's largest face onto the target's largest face, by the project's one orchestration."""
    return asyncio.run(orchestrator.swap(source, target, SwapOptions())).image


def identity(embedder: ArcFaceEmbedder, detector: YunetDetector, image: ImageBGR) -> Embedding:
    crop, _ = warp_face(image, largest_face(detector, image).landmarks, embedder.template, embedder.crop_size)
    embedding: Embedding = embedder.embed_crops(crop[None])[0]
    return embedding


def sharpness(image: ImageBGR, box: npt.NDArray[np.float32]) -> float:
    """Variance of the Laplacian of ``image``'s grey levels inside ``box`` (x1, y1, x2, y2)."""
    h, w = image.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    grey = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def evaluate(
    orchestrator: SwapOrchestrator,
    detector: YunetDetector,
    embedder: ArcFaceEmbedder,
    images: dict[str, ImageBGR],
) -> list[Row]:
    """One row per ordered (source, target) pair of ``images``."""
    embeddings = {name: identity(embedder, detector, image) for name, image in images.items()}
    rows = []
    for source, target in permutations(sorted(images), 2):
        out = swap_with(orchestrator, images[source], images[target])
        e = identity(embedder, detector, out)
        box = largest_face(detector, images[target]).bbox
        rows.append(
            Row(
                source=source,
                target=target,
                cos_source=float(e @ embeddings[source]),
                cos_target=float(e @ embeddings[target]),
                gain=float(e @ embeddings[source] - embeddings[target] @ embeddings[source]),
                sharpness=sharpness(out, box) / sharpness(images[target], box),
            )
        )
    return rows


def table(name: str, rows: list[Row]) -> str:
    header = f"{'cos(o,s)':>8} {'cos(o,t)':>8} {'gain':>7} {'closer':>6} {'sharp':>6}"
    lines = [f"## {name}", f"{'source':<24} {'target':<24} {header}"]
    for r in rows:
        lines.append(
            f"{r.source[:24]:<24} {r.target[:24]:<24} {r.cos_source:8.3f} {r.cos_target:8.3f} "
            f"{r.gain:+7.3f} {'yes' if r.closer else 'no':>6} {r.sharpness:6.2f}"
        )
    closer = sum(r.closer for r in rows)
    cos_source, cos_target = np.mean([r.cos_source for r in rows]), np.mean([r.cos_target for r in rows])
    gain, sharp = np.mean([r.gain for r in rows]), np.mean([r.sharpness for r in rows])
    lines.append(
        f"{'mean':<49} {cos_source:8.3f} {cos_target:8.3f} {gain:+7.3f} {closer:>3}/{len(rows)} {sharp:6.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", type=Path, default=REPO.parent / "shared" / "assets")
    parser.add_argument(
        "--profile", choices=PROFILES, default="auto", help="the models that swap (default auto)"
    )
    parser.add_argument(
        "--models-dir", type=Path, help="models folder of the profile (default: the cache dir)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and means as JSON")
    args = parser.parse_args(argv)
    config = SessionConfig()
    models = args.assets / "models"
    detector = YunetDetector(create_session(models / "face_detection_yunet_2026may.onnx", config))
    recognition = create_session(models / "mobilefacenet_paddlex_128d.onnx", config)
    embedder = ArcFaceEmbedder(recognition, rgb=False, name="mobilefacenet_128d")
    images = {
        path.name: cv2.imread(str(path), cv2.IMREAD_COLOR)
        for path in sorted((args.assets / "images").iterdir())
        if path.name != GROUP_PHOTO
    }
    swap_models = build_models(
        PipelineConfig(profile=args.profile, models_dir=args.models_dir, enhance=False)
    )
    orchestrator = SwapOrchestrator(swap_models.ports())
    name = f"profile {args.profile}: {orchestrator.components}"
    rows = evaluate(orchestrator, detector, embedder, images)
    sys.stdout.write(table(name, rows) + "\n")
    if args.json is not None:
        payload = {
            "environment": environment(),
            "components": orchestrator.components,
            "rows": [asdict(r) for r in rows],
        }
        sys.stdout.write(f"wrote {write_json(args.json, payload)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
