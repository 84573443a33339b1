"""In-process ports: the orchestration's ports (:mod:`pipeline.ports`) over model objects in this process.

The CLI, the Ray Data swap actors and the tests run the orchestration on these; ``serve_app`` deploys the
same model objects behind Serve deployments and gives the orchestration handle-backed ports instead. The
``*_info`` functions state what a model is (name, canvas or crop geometry) for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.models.base import Detector, Embedder, Enhancer, Landmarker, Swapper
from pipeline.ports import (
    CropSpec,
    DenseLandmarks,
    DetectorInfo,
    EmbedderInfo,
    Embeddings,
    EnhancerInfo,
    LandmarkerInfo,
    Ports,
    Swapped,
    SwapperInfo,
)
from pipeline.types import CropsBGR, Face, ImageBGR


def detector_info(model: Detector) -> DetectorInfo:
    return DetectorInfo(model.name, model.canvas)


def embedder_info(model: Embedder) -> EmbedderInfo:
    return EmbedderInfo(model.name, CropSpec(model.template, model.crop_size), model.dim)


def swapper_info(model: Swapper) -> SwapperInfo:
    return SwapperInfo(
        model.name,
        CropSpec(model.template, model.crop_size),
        model.identity,
        model.identity_dim,
        model.notice,
    )


def enhancer_info(model: Enhancer) -> EnhancerInfo:
    return EnhancerInfo(model.name, CropSpec(model.template, model.crop_size))


def landmarker_info(model: Landmarker) -> LandmarkerInfo:
    return LandmarkerInfo(model.name, CropSpec(model.template, model.crop_size), model.points)


def run_landmarker(model: Landmarker, crops: CropsBGR) -> DenseLandmarks:
    """``model.landmarks`` as a :class:`~pipeline.ports.DenseLandmarks`."""
    return DenseLandmarks(*model.landmarks(crops))


def run_swapper(model: Swapper, crops: CropsBGR, identities: np.ndarray) -> Swapped:
    """``model.swap_crops`` as a :class:`~pipeline.ports.Swapped` (crops, optional masks)."""
    out = model.swap_crops(crops, identities)
    return Swapped(*out) if isinstance(out, tuple) else Swapped(out)


class LocalDetector:
    def __init__(self, model: Detector) -> None:
        self.model = model
        self.info = detector_info(model)

    async def detect(self, canvases: Sequence[ImageBGR], score_threshold: float) -> list[list[Face]]:
        return [self.model.detect_canvas(canvas, score_threshold) for canvas in canvases]


class LocalEmbedder:
    def __init__(self, model: Embedder) -> None:
        self.model = model
        self.info = embedder_info(model)

    async def embed(self, crops: CropsBGR) -> Embeddings:
        return self.model.embed_crops(crops)


class LocalSwapper:
    def __init__(self, model: Swapper) -> None:
        self.model = model
        self.info = swapper_info(model)

    async def swap(self, crops: CropsBGR, identities: np.ndarray) -> Swapped:
        return run_swapper(self.model, crops, identities)


class LocalEnhancer:
    def __init__(self, model: Enhancer) -> None:
        self.model = model
        self.info = enhancer_info(model)

    async def enhance(self, crops: CropsBGR) -> CropsBGR:
        return self.model.enhance_crops(crops)


class LocalLandmarker:
    def __init__(self, model: Landmarker) -> None:
        self.model = model
        self.info = landmarker_info(model)

    async def landmarks(self, crops: CropsBGR) -> DenseLandmarks:
        return run_landmarker(self.model, crops)


@dataclass(frozen=True)
class Models:
    """The model objects of one profile (``pipeline.profiles.build_models``)."""

    detector: Detector
    swapper: Swapper
    embedder: Embedder | None = None
    enhancer: Enhancer | None = None
    landmarker: Landmarker | None = None
    profile: str = "custom"

    def ports(self) -> Ports:
        """In-process ports over these models."""
        return Ports(
            detector=LocalDetector(self.detector),
            swapper=LocalSwapper(self.swapper),
            embedder=LocalEmbedder(self.embedder) if self.embedder is not None else None,
            enhancer=LocalEnhancer(self.enhancer) if self.enhancer is not None else None,
            landmarker=LocalLandmarker(self.landmarker) if self.landmarker is not None else None,
            profile=self.profile,
        )
