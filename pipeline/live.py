"""Live swapping of a stream of frames, one connection at a time, with no transport in it.

- :class:`LatestFrame`: the one-item mailbox between a connection's reader and its worker. A frame that
  arrives while the previous one still waits replaces it (latest wins) and counts as dropped, so a client
  that sends faster than the frames are swapped never builds a queue: at most one frame waits and one is
  being swapped.
- :class:`LiveStream`: the per-connection state: a causal :class:`~pipeline.follow.KeyframeTracker` (the
  detector runs on keyframes only, faces are followed by optical flow in between and smoothed with the
  One-Euro filter), a :class:`~pipeline.tracking.TrackSelector` (``one`` keeps the same person, until a
  keyframe finds faces but not that one) and the swap of each frame through the one orchestration
  (``swap_frames(..., faces=tracked)``).
- :class:`ThreadedSwapper`: a swapper port over an in-process model that runs it in a worker thread, so a
  server's event loop keeps serving meanwhile (the in-process ports of :mod:`pipeline.inprocess` run on
  the caller's thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np

from pipeline.follow import KeyframeTracker
from pipeline.identities import Identity
from pipeline.inprocess import run_swapper, swapper_info
from pipeline.models.base import Swapper
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.ports import Swapped
from pipeline.tracking import TrackedFace, TrackSelector
from pipeline.types import CropsBGR, Embedding, Face, ImageBGR

T = TypeVar("T")


class LatestFrame(Generic[T]):
    """A mailbox of at most one item: :meth:`put` replaces an item not yet taken (counted in
    ``dropped``); :meth:`take` waits for the next item, or returns None once the box is closed and empty.
    One event loop only."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced (dropped) one that was waiting."""
        replaced = self._item is not None
        self.dropped += replaced
        self._item = item
        self._ready.set()
        return replaced

    def close(self) -> None:
        """No more items: a waiting :meth:`take` returns what is left, then None."""
        self._closed = True
        self._ready.set()

    async def take(self) -> T | None:
        while self._item is None:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        item, self._item = self._item, None
        return item


class ThreadedSwapper:
    """A swapper port over an in-process ``model``; each call runs in a worker thread."""

    def __init__(self, model: Swapper) -> None:
        self.model = model
        self.info = swapper_info(model)

    async def swap(self, crops: CropsBGR, identities: np.ndarray) -> Swapped:
        return await asyncio.to_thread(run_swapper, self.model, crops, identities)


def resize_identity(identity: Identity, size: int) -> Identity:
    """A ``crop`` identity (an aligned (S, S, 3) uint8 BGR crop) at side ``size`` (area-averaged when
    shrinking): the same alignment template at another resolution. Embeddings come back unchanged."""
    if identity.kind != "crop" or identity.value.shape[0] == size:
        return identity
    shrink = identity.value.shape[0] > size
    value = cv2.resize(
        identity.value, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    return Identity("crop", np.ascontiguousarray(value, np.uint8), identity.swapper)


@dataclass(frozen=True)
class Tracked:
    """A frame's faces as the tracker found them."""

    faces: list[Face]
    """The faces to swap (selected), image pixels."""
    tracked: int
    """Faces the tracker followed in this frame (selected or not)."""
    detected: bool
    """Whether the detector ran on this frame (a keyframe)."""


@dataclass(frozen=True)
class LiveFrame:
    """One processed frame."""

    image: ImageBGR
    """(H, W, 3) uint8 BGR: the frame with the selected faces swapped (unchanged when there are none)."""
    faces: list[Face]
    """The faces swapped, image pixels."""
    tracked: int
    """Faces the tracker followed in this frame (selected or not)."""
    detected: bool
    """Whether the detector ran on this frame (a keyframe)."""


class LiveStream:
    """The causal swap of one connection's frames (see the module docstring).

    ``orchestrator``: the swap over its ports (the detector is called on keyframes from the tracker's
    thread, through this object's event loop); ``identity``: the source, for ``orchestrator``'s swapper;
    ``reference``: the reference embedding in ``reference`` mode. ``steps``: the executor that runs the
    tracker steps. It must not be the event loop's default executor: a tracker step waits there for a
    detection that itself needs that executor's threads.

    Frames go through :meth:`track` one at a time, in order; :meth:`swap` of a tracked frame may run
    while the next frames are tracked (it keeps no state). :meth:`process` does both.
    """

    def __init__(
        self,
        orchestrator: SwapOrchestrator,
        identity: Identity,
        options: SwapOptions,
        *,
        steps: Executor,
        detect_every: int,
        max_gap: int,
        smoothing: float,
        reference: Embedding | None = None,
    ) -> None:
        orchestrator.check(options, has_source=True, has_reference=reference is not None)
        self._orchestrator = orchestrator
        self._identity = identity
        self._options = options
        self._reference = reference
        self._steps = steps
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tracker = KeyframeTracker(
            self._detect, detect_every=detect_every, max_gap=max_gap, smoothing=smoothing
        )
        mode = options.face_selector_mode
        # reference mode: every tracked face goes to the orchestration, which compares them with the reference
        self._selector = TrackSelector(mode) if mode != "reference" else None
        self.frames = 0

    @property
    def detector_calls(self) -> int:
        return self._tracker.detector_calls

    def _detect(self, image: ImageBGR) -> list[Face]:
        """The tracker's detector, called from its thread: the orchestration's, run on the event loop."""
        assert self._loop is not None
        found = asyncio.run_coroutine_threadsafe(
            self._orchestrator.detect([image], self._options.detector_score), self._loop
        )
        return found.result()[0]

    def _select(self, tracked: Sequence[TrackedFace], keyframe: bool) -> list[Face]:
        """The faces to swap. On a keyframe where the detector found faces, only those: a track it did not
        confirm is coasting on its motion (the face is hidden, or gone, as at a cut) and would be swapped
        at a guessed place; ``one`` then moves to the largest face found."""
        if keyframe and any(face.source == "detected" for face in tracked):
            tracked = [face for face in tracked if face.source == "detected"]
        chosen = self._selector.select(tracked) if self._selector is not None else list(tracked)
        return [face.to_face() for face in chosen]

    async def track(self, image: ImageBGR) -> Tracked:
        """The faces to swap in the next frame ((H, W, 3) uint8 BGR) of the stream."""
        self._loop = asyncio.get_running_loop()
        calls = self._tracker.detector_calls
        tracked = await self._loop.run_in_executor(self._steps, self._tracker.process, self.frames, image)
        self.frames += 1
        keyframe = self._tracker.detector_calls > calls
        return Tracked(self._select(tracked, keyframe), len(tracked), keyframe)

    async def swap(self, image: ImageBGR, tracked: Tracked) -> LiveFrame:
        """Swap the tracked faces of ``image``."""
        result = (
            await self._orchestrator.swap_frames(
                [image], self._identity, self._options, self._reference, faces=[tracked.faces]
            )
        )[0]
        return LiveFrame(result.image, result.faces, tracked.tracked, tracked.detected)

    async def process(self, image: ImageBGR) -> LiveFrame:
        """Track, select and swap the next frame of the stream."""
        return await self.swap(image, await self.track(image))
