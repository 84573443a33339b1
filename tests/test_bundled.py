"""The assets shipped inside the package (pipeline/assets): their sha256s, licences, and the bundled YuNet
finding the one face in each bundled photo. Runs from the installed package, with no ../shared/assets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import pytest

from pipeline.bundled import BUNDLED_IMAGES, bundled_assets_dir, bundled_image, bundled_models_dir
from pipeline.errors import InvalidInputError
from pipeline.models.detectors import YunetDetector
from pipeline.sessions import SessionConfig, create_session
from tests.conftest import shared_assets_dir
from tests.test_detectors import README_BOXES, check_face, iou, xyxy

YUNET = "face_detection_yunet_2026may.onnx"
ASSET_FOLDERS = ("models", "images")
LICENCE_MARKERS = {
    f"models/{YUNET}": "Copyright (c) 2020 Shiqi Yu",
    "images/astronaut_eileen_collins_nasa.png": "public domain",
    "images/codait_luciano_cc0.png": "CC0 1.0 Universal",
}


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _listed() -> dict[str, str]:
    """SHA256SUMS as relative path -> sha256."""
    lines = (bundled_assets_dir() / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    pairs = [line.split(maxsplit=1) for line in lines if line.strip()]
    return {name.lstrip("*"): digest for digest, name in pairs}


def _is_asset(path: Path) -> bool:
    """A model, photo or data file, not one of the licence or notice texts beside it."""
    texts = path.name.startswith(("LICENSE", "NOTICE")) or path.suffix in {".txt", ".md", ".NOTICE"}
    return path.is_file() and not texts


def test_sha256sums_lists_every_bundled_asset() -> None:
    root = bundled_assets_dir()
    files = [path for folder in ASSET_FOLDERS for path in (root / folder).iterdir() if _is_asset(path)]
    on_disk = {path.relative_to(root).as_posix() for path in files}
    assert set(_listed()) == on_disk
    assert {f"models/{YUNET}", *(f"images/{name}" for name in BUNDLED_IMAGES)} <= on_disk


@pytest.mark.parametrize("name", sorted(_listed()))
def test_bundled_file_matches_its_sha256(name: str) -> None:
    assert _sha256(bundled_assets_dir() / name) == _listed()[name]


@pytest.mark.parametrize("name", sorted(_listed()))
def test_bundled_file_is_the_shared_original(name: str) -> None:
    original = shared_assets_dir() / name
    if not original.is_file():
        pytest.skip(f"shared original not found at {original} (set FACESWAP_SHARED_ASSETS)")
    assert _sha256(original) == _sha256(bundled_assets_dir() / name)


@pytest.mark.parametrize(("name", "marker"), sorted(LICENCE_MARKERS.items()))
def test_licence_text_sits_beside_each_asset(name: str, marker: str) -> None:
    asset = bundled_assets_dir() / name
    licence = asset.with_name(f"LICENSE-{asset.stem}.txt")
    assert marker.lower() in licence.read_text(encoding="utf-8").lower()
    assert _listed()[name] in (bundled_assets_dir() / "README.md").read_text(encoding="utf-8")


def test_bundled_paths() -> None:
    assert bundled_models_dir() == bundled_assets_dir() / "models"
    assert (bundled_models_dir() / YUNET).is_file()
    for name in BUNDLED_IMAGES:
        assert bundled_image(name).is_file()
    with pytest.raises(InvalidInputError, match="astronaut_eileen_collins_nasa.png"):
        bundled_image("../models/" + YUNET)


@pytest.fixture(scope="module")
def yunet() -> YunetDetector:
    return YunetDetector(create_session(bundled_models_dir() / YUNET, SessionConfig()), name="yunet_2026may")


@pytest.mark.parametrize("name", BUNDLED_IMAGES)
def test_bundled_yunet_finds_the_one_face_in_each_bundled_photo(yunet: YunetDetector, name: str) -> None:
    image = cv2.imread(str(bundled_image(name)), cv2.IMREAD_COLOR)
    assert image is not None
    (face,) = yunet.detect(image)
    (expected,) = README_BOXES[name]
    assert face.score > 0.9
    assert iou(xyxy(expected), face.bbox) > 0.7
    check_face(face, image.shape)
