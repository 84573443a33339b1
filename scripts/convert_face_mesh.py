#!/usr/bin/env python3
"""Convert MediaPipe's 468-point face mesh from the ``mediapipe`` wheel on PyPI to ONNX, verify it against
LiteRT's interpreter on real face crops, and write it with its provenance, triangles and NOTICE.

Only PyPI packages are used, and none of them becomes a runtime dependency of the project: run this once,
in a throwaway virtual environment, from the repository root::

    python3 -m venv /tmp/venv-convert
    /tmp/venv-convert/bin/pip install tf2onnx==1.17.0 tensorflow-cpu==2.21.0 ai-edge-litert==2.3.0 \\
        onnxruntime opencv-python-headless
    /tmp/venv-convert/bin/python scripts/convert_face_mesh.py

Steps: ``pip download --no-deps mediapipe==0.10.21`` (the cp311 manylinux wheel, checked against its
sha256); take ``mediapipe/modules/face_landmark/face_landmark.tflite`` (checked too) and
``mediapipe/python/solutions/face_mesh_connections.py`` from it; convert the .tflite with tf2onnx's
TFLite front end (opset 13; its float16 weights become float32 constants); run the ONNX model (ONNX
Runtime) and the .tflite (LiteRT) on the 192x192 face crops of every face YuNet finds in the shared
photos plus non-face crops, and fail unless landmarks agree within 0.01 px and the face logit within
1e-3; rebuild the mesh's 898 triangles from the connections; write into ``--out``:

- ``face_landmark_mediapipe.onnx``
- ``face_landmark_mediapipe_triangles.json``: (898, 3) vertex indices
- ``face_landmark_mediapipe.provenance.json``: wheel, source files, converter, opset, sha256 of outputs
- ``face_landmark_mediapipe.NOTICE``: Apache-2.0 attribution and the licence text from the wheel

tf2onnx names nodes with process-wide counters, so a rerun can give different bytes (the same graph);
the provenance records the sha256 of the file actually written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import runpy
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from importlib import metadata
from itertools import combinations
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages without installing them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from pipeline import mesh  # noqa: E402
from pipeline.geometry import warp_face  # noqa: E402
from pipeline.models.detectors import YunetDetector  # noqa: E402

log = logging.getLogger("convert_face_mesh")

REPO = Path(__file__).resolve().parents[1]
WHEEL_REQUIREMENT = "mediapipe==0.10.21"
WHEEL_FILE = "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"
TFLITE_MEMBER = "mediapipe/modules/face_landmark/face_landmark.tflite"
TFLITE_SHA256 = "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
CONNECTIONS_MEMBER = "mediapipe/python/solutions/face_mesh_connections.py"
LICENSE_MEMBER = "mediapipe-0.10.21.dist-info/LICENSE"
OPSET = 13
STEM = "face_landmark_mediapipe"
INPUT_SIZE = 192
LANDMARK_TOLERANCE_PX = 0.01
LOGIT_TOLERANCE = 1e-3
TRIANGLES = 898
"""Triangles of MediaPipe's canonical face model (canonical_face_model.obj), eyes and mouth closed."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(folder: Path) -> Path:
    """The pinned mediapipe wheel, fetched with pip (no dependencies) and checked against its sha256."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "-d",
            str(folder),
            WHEEL_REQUIREMENT,
        ],
        check=True,
    )
    wheel = folder / WHEEL_FILE
    digest = sha256(wheel.read_bytes())
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def convert(tflite: Path) -> bytes:
    """The serialised ONNX model converted by tf2onnx's TFLite front end at opset ``OPSET``."""
    from tf2onnx import convert as tf2onnx_convert

    model, _ = tf2onnx_convert.from_tflite(str(tflite), opset=OPSET)
    return model.SerializeToString()


