"""Build pipelines from a profile: which model runs for each stage, found on disk or embedded.

Profiles:
- ``lite``: needs no download: the bundled YuNet 2026may detector, the classical mesh swapper (MediaPipe's
  bundled 468-point face mesh, piecewise-affine warp, skin-tone match, Poisson blend) and the classical
  enhancer. No embedder.
- ``full``: FaceFusion's models (scrfd_2.5g, arcface_w600k_r50, inswapper_128, gfpgan_1.4); each file
  must be in the models directory (or be downloaded with ``download=True``).
- ``auto`` (default): for each stage, the best model whose file is present (models dir, extra dirs, the
  bundled models, then the shared assets when enabled), else the ``lite`` component.
``overrides`` pin a stage to a catalogue name or to an ONNX file path (e.g. the project's test models).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from pipeline.bundled import bundled_models_dir
from pipeline.catalogue import Catalogue, ModelSpec, default_models_dir, resolve_model_file
from pipeline.download import ensure_models
from pipeline.errors import InvalidOptionError, ModelNotFoundError
from pipeline.inprocess import Models
from pipeline.models.base import Detector, Embedder, Enhancer, Swapper
from pipeline.models.classical import ClassicalEnhancer
from pipeline.models.detectors import ScrfdDetector, YunetDetector
from pipeline.models.embedder import ArcFaceEmbedder
from pipeline.models.enhancer import GfpganEnhancer
from pipeline.models.landmarker import FaceMeshLandmarker, packaged_model_path
from pipeline.models.mesh_swapper import MeshSwapper
from pipeline.models.swapper import InswapperSwapper, load_emap
from pipeline.sessions import SessionConfig, create_session

log = logging.getLogger(__name__)

PROFILES = ("auto", "lite", "full")
LITE_DETECTOR = "yunet_2026may"
"""The detector the package ships (pipeline/assets/models): the ``lite`` profile's, ``auto``'s fallback."""
STAGES = ("detector", "embedder", "swapper", "enhancer")

FULL_MODELS = MappingProxyType(
    {
        "detector": "scrfd_2.5g",
        "embedder": "arcface_w600k_r50",
        "swapper": "inswapper_128",
        "enhancer": "gfpgan_1.4",
    }
)
AUTO_PREFERENCE = MappingProxyType(
    {
        "detector": ("scrfd_2.5g", "retinaface_10g", "yunet_2026may", "scrfd_500m", "yunet_2023mar"),
        "embedder": ("arcface_w600k_r50", "mobilefacenet_128d"),
        "swapper": ("inswapper_128", "inswapper_128_fp16"),
        "enhancer": ("gfpgan_1.4",),
    }
)


def shared_assets_models_dir() -> Path:
    """The project's real test models: $FACESWAP_SHARED_ASSETS/models or <repo>/../shared/assets/models."""
    root = os.environ.get("FACESWAP_SHARED_ASSETS")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "assets"
    return base / "models"


