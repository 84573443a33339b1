"""Shared fixtures: the real assets in ../shared/assets (skipped with a reason when absent) and the
project's generated test models."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Ray 2.60 in CI: no token auth prompt, no usage-stats network calls.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The process ends with pytest's exit status, before the interpreter's own finalisation. That
    finalisation tears down the native extensions this suite loads (Ray's core worker, ONNX Runtime, PyAV,
    OpenCV, torch) with their threads, and it has ended a fully reported run with a segmentation fault
    (exit 139) after the result was decided. By the time the handler runs, pytest's main has returned (its
    reports and cleanups are done); exit handlers run last-in first-out, so the libraries' own (registered
    earlier) are skipped: the fixtures shut their Ray down, and logging is flushed here."""

    def leave() -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(exitstatus))

    atexit.register(leave)


def shared_assets_dir() -> Path:
    return Path(os.environ.get("FACESWAP_SHARED_ASSETS", REPO.parent / "shared" / "assets"))


@pytest.fixture(scope="session")
def assets() -> Path:
    """../shared/assets, or skip: the real photos, videos and detector models live there."""
    path = shared_assets_dir()
    if not (path / "images").is_dir() or not (path / "models").is_dir():
        pytest.skip(f"real test assets not found at {path} (set FACESWAP_SHARED_ASSETS)")
    return path


@pytest.fixture(scope="session")
def load_image(assets: Path):
    """Load a real photo from ../shared/assets/images as ImageBGR."""

    def _load(name: str) -> np.ndarray:
        image = cv2.imread(str(assets / "images" / name), cv2.IMREAD_COLOR)
        assert image is not None, name
        return image

    return _load


@pytest.fixture(scope="session")
def test_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The project's generated test models (never real ones), written once per session."""
    from pipeline.testmodels import write_test_models

    return write_test_models(tmp_path_factory.mktemp("test_models"))
