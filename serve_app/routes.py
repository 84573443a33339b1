"""The HTTP API's paths and media types, stated once for the routes, the OpenAPI document and the clients."""

from __future__ import annotations

API_VERSION = "1.0.0"
API_PREFIX = "/api/"
"""Every path under it needs an API key when auth is configured."""
SWAP_PATH = "/api/v1/swap"
JOBS_PATH = "/api/v1/jobs"
TASK_PATH = "/api/v1/tasks/{task_id}"
RESULT_PATH = "/api/v1/tasks/{task_id}/result"
TRACKS_PATH = "/api/v1/tasks/{task_id}/tracks"
"""A completed job's sidecar of the faces swapped."""
JSON_TYPE = "application/json"
JPEG_TYPE = "image/jpeg"
PNG_TYPE = "image/png"
RESULT_TYPE = "video/mp4"
TRACKS_TYPE = "application/jsonl"