def face_crops(assets: Path) -> np.ndarray:
    """(N, 192, 192, 3) uint8 BGR: every face YuNet finds in the shared photos, aligned to ffhq_512 at
    192 (as the landmarker does), plus two non-face crops (a flat grey and a photo's corner)."""
    session = ort.InferenceSession(
        str(assets / "models" / "face_detection_yunet_2026may.onnx"), providers=["CPUExecutionProvider"]
    )
    detector = YunetDetector(session)
    crops = []
    for path in sorted((assets / "images").iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for face in detector.detect(image):
            crops.append(warp_face(image, face.landmarks, "ffhq_512", INPUT_SIZE)[0])
    if not crops:
        raise SystemExit(f"no faces found in {assets / 'images'}")
    corner = cv2.imread(str(assets / "images" / "pexels_group_meeting_1080865.jpeg"), cv2.IMREAD_COLOR)
    crops.append(np.full((INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8))
    crops.append(np.ascontiguousarray(corner[-INPUT_SIZE:, -INPUT_SIZE:]))
    return np.stack(crops)


def verify(onnx_bytes: bytes, tflite: Path, crops: np.ndarray) -> dict[str, object]:
    """Run both models on ``crops`` (RGB in [0, 1], NHWC); fail unless they agree within tolerance."""
    from ai_edge_litert.interpreter import Interpreter

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    sinks = [d["index"] for d in interpreter.get_output_details()]
    landmark_diff = logit_diff = 0.0
    logits = []
    for crop in crops:
        blob = (crop[..., ::-1].astype(np.float32) / 255.0)[None]
        ours = session.run(None, {session.get_inputs()[0].name: blob})
        interpreter.set_tensor(source, blob)
        interpreter.invoke()
        theirs = [interpreter.get_tensor(i) for i in sinks]
        landmark_diff = max(landmark_diff, float(np.abs(ours[0] - theirs[0]).max()))
        logit_diff = max(logit_diff, float(np.abs(ours[1] - theirs[1]).max()))
        logits.append(round(float(ours[1].ravel()[0]), 3))
    log.info("max |onnx - tflite|: landmarks %.2e px, face logit %.2e", landmark_diff, logit_diff)
    if landmark_diff > LANDMARK_TOLERANCE_PX or logit_diff > LOGIT_TOLERANCE:
        raise SystemExit(f"ONNX and TFLite disagree: landmarks {landmark_diff} px, logit {logit_diff}")
    return {
        "reference": f"ai-edge-litert=={metadata.version('ai-edge-litert')} Interpreter",
        "crops": f"{len(crops) - 2} YuNet faces of the shared photos aligned to ffhq_512 at 192, "
        "plus 2 non-face crops",
        "face_logits": logits,
        "max_abs_diff_landmarks_px": landmark_diff,
        "max_abs_diff_face_logit": logit_diff,
    }


def _edges(points: tuple[int, ...], closed: bool) -> set[tuple[int, int]]:
    """Undirected edges (sorted pairs) along ``points``; ``closed`` adds the edge back to the start."""
    pairs = zip(points, points[1:] + points[:1] if closed else points[1:], strict=False)
    return {(min(a, b), max(a, b)) for a, b in pairs}


def check_index_sets(namespace: dict[str, object]) -> None:
    """Fail unless pipeline.mesh's loops give exactly the edges of the wheel's connection sets."""
    brows = {"RIGHT_EYEBROW": mesh.RIGHT_EYEBROW, "LEFT_EYEBROW": mesh.LEFT_EYEBROW}
    ours = {
        "FACEMESH_FACE_OVAL": _edges(mesh.FACE_OVAL, True),
        "FACEMESH_LEFT_EYE": _edges(mesh.LEFT_EYE, True),
        "FACEMESH_RIGHT_EYE": _edges(mesh.RIGHT_EYE, True),
        "FACEMESH_LIPS": _edges(mesh.LIPS_OUTER, True) | _edges(mesh.LIPS_INNER, True),
        # each eyebrow outline is two polylines of five points joined end to end
        **{f"FACEMESH_{k}": _edges(v[:5], False) | _edges(v[5:][::-1], False) for k, v in brows.items()},
    }
    for name, edges in ours.items():
        if edges != {(min(a, b), max(a, b)) for a, b in namespace[name]}:  # type: ignore[attr-defined]
            raise SystemExit(f"pipeline.mesh does not match {name} of the wheel")
    nose = {i for edge in namespace["FACEMESH_NOSE"] for i in edge}  # type: ignore[attr-defined]
    if nose != set(mesh.NOSE):
        raise SystemExit("pipeline.mesh.NOSE does not match FACEMESH_NOSE of the wheel")


def _zip_loop(loop: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``len(loop) - 2`` triangles closing the hole bounded by ``loop``, whose two halves run from
    ``loop[0]`` to ``loop[len // 2]`` (the eye or mouth corners): a zipper across the opening."""
    corner = len(loop) // 2
    lower = loop[: corner + 1]
    upper = (loop[0], *loop[: corner - 1 : -1])
    triangles = []
    for i in range(1, corner):
        triangles.append((lower[i - 1], lower[i], upper[i]))
        triangles.append((lower[i], upper[i + 1], upper[i]))
    return triangles


def triangles_from_connections(connections: Path) -> list[list[int]]:
    """(898, 3) triangles of the face mesh from MediaPipe's ``FACEMESH_TESSELATION`` edge list.

    Every 3-cycle of the edge graph is a face except two spurious ones (each of their edges already
    borders two faces); the eye and mouth openings, holes in the tessellation, are closed with a zipper.
    """
    namespace = runpy.run_path(str(connections))
    check_index_sets(namespace)
    edges = {(min(a, b), max(a, b)) for a, b in namespace["FACEMESH_TESSELATION"]}
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    cycles = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}
    uses = Counter(e for t in cycles for e in combinations(t, 2))
    faces = [t for t in cycles if not all(uses[e] == 3 for e in combinations(t, 2))]
    for loop in (mesh.LEFT_EYE, mesh.RIGHT_EYE, mesh.LIPS_INNER):
        faces.extend(_zip_loop(loop))
    uses = Counter(tuple(sorted(e)) for t in faces for e in combinations(t, 2))
    vertices = {v for t in faces for v in t}
    euler = len(vertices) - len(uses) + len(faces)
    if len(faces) != TRIANGLES or len(vertices) != mesh.MESH_POINTS or max(uses.values()) != 2 or euler != 1:
        raise SystemExit(f"the tessellation is not a disc of {TRIANGLES} triangles: {len(faces)} faces")
    return sorted([sorted(map(int, t)) for t in faces])


def notice(license_text: str) -> str:
    apache = license_text.split("=" * 20)[0].rstrip()
    return (
        "face_landmark_mediapipe.onnx and face_landmark_mediapipe_triangles.json\n\n"
        "MediaPipe Face Mesh, Copyright The MediaPipe Authors (Google LLC).\n"
        "https://github.com/google/mediapipe - licensed under the Apache License, Version 2.0.\n\n"
        f"Source: the {WHEEL_FILE} wheel on PyPI ({WHEEL_REQUIREMENT}), files\n"
        f"  {TFLITE_MEMBER}\n  {CONNECTIONS_MEMBER}\n\n"
        "Modifications: face_landmark.tflite was converted to ONNX (opset 13) with tf2onnx; its float16\n"
        "weights are stored as float32. No weights were retrained or changed otherwise. The triangles were\n"
        "rebuilt from FACEMESH_TESSELATION, with the eye and mouth openings closed.\n"
        "See face_landmark_mediapipe.provenance.json for versions and checksums.\n\n"
        f"{apache}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--assets",
        type=Path,
        default=REPO.parent / "shared" / "assets",
        help="shared assets folder (photos and YuNet for the verification crops)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "pipeline" / "assets" / "models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            tflite_bytes = archive.read(TFLITE_MEMBER)
            connections_bytes = archive.read(CONNECTIONS_MEMBER)
            license_text = archive.read(LICENSE_MEMBER).decode()
        if sha256(tflite_bytes) != TFLITE_SHA256:
            raise SystemExit(f"{TFLITE_MEMBER}: sha256 {sha256(tflite_bytes)}, expected {TFLITE_SHA256}")
        tflite = Path(tmp) / "face_landmark.tflite"
        tflite.write_bytes(tflite_bytes)
        connections = Path(tmp) / "face_mesh_connections.py"
        connections.write_bytes(connections_bytes)
        onnx_bytes = convert(tflite)
        verification = verify(onnx_bytes, tflite, face_crops(args.assets))
        triangles = triangles_from_connections(connections)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{STEM}.onnx").write_bytes(onnx_bytes)
    triangles_bytes = (json.dumps(triangles, separators=(",", ":")) + "\n").encode()
    (args.out / f"{STEM}_triangles.json").write_bytes(triangles_bytes)
    (args.out / f"{STEM}.NOTICE").write_text(notice(license_text))
    model = onnx.load_from_string(onnx_bytes)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    provenance = {
        "model": f"{STEM}.onnx",
        "what": "MediaPipe Face Mesh (468 landmarks), face_landmark.tflite converted to ONNX",
        "licence": "Apache-2.0 (The MediaPipe Authors); see " + f"{STEM}.NOTICE",
        "wheel": {"requirement": WHEEL_REQUIREMENT, "file": WHEEL_FILE, "sha256": WHEEL_SHA256},
        "tflite": {"path": TFLITE_MEMBER, "sha256": TFLITE_SHA256, "bytes": len(tflite_bytes)},
        "converter": {
            "name": "tf2onnx",
            "version": metadata.version("tf2onnx"),
            "front_end": "from_tflite",
            "tensorflow": metadata.version("tensorflow-cpu"),
            "onnx": metadata.version("onnx"),
        },
        "onnx": {
            "opset": OPSET,
            "ir_version": model.ir_version,
            "sha256": sha256(onnx_bytes),
            "bytes": len(onnx_bytes),
            "inputs": [{"name": i.name, "shape": i.shape, "type": i.type} for i in session.get_inputs()],
            "outputs": [{"name": o.name, "shape": o.shape, "type": o.type} for o in session.get_outputs()],
            "io": "input NHWC RGB float32 in [0, 1], 192x192; output 0: 468 x (x, y, z) in input pixels; "
            "output 1: face-presence logit (sigmoid gives the probability)",
        },
        "verification": verification,
        "triangles": {
            "file": f"{STEM}_triangles.json",
            "source": f"{CONNECTIONS_MEMBER} (FACEMESH_TESSELATION), sha256 {sha256(connections_bytes)}",
            "count": len(triangles),
            "sha256": sha256(triangles_bytes),
        },
        "script": "scripts/convert_face_mesh.py",
    }
    (args.out / f"{STEM}.provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("wrote %s (%d bytes, sha256 %s)", args.out / f"{STEM}.onnx", len(onnx_bytes), sha256(onnx_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
