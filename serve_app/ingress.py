"""The HTTP ingress: a Starlette app built on the replica over the detector, swapper and enhancer handles.

Routes (relative to the application's route prefix):

- ``POST /api/v1/swap``: multipart ``source_image``, ``target_image`` (JPEG, PNG or WebP, checked by
  magic bytes), optional ``reference_image``, ``enhance_output`` (bool) and the swap options, either as
  individual fields (``blend_ratio=0.8``) or as one JSON ``options`` field. Answers the JSON
  ``{"success": true, "message", "result_image": "data:image/jpeg;base64,...", "request_id",
  "faces_swapped", "components"}``, or the image bytes when ``Accept`` asks for ``image/jpeg`` or
  ``image/png``. Errors: ``{"success": false, "error", "code", "request_id"}`` with 400, 413, 415, 422,
  503 (see ``serve_app.errors``).
- ``POST /api/v1/jobs`` (a video job: ``source_image``, ``target_video``, the same options; 202 with a
  ``task_id``), ``GET /api/v1/tasks/{task_id}`` (status, progress) and ``GET /api/v1/tasks/{task_id}/result``
  (the video, streamed): durable jobs run by the Ray Data batch job on the cluster (``serve_app.jobs``);
  this ingress also runs their reconciler.
- ``GET /healthz`` (this replica is up), ``GET /readyz`` (every model deployment answers),
  ``GET /openapi.json`` and ``GET /`` (a page to try a swap from a browser).

With ``auth`` configured (``serve_app.config.AuthArgs``) every ``/api/`` path needs an API key
(``Authorization: Bearer <key>`` or ``X-API-Key``): 401 without one, 403 with a wrong one, 429 over the
key's rate; the other routes stay open. Every HTTP request is counted in the ingress metrics
(``serve_app.metrics``) and logged as one structured access record (``serve_app.logs``).

Python callers use the same graph through a handle::

    handle = serve.get_app_handle("faceswap")
    result = await handle.swap_images.remote(source_bgr, target_bgr, {"face_selector_mode": "many"})
    result.image, result.faces_swapped, result.components      # pipeline.engine.SwapResult

The request flow passes ``DeploymentResponse`` objects from one deployment to the next without awaiting
in between (detect -> encode source / select + swap -> enhance only when asked) and awaits once.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pipeline.engine import SwapResult
from pipeline.errors import (
    InvalidInputError,
    InvalidOptionError,
    OverloadedError,
    UnsupportedOptionError,
)
from pipeline.imageio import check_dimensions, decode_image, encode_image
from pipeline.options import SwapOptions
from pipeline.provenance import label_output
from pipeline.types import ImageBGR
from serve_app.auth import API_KEY_HEADER, ApiKeyAuth
from serve_app.config import AppArgs
from serve_app.deployments import FacesOutcome
from serve_app.errors import (
    ErrorResponse,
    ServiceUnavailableError,
    error_response,
    request_id_of,
    to_service_error,
)
from serve_app.forms import read_multipart
from serve_app.jobs import OPENAPI_SCHEMAS as JOB_SCHEMAS
from serve_app.jobs import JobService
from serve_app.jobs import openapi_paths as job_paths
from serve_app.logs import log_request
from serve_app.metrics import IngressMetrics

log = logging.getLogger("ray.serve")

API_VERSION = "1.0.0"
API_PREFIX = "/api/"
"""Every path under it needs an API key when auth is configured."""
SWAP_PATH = "/api/v1/swap"
UNMATCHED_ROUTE = "unmatched"
"""The route label of requests no route matched (404), in metrics and logs."""
FILE_FIELDS = ("source_image", "target_image", "reference_image")
JSON_TYPE, JPEG_TYPE, PNG_TYPE = "application/json", "image/jpeg", "image/png"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# -- request parsing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwapForm:
    """A parsed swap request: raw upload bytes by field name and the validated options."""

    files: Mapping[str, bytes]
    options: SwapOptions


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidOptionError(f"{name}: expected true or false, got {raw!r}")


def options_from_fields(texts: Mapping[str, str]) -> SwapOptions:
    """SwapOptions from the text fields: individual options, a JSON ``options`` object, ``enhance_output``."""
    fields = dict(texts)
    mapping: dict[str, object] = {}
    raw_json = fields.pop("options", None)
    if raw_json is not None and raw_json.strip():
        try:
            parsed = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise InvalidOptionError(f"options: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise InvalidOptionError("options: JSON nested too deeply") from None
        if not isinstance(parsed, dict):
            raise InvalidOptionError("options: expected a JSON object")
        mapping.update(parsed)
    enhance = fields.pop("enhance_output", None)
    both = sorted(set(mapping) & set(fields))
    if both:
        raise InvalidOptionError(f"{both}: given both as a field and inside options")
    options = SwapOptions.from_mapping({**mapping, **fields})
    if enhance is not None and enhance.strip():
        options = options.with_enhance(parse_bool("enhance_output", enhance))
    return options


async def read_swap_form(request: Request, max_bytes: int) -> SwapForm:
    """Read and check a multipart swap request, enforcing ``max_bytes`` while the body streams in."""
    async with read_multipart(
        request, max_bytes, FILE_FIELDS, f"{FILE_FIELDS[0]} and {FILE_FIELDS[1]}"
    ) as form:
        files = {key: await upload.read() for key, upload in form.files.items()}
        texts = dict(form.texts)
    return SwapForm(files=files, options=options_from_fields(texts))


_ACCEPT_MATCHES = MappingProxyType(
    {
        JSON_TYPE: JSON_TYPE,
        "application/*": JSON_TYPE,
        "*/*": JSON_TYPE,
        JPEG_TYPE: JPEG_TYPE,
        "image/*": JPEG_TYPE,
        PNG_TYPE: PNG_TYPE,
    }
)


def negotiate(accept: str | None) -> str:
    """The response type for an Accept header: ``application/json`` (also for ``*/*``, no header or only
    unsupported types), ``image/jpeg`` or ``image/png``. The highest q wins, the earliest listed on ties."""
    best: dict[str, tuple[float, int]] = {}
    for position, part in enumerate((accept or "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        chosen = _ACCEPT_MATCHES.get(media.lower())
        if chosen is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if chosen not in best or q > best[chosen][0]:
            best[chosen] = (q, best.get(chosen, (0.0, position))[1])
    ranked = sorted(((q, -position, media) for media, (q, position) in best.items() if q > 0), reverse=True)
    return ranked[0][2] if ranked else JSON_TYPE


def check_supported(
    options: SwapOptions, components: Mapping[str, str | None], *, has_source: bool, has_reference: bool
) -> None:
    """Fail fast, before any model runs, for requests the deployed models cannot serve."""
    if options.swap and not has_source:
        raise InvalidInputError("source_image: required (face_swapper is in frame_processors)")
    if options.enhance and components.get("enhancer") is None:
        raise UnsupportedOptionError("face_enhancer was asked for but no enhancer is deployed")
    enhancer = components.get("enhancer")
    if options.face_enhance_model and options.face_enhance_model != enhancer:
        raise UnsupportedOptionError(
            f"face_enhance_model {options.face_enhance_model!r} is not loaded (loaded: {enhancer or 'none'})"
        )
    if options.face_selector_mode == "reference":
        if components.get("embedder") is None:
            raise UnsupportedOptionError(
                "face_selector_mode 'reference' needs an embedding model; this profile has none"
            )
        if not has_reference:
            raise InvalidOptionError("face_selector_mode 'reference' needs a reference_image")


def check_array(name: str, image: object, max_pixels: int) -> ImageBGR:
    """Validate an ImageBGR passed through the Python handle API."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInputError(f"{name}: expected an (H, W, 3) uint8 BGR array, got {described}")
    check_dimensions(image.shape[1], image.shape[0], field=name, max_pixels=max_pixels)
    return image


# -- OpenAPI ------------------------------------------------------------------------------------------
def _option_schemas() -> dict[str, dict[str, Any]]:
    """Form-field schemas of every SwapOptions field, defaults taken from SwapOptions itself."""
    defaults = dataclasses.asdict(SwapOptions())
    schemas: dict[str, dict[str, Any]] = {
        "frame_processors": {
            "type": "string",
            "description": "Comma-separated or JSON list of face_swapper, face_enhancer.",
        },
        "blend_ratio": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Swapped face weight inside the mask.",
        },
        "face_mask_blur": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Box-mask blur (FaceFusion).",
        },
        "face_mask_padding": {
            "type": "string",
            "description": "1 or 4 integers in percent: top, right, bottom, left.",
        },
        "face_enhancer_blend": {
            "type": "integer",
            "minimum": 0,
            "maximum": 100,
            "description": "Enhanced face weight.",
        },
        "face_enhance_model": {
            "type": "string",
            "description": "Enhancer model name; must be the deployed one.",
        },
        "face_selector_mode": {
            "type": "string",
            "enum": ["one", "many", "reference"],
            "description": "Which target faces to swap.",
        },
        "reference_face_distance": {
            "type": "number",
            "minimum": 0,
            "maximum": 2,
            "description": "Max cosine distance to the reference face.",
        },
        "detector_score": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Minimum detection score.",
        },
    }
    for name, schema in schemas.items():
        default = defaults[name]
        if isinstance(default, tuple | list):
            default = ",".join(str(v) for v in default)
        if default is not None:
            schema["default"] = default
    return schemas


def openapi_spec(server_url: str = "/", *, auth: bool = False, rate_limit: bool = False) -> dict[str, Any]:
    """OpenAPI 3.0 description of the ingress routes; with ``auth`` the ``/api/`` operations require an API
    key (bearer or ``X-API-Key``) and document 401 and 403, with ``rate_limit`` also 429."""
    image = {
        "type": "string",
        "format": "binary",
        "description": "JPEG, PNG or WebP (checked by magic bytes).",
    }
    form_properties: dict[str, Any] = {
        "source_image": {
            **image,
            "description": "Image whose largest face is the identity. Required when face_swapper runs.",
        },
        "target_image": {**image, "description": "Image whose faces are replaced."},
        "reference_image": {
            **image,
            "description": "Face to match in the target (face_selector_mode=reference).",
        },
        "enhance_output": {
            "type": "boolean",
            "description": "Add or remove face_enhancer from frame_processors.",
        },
        "options": {"type": "string", "description": "JSON object with any of the option fields below."},
        **_option_schemas(),
    }
    error = {"content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    errors = {
        "400": {"description": "Missing field, bad option or corrupt image.", **error},
        "413": {"description": "Body or image pixel count over the limit.", **error},
        "415": {"description": "Not a JPEG, PNG or WebP image, or not multipart/form-data.", **error},
        "422": {"description": "No face found, or an option the deployed models cannot honour.", **error},
        "503": {"description": "Overloaded or a model deployment unavailable; see Retry-After.", **error},
    }
    security: dict[str, Any] = {}
    security_schemes: dict[str, Any] = {}
    if auth:
        errors["401"] = {
            "description": "No API key; the response carries WWW-Authenticate: Bearer.",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            **error,
        }
        errors["403"] = {"description": "The API key is not valid.", **error}
        if rate_limit:
            errors["429"] = {
                "description": "The API key is over its request rate; see Retry-After (seconds).",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                **error,
            }
        security = {"security": [{"bearerAuth": []}, {"apiKeyHeader": []}]}
        security_schemes = {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <key>",
                },
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
            }
        }
    status = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "faceswap-serve",
            "version": API_VERSION,
            "description": "Face swapping on Ray Serve.",
        },
        "servers": [{"url": server_url}],
        "paths": {
            SWAP_PATH: {
                "post": {
                    "operationId": "swap",
                    "summary": "Swap the source face onto the target image's faces.",
                    **security,
                    "parameters": [
                        {
                            "name": "X-Request-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Echoed in the response header and body; generated when absent.",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": form_properties,
                                    "required": ["target_image"],
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The swapped image: JSON, or bytes when Accept asks for an image.",
                            "content": {
                                JSON_TYPE: {"schema": {"$ref": "#/components/schemas/SwapResponse"}},
                                JPEG_TYPE: {"schema": {"type": "string", "format": "binary"}},
                                PNG_TYPE: {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        **errors,
                    },
                }
            },
            **job_paths(_option_schemas(), errors, security),
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness of this ingress replica.",
                    "responses": {"200": {"description": "Up.", "content": {JSON_TYPE: {"schema": status}}}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Every model deployment answers.",
                    "responses": {
                        "200": {"description": "Ready.", "content": {JSON_TYPE: {"schema": status}}},
                        "503": {"description": "Not ready.", **error},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 document.",
                            "content": {JSON_TYPE: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "page",
                    "summary": "A page to try a swap from a browser.",
                    "responses": {
                        "200": {
                            "description": "HTML page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            **security_schemes,
            "schemas": {
                "SwapResponse": {
                    "type": "object",
                    "required": [
                        "success",
                        "message",
                        "result_image",
                        "request_id",
                        "faces_swapped",
                        "components",
                    ],
                    "properties": {
                        "success": {"type": "boolean", "enum": [True]},
                        "message": {"type": "string"},
                        "result_image": {"type": "string", "description": "data:image/jpeg;base64,..."},
                        "request_id": {"type": "string"},
                        "faces_swapped": {"type": "integer", "minimum": 1},
                        "components": {
                            "type": "object",
                            "additionalProperties": {"type": "string", "nullable": True},
                        },
                    },
                },
                **JOB_SCHEMAS,
                "Error": {
                    "type": "object",
                    "required": ["success", "error", "code", "request_id"],
                    "properties": {
                        "success": {"type": "boolean", "enum": [False]},
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                },
            },
        },
    }


def _route_path(request: Request) -> str:
    """The request's path below the application's route prefix (``root_path``)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def _page() -> str:
    return resources.files("serve_app").joinpath("static/index.html").read_text(encoding="utf-8")


# -- the deployment -----------------------------------------------------------------------------------
@serve.deployment(name="SwapIngress")
@serve.ingress()
class SwapIngress:
    """HTTP and Python-handle entry point of the swap graph."""

    def __init__(
        self,
        detector: DeploymentHandle,
        swapper: DeploymentHandle,
        enhancer: DeploymentHandle | None,
        args: AppArgs,
    ) -> None:
        self._detector = detector
        self._swapper = swapper
        self._enhancer = enhancer
        self._args = args
        self._limits = args.ingress
        self._inflight = 0
        self._components: dict[str, str | None] | None = None
        self._page = _page()
        self._auth = ApiKeyAuth.from_args(args.auth)
        self._metrics = IngressMetrics()
        self._jobs = JobService(args, self._job_options)

    def __serve_build_asgi_app__(self) -> Starlette:
        handlers: list[tuple[str, str, Callable[[Request], Awaitable[Response]]]] = [
            (SWAP_PATH, "POST", self._http_swap),
            ("/healthz", "GET", self._healthz),
            ("/readyz", "GET", self._readyz),
            ("/openapi.json", "GET", self._openapi),
            ("/", "GET", self._index),
            *self._jobs.handlers(),
        ]
        routes = [
            Route(path, self._endpoint(path, handler), methods=[method]) for path, method, handler in handlers
        ]
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
            with self._admit():
                return await self._swap(
                    check_array("source", source, limit) if source is not None else None,
                    check_array("target", target, limit),
                    opts,
                    check_array("reference", reference, limit) if reference is not None else None,
                )
        except Exception as exc:
            error, _ = to_service_error(exc)
            raise error from None

    async def components(self) -> dict[str, str | None]:
        """Profile and model names of every stage (fetched from the deployments once, then cached)."""
        if self._components is None:
            self._components = await self._fetch_components()
        return self._components

    # -- the graph ------------------------------------------------------------------------------------
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

    async def _fetch_components(self) -> dict[str, str | None]:
        handles = [self._detector, self._swapper] + ([self._enhancer] if self._enhancer is not None else [])
        parts = await asyncio.gather(*(h.components.remote() for h in handles))
        merged: dict[str, str | None] = {
            "profile": self._args.profile_label,
            "detector": None,
            "embedder": None,
            "swapper": None,
            "enhancer": None,
        }
        for part in parts:
            merged.update(part)
        return merged

    async def _swap(
        self, source: ImageBGR | None, target: ImageBGR, options: SwapOptions, reference: ImageBGR | None
    ) -> SwapResult:
        components = await self.components()
        check_supported(
            options, components, has_source=source is not None, has_reference=reference is not None
        )
        score = options.detector_score
        # Chain DeploymentResponses: each stage starts as soon as its inputs exist; one await at the end.
        target_faces = self._detector.detect.remote(target, score)
        identity = None
        if options.swap:
            identity = self._swapper.encode_source.remote(source, self._detector.detect.remote(source, score))
        ref = None
        if options.face_selector_mode == "reference":
            ref = self._swapper.reference_embedding.remote(
                reference, self._detector.detect.remote(reference, score)
            )
        outcome = self._swapper.swap.remote(target, target_faces, identity, options, ref)
        if options.enhance:
            assert self._enhancer is not None  # check_supported guarantees it
            outcome = self._enhancer.enhance.remote(outcome, options)
        result: FacesOutcome = await outcome
        self._metrics.record_faces(len(result.faces))
        return SwapResult(image=result.image, faces_swapped=len(result.faces), components=components)

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
            response = await respond()
        except Exception as exc:
            response = error_response(exc, request_id)
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
        try:
            with self._admit():
                form = await read_swap_form(request, self._limits.max_upload_bytes)
                images = await asyncio.to_thread(self._decode_all, form.files)
                result = await self._swap(
                    images.get("source_image"),
                    images["target_image"],
                    form.options,
                    images.get("reference_image"),
                )
                encoded_type = JPEG_TYPE if media_type == JSON_TYPE else media_type
                body = await asyncio.to_thread(
                    encode_image, result.image, encoded_type, self._limits.jpeg_quality
                )
                if self._limits.provenance:
                    body = label_output(body, encoded_type, result.components, request_id=request_id)
        except Exception as exc:
            return error_response(exc, request_id)
        headers = {"X-Faces-Swapped": str(result.faces_swapped)}
        if media_type != JSON_TYPE:
            return Response(body, media_type=media_type, headers=headers)
        return JSONResponse(
            {
                "success": True,
                "message": f"swapped {result.faces_swapped} face(s)",
                "result_image": f"data:{JPEG_TYPE};base64,{base64.b64encode(body).decode('ascii')}",
                "request_id": request_id,
                "faces_swapped": result.faces_swapped,
                "components": result.components,
            },
            headers=headers,
        )

    async def _job_options(self, texts: Mapping[str, str], has_reference: bool) -> SwapOptions:
        """A video job's options, parsed and checked against the deployed models like a swap's."""
        options = options_from_fields(texts)
        check_supported(options, await self.components(), has_source=True, has_reference=has_reference)
        return options

    def _decode_all(self, files: Mapping[str, bytes]) -> dict[str, ImageBGR]:
        if "target_image" not in files:
            raise InvalidInputError("target_image: required")
        return {
            name: decode_image(data, field=name, max_pixels=self._limits.max_pixels)
            for name, data in files.items()
        }

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        request_id = request_id_of(request)
        try:
            components = await asyncio.wait_for(self._fetch_components(), self._limits.readiness_timeout_s)
        except Exception as exc:
            cause, _ = to_service_error(exc, request_id)
            return error_response(ServiceUnavailableError(f"not ready: {cause.message}"), request_id)
        self._components = components
        return JSONResponse({"status": "ready", "components": components})

    async def _openapi(self, request: Request) -> Response:
        spec = openapi_spec(
            request.scope.get("root_path") or "/",
            auth=self._auth is not None,
            rate_limit=self._auth is not None and self._auth.rate_limited,
        )
        return JSONResponse(spec)

    async def _index(self, request: Request) -> Response:
        return HTMLResponse(self._page)
