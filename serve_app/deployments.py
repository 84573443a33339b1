"""The model deployments: batched model servers on small arrays, one per kind of model.

- ``FaceDetector.detect(canvases, score)``: detector canvases (each image already shrunk to the detector's
  input, :mod:`pipeline.canvas`) -> faces per canvas, canvas pixels.
- ``FaceEmbedder.embed(crops)``: (N, S, S, 3) aligned crops -> (N, D) embeddings.
- ``FaceSwapper.swap(crops, identities)``: (N, 128, 128, 3) crops and N identities -> swapped crops (+ masks).
- ``FaceEnhancer.enhance(crops)``: (N, 512, 512, 3) crops -> restored crops.
- ``FaceLandmarker.landmarks(crops)``: (N, 192, 192, 3) crops -> dense face meshes (region masks and
  refined alignment).

Frames never reach them: the ingress (or a video job's runner) decodes, warps, pastes back and encodes,
and runs the one orchestration (:mod:`pipeline.orchestration`) over ports that call these
(``serve_app.ports``). Each ``info()`` says what its model takes (name, canvas or crop geometry).

The work is done by :class:`BatchedModel` (no Serve in it): the items of every request in a ``@serve.batch``
go to ONE model call, whose output is cut back into per-request pieces; it counts calls and records the
Prometheus metrics (``serve_app.metrics.StageMetrics``). The deployment classes only wire: build the model
(``ModelFactory``) on the replica, take the batch knobs from ``user_config`` (``reconfigure``), run the
model on a tiny input in ``check_health``. Model calls run in a worker thread so the replica's event loop
keeps collecting the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import numpy as np
import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from pipeline.errors import UnsupportedOptionError
from pipeline.inprocess import (
    detector_info,
    embedder_info,
    enhancer_info,
    landmarker_info,
    run_landmarker,
    run_swapper,
    swapper_info,
)
from pipeline.ports import (
    DenseLandmarks,
    DetectorInfo,
    EmbedderInfo,
    EnhancerInfo,
    LandmarkerInfo,
    Swapped,
    SwapperInfo,
)
from pipeline.profiles import ModelFactory
from pipeline.types import CropsBGR, Face, ImageBGR
from serve_app.config import AppArgs, BatchArgs
from serve_app.metrics import Stage, StageMetrics, timed

log = logging.getLogger("ray.serve")

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatchStats:
    """Model calls of one replica: ``calls`` batched calls served ``requests`` requests and ``items``
    canvases or crops; ``largest`` is the most requests one call served."""

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


class BatchedModel(Generic[In, Out]):
    """One model call over the items of a batch of requests.

    ``run(items)`` is the model (a list of ``In`` -> a list of ``Out``, one per item). :meth:`serve` takes
    each request's list of items, calls ``run`` once on their concatenation in a worker thread, and gives
    each request its own slice of the outputs, in order.
    """

    def __init__(self, stage: Stage, model: str, run: Callable[[list[In]], list[Out]]) -> None:
        self.stage = stage
        self.model = model
        self._run = run
        self.stats = BatchStats()
        self.batch = BatchArgs()
        self._metrics = StageMetrics(stage, model)

    async def serve(self, requests: Sequence[list[In]]) -> list[list[Out]]:
        items = [item for request in requests for item in request]
        self.stats.record(len(requests), len(items))
        self._metrics.record_batch(len(requests), len(items))
        outputs, seconds = await asyncio.to_thread(timed, self._run, items)
        self._metrics.record_latency(seconds)
        answers, at = [], 0
        for request in requests:
            answers.append(outputs[at : at + len(request)])
            at += len(request)
        return answers

    def report(self) -> dict[str, Any]:
        return {**_replica_info(), "model": self.model, **self.batch.model_dump(), **vars(self.stats)}


def _replica_info() -> dict[str, Any]:
    """This replica's id and the GPU ids Ray gave it (logical GPUs count too)."""
    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except RayServeException:  # outside a replica
        replica = None
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", []) if ray.is_initialized() else []
    return {"replica": replica, "gpu_ids": [str(g) for g in gpu_ids]}


def _apply_batch_config(method: Any, config: dict[str, Any] | None) -> BatchArgs:
    """Validate ``user_config`` and apply it to a ``@serve.batch`` method."""
    batch = BatchArgs.model_validate(config or {})
    method.set_max_batch_size(batch.max_batch_size)
    method.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)
    return batch


