"""The orchestration's ports over Serve deployment handles (the in-process ones are ``pipeline.inprocess``).

Each call sends small arrays to a model deployment and awaits its answer. Two things happen on the way:

- **Bytes across hops.** The array bytes sent and received are added to the current request's
  :class:`HopMeter` (a context variable the ingress or a video runner sets), reported per request as a
  metric, a response header and a benchmark column.
- **One retry on a dead replica.** Model calls are idempotent, so a call whose replica died (or became
  unreachable) while it was in flight is sent once more; Serve's router sends it to another replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from pipeline.ports import (
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

log = logging.getLogger("ray.serve")

RETRIED_ERRORS = (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError)
"""A replica died or could not be reached: the call is retried once."""


@dataclass
class HopMeter:
    """Bytes of array data one request sent to and received from model deployments."""

    sent: int = 0
    received: int = 0
    calls: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.received


CURRENT_HOPS: ContextVar[HopMeter | None] = ContextVar("faceswap_hop_meter", default=None)
"""The meter of the request being served in this task (None: not metered)."""


@contextmanager
def metering() -> Iterator[HopMeter]:
    """Meter the port calls made inside the block (by this task and the tasks it starts)."""
    meter = HopMeter()
    token = CURRENT_HOPS.set(meter)
    try:
        yield meter
    finally:
        CURRENT_HOPS.reset(token)


def payload_bytes(value: object) -> int:
    """Bytes of the array data in ``value`` (arrays, and arrays inside lists, tuples and dataclasses)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, list | tuple):
        return sum(payload_bytes(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return sum(payload_bytes(getattr(value, f.name)) for f in fields(value))
    return 0


async def call(handle: DeploymentHandle, method: str, *args: Any) -> Any:
    """``handle.<method>.remote(*args)``, awaited, metered, and sent once more if the replica died."""
    meter = CURRENT_HOPS.get()
    for attempt in (1, 2):
        try:
            result = await getattr(handle, method).remote(*args)
            break
        except RETRIED_ERRORS as exc:
            if attempt == 2:
                raise
            log.warning(
                "%s.%s: replica lost (%s), retrying once", handle.deployment_name, method, type(exc).__name__
            )
    if meter is not None:
        meter.sent += payload_bytes(args)
        meter.received += payload_bytes(result)
        meter.calls += 1
    return result


class ServeDetector:
    def __init__(self, handle: DeploymentHandle, info: DetectorInfo) -> None:
        self._handle = handle
        self.info = info

    async def detect(self, canvases: Sequence[ImageBGR], score_threshold: float) -> list[list[Face]]:
        faces: list[list[Face]] = await call(self._handle, "detect", list(canvases), score_threshold)
        return faces


class ServeEmbedder:
    def __init__(self, handle: DeploymentHandle, info: EmbedderInfo) -> None:
        self._handle = handle
        self.info = info

    async def embed(self, crops: CropsBGR) -> Embeddings:
        embeddings: Embeddings = await call(self._handle, "embed", crops)
        return embeddings


class ServeSwapper:
    def __init__(self, handle: DeploymentHandle, info: SwapperInfo) -> None:
        self._handle = handle
        self.info = info

    async def swap(self, crops: CropsBGR, identities: np.ndarray) -> Swapped:
        swapped: Swapped = await call(self._handle, "swap", crops, identities)
        return swapped


class ServeEnhancer:
    def __init__(self, handle: DeploymentHandle, info: EnhancerInfo) -> None:
        self._handle = handle
        self.info = info

    async def enhance(self, crops: CropsBGR) -> CropsBGR:
        enhanced: CropsBGR = await call(self._handle, "enhance", crops)
        return enhanced


class ServeLandmarker:
    def __init__(self, handle: DeploymentHandle, info: LandmarkerInfo) -> None:
        self._handle = handle
        self.info = info

    async def landmarks(self, crops: CropsBGR) -> DenseLandmarks:
        dense: DenseLandmarks = await call(self._handle, "landmarks", crops)
        return dense


@dataclass(frozen=True)
class StageHandles:
    """The model deployments of one application (None: not deployed)."""

    detector: DeploymentHandle
    swapper: DeploymentHandle
    embedder: DeploymentHandle | None = None
    enhancer: DeploymentHandle | None = None
    landmarker: DeploymentHandle | None = None


async def serve_ports(handles: StageHandles, profile: str) -> Ports:
    """Ports over ``handles``, after asking each deployment what its model takes (an embedder deployment
    that found no model answers None: no embedder port)."""

    async def info(handle: DeploymentHandle | None) -> Any:
        return None if handle is None else await call(handle, "info")

    detector, swapper, embedder, enhancer, landmarker = await asyncio.gather(
        info(handles.detector),
        info(handles.swapper),
        info(handles.embedder),
        info(handles.enhancer),
        info(handles.landmarker),
    )
    return Ports(
        detector=ServeDetector(handles.detector, detector),
        swapper=ServeSwapper(handles.swapper, swapper),
        embedder=ServeEmbedder(handles.embedder, embedder) if embedder is not None else None,
        enhancer=ServeEnhancer(handles.enhancer, enhancer) if enhancer is not None else None,
        landmarker=ServeLandmarker(handles.landmarker, landmarker) if landmarker is not None else None,
        profile=profile,
    )
