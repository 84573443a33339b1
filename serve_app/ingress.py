"""The HTTP ingress: a Starlette app on the replica that runs the one swap orchestration
(:mod:`pipeline.orchestration`) over ports to the model deployments (:mod:`serve_app.ports`).

Frames stay here: uploads are decoded, faces warped, crops pasted back and results encoded in this replica
(CPU, scaled on its own); the model deployments only see detector canvases, aligned crops and identities.

Routes (relative to the application's route prefix):

- ``POST /api/v1/swap``: multipart ``source_image``, ``target_image`` (JPEG, PNG or WebP, checked by
  magic bytes), optional ``reference_image``, ``enhance_output`` (bool) and the swap options, either as
  individual fields (``blend_ratio=0.8``) or as one JSON ``options`` field. Answers the JSON
  ``{"success": true, "message", "result_image": "data:image/jpeg;base64,...", "request_id",
  "faces_swapped", "faces_processed", "components"}``, or the image bytes when ``Accept`` asks for
  ``image/jpeg`` or ``image/png``. Errors: ``{"success": false, "error", "code", "request_id"}`` with 400,
  413, 415, 422, 503 (see ``serve_app.errors``). ``X-Hop-Bytes``: the array bytes this request sent to and
  received from the model deployments.
- ``POST /api/v1/jobs``, ``GET`` and ``DELETE /api/v1/tasks/{task_id}``,
  ``GET /api/v1/tasks/{task_id}/result``: video jobs (``serve_app.jobs``), run on the same model
  deployments; this ingress also bids for the jobs leadership (one replica at a time queues, reconciles
  and cleans up).
- ``POST /api/v1/identities``, ``GET``/``DELETE /api/v1/identities/{identity_id}``: kept source identities
  (``serve_app.identities``); ``POST /api/v1/swap`` takes an ``identity_id`` field in place of
  ``source_image``.
- ``WS /api/v1/live`` and ``POST /api/v1/live/tickets``: live swapping of a stream of frames
  (``serve_app.live``); the WebSocket authenticates itself (a key header or a ticket).
- ``GET /healthz`` (this replica is up), ``GET /readyz`` (every model deployment answers),
  ``GET /openapi.json`` (``serve_app.openapi``) and ``GET /`` (a page to try a swap from a browser).

With ``auth`` configured (``serve_app.config.AuthArgs``) every ``/api/`` path needs an API key
(``Authorization: Bearer <key>`` or ``X-API-Key``): 401 without one, 403 with a wrong one, 429 over the
key's rate; the other routes stay open. Every HTTP request is counted in the ingress metrics
(``serve_app.metrics``) and logged as one structured access record (``serve_app.logs``).

Python callers use the same graph through a handle::

    handle = serve.get_app_handle("faceswap")
    result = await handle.swap_images.remote(source_bgr, target_bgr, {"face_selector_mode": "many"})
    result.image, result.faces_swapped, result.components      # pipeline.orchestration.SwapResult
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from pipeline.errors import InvalidInputError, OverloadedError
from pipeline.identities import IdentityCache
from pipeline.imageio import check_dimensions
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator, SwapResult
from pipeline.types import ImageBGR
from serve_app.auth import ApiKeyAuth
from serve_app.config import AppArgs
from serve_app.errors import (
    ErrorResponse,
    ServiceUnavailableError,
    error_response,
    request_id_of,
    to_service_error,
)
from serve_app.forms import negotiate, options_from_fields, read_multipart
from serve_app.identities import IdentityService, owner_of
from serve_app.jobs import JobService
from serve_app.live import LiveService
from serve_app.live_protocol import LIVE_PATH
from serve_app.logs import log_request
from serve_app.metrics import IngressMetrics
from serve_app.openapi import openapi_spec
from serve_app.page import load_page
from serve_app.ports import StageHandles, metering, serve_ports
from serve_app.routes import API_PREFIX, JPEG_TYPE, JSON_TYPE, SWAP_PATH

log = logging.getLogger("ray.serve")

UNMATCHED_ROUTE = "unmatched"
"""The route label of requests no route matched (404), in metrics and logs."""
FILE_FIELDS = ("source_image", "target_image", "reference_image")


def check_array(name: str, image: object, max_pixels: int) -> ImageBGR:
    """Validate an ImageBGR passed through the Python handle API."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInputError(f"{name}: expected an (H, W, 3) uint8 BGR array, got {described}")
    check_dimensions(image.shape[1], image.shape[0], field=name, max_pixels=max_pixels)
    return image


def describe(result: SwapResult, options: SwapOptions) -> str:
    """The response message: what was done to how many faces."""
    n = result.faces_swapped
    done = " and ".join(verb for verb, on in (("swapped", options.swap), ("enhanced", options.enhance)) if on)
    return f"{done} {n} face{'s' if n != 1 else ''}"


