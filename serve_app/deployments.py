"""The model deployments: thin ``@serve.deployment`` classes over the pipeline's model wrappers.

Each builds only its own models (``ModelFactory``), runs its model calls through ``@serve.batch`` so
that work from concurrent requests shares one model call, takes its batch knobs from ``user_config``
(``reconfigure``), runs the model on a tiny input in ``check_health`` and reports its batching in
``stats()`` and, as Prometheus metrics (``serve_app.metrics.StageMetrics``), its model-call latency and
batch sizes. Sync methods run in Serve's threadpool; the batched model calls run in a worker thread so
the replica's event loop keeps collecting the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from pipeline.engine import choose_faces, crops_for, embed_faces, paste_crops
from pipeline.errors import NoFaceError, UnsupportedOptionError
from pipeline.geometry import template_points
from pipeline.models.base import Embedder
from pipeline.options import SwapOptions
from pipeline.profiles import ModelFactory
from pipeline.selection import largest_face
from pipeline.types import CropsBGR, Embedding, Face, ImageBGR
from serve_app.config import AppArgs, BatchArgs
from serve_app.metrics import StageMetrics, timed

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class FacesOutcome:
    """An image and the faces a stage worked on: what the swapper hands to the enhancer."""

    image: ImageBGR
    """(H, W, 3) uint8 BGR."""
    faces: list[Face]
    """The selected target faces, image pixel coordinates, largest (or closest to the reference) first."""


@dataclass
class BatchStats:
    """Model calls of one replica: ``calls`` batched calls served ``requests`` requests and ``items``
    images or crops; ``largest`` is the most requests one call served."""

    calls: int = 0
    requests: int = 0
    items: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)
    """Requests per call of the last 256 calls."""

    def record(self, requests: int, items: int) -> None:
        self.calls += 1
        self.requests += requests
        self.items += items
        self.largest = max(self.largest, requests)
        self.sizes = [*self.sizes[-255:], requests]


def _replica_info() -> dict[str, Any]:
    """This replica's id and the GPU ids Ray gave it (logical GPUs count too)."""
    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except RayServeException:  # outside a replica (in-process use)
        replica = None
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", []) if ray.is_initialized() else []
    return {"replica": replica, "gpu_ids": [str(g) for g in gpu_ids]}


