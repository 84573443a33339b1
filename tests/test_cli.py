"""`faceswap` as a user runs it: a real process, real photos, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np

from pipeline.options import SwapOptions
from pipeline.profiles import PipelineConfig, build_pipeline
from pipeline.provenance import read_label


def _faceswap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_swap_two_real_photos_changes_only_the_face(assets, load_image, tmp_path):
    out = tmp_path / "swapped.png"
    source = assets / "images" / "astronaut_eileen_collins_nasa.png"
    target = assets / "images" / "pexels_woman_portrait_638700.jpeg"
    proc = _faceswap("swap", str(source), str(target), "-o", str(out), "--profile", "lite")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["profile"] == "lite" and summary["faces_swapped"] == 1
    label = read_label(out.read_bytes())
    assert label is not None and label.models["swapper"] == "classical"
    result = cv2.imread(str(out))
    original = load_image(target.name)
    assert result.shape == original.shape
    # the region paste-back may write, recomputed in-process with the same detector and options
    pipeline = build_pipeline(PipelineConfig(profile="lite"))
    from pipeline.engine import crops_for
    from pipeline.geometry import box_mask, face_region_mask

    faces = pipeline.target_faces(original, SwapOptions())
    _, affines = crops_for(original, faces, pipeline.swapper.template, pipeline.swapper.crop_size)
    region = face_region_mask(original.shape, affines[0], box_mask(pipeline.swapper.crop_size, 0.3)) > 0
    diff = np.abs(result.astype(int) - original.astype(int)).sum(axis=2)
    assert (diff[~region] == 0).all()
    assert diff[region].mean() > 8


def test_auto_profile_uses_the_shared_models_and_says_so(assets, tmp_path):
    out = tmp_path / "auto.jpg"
    images = assets / "images"
    proc = _faceswap(
        "swap",
        str(images / "codait_luciano_cc0.png"),
        str(images / "pexels_man_santa_costume_716658.jpeg"),
        "-o",
        str(out),
        "--models-dir",
        str(tmp_path / "empty"),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["profile"] == "auto"
    assert summary["detector"] != "haar" and summary["embedder"] is not None
    assert cv2.imread(str(out)) is not None
    unlabelled = tmp_path / "plain.png"
    proc = _faceswap(
        "swap",
        str(images / "codait_luciano_cc0.png"),
        str(images / "codait_luciano_cc0.png"),
        "-o",
        str(unlabelled),
        "--profile",
        "lite",
        "--no-provenance",
    )
    assert proc.returncode == 0, proc.stderr
    assert read_label(unlabelled.read_bytes()) is None


def test_unreadable_image_no_face_and_missing_models_exit_non_zero(assets, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    real = str(assets / "images" / "codait_luciano_cc0.png")
    proc = _faceswap("swap", str(text), real, "-o", str(tmp_path / "o.jpg"), "--profile", "lite")
    assert proc.returncode == 2 and "not a JPEG" in proc.stderr
    proc = _faceswap("swap", str(tmp_path / "missing.png"), real, "-o", str(tmp_path / "o.jpg"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    proc = _faceswap("swap", str(blank), real, "-o", str(tmp_path / "o.jpg"), "--profile", "lite")
    assert proc.returncode == 3 and "no face found in the source" in proc.stderr
    proc = _faceswap(
        "swap",
        real,
        real,
        "-o",
        str(tmp_path / "o.jpg"),
        "--profile",
        "full",
        "--models-dir",
        str(tmp_path / "nothing"),
    )
    assert proc.returncode == 4 and ".onnx" in proc.stderr, proc.stderr
    proc = _faceswap("swap", real, real, "-o", str(tmp_path / "o.jpg"), "--blend-ratio", "3")
    assert proc.returncode == 2 and "blend_ratio" in proc.stderr
