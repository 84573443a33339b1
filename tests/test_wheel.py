"""The package as a user installs it: a wheel built from the tracked files, installed (not editable) into a
folder of its own, runs `faceswap models list` and a swap of the bundled photos from any directory, with no
source tree and no ../shared/assets to lean on (the model catalogue, YuNet, the face mesh and the photos are
package data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed wheel (``pip install --target``), built from ``git ls-files``."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the wheel is built from the tracked files")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("faceswap_serve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in (
        "pipeline/models.yaml",
        "pipeline/assets/models/face_detection_yunet_2026may.onnx",
        "pipeline/assets/models/face_landmark_mediapipe.onnx",
        "pipeline/assets/images/codait_luciano_cc0.png",
        "serve_app/static/index.html",
    ):
        assert packaged in names, packaged
    target = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def _run(installed: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline.cli ARGS`` from an empty folder, the installed copy first on the path."""
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(installed),
        "FACESWAP_SHARED_ASSETS": str(empty),
        "FACESWAP_MODELS_DIR": str(empty),
    }
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=empty, env=env, capture_output=True, text=True
    )


def test_the_installed_wheel_lists_models_and_swaps(installed: Path, tmp_path: Path) -> None:
    where = _run(installed, tmp_path, "--version")
    assert where.returncode == 0 and where.stdout.startswith("faceswap-serve ")
    listing = _run(installed, tmp_path, "models", "list")
    assert listing.returncode == 0, listing.stderr
    assert str(installed / "pipeline" / "assets" / "models") in listing.stdout
    rows = {line.split()[0]: line.split()[2] for line in listing.stdout.splitlines()[4:] if line.strip()}
    assert rows["yunet_2026may"] != "missing" and rows["inswapper_128"] == "missing"
    images = installed / "pipeline" / "assets" / "images"
    out = tmp_path / "swapped.jpg"
    swap = _run(
        installed,
        tmp_path,
        "swap",
        str(images / "astronaut_eileen_collins_nasa.png"),
        str(images / "codait_luciano_cc0.png"),
        "-o",
        str(out),
    )
    assert swap.returncode == 0, swap.stderr
    summary = json.loads(swap.stdout)
    assert summary["faces_swapped"] == 1 and summary["swapper"] == "mesh_classical"
    result = cv2.imread(str(out))
    assert result is not None and result.shape == cv2.imread(str(images / "codait_luciano_cc0.png")).shape
