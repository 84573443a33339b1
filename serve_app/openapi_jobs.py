"""The OpenAPI path items and component schemas of the video job routes (:mod:`serve_app.jobs`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, get_args

from serve_app.jobs.records import PLANNING_SHARE, Stage
from serve_app.openapi_forms import BINARY, SOURCE_IMAGE, multipart_body
from serve_app.routes import JOBS_PATH, RESULT_PATH, RESULT_TYPE, TASK_PATH, TRACKS_PATH, TRACKS_TYPE


def job_paths(
    option_properties: Mapping[str, Any], errors: Mapping[str, Any], operation: Mapping[str, Any]
) -> dict[str, Any]:
    """OpenAPI path items of the job routes. ``option_properties``: the swap option form fields;
    ``errors``: the ingress' error responses by status; ``operation``: extra keys of every operation (e.g.
    ``security``). Refers to the component schemas ``Error``, ``JobAccepted``, ``Task``, ``TaskDeleted``,
    ``TrackRow``."""
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
                "requestBody": multipart_body(
                    {
                        "source_image": dict(SOURCE_IMAGE),
                        "target_video": {
                            **BINARY,
                            "description": "MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS or FLV (checked by "
                            "magic bytes); its audio is kept. Duration and frame size are checked on the "
                            "container's claims here and on the decoded frames while the job runs (the job "
                            "then fails with payload_too_large or invalid_input).",
                        },
                        "reference_image": {
                            **BINARY,
                            "description": "Face to match (face_selector_mode=reference).",
                        },
                        "enhance_output": {"type": "boolean"},
                        "options": {"type": "string", "description": "JSON object of options."},
                        **option_properties,
                    },
                    ["source_image", "target_video"],
                ),
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
                    "200": {"description": "The video.", "content": {RESULT_TYPE: {"schema": dict(BINARY)}}},
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