def _split(batch: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Cut a concatenated batch back into per-request pieces of the given lengths."""
    return np.split(batch, np.cumsum(sizes)[:-1])


def _probe_face(template: str, size: int) -> tuple[ImageBGR, Face]:
    """A (2S, 2S) grey image and a face whose landmarks sit on ``template`` at scale S, for health checks."""
    image = np.full((2 * size, 2 * size, 3), 128, np.uint8)
    landmarks = (template_points(template, size) + size / 2).astype(np.float32)
    bbox = np.array([size / 2, size / 2, 1.5 * size, 1.5 * size], np.float32)
    return image, Face(bbox=bbox, landmarks=landmarks, score=1.0)


def _apply_batch_config(method: Any, config: dict[str, Any] | None) -> BatchArgs:
    """Validate ``user_config`` and apply it to a ``@serve.batch`` method."""
    batch = BatchArgs.model_validate(config or {})
    method.set_max_batch_size(batch.max_batch_size)
    method.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)
    return batch


@serve.deployment(name="FaceDetector")
class FaceDetector:
    """Finds faces in images. One ``detect`` call per image; concurrent images are taken as a batch
    (detectors run per image, so the batch saves the thread hops, not model calls)."""

    def __init__(self, args: AppArgs) -> None:
        self._detector = ModelFactory(args.pipeline_config()).detector()
        self._stats = BatchStats()
        self._metrics = StageMetrics("detect", self._detector.name)
        self._batch = BatchArgs()
        log.info("FaceDetector ready: %s", self._detector.name)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._batch = _apply_batch_config(self._detect_batch, config)

    def components(self) -> dict[str, str | None]:
        return {"detector": self._detector.name}

    def check_health(self) -> None:
        """Run the detector on a small blank image (raises if the model or its session is broken)."""
        self._detector.detect(np.zeros((64, 64, 3), np.uint8), None)

    def stats(self) -> dict[str, Any]:
        return {
            **_replica_info(),
            "model": self._detector.name,
            **self._batch.model_dump(),
            **vars(self._stats),
        }

    async def detect(self, image: ImageBGR, score_threshold: float | None = None) -> list[Face]:
        """Faces in ``image`` (H, W, 3) uint8 BGR, best score first."""
        return await self._detect_batch((image, score_threshold))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _detect_batch(self, jobs: list[tuple[ImageBGR, float | None]]) -> list[list[Face]]:
        """Detect in each (image, score threshold) of the batch, in one worker thread."""
        self._stats.record(len(jobs), len(jobs))
        self._metrics.record_batch(len(jobs), len(jobs))
        results = await asyncio.to_thread(
            lambda: [timed(self._detector.detect, image, score) for image, score in jobs]
        )
        for _, seconds in results:
            self._metrics.record_latency(seconds)
        return [faces for faces, _ in results]


@serve.deployment(name="FaceSwapper")
class FaceSwapper:
    """Holds the embedder (when the profile has one) and the swapper.

    ``swap`` selects the target faces, warps them, and hands the crops to ``_swap_batch``, which
    concatenates the crops and identities of every request in the batch into ONE ``swap_crops`` call.
    """

    def __init__(self, args: AppArgs) -> None:
        factory = ModelFactory(args.pipeline_config())
        self._embedder: Embedder | None = factory.embedder()
        self._swapper = factory.swapper(self._embedder)
        self._stats = BatchStats()
        self._metrics = StageMetrics("swap", self._swapper.name)
        self._batch = BatchArgs()
        probe_image, probe_face = _probe_face(self._swapper.template, self._swapper.crop_size)
        crops, _ = crops_for(probe_image, [probe_face], self._swapper.template, self._swapper.crop_size)
        self._probe = (crops, self._swapper.encode_source(probe_image, probe_face)[None])
        log.info("FaceSwapper ready: %s", self.components())

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._batch = _apply_batch_config(self._swap_batch, config)

    def components(self) -> dict[str, str | None]:
        return {"embedder": self._embedder.name if self._embedder else None, "swapper": self._swapper.name}

    def check_health(self) -> None:
        """Swap one grey crop (raises if the model or its session is broken)."""
        crops, identities = self._probe
        out = self._swapper.swap_crops(crops, identities)
        if out.shape != crops.shape:
            raise RuntimeError(f"health check: swapper returned {out.shape}, expected {crops.shape}")

    def stats(self) -> dict[str, Any]:
        return {
            **_replica_info(),
            "model": self._swapper.name,
            **self._batch.model_dump(),
            **vars(self._stats),
        }

    def encode_source(self, image: ImageBGR, faces: list[Face]) -> npt.NDArray[np.float32]:
        """Identity of the largest face in the source image (the swapper's own identity encoding)."""
        if not faces:
            raise NoFaceError("no face found in the source image")
        return self._swapper.encode_source(image, largest_face(faces))

    def reference_embedding(self, image: ImageBGR, faces: list[Face]) -> Embedding:
        """L2-normalised embedding (D,) of the largest face in the reference image."""
        if not faces:
            raise NoFaceError("no face found in the reference image")
        return embed_faces(self._embedder, image, [largest_face(faces)])[0].embedding  # type: ignore[return-value]

    async def swap(
        self,
        target: ImageBGR,
        faces: list[Face],
        identity: npt.NDArray[np.float32] | None,
        options: SwapOptions,
        reference: Embedding | None = None,
    ) -> FacesOutcome:
        """Select the target faces and, when ``face_swapper`` is asked for, swap ``identity`` onto them.

        Raises NoFaceError (422) when no face qualifies, so the enhancer never runs on nothing.
        """
        selected = await asyncio.to_thread(choose_faces, self._embedder, target, faces, options, reference)
        if not options.swap:
            return FacesOutcome(image=target, faces=selected)
        if identity is None:
            raise UnsupportedOptionError("face_swapper needs a source identity")
        template, size = self._swapper.template, self._swapper.crop_size
        crops, affines = await asyncio.to_thread(crops_for, target, selected, template, size)
        identities = np.repeat(np.asarray(identity)[None], len(selected), axis=0)
        swapped = await self._swap_batch((crops, identities))
        image = await asyncio.to_thread(
            lambda: paste_crops(
                target,
                swapped,
                affines,
                ratio=options.blend_ratio,
                mask_blur=options.face_mask_blur,
                mask_padding=options.face_mask_padding,
            )
        )
        return FacesOutcome(image=image, faces=selected)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _swap_batch(self, jobs: list[tuple[CropsBGR, npt.NDArray[np.float32]]]) -> list[CropsBGR]:
        """One ``swap_crops`` call over the (crops, identities) of every request in the batch."""
        sizes = [len(crops) for crops, _ in jobs]
        self._stats.record(len(jobs), sum(sizes))
        self._metrics.record_batch(len(jobs), sum(sizes))
        crops = np.concatenate([c for c, _ in jobs])
        identities = np.concatenate([i for _, i in jobs])
        out, seconds = await asyncio.to_thread(timed, self._swapper.swap_crops, crops, identities)
        self._metrics.record_latency(seconds)
        return _split(out, sizes)


@serve.deployment(name="FaceEnhancer")
class FaceEnhancer:
    """Restores the selected faces of a swapped image; crops of concurrent requests share one
    ``enhance_crops`` call."""

    def __init__(self, args: AppArgs) -> None:
        enhancer = ModelFactory(args.pipeline_config()).enhancer()
        if enhancer is None:
            raise UnsupportedOptionError("the FaceEnhancer deployment needs args.enhance = true")
        self._enhancer = enhancer
        self._stats = BatchStats()
        self._metrics = StageMetrics("enhance", enhancer.name)
        self._batch = BatchArgs()
        log.info("FaceEnhancer ready: %s", enhancer.name)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._batch = _apply_batch_config(self._enhance_batch, config)

    def components(self) -> dict[str, str | None]:
        return {"enhancer": self._enhancer.name}

    def check_health(self) -> None:
        """Enhance one grey crop (raises if the model or its session is broken)."""
        size = self._enhancer.crop_size
        out = self._enhancer.enhance_crops(np.full((1, size, size, 3), 128, np.uint8))
        if out.shape != (1, size, size, 3):
            raise RuntimeError(f"health check: enhancer returned {out.shape}")

    def stats(self) -> dict[str, Any]:
        return {
            **_replica_info(),
            "model": self._enhancer.name,
            **self._batch.model_dump(),
            **vars(self._stats),
        }

    async def enhance(self, outcome: FacesOutcome, options: SwapOptions) -> FacesOutcome:
        """Enhance ``outcome.faces`` in ``outcome.image`` blended by ``face_enhancer_blend`` / 100."""
        template, size = self._enhancer.template, self._enhancer.crop_size
        crops, affines = await asyncio.to_thread(crops_for, outcome.image, outcome.faces, template, size)
        enhanced = await self._enhance_batch(crops)
        image = await asyncio.to_thread(
            lambda: paste_crops(
                outcome.image,
                enhanced,
                affines,
                ratio=options.face_enhancer_blend / 100.0,
                mask_blur=options.face_mask_blur,
                mask_padding=options.face_mask_padding,
            )
        )
        return FacesOutcome(image=image, faces=outcome.faces)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _enhance_batch(self, crops: list[CropsBGR]) -> list[CropsBGR]:
        """One ``enhance_crops`` call over the crops of every request in the batch."""
        sizes = [len(c) for c in crops]
        self._stats.record(len(crops), sum(sizes))
        self._metrics.record_batch(len(crops), sum(sizes))
        out, seconds = await asyncio.to_thread(timed, self._enhancer.enhance_crops, np.concatenate(crops))
        self._metrics.record_latency(seconds)
        return _split(out, sizes)