@dataclass(frozen=True)
class PipelineConfig:
    """How to assemble a pipeline. ``overrides``: stage -> catalogue name or ``.onnx`` path."""

    profile: str = "auto"
    models_dir: Path | None = None
    extra_search_dirs: tuple[Path, ...] = ()
    use_shared_assets: bool = False
    """Also search the project's shared test assets (tests and the demo; never a production default)."""
    download: bool = False
    session: SessionConfig = field(default_factory=SessionConfig)
    overrides: Mapping[str, str] = field(default_factory=dict)
    enhance: bool = True
    """Load an enhancer at all (GFPGAN is large; a service may skip it)."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise InvalidOptionError(f"profile: unknown {self.profile!r}, expected one of {list(PROFILES)}")
        unknown = sorted(set(self.overrides) - set(STAGES))
        if unknown:
            raise InvalidOptionError(f"overrides: unknown stage(s) {unknown}, expected {list(STAGES)}")

    @property
    def profile_label(self) -> str:
        """The profile as outputs report it (``custom`` when a stage is overridden)."""
        return self.profile if not self.overrides else "custom"

    @property
    def search_dirs(self) -> list[Path]:
        dirs = [self.models_dir or default_models_dir(), *self.extra_search_dirs, bundled_models_dir()]
        if self.use_shared_assets:
            dirs.append(shared_assets_models_dir())
        return dirs


class ModelFactory:
    """Creates each stage's model for a config; one place that maps model families to classes."""

    def __init__(self, config: PipelineConfig, catalogue: Catalogue | None = None) -> None:
        self.config = config
        self.catalogue = catalogue or Catalogue.load()

    # -- locating files -------------------------------------------------------------------------
    def _choose(self, stage: str) -> tuple[ModelSpec, Path] | None:
        """The spec and file for ``stage``, or None for the classical (lite) component."""
        override = self.config.overrides.get(stage)
        if override is not None:
            return self._from_override(stage, override)
        if self.config.profile == "lite":
            return None
        if self.config.profile == "full":
            spec = self.catalogue.get(FULL_MODELS[stage])
            return spec, self._locate(spec)
        for name in AUTO_PREFERENCE[stage]:
            spec = self.catalogue.get(name)
            found = resolve_model_file(spec, self.config.search_dirs)
            if found is not None:
                return spec, found
        return None

    def _from_override(self, stage: str, value: str) -> tuple[ModelSpec, Path]:
        if value.endswith(".onnx") or os.sep in value:
            path = Path(value)
            if not path.is_file():
                raise ModelNotFoundError(f"{stage} model file {path} does not exist")
            try:
                spec = self.catalogue.spec_for_file(path.name, kind=stage)
            except ModelNotFoundError:
                # a file the catalogue does not know (e.g. a test model): the contract of the stage's
                # FaceFusion model, under the file's own name.
                base = self.catalogue.get(FULL_MODELS[stage])
                spec = replace(base, name=path.stem, file=path.name, url=None, sha256=None, size=None)
            return spec, path
        spec = self.catalogue.get(value)
        if spec.kind != stage:
            raise InvalidOptionError(f"overrides: {value!r} is a {spec.kind}, not a {stage}")
        return spec, self._locate(spec)

    def _locate(self, spec: ModelSpec) -> Path:
        """The spec's file from the search dirs, downloaded when allowed, else ModelNotFoundError."""
        return ensure_models(
            [spec.name],
            self.catalogue,
            self.config.search_dirs[0],
            download=self.config.download,
            search_dirs=self.config.search_dirs,
        )[spec.name]

    def _bundled(self, name: str) -> tuple[ModelSpec, Path]:
        """A catalogue model shipped in the package (the ``lite`` profile's detector)."""
        spec = self.catalogue.get(name)
        found = resolve_model_file(spec, [bundled_models_dir()])
        if found is None:
            raise ModelNotFoundError(f"the bundled {spec.file} is missing from {bundled_models_dir()}")
        return spec, found

    def _session(self, path: Path):  # noqa: ANN202 - ort.InferenceSession
        return create_session(path, self.config.session)

    # -- stages ----------------------------------------------------------------------------------
    def detector(self) -> Detector:
        chosen = self._choose("detector") or self._bundled(LITE_DETECTOR)
        spec, path = chosen
        session = self._session(path)
        if spec.family == "yunet" or any(o.name == "cls_8" for o in session.get_outputs()):
            return YunetDetector(session, name=spec.name)
        return ScrfdDetector(session, name=spec.name)

    def embedder(self) -> Embedder | None:
        chosen = self._choose("embedder")
        if chosen is None:
            return None
        spec, path = chosen
        assert spec.template is not None  # the catalogue requires one for every non-detector
        return ArcFaceEmbedder(
            self._session(path),
            name=spec.name,
            template=spec.template,
            crop_size=spec.input_size,
            rgb=spec.channel_order == "rgb",
            mean=spec.mean,
            std=spec.std,
        )

    def landmarker(self) -> FaceMeshLandmarker:
        """The dense face mesh shipped with the package (region masks, refined alignment, mesh swapper)."""
        return FaceMeshLandmarker(self._session(packaged_model_path()))

    def swapper(self) -> Swapper:
        chosen = self._choose("swapper")
        if chosen is None:
            return MeshSwapper(self.landmarker())
        spec, path = chosen
        return InswapperSwapper(self._session(path), load_emap(path), name=spec.name)

    def enhancer(self) -> Enhancer | None:
        if not self.config.enhance:
            return None
        chosen = self._choose("enhancer")
        if chosen is None:
            return ClassicalEnhancer()
        spec, path = chosen
        return GfpganEnhancer(self._session(path), name=spec.name)


def build_models(config: PipelineConfig | None = None, catalogue: Catalogue | None = None) -> Models:
    """Load every stage's model for ``config`` in this process."""
    config = config or PipelineConfig()
    factory = ModelFactory(config, catalogue)
    return Models(
        detector=factory.detector(),
        swapper=factory.swapper(),
        embedder=factory.embedder(),
        enhancer=factory.enhancer(),
        landmarker=factory.landmarker(),
        profile=config.profile_label,
    )
