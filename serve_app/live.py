"""Live swapping over a WebSocket: ``WS /api/v1/live`` and ``POST /api/v1/live/tickets`` (wired into the
ingress; the messages and close codes are in :mod:`serve_app.live_protocol`).

Each connection runs in the ingress replica that accepted it: a reader takes the client's frames into a
one-frame mailbox (:class:`pipeline.live.LatestFrame`: the latest frame wins, the one it replaces is
dropped and counted); a tracker takes the waiting frame, decodes and tracks it (:class:`pipeline.live.
LiveStream`: a causal keyframe tracker per connection, the detector deployment called on keyframes only)
and starts its swap; a sender sends the swapped frames back in order, each with its header. At most one
frame waits and ``live.pipeline_depth`` (default 1) are tracked or swapped per connection, whatever the
client sends (with 2, the next frame is tracked while the previous one is swapped).

The swap runs on the graph's own ports, with one exception measured for the default no-download
models: the classical mesh swapper (CPU only, no GPU to share and nothing to gain from batching) runs in
the ingress replica at ``live.mesh_crop_size`` (256 px against the deployment's 512), so a frame's crops
cross no Ray hop and each swap costs about a quarter. With ``mesh_crop_size: null``, or any other
swapper (inswapper on a GPU), live frames go to the FaceSwapper deployment and share its batches with
image and video traffic.

Auth: with API keys configured a connection presents its key in the handshake's ``Authorization`` or
``X-API-Key`` header, or (browsers) offers a ticket from ``POST /api/v1/live/tickets`` as the subprotocol
``ticket.<ticket>`` (:mod:`serve_app.tickets`). Limits, per ingress replica: ``live.max_sessions``
connections (more: 1013), ``live.max_sessions_per_key`` per key (4429), ``max_frame_bytes`` (4413) and
``max_frame_pixels`` (4413) per frame, ``max_fps`` (faster frames are dropped), ``idle_timeout_s``
(4408). Every connection is counted and logged once, when it ends, like an HTTP request (method ``WS``,
status 101 or the error's HTTP status).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from pipeline.errors import (
    FaceSwapError,
    InvalidInputError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from pipeline.identities import Identity
from pipeline.imageio import decode_image, encode_image, sniff_image_type
from pipeline.live import LatestFrame, LiveFrame, LiveStream, ThreadedSwapper, Tracked, resize_identity
from pipeline.models.mesh_swapper import MeshSwapper
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import ModelFactory
from pipeline.provenance import label_output
from pipeline.types import Embedding, ImageBGR
from serve_app.auth import ApiKeyAuth, TokenBucket
from serve_app.config import AppArgs
from serve_app.errors import RequestTimeoutError, request_id_of, to_service_error
from serve_app.identities import ANONYMOUS, IdentityService, owner_of
from serve_app.live_protocol import (
    LIVE_PATH,
    SUBPROTOCOL,
    TICKET_PREFIX,
    TICKETS_PATH,
    FrameHeader,
    Setup,
    Tracking,
    close_for,
    frame_message,
    parse_setup,
    ready,
)
from serve_app.logs import log_request
from serve_app.metrics import IngressMetrics, LiveMetrics
from serve_app.routes import JPEG_TYPE
from serve_app.tickets import TicketSigner, configured_keys, ticket_secret

log = logging.getLogger("ray.serve")

Orchestrator = Callable[[], Awaitable[SwapOrchestrator]]
FRAME_TYPES = frozenset({"image/jpeg", "image/webp"})
LIVE_SOURCE_MESHES = 64
"""Source meshes the live mesh swapper keeps: one per identity in use (a connection swaps one source)."""
RATE_BURST_S = 0.5
"""Frames a connection may send at once above ``max_fps``: this many seconds' worth (jitter)."""


class LiveDisabledError(FaceSwapError):
    """Live swapping is turned off on this service (``live.max_sessions: 0``)."""

    status = 404
    code = "not_found"


class UpgradeRequiredError(FaceSwapError):
    """A plain HTTP request to the WebSocket route."""

    status = 426
    code = "upgrade_required"


class TooManySessionsError(FaceSwapError):
    """The API key has as many live connections open on this replica as it may."""

    status = 429
    code = "too_many_sessions"


def decode_frame(data: bytes, max_pixels: int) -> ImageBGR:
    """A live frame (JPEG or WebP bytes) as (H, W, 3) uint8 BGR: 415 for other types, 413 over
    ``max_pixels``, 400 when corrupt."""
    if sniff_image_type(data) not in FRAME_TYPES:
        raise UnsupportedMediaError("frames must be JPEG or WebP images")
    return decode_image(data, field="frame", max_pixels=max_pixels)