def _route_path(request: Request) -> str:
    """The request's path below the application's route prefix (``root_path``)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


@serve.deployment(name="SwapIngress")
@serve.ingress()
class SwapIngress:
    """HTTP and Python-handle entry point of the swap graph."""

    def __init__(
        self,
        detector: DeploymentHandle,
        swapper: DeploymentHandle,
        embedder: DeploymentHandle | None,
        enhancer: DeploymentHandle | None,
        landmarker: DeploymentHandle | None,
        args: AppArgs,
    ) -> None:
        self._handles = StageHandles(detector, swapper, embedder, enhancer, landmarker)
        self._args = args
        self._limits = args.ingress
        self._inflight = 0
        self._orchestrator: SwapOrchestrator | None = None
        self._ports_lock = asyncio.Lock()
        self._page = load_page()
        self._auth = ApiKeyAuth.from_args(args.auth)
        self._metrics = IngressMetrics()
        self._jobs = JobService(args, self._job_options)
        self._identities = IdentityService(args.identities, args.ingress, self.orchestrator)
        self._live = LiveService(args, self.orchestrator, self._identities, self._auth, self._metrics)

    def __serve_build_asgi_app__(self) -> Starlette:
        handlers: list[tuple[str, str, Callable[[Request], Awaitable[Response]]]] = [
            (SWAP_PATH, "POST", self._http_swap),
            ("/healthz", "GET", self._healthz),
            ("/readyz", "GET", self._readyz),
            ("/openapi.json", "GET", self._openapi),
            ("/", "GET", self._index),
            *self._jobs.handlers(),
            *self._identities.handlers(),
            *self._live.handlers(),
        ]
        routes: list[BaseRoute] = [
            Route(path, self._endpoint(path, handler), methods=[method]) for path, method, handler in handlers
        ]
        routes.append(WebSocketRoute(LIVE_PATH, self._live.connect))
        return Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._route_error},
            lifespan=lambda _app: self._jobs.reconciling(),
        )

    # -- Python handle API ----------------------------------------------------------------------------
    async def swap_images(
        self,
        source: ImageBGR | None,
        target: ImageBGR,
        options: SwapOptions | Mapping[str, object] | None = None,
        reference: ImageBGR | None = None,
    ) -> SwapResult:
        """Swap ``source``'s largest face onto ``target`` (both (H, W, 3) uint8 BGR).

        Raises the typed ``pipeline.errors`` exception a HTTP caller would see as a status code
        (e.g. NoFaceError, OverloadedError).
        """
        try:
            opts = options if isinstance(options, SwapOptions) else SwapOptions.from_mapping(options or {})
            limit = self._limits.max_pixels
            images = (
                check_array("source", source, limit) if source is not None else None,
                check_array("target", target, limit),
                check_array("reference", reference, limit) if reference is not None else None,
            )
            orchestrator = await self.orchestrator()
            with self._admit():
                result = await orchestrator.swap(images[0], images[1], opts, images[2])
            self._metrics.record_faces(result.faces_swapped)
            return result
        except Exception as exc:
            error, _ = to_service_error(exc)
            raise error from None

    async def components(self) -> dict[str, str | None]:
        """Profile and model names of every stage."""
        return (await self.orchestrator()).components

    async def orchestrator(self) -> SwapOrchestrator:
        """The orchestration over the model deployments (built once, after asking each what it takes)."""
        async with self._ports_lock:
            if self._orchestrator is None:
                ports = await serve_ports(self._handles, self._args.profile_label)
                self._orchestrator = SwapOrchestrator(
                    ports,
                    max_faces=self._limits.max_faces,
                    cpu=asyncio.to_thread,
                    identities=IdentityCache(self._limits.identity_cache_size),
                )
        return self._orchestrator

    @contextmanager
    def _admit(self) -> Iterator[None]:
        """The ingress' own queue: at most ``max_inflight_swaps`` swaps at once on this replica."""
        if self._inflight >= self._limits.max_inflight_swaps:
            raise OverloadedError(
                f"this replica is running its maximum of {self._limits.max_inflight_swaps} swaps, retry later"
            )
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    # -- every HTTP request: API key, metrics, access log ---------------------------------------------
    def _endpoint(
        self, route: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._observed(request, route, lambda: handler(request))

        return endpoint

    async def _route_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's routing errors (404, 405) go through the same checks, metrics and log."""

        async def fail() -> Response:
            raise exc

        matched = isinstance(exc, HTTPException) and exc.status_code == 405  # a route's path, another method
        return await self._observed(request, _route_path(request) if matched else UNMATCHED_ROUTE, fail)

    async def _observed(
        self, request: Request, route: str, respond: Callable[[], Awaitable[Response]]
    ) -> Response:
        """``respond()`` behind the API-key check of ``/api/`` paths; errors become JSON error responses.
        Counts the request (and its error code) and writes its access record."""
        started = time.perf_counter()
        request_id = request_id_of(request)
        key_id = None
        try:
            if self._auth is not None and _route_path(request).startswith(API_PREFIX):
                key_id = self._auth.authenticate(request.headers)
                request.state.api_key_id = key_id
            response = await respond()
        except Exception as exc:
            response = error_response(exc, request_id)
        response.headers["X-Content-Type-Options"] = "nosniff"
        error = response.error if isinstance(response, ErrorResponse) else None
        self._metrics.record_request(
            route, request.method, response.status_code, error.code if error else None
        )
        faces = response.headers.get("x-faces-swapped")
        log_request(
            log,
            method=request.method,
            route=route,
            status=response.status_code,
            latency_ms=1000 * (time.perf_counter() - started),
            request_id=request_id,
            code=error.code if error else None,
            error=error.message if error else None,
            api_key_id=key_id,
            faces=int(faces) if faces else None,
        )
        return response

    # -- HTTP routes ----------------------------------------------------------------------------------
    async def _http_swap(self, request: Request) -> Response:
        request_id = request_id_of(request)
        media_type = negotiate(request.headers.get("accept"))
        encoded_type = JPEG_TYPE if media_type == JSON_TYPE else media_type
        async with read_multipart(
            request,
            self._limits.max_upload_bytes,
            FILE_FIELDS,
            f"{FILE_FIELDS[0]} and {FILE_FIELDS[1]}",
            self._limits.upload_pace(),
        ) as form:
            uploads = {key: await upload.read() for key, upload in form.files.items()}
            texts = dict(form.texts)
        identity_id = texts.pop("identity_id", None)
        options = options_from_fields(texts)
        orchestrator = await self.orchestrator()
        if identity_id is not None and "source_image" in uploads:
            raise InvalidInputError("give source_image or identity_id, not both")
        identity = await self._identities.resolve(owner_of(request), identity_id) if identity_id else None
        quality, limit = self._limits.jpeg_quality, self._limits.max_pixels
        label = {"request_id": request_id} if self._limits.provenance else None
        with self._admit(), metering() as meter:
            encoded = await orchestrator.swap_encoded(
                uploads, options, media_type=encoded_type, quality=quality, max_pixels=limit, label=label,
                identity=identity,
            )  # fmt: skip
        result = encoded.result
        self._metrics.record_faces(result.faces_swapped)
        self._metrics.record_hop_bytes(meter.total)
        headers = {"X-Faces-Swapped": str(result.faces_swapped), "X-Hop-Bytes": str(meter.total)}
        if result.notices:
            headers["X-Faceswap-Notice"] = " ".join(result.notices)
        if media_type != JSON_TYPE:
            return Response(encoded.data, media_type=media_type, headers=headers)
        return JSONResponse(
            {
                "success": True,
                "message": describe(result, options),
                "result_image": f"data:{JPEG_TYPE};base64,{base64.b64encode(encoded.data).decode('ascii')}",
                "request_id": request_id,
                "faces_swapped": result.faces_swapped if options.swap else 0,
                "faces_processed": result.faces_swapped,
                "components": result.components,
                "notices": list(result.notices),
            },
            headers=headers,
        )

    async def _job_options(self, texts: Mapping[str, str], has_reference: bool) -> SwapOptions:
        """A video job's options, parsed and checked against the deployed models like a swap's."""
        options = options_from_fields(texts)
        (await self.orchestrator()).check(options, has_source=True, has_reference=has_reference)
        return options

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        request_id = request_id_of(request)
        try:
            components = await asyncio.wait_for(self._probe(), self._limits.readiness_timeout_s)
        except Exception as exc:
            cause, _ = to_service_error(exc, request_id)
            return error_response(ServiceUnavailableError(f"not ready: {cause.message}"), request_id)
        return JSONResponse({"status": "ready", "components": components})

    async def _probe(self) -> dict[str, str | None]:
        """Every deployed model deployment answers ``info`` now."""
        return (await serve_ports(self._handles, self._args.profile_label)).components

    async def _openapi(self, request: Request) -> Response:
        spec: dict[str, Any] = openapi_spec(
            request.scope.get("root_path") or "/",
            auth=self._auth is not None,
            rate_limit=self._auth is not None and self._auth.rate_limited,
        )
        return JSONResponse(spec)

    async def _index(self, request: Request) -> Response:
        return HTMLResponse(self._page.html, headers=self._page.headers)
