"""`faceswap` as a user runs it: a real process, real photos, exit codes and messages."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipeline.geometry import box_mask, face_region_mask
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator, crops_for
from pipeline.profiles import PipelineConfig, build_models
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
    assert "classical no-download swapper" in summary["notices"][0] and "models download" in proc.stderr
    label = read_label(out.read_bytes())
    assert label is not None and label.models["swapper"] == "mesh_classical"
    result = cv2.imread(str(out))
    original = load_image(target.name)
    assert result.shape == original.shape
    # the region paste-back may write, recomputed in-process with the same detector and options
    orchestrator = SwapOrchestrator(build_models(PipelineConfig(profile="lite")).ports())
    faces = asyncio.run(orchestrator.detect([original], SwapOptions().detector_score))[0]
    crop = orchestrator.ports.swapper.info.crop
    _, affines = crops_for(original, faces[:1], crop)
    region = face_region_mask(original.shape, affines[0], box_mask(crop.size, 0.3)) > 0
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
        "--shared-assets",
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


@pytest.mark.parametrize(
    "command, expected",
    [
        (["--help"], "faceswap"),
        (["swap", "--help"], "exit codes: 0 ok"),
        (["models", "--help"], "list"),
        (["models", "list", "--help"], "--models-dir"),
        (["models", "download", "--help"], "catalogue names"),
    ],
)
def test_every_subcommand_has_help(command, expected):
    proc = _faceswap(*command)
    assert proc.returncode == 0 and expected in proc.stdout, proc.stderr
    if command[0] == "swap":
        for text in (
            "image with the face to put in",
            "--face-selector-mode",
            "{one,many,reference}",
            "--blend-ratio",
            "0 to 1",
            "--max-faces",
        ):
            assert text in proc.stdout, text


def test_version_and_verbose_anywhere(tmp_path):
    proc = _faceswap("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("faceswap-serve ")
    proc = _faceswap("models", "list", "-v", "--models-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_models_list_shows_every_folder_searched(assets, tmp_path):
    (tmp_path / "scrfd_500m_bnkps.onnx").write_bytes(
        (assets / "models" / "scrfd_500m_bnkps.onnx").read_bytes()
    )
    proc = _faceswap("models", "list", "--models-dir", str(tmp_path), "--shared-assets")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "searched, in order:"
    assert f"1. {tmp_path}" in lines[1]
    assert any(str(assets / "models") in line for line in lines)
    row = {line.split()[0]: line.split()[2] for line in lines if line[:1].isalnum() and len(line.split()) > 3}
    assert row["scrfd_500m"] == "1." and row["inswapper_128"] == "missing"
    assert row["mobilefacenet_128d"] != "missing"


def test_output_folder_must_exist_and_enhance_only_says_so(assets, tmp_path):
    real = str(assets / "images" / "codait_luciano_cc0.png")
    proc = _faceswap(
        "swap", real, real, "-o", str(tmp_path / "missing" / "dir" / "x.jpg"), "--profile", "lite"
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "missing").exists()
    out = tmp_path / "enhanced.jpg"
    proc = _faceswap(
        "swap", real, real, "-o", str(out), "--profile", "lite", "--frame-processors", "face_enhancer"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["faces_swapped"] == 0 and summary["faces_processed"] == 1
    assert summary["frame_processors"] == ["face_enhancer"]