def _stacked(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A model over stacked arrays, as a model over lists of rows."""

    def over_rows(rows: list[np.ndarray]) -> list[np.ndarray]:
        return list(run(np.stack(rows))) if rows else []

    return over_rows


def _no_embedder(rows: list[np.ndarray]) -> list[np.ndarray]:
    raise UnsupportedOptionError("no embedding model is deployed")


@serve.deployment(name="FaceDetector")
class FaceDetector:
    """Finds faces on detector canvases; the canvases of concurrent requests form one batch (the detectors
    run one canvas at a time, so the batch saves thread hand-offs, not model calls)."""

    def __init__(self, args: AppArgs) -> None:
        self._detector = ModelFactory(args.pipeline_config()).detector()
        self._model = BatchedModel[tuple[ImageBGR, float], list[Face]](
            "detect",
            self._detector.name,
            lambda items: [self._detector.detect_canvas(canvas, score) for canvas, score in items],
        )
        log.info("FaceDetector ready: %s", self._detector.name)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._model.batch = _apply_batch_config(self._detect_batch, config)

    def info(self) -> DetectorInfo:
        return detector_info(self._detector)

    def check_health(self) -> None:
        """Run the detector on a small blank canvas (raises if the model or its session is broken)."""
        self._detector.detect_canvas(np.zeros((64, 64, 3), np.uint8), None)

    def stats(self) -> dict[str, Any]:
        return self._model.report()

    async def detect(self, canvases: list[ImageBGR], score_threshold: float) -> list[list[Face]]:
        """Faces of each (h, w, 3) uint8 BGR canvas, canvas pixels, best score first."""
        return await self._detect_batch([(canvas, score_threshold) for canvas in canvases])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _detect_batch(self, requests: list[list[tuple[ImageBGR, float]]]) -> list[list[list[Face]]]:
        return await self._model.serve(requests)


@serve.deployment(name="FaceEmbedder")
class FaceEmbedder:
    """Identity embeddings of aligned crops (the source face, the reference face, candidate target faces);
    the crops of concurrent requests share one model call.

    In the ``auto`` profile the replica looks for an embedding model on its own node; when it finds none,
    ``info()`` answers None and the ingress runs without an embedder (reference mode is then a 422)."""

    def __init__(self, args: AppArgs) -> None:
        self._embedder = ModelFactory(args.pipeline_config()).embedder()
        name = self._embedder.name if self._embedder is not None else "none"
        run = _stacked(self._embedder.embed_crops) if self._embedder is not None else _no_embedder
        self._model = BatchedModel[np.ndarray, np.ndarray]("embed", name, run)
        log.info("FaceEmbedder ready: %s", name)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._model.batch = _apply_batch_config(self._embed_batch, config)

    def info(self) -> EmbedderInfo | None:
        return embedder_info(self._embedder) if self._embedder is not None else None

    def check_health(self) -> None:
        if self._embedder is not None:
            size = self._embedder.crop_size
            self._embedder.embed_crops(np.full((1, size, size, 3), 128, np.uint8))

    def stats(self) -> dict[str, Any]:
        return self._model.report()

    async def embed(self, crops: CropsBGR) -> np.ndarray:
        """(N, S, S, 3) uint8 BGR aligned crops -> (N, D) float32 L2-normalised embeddings."""
        rows = await self._embed_batch(list(crops))
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        return await self._model.serve(requests)


@serve.deployment(name="FaceSwapper")
class FaceSwapper:
    """Swaps aligned target crops to the given identities; the crops of concurrent requests share one
    model call."""

    def __init__(self, args: AppArgs) -> None:
        self._swapper = ModelFactory(args.pipeline_config()).swapper()
        self._model = BatchedModel[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]](
            "swap", self._swapper.name, self._run
        )
        log.info("FaceSwapper ready: %s", self._swapper.name)

    def _run(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        if not items:
            return []
        swapped = run_swapper(self._swapper, np.stack([c for c, _ in items]), np.stack([i for _, i in items]))
        masks = swapped.masks if swapped.masks is not None else [None] * len(items)
        return list(zip(swapped.crops, masks, strict=True))

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._model.batch = _apply_batch_config(self._swap_batch, config)

    def info(self) -> SwapperInfo:
        return swapper_info(self._swapper)

    def check_health(self) -> None:
        """Swap one grey crop onto itself (raises if the model or its session is broken)."""
        info = self.info()
        size = info.crop.size
        crops = np.full((1, size, size, 3), 128, np.uint8)
        identities = crops if info.identity == "crop" else np.ones((1, info.identity_dim or 1), np.float32)
        run_swapper(self._swapper, crops, identities)

    def stats(self) -> dict[str, Any]:
        return self._model.report()

    async def swap(self, crops: CropsBGR, identities: np.ndarray) -> Swapped:
        """(N, S, S, 3) uint8 BGR target crops and N identities -> the swapped crops (and masks)."""
        pairs = await self._swap_batch(list(zip(crops, identities, strict=True)))
        if not pairs:
            return Swapped(np.zeros_like(crops))
        masks = None if pairs[0][1] is None else np.stack([m for _, m in pairs])
        return Swapped(np.stack([c for c, _ in pairs]), masks)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _swap_batch(
        self, requests: list[list[tuple[np.ndarray, np.ndarray]]]
    ) -> list[list[tuple[np.ndarray, np.ndarray | None]]]:
        return await self._model.serve(requests)


@serve.deployment(name="FaceEnhancer")
class FaceEnhancer:
    """Restores aligned face crops; the crops of concurrent requests share one model call."""

    def __init__(self, args: AppArgs) -> None:
        enhancer = ModelFactory(args.pipeline_config()).enhancer()
        if enhancer is None:
            raise UnsupportedOptionError("the FaceEnhancer deployment needs args.enhance = true")
        self._enhancer = enhancer
        self._model = BatchedModel[np.ndarray, np.ndarray](
            "enhance", enhancer.name, _stacked(enhancer.enhance_crops)
        )
        log.info("FaceEnhancer ready: %s", enhancer.name)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._model.batch = _apply_batch_config(self._enhance_batch, config)

    def info(self) -> EnhancerInfo:
        return enhancer_info(self._enhancer)

    def check_health(self) -> None:
        size = self._enhancer.crop_size
        self._enhancer.enhance_crops(np.full((1, size, size, 3), 128, np.uint8))

    def stats(self) -> dict[str, Any]:
        return self._model.report()

    async def enhance(self, crops: CropsBGR) -> CropsBGR:
        """(N, S, S, 3) uint8 BGR aligned crops -> (N, S, S, 3) uint8 BGR restored."""
        rows = await self._enhance_batch(list(crops))
        return np.stack(rows) if rows else np.zeros_like(crops)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _enhance_batch(self, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        return await self._model.serve(requests)


@serve.deployment(name="FaceLandmarker")
class FaceLandmarker:
    """Dense face meshes of aligned crops (the package's MediaPipe face mesh); the crops of concurrent
    requests share one model call."""

    def __init__(self, args: AppArgs) -> None:
        self._landmarker = ModelFactory(args.pipeline_config()).landmarker()
        self._model = BatchedModel[np.ndarray, tuple[np.ndarray, float]](
            "landmark", self._landmarker.name, self._run
        )
        log.info("FaceLandmarker ready: %s", self._landmarker.name)

    def _run(self, crops: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        if not crops:
            return []
        dense = run_landmarker(self._landmarker, np.stack(crops))
        return list(zip(dense.points, dense.scores.tolist(), strict=True))

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._model.batch = _apply_batch_config(self._landmarks_batch, config)

    def info(self) -> LandmarkerInfo:
        return landmarker_info(self._landmarker)

    def check_health(self) -> None:
        size = self._landmarker.crop_size
        self._landmarker.landmarks(np.full((1, size, size, 3), 128, np.uint8))

    def stats(self) -> dict[str, Any]:
        return self._model.report()

    async def landmarks(self, crops: CropsBGR) -> DenseLandmarks:
        """(N, S, S, 3) uint8 BGR aligned crops -> their dense landmarks (crop pixels) and face scores."""
        rows = await self._landmarks_batch(list(crops))
        points = (
            np.stack([p for p, _ in rows]) if rows else np.zeros((0, self._landmarker.points, 2), np.float32)
        )
        return DenseLandmarks(points, np.array([score for _, score in rows], np.float32))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _landmarks_batch(
        self, requests: list[list[np.ndarray]]
    ) -> list[list[tuple[np.ndarray, float]]]:
        return await self._model.serve(requests)


MODEL_DEPLOYMENTS = MappingProxyType(
    {
        "detector": FaceDetector,
        "swapper": FaceSwapper,
        "embedder": FaceEmbedder,
        "enhancer": FaceEnhancer,
        "landmarker": FaceLandmarker,
    }
)
"""The model deployments, by the ``AppArgs`` section (and ``StageHandles`` field) that configures them."""
