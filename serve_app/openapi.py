"""The OpenAPI 3 document of the ingress, generated: every swap option's schema (type, range, default,
choices, description) comes from :func:`pipeline.options.option_facts`, i.e. from the one typed definition
:class:`pipeline.options.SwapOptions`. The try-it page builds its form from this document too."""

from __future__ import annotations

from typing import Any

from serve_app import openapi_live
from serve_app.auth import API_KEY_HEADER
from serve_app.openapi_forms import BINARY, multipart_body, option_schemas
from serve_app.openapi_jobs import JOB_SCHEMAS, job_paths
from serve_app.routes import API_VERSION, JPEG_TYPE, JSON_TYPE, PNG_TYPE, SWAP_PATH


def openapi_spec(server_url: str = "/", *, auth: bool = False, rate_limit: bool = False) -> dict[str, Any]:
    """OpenAPI 3.0 description of the ingress routes; with ``auth`` the ``/api/`` operations require an API
    key (bearer or ``X-API-Key``) and document 401 and 403, with ``rate_limit`` also 429."""
    image = {**BINARY, "description": "JPEG, PNG or WebP (checked by magic bytes)."}
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
                    "requestBody": multipart_body(form_properties, ["target_image"]),
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
                                JPEG_TYPE: {"schema": dict(BINARY)},
                                PNG_TYPE: {"schema": dict(BINARY)},
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
