"""The README's main job: `faceswap-serve demo` on a local Ray, through the real HTTP API."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2

from pipeline.provenance import read_label


def test_demo_swaps_through_the_service(assets, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "demo", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Ray may print its own lines to stdout at shutdown: read the summary the demo writes
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{"))) == summary
    assert summary["faces_swapped"] == 5  # the group photo's five faces, face_selector_mode=many
    assert summary["components"]["profile"] == "auto"
    image = cv2.imread(summary["output"])
    target = cv2.imread(summary["target"])
    assert image is not None and image.shape == target.shape
    assert read_label((tmp_path / "demo_swapped.jpg").read_bytes()) is not None
