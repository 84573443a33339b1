"""The README's main job: `faceswap-serve demo` from the installed package, on a local Ray, through the
real HTTP API, with no ../shared/assets (FACESWAP_SHARED_ASSETS points at an empty folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2

from pipeline.bundled import bundled_image
from pipeline.provenance import read_label


def test_demo_swaps_the_bundled_photos_on_a_fresh_machine(tmp_path: Path) -> None:
    empty = tmp_path / "no-shared-assets"
    empty.mkdir()
    env = {**os.environ, "FACESWAP_SHARED_ASSETS": str(empty), "FACESWAP_MODELS_DIR": str(empty)}
    command = Path(sys.executable).with_name("faceswap-serve")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(command), "demo", "-o", str(out)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary
    assert summary["faces_swapped"] == 1 and summary["message"] == "swapped 1 face"
    assert summary["components"] == {
        "profile": "auto",
        "detector": "yunet_2026may",
        "embedder": None,
        "swapper": "mesh_classical",
        "enhancer": None,
        "landmarker": "face_landmark_mediapipe",
    }
    assert summary["target"] == str(bundled_image("codait_luciano_cc0.png"))
    image = cv2.imread(summary["output"])
    target = cv2.imread(summary["target"])
    assert image is not None and image.shape == target.shape
    assert cv2.absdiff(image, target).mean() > 1.0  # the face changed
    assert read_label((out / "demo_swapped.jpg").read_bytes()) is not None
    # quiet: what the user sees is a few progress lines and the summary, no Ray log lines
    assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
