"""Assets shipped inside the package: YuNet 2026may and two openly licensed sample photos.

With them the demo and ``faceswap swap`` run on a fresh install, with no models folder and no
``../shared/assets``. Provenance, licences and sha256s: ``pipeline/assets/README.md`` and
``pipeline/assets/SHA256SUMS``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pipeline.errors import InvalidInputError, ModelNotFoundError

BUNDLED_IMAGES = ("astronaut_eileen_collins_nasa.png", "codait_luciano_cc0.png")
"""File names of the bundled sample photos: the public-domain NASA astronaut and the CC0 headshot."""


def bundled_assets_dir() -> Path:
    """``pipeline/assets`` of the installed package (``models/``, ``images/``, ``SHA256SUMS``)."""
    folder = resources.files(__package__).joinpath("assets")
    if not isinstance(folder, Path) or not folder.is_dir():
        # A zipped install has no real folder to hand to ONNX Runtime or OpenCV.
        raise ModelNotFoundError(f"the bundled assets are not a folder on disk: {folder}")
    return folder


def bundled_models_dir() -> Path:
    """The folder holding the bundled ONNX models (YuNet 2026may), for a model search path."""
    return bundled_assets_dir() / "models"


def bundled_image(name: str) -> Path:
    """The path of the bundled sample photo ``name`` (one of ``BUNDLED_IMAGES``)."""
    if name not in BUNDLED_IMAGES:
        raise InvalidInputError(f"no bundled image {name!r}; bundled: {', '.join(BUNDLED_IMAGES)}")
    return bundled_assets_dir() / "images" / name
