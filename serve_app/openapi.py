"""The OpenAPI 3 document of the ingress, generated: every swap option's schema (type, range, default,
choices, description) comes from :func:`pipeline.options.option_facts`, i.e. from the one typed definition
:class:`pipeline.options.SwapOptions`. The try-it page builds its form from this document too."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, get_args

from pipeline.options import OptionFact, option_facts
from serve_app import openapi_live
from serve_app.auth import API_KEY_HEADER
from serve_app.jobs.records import PLANNING_SHARE, Stage
from serve_app.routes import (
    API_VERSION,
    JOBS_PATH,
    JPEG_TYPE,
    JSON_TYPE,
    PNG_TYPE,
    RESULT_PATH,
    RESULT_TYPE,
    SWAP_PATH,
    TASK_PATH,
    TRACKS_PATH,
    TRACKS_TYPE,
)


def option_schema(fact: OptionFact) -> dict[str, Any]:
    """The multipart form field of one option. Lists are sent as one comma-separated (or JSON) field."""
    schema: dict[str, Any] = {"description": fact.description}
    if fact.kind == "list":
        schema["type"] = "string"
        if fact.choices:
            schema["description"] += f" Comma-separated, any of: {', '.join(fact.choices)}."
        else:
            schema["description"] += " Comma-separated integers."
    else:
        schema["type"] = fact.kind
    if fact.kind == "string" and fact.choices:
        schema["enum"] = list(fact.choices)
    if fact.minimum is not None:
        schema["minimum"] = fact.minimum
    if fact.maximum is not None:
        schema["maximum"] = fact.maximum
    if isinstance(fact.default, tuple):
        schema["default"] = ",".join(str(v) for v in fact.default)
    elif fact.default is not None:
        schema["default"] = fact.default
    return schema


def option_schemas() -> dict[str, dict[str, Any]]:
    """Form-field schemas of every swap option, in definition order."""
    return {fact.name: option_schema(fact) for fact in option_facts()}


def job_paths(
    option_properties: Mapping[str, Any], errors: Mapping[str, Any], operation: Mapping[str, Any]
) -> dict[str, Any]:
    """OpenAPI path items of the job routes. ``option_properties``: the swap option form fields;
    ``errors``: the ingress' error responses by status; ``operation``: extra keys of every operation (e.g.
    ``security``). Refers to the component schemas ``Error``, ``JobAccepted``, ``Task``, ``TaskDeleted``,
    ``TrackRow``."""
    binary = {"type": "string", "format": "binary"}
    json_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    task_id = {
        "name": "task_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
    pick = {code: errors[code] for code in ("401", "403", "429", "503") if code in errors}
    owned = " With API keys, a task exists only for the key that submitted it: any other key gets 404."
    not_found = {"description": "No such task (or another API key's task).", **json_ref}
    return {
        JOBS_PATH: {
            "post": {
                "operationId": "submitJob",
                "summary": "Queue a video job: the source face onto every frame of the target video.",
                "description": "Jobs start in submission order while the cluster and the API key are under "
                "their limits of running jobs; the rest wait in the queue." + owned,
                **operation,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "source_image": {
                                        **binary,
                                        "description": "JPEG, PNG or WebP; its largest face is the identity.",
                                    },
                                    "target_video": {
                                        **binary,
                                        "description": "MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS or FLV "
                                        "(checked by magic bytes); its audio is kept. Duration and frame "
                                        "size are checked on the container's claims here and on the "
                                        "decoded frames while the job runs (the job then fails with "
                                        "payload_too_large or invalid_input).",
                                    },
                                    "reference_image": {
                                        **binary,
                                        "description": "Face to match (face_selector_mode=reference).",
                                    },
                                    "enhance_output": {"type": "boolean"},
                                    "options": {"type": "string", "description": "JSON object of options."},
                                    **option_properties,
                                },
                                "required": ["source_image", "target_video"],
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "Queued; poll the Location (the task).",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}
                        },
                    },
                    **errors,
                    "400": {
                        "description": "Missing field, bad option, corrupt or truncated file.",
                        **json_ref,
                    },
                    "413": {
                        "description": "Body, image, video duration or frame size over the limit.",
                        **json_ref,
                    },
                    "415": {"description": "Not a supported image or video container.", **json_ref},
                    "429": {
                        "description": "The API key has its maximum of queued and running jobs "
                        "(code too_many_jobs), or is over its request rate (rate_limited, Retry-After).",
                        **json_ref,
                    },
                },
            }
        },
        TASK_PATH: {
            "get": {
                "operationId": "getTask",
                "summary": "Status, queue position and progress of a video job.",
                "description": "Finished jobs are kept for the service's retention time, then deleted (404)."
                + owned,
                **operation,
                "parameters": [task_id],
                "responses": {
                    "200": {
                        "description": "The task.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Task"}}},
                    },
                    **pick,
                    "400": {"description": "Not a valid task id.", **json_ref},
                    "404": not_found,
                },
            },
            "delete": {
                "operationId": "deleteTask",
                "summary": "Cancel a queued or running job and delete its files, or delete a finished job.",
                "description": "A running job's runner is stopped; the task reads cancelled until its files "
                "are deleted, then 404." + owned,
                **operation,
                "parameters": [task_id],
                "responses": {
                    "202": {
                        "description": "Cancelled (or, for a finished job, deleted).",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/TaskDeleted"}}
                        },
                    },
                    **pick,
                    "400": {"description": "Not a valid task id.", **json_ref},
                    "404": not_found,
                },
            },
        },
        RESULT_PATH: {
            "get": {
                "operationId": "getTaskResult",
                "summary": "The finished video (streamed).",
                "description": owned.strip(),
                **operation,
                "parameters": [task_id],
                "responses": {
                    "200": {"description": "The video.", "content": {RESULT_TYPE: {"schema": binary}}},
                    **pick,
                    "400": {"description": "Not a valid task id.", **json_ref},
                    "404": not_found,
                    "409": {
                        "description": "The job is not completed (queued, running, failed or cancelled).",
                        **json_ref,
                    },
                },
            }
        },
        TRACKS_PATH: {
            "get": {
                "operationId": "getTaskTracks",
                "summary": "The sidecar of the faces swapped in the finished video (JSON lines, streamed).",
                "description": "One JSON object per line, one per face swapped per frame, by frame: frame "
                "(index from 0), pts (the video stream's time base), track_id (null with tracking off), box "
                "[x1, y1, x2, y2], landmarks [x0, y0, ..., x4, y4] (eyes, nose, mouth corners), score, "
                "source (detected on that frame, tracked by optical flow, or interpolated over a miss); "
                "image pixels." + owned,
                **operation,
                "parameters": [task_id],
                "responses": {
                    "200": {
                        "description": "The sidecar.",
                        "content": {
                            TRACKS_TYPE: {"schema": {"$ref": "#/components/schemas/TrackRow"}},
                        },
                    },
                    **pick,
                    "400": {"description": "Not a valid task id.", **json_ref},
                    "404": not_found,
                    "409": {
                        "description": "The job is not completed (queued, running, failed or cancelled).",
                        **json_ref,
                    },
                },
            }
        },
    }


JOB_SCHEMAS: Mapping[str, Any] = MappingProxyType(
    {
        "JobAccepted": {
            "type": "object",
            "required": ["task_id", "status", "queue_position"],
            "properties": {
                "task_id": {"type": "string"},
                "status": {"type": "string", "enum": ["queued"]},
                "queue_position": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Place in the queue at submission (1: starts next).",
                },
            },
        },
        "Task": {
            "type": "object",
            "required": ["task_id", "status", "queue_position", "progress", "error", "result_url"],
            "properties": {
                "task_id": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": ["queued", "running", "completed", "failed", "cancelled"],
                },
                "queue_position": {
                    "type": "integer",
                    "minimum": 0,
                    "nullable": True,
                    "description": "While queued: the jobs ahead plus one (0: its runner is starting); "
                    "null otherwise.",
                },
                "progress": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "Fraction done. With tracking, planning the faces (pass 1) counts for "
                    f"the first {PLANNING_SHARE:.0%}, swapping for the rest.",
                },
                "stage": {
                    "type": "string",
                    "enum": list(get_args(Stage)),
                    "nullable": True,
                    "description": "While running: planning (the faces of every frame, with tracking), "
                    "then swapping; null otherwise.",
                },
                "frames_planned": {"type": "integer", "description": "Frames whose faces are planned."},
                "frames_done": {"type": "integer", "description": "Frames swapped and written."},
                "frames_total": {"type": "integer"},
                "error": {"type": "string", "nullable": True},
                "error_code": {
                    "type": "string",
                    "nullable": True,
                    "description": "e.g. payload_too_large or invalid_input (the decoded video broke a "
                    "limit or is malformed), no_face, runner_lost, timeout.",
                },
                "result_url": {"type": "string", "nullable": True},
                "tracks_url": {
                    "type": "string",
                    "nullable": True,
                    "description": "Once completed: the sidecar of the faces swapped (JSON lines).",
                },
                "attempts": {"type": "integer"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "started_at": {"type": "string", "format": "date-time", "nullable": True},
                "finished_at": {"type": "string", "format": "date-time", "nullable": True},
                "expires_at": {
                    "type": "string",
                    "format": "date-time",
                    "nullable": True,
                    "description": "When a finished job and its files are deleted.",
                },
                "summary": {
                    "type": "object",
                    "nullable": True,
                    "description": "Once finished: frames, faces_swapped, frames_without_face, fps, "
                    "tracking, detector_calls and detector_calls_per_frame (frames the detector ran on), "
                    "tracks, components.",
                },
            },
        },
        "TrackRow": {
            "type": "object",
            "description": "One line of a job's sidecar: one face swapped in one frame.",
            "required": ["frame", "pts", "track_id", "box", "landmarks", "score", "source"],
            "properties": {
                "frame": {"type": "integer", "minimum": 0},
                "pts": {"type": "integer", "nullable": True},
                "track_id": {"type": "integer", "nullable": True},
                "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                "landmarks": {"type": "array", "items": {"type": "number"}, "minItems": 10, "maxItems": 10},
                "score": {"type": "number"},
                "source": {"type": "string", "enum": ["detected", "tracked", "interpolated"]},
            },
        },
        "TaskDeleted": {
            "type": "object",
            "required": ["task_id", "status", "deleted"],
            "properties": {
                "task_id": {"type": "string"},
                "status": {"type": "string", "enum": ["cancelled", "completed", "failed"]},
                "deleted": {
                    "type": "boolean",
                    "description": "The files are gone already (a finished job); else once the runner "
                    "stopped.",
                },
            },
        },
    }
)
"""Component schemas the job paths refer to."""


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
            "description": "Image whose largest face is the identity. Required when face_swapper runs "
            "(unless identity_id is given).",
        },
        "identity_id": dict(openapi_live.IDENTITY_ID_FIELD),
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
        **option_schemas(),
    }
    error = {"content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    errors = {
        "400": {"description": "Missing field, bad option or corrupt image.", **error},
        "408": {"description": "The body arrived too slowly or stopped arriving.", **error},
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
        "x-websockets": openapi_live.websockets(security),
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
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                            "description": "Echoed in the response header and body when it matches the "
                            "pattern; otherwise (or when absent) the service generates one.",
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
                            "headers": {
                                "X-Faces-Swapped": {"schema": {"type": "integer"}},
                                "X-Faceswap-Notice": {
                                    "schema": {"type": "string"},
                                    "description": "The notices of the JSON answer, for image answers.",
                                },
                                "X-Hop-Bytes": {
                                    "schema": {"type": "integer"},
                                    "description": "Array bytes this request sent to and received from the "
                                    "model deployments.",
                                },
                            },
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
            **job_paths(option_schemas(), errors, security),
            **openapi_live.paths(errors, security),
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
                        "faces_processed",
                        "components",
                        "notices",
                    ],
                    "properties": {
                        "success": {"type": "boolean", "enum": [True]},
                        "message": {"type": "string", "description": "e.g. 'swapped 2 faces'"},
                        "result_image": {"type": "string", "description": "data:image/jpeg;base64,..."},
                        "request_id": {"type": "string"},
                        "faces_swapped": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Faces swapped (0 for an enhance-only request).",
                        },
                        "faces_processed": {"type": "integer", "minimum": 1},
                        "notices": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "What to know about the result, e.g. that the classical "
                            "no-download swapper made it and how to install the real models.",
                        },
                        "components": {
                            "type": "object",
                            "additionalProperties": {"type": "string", "nullable": True},
                        },
                    },
                },
                **JOB_SCHEMAS,
                **openapi_live.SCHEMAS,
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