def _boxes(frame: LiveFrame) -> list[list[float]]:
    return [[round(float(v), 1) for v in face.bbox] for face in frame.faces]


class LiveService:
    """The live routes of one ingress replica. ``orchestrator`` gives the ingress' orchestration (built
    once); ``requests`` are the ingress' request metrics, where each connection is counted when it ends."""

    def __init__(
        self,
        args: AppArgs,
        orchestrator: Orchestrator,
        identities: IdentityService,
        auth: ApiKeyAuth | None,
        requests: IngressMetrics,
    ) -> None:
        self._args = args
        self._live = args.live
        self._orchestrator = orchestrator
        self._identities = identities
        self._auth = auth
        self._requests = requests
        self._metrics = LiveMetrics()
        secret = ticket_secret(configured_keys(args.auth)) if auth is not None else secrets.token_bytes(32)
        self._tickets = TicketSigner(secret, args.live.ticket_ttl_s)
        self._sessions: Counter[str] = Counter()
        self._live_orchestrator: SwapOrchestrator | None = None
        self._build_lock = asyncio.Lock()
        self._steps = ThreadPoolExecutor(max(1, args.live.max_sessions), thread_name_prefix="live-tracker")
        self._defaults = Tracking(args.live.detect_every, args.live.max_gap, args.live.smoothing)

    def handlers(self) -> list[tuple[str, str, Callable[[Request], Awaitable[Response]]]]:
        """(path, method, handler) of the HTTP routes: the tickets, and a plain GET of the WebSocket's path
        (answered 426: the route speaks WebSocket only)."""
        return [(TICKETS_PATH, "POST", self.ticket), (LIVE_PATH, "GET", self.upgrade_required)]

    async def upgrade_required(self, request: Request) -> Response:
        raise UpgradeRequiredError(
            f"{LIVE_PATH} is a WebSocket: open it with the subprotocol {SUBPROTOCOL} (see openapi.json)"
        )

    @property
    def sessions(self) -> int:
        return sum(self._sessions.values())

    async def ticket(self, request: Request) -> Response:
        """``POST /api/v1/live/tickets``: a ticket for the caller's API key (authenticated by the ingress)."""
        ticket, expires = self._tickets.issue(owner_of(request))
        return JSONResponse(
            {
                "ticket": ticket,
                "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
                "ttl_s": self._tickets.ttl_s,
                "subprotocols": [SUBPROTOCOL, TICKET_PREFIX + ticket],
            },
            status_code=201,
        )

    # -- one connection -------------------------------------------------------------------------------
    async def connect(self, websocket: WebSocket) -> None:
        """``WS /api/v1/live``: accept, authenticate, serve the connection, close it with its code."""
        started = time.perf_counter()
        request_id = request_id_of(websocket)
        offered = list(websocket.scope.get("subprotocols") or [])
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        key_id: str | None = None
        error: FaceSwapError | None = None
        counts = {"received": 0, "rate": 0, "answered": 0}
        try:
            key_id = self._authenticate(websocket.headers, offered)
            with self._admit(key_id or ANONYMOUS):
                await self._serve(websocket, key_id or ANONYMOUS, request_id, counts)
        except WebSocketDisconnect:
            pass  # the client closed: nothing to answer
        except Exception as exc:
            error, _ = to_service_error(exc, request_id)
            code, reason = close_for(error)
            with suppress(Exception):  # the client may be gone already
                await websocket.close(code, reason)
        status = error.status if error is not None else 101
        self._requests.record_request(LIVE_PATH, "WS", status, error.code if error else None)
        log_request(
            log,
            method="WS",
            route=LIVE_PATH,
            status=status,
            latency_ms=1000 * (time.perf_counter() - started),
            request_id=request_id,
            code=error.code if error else None,
            error=error.message if error else None,
            api_key_id=key_id,
            faces=None,
        )
        received, answered = counts["received"], counts["answered"]
        log.info("live connection %s: %d frame(s) received, %d answered", request_id, received, answered)

    def _authenticate(self, headers: Mapping[str, str], offered: Sequence[str]) -> str | None:
        """The connection's API key id (None when the service has no keys): from a ticket subprotocol,
        else from the handshake's headers."""
        if self._auth is None:
            return None
        tickets = [p[len(TICKET_PREFIX) :] for p in offered if p.startswith(TICKET_PREFIX)]
        if tickets:
            return self._tickets.redeem(tickets[0])
        return self._auth.authenticate(headers)

    @contextmanager
    def _admit(self, owner: str) -> Iterator[None]:
        """Count the connection against this replica's and its key's limits while it is open."""
        live = self._live
        if live.max_sessions == 0:
            raise LiveDisabledError("live swapping is turned off on this service")
        if self.sessions >= live.max_sessions:
            raise OverloadedError(
                f"this replica serves its maximum of {live.max_sessions} live connections, retry later"
            )
        if self._sessions[owner] >= live.max_sessions_per_key:
            raise TooManySessionsError(
                f"{owner} has {live.max_sessions_per_key} live connections open, the most allowed"
            )
        self._sessions[owner] += 1
        self._metrics.record_sessions(self.sessions)
        try:
            yield
        finally:
            self._sessions[owner] -= 1
            if self._sessions[owner] <= 0:
                del self._sessions[owner]
            self._metrics.record_sessions(self.sessions)

    async def _receive(self, websocket: WebSocket) -> Mapping[str, Any]:
        """The next message; RequestTimeoutError after ``idle_timeout_s`` of silence, WebSocketDisconnect
        when the client closed."""
        try:
            message = await asyncio.wait_for(websocket.receive(), self._live.idle_timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"nothing received for {self._live.idle_timeout_s:g} s: the connection was idle"
            ) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        return message

    async def _serve(self, websocket: WebSocket, owner: str, request_id: str, counts: dict[str, int]) -> None:
        """Set the connection up from its first message, then swap its frames until it closes, counting
        them in ``counts`` (``received``, ``rate``: dropped over the frame rate, ``answered``)."""
        first = await self._receive(websocket)
        text = first.get("text")
        if text is None:
            raise InvalidInputError("the first message must be the JSON setup (a text message)")
        setup = parse_setup(text, self._defaults, 2 * self._args.ingress.max_upload_bytes)
        main = await self._orchestrator()
        orchestrator = await self.live_orchestration(main)
        identity = await self._identity(setup, owner, main)
        identity = resize_identity(identity, orchestrator.ports.swapper.info.crop.size)
        stream = LiveStream(
            orchestrator,
            identity,
            setup.options,
            steps=self._steps,
            reference=await self._reference(setup, main),
            **asdict(setup.tracking),
        )
        live = self._live
        await websocket.send_text(
            ready(
                request_id=request_id,
                identity_id=setup.identity_id,
                components=orchestrator.components,
                crop_size=orchestrator.ports.swapper.info.crop.size,
                notice=orchestrator.ports.swapper.info.notice,
                tracking=asdict(setup.tracking),
                limits={
                    "max_fps": live.max_fps,
                    "max_frame_bytes": live.max_frame_bytes,
                    "max_frame_pixels": live.max_frame_pixels,
                    "idle_timeout_s": live.idle_timeout_s,
                },
            )
        )
        label = {"request_id": request_id} if self._args.ingress.provenance else None
        await self._frames(websocket, stream, orchestrator.components, label, counts)

    async def _identity(self, setup: Setup, owner: str, main: SwapOrchestrator) -> Identity:
        if setup.identity_id is not None:
            return await self._identities.resolve(owner, setup.identity_id)
        assert setup.source_image is not None
        image = await asyncio.to_thread(
            decode_image, setup.source_image, field="source_image", max_pixels=self._args.ingress.max_pixels
        )
        identity, _ = await main.identify(image, setup.options)
        return identity

    async def _reference(self, setup: Setup, main: SwapOrchestrator) -> Embedding | None:
        if setup.reference_image is None:
            return None
        image = await asyncio.to_thread(
            decode_image,
            setup.reference_image,
            field="reference_image",
            max_pixels=self._args.ingress.max_pixels,
        )
        return await main.reference_embedding(image, setup.options)

    async def _frames(
        self,
        websocket: WebSocket,
        stream: LiveStream,
        components: Mapping[str, str | None],
        label: dict[str, Any] | None,
        counts: dict[str, int],
    ) -> None:
        """Serve the frames of one connection until it closes, counting them in ``counts``.

        Three tasks: the reader puts each frame into the one-frame mailbox (dropping the one it
        replaces, or the frame itself when it comes faster than ``max_fps``); the tracker takes the
        latest frame whenever fewer than ``pipeline_depth`` are in flight, decodes and tracks it and
        starts its swap; the sender awaits the swaps in order and sends each answer. Each answer is
        labelled as synthetic (``label``: the provenance label's fields) unless ``label`` is None."""
        live = self._live
        waiting: LatestFrame[tuple[int, bytes, float]] = LatestFrame()
        burst = max(1.0, live.max_fps * RATE_BURST_S)
        bucket = TokenBucket(live.max_fps, burst, burst, time.perf_counter())
        room = asyncio.Semaphore(live.pipeline_depth)
        swaps: asyncio.Queue[tuple[int, float, asyncio.Task[tuple[LiveFrame, bytes]]]] = asyncio.Queue()

        async def read() -> None:
            while True:
                message = await self._receive(websocket)
                data = message.get("bytes")
                if data is None:
                    raise UnsupportedMediaError(
                        "after the setup, frames must be binary messages (JPEG or WebP)"
                    )
                if len(data) > live.max_frame_bytes:
                    raise PayloadTooLargeError(
                        f"a frame of {len(data)} bytes is over the limit of {live.max_frame_bytes} bytes"
                    )
                arrived = time.perf_counter()
                seq = counts["received"]
                counts["received"] += 1
                if bucket.take(arrived) > 0:
                    counts["rate"] += 1
                    self._metrics.record_dropped("rate")
                elif waiting.put((seq, data, arrived)):
                    self._metrics.record_dropped("backpressure")

        async def finish(image: ImageBGR, tracked: Tracked) -> tuple[LiveFrame, bytes]:
            frame = await stream.swap(image, tracked)
            encoded = await asyncio.to_thread(encode_image, frame.image, JPEG_TYPE, live.jpeg_quality)
            if label is not None:
                encoded = label_output(encoded, JPEG_TYPE, components, **label)
            return frame, encoded

        async def track() -> None:
            while True:
                await room.acquire()
                item = await waiting.take()
                if item is None:
                    return
                seq, data, arrived = item
                image = await asyncio.to_thread(decode_frame, data, live.max_frame_pixels)
                tracked = await stream.track(image)
                swaps.put_nowait((seq, arrived, asyncio.create_task(finish(image, tracked))))

        async def send() -> None:
            while True:
                seq, arrived, swap = await swaps.get()
                try:
                    frame, encoded = await swap
                finally:
                    room.release()
                elapsed = time.perf_counter() - arrived
                header = FrameHeader(
                    seq=seq,
                    faces=len(frame.faces),
                    boxes=_boxes(frame),
                    detected=frame.detected,
                    server_time=time.time(),
                    server_ms=round(1000 * elapsed, 1),
                    received=counts["received"],
                    dropped=waiting.dropped + counts["rate"],
                )
                await websocket.send_bytes(frame_message(header, encoded))
                self._metrics.record_frame(elapsed)
                counts["answered"] += 1

        tasks: set[asyncio.Task[Any]] = {asyncio.create_task(c) for c in (read(), track(), send())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            while not swaps.empty():
                tasks.add(swaps.get_nowait()[2])
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError, Exception):
                    await task
        for task in done:
            task.result()  # the reader's disconnect or timeout, the tracker's or the sender's error

    # -- the orchestration of live frames ---------------------------------------------------------------
    async def live_orchestration(self, main: SwapOrchestrator) -> SwapOrchestrator:
        """The orchestration live frames run on (built once): ``main``'s ports, with the classical mesh
        swapper in this replica at ``live.mesh_crop_size`` when that is the graph's swapper."""
        async with self._build_lock:
            if self._live_orchestrator is None:
                ports = main.ports
                info = ports.swapper.info
                size = self._live.mesh_crop_size
                if size is not None and info.identity == "crop" and info.crop.size != size:
                    mesh = await asyncio.to_thread(self._mesh_swapper, size)
                    if mesh.name == info.name and mesh.template == info.crop.template:
                        ports = replace(ports, swapper=ThreadedSwapper(mesh))
                        log.info("live frames: %s in this replica at %d px", mesh.name, size)
                self._live_orchestrator = SwapOrchestrator(
                    ports, max_faces=self._args.ingress.max_faces, cpu=asyncio.to_thread
                )
        return self._live_orchestrator

    def _mesh_swapper(self, size: int) -> MeshSwapper:
        """The mesh swapper for live frames: the deployment's, at ``size``, keeping the sources' meshes."""
        landmarker = ModelFactory(self._args.pipeline_config()).landmarker()
        return MeshSwapper(landmarker, crop_size=size, source_meshes=LIVE_SOURCE_MESHES)
