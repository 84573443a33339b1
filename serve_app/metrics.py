"""The service's own Prometheus metrics, next to Ray Serve's built-in ``ray_serve_*`` ones.

They are ``ray.serve.metrics`` objects, so Serve adds the ``deployment``, ``replica`` and ``application``
tags and Ray exports them, prefixed with ``ray_``, from every node's metrics agent (the port set by
``ray start --metrics-export-port`` / ``ray.init(_metrics_export_port=...)``; KubeRay pods expose it as
``metrics``, port 8080). Each replica creates its own objects in ``__init__``:

- ``ray_faceswap_stage_latency_seconds`` (histogram; ``stage`` detect / embed / swap / enhance / landmark,
  ``model``):
  one batched model call.
- ``ray_faceswap_batch_size`` (histogram; ``stage``, ``model``): requests served by one batched call.
- ``ray_faceswap_batch_items`` (histogram; ``stage``, ``model``): canvases or face crops in one call.
- ``ray_faceswap_faces_per_request`` (histogram): faces swapped (or enhanced) per successful swap.
- ``ray_faceswap_hop_bytes_per_request`` (histogram): array bytes one swap request sent to and received
  from the model deployments (canvases, crops, identities, results).
- ``ray_faceswap_requests_total`` (counter; ``route``, ``method``, ``status``): ingress HTTP requests.
- ``ray_faceswap_errors_total`` (counter; ``code``, ``route``): error responses by error code.
- ``ray_faceswap_jobs`` (gauge; ``state``): jobs in each state, set through :class:`JobMetrics`.
- ``ray_faceswap_live_sessions`` (gauge): open live connections of the replica (:class:`LiveMetrics`).
- ``ray_faceswap_live_frame_latency_seconds`` (histogram): a live frame's arrival to its answer.
- ``ray_faceswap_live_dropped_frames_total`` (counter; ``reason`` backpressure / rate): live frames dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from ray.serve.metrics import Counter, Gauge, Histogram

Stage = Literal["detect", "embed", "swap", "enhance", "landmark"]
T = TypeVar("T")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FACE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
BYTE_BUCKETS = tuple(2**k for k in range(14, 26))
"""16 KiB to 32 MiB."""
JOB_STATES = ("queued", "running", "completed", "failed", "cancelled")
"""States :class:`JobMetrics` always reports (0 when absent); other states are reported as they appear."""


def _tag_keys(*keys: str) -> Any:
    """``keys`` as the tuple Ray wants (its annotation, ``Tuple[str]``, would admit only one key)."""
    return keys


def timed(function: Callable[..., T], *args: object) -> tuple[T, float]:
    """``function(*args)`` and the seconds it took (to run in a worker thread and record on the loop)."""
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def _stage_histogram(
    name: str, description: str, buckets: Iterable[float], stage: Stage, model: str
) -> Histogram:
    """A histogram tagged with one stage and model (and, by Serve, the replica's deployment and app)."""
    histogram = Histogram(
        name,
        description=description,
        boundaries=[float(b) for b in buckets],
        tag_keys=_tag_keys("stage", "model"),
    )
    # a fresh dict each time: Serve adds its own tags to the dict it is given
    histogram.set_default_tags({"stage": stage, "model": model})
    return histogram


class StageMetrics:
    """Model-call latency and batch sizes of one model deployment replica."""

    def __init__(self, stage: Stage, model: str) -> None:
        self._latency = _stage_histogram(
            "faceswap_stage_latency_seconds",
            "Seconds of one batched model call.",
            LATENCY_BUCKETS_S,
            stage,
            model,
        )
        self._batch_size = _stage_histogram(
            "faceswap_batch_size", "Requests served by one batched model call.", BATCH_BUCKETS, stage, model
        )
        self._batch_items = _stage_histogram(
            "faceswap_batch_items",
            "Canvases or face crops in one batched model call.",
            ITEM_BUCKETS,
            stage,
            model,
        )

    def record_batch(self, requests: int, items: int) -> None:
        self._batch_size.observe(requests)
        self._batch_items.observe(items)

    def record_latency(self, seconds: float) -> None:
        self._latency.observe(seconds)


class IngressMetrics:
    """Requests, errors and faces per request of one ingress replica."""

    def __init__(self) -> None:
        self._requests = Counter(
            "faceswap_requests",
            description="HTTP requests answered by the ingress, by route, method and status.",
            tag_keys=_tag_keys("route", "method", "status"),
        )
        self._errors = Counter(
            "faceswap_errors",
            description="Error responses of the ingress, by error code.",
            tag_keys=_tag_keys("code", "route"),
        )
        self._faces = Histogram(
            "faceswap_faces_per_request",
            description="Faces swapped (or enhanced) per successful swap request.",
            boundaries=[float(b) for b in FACE_BUCKETS],
        )
        self._hop_bytes = Histogram(
            "faceswap_hop_bytes_per_request",
            description="Array bytes one swap request sent to and received from the model deployments.",
            boundaries=[float(b) for b in BYTE_BUCKETS],
        )

    def record_request(self, route: str, method: str, status: int, error_code: str | None) -> None:
        self._requests.inc(tags={"route": route, "method": method, "status": str(status)})
        if error_code is not None:
            self._errors.inc(tags={"code": error_code, "route": route})

    def record_faces(self, faces: int) -> None:
        self._faces.observe(faces)

    def record_hop_bytes(self, total: int) -> None:
        self._hop_bytes.observe(total)


class JobMetrics:
    """The ``faceswap_jobs`` gauge: how many jobs are in each state, as last reported by this replica."""

    def __init__(self, states: Iterable[str] = JOB_STATES) -> None:
        self._gauge = Gauge(
            "faceswap_jobs",
            description="Jobs in each state.",
            tag_keys=_tag_keys("state"),
        )
        self._states = dict.fromkeys(states, 0)

    def record_job_state_counts(self, counts: Mapping[str, int]) -> None:
        """Set the gauge to ``counts``; a state reported before (or in JOB_STATES) and absent now reads 0."""
        self._states = {**dict.fromkeys(self._states, 0), **counts}
        for state, count in self._states.items():
            self._gauge.set(count, tags={"state": state})


DropReason = Literal["backpressure", "rate"]


class LiveMetrics:
    """Live connections, frame latency and dropped frames of one ingress replica."""

    def __init__(self) -> None:
        self._sessions = Gauge("faceswap_live_sessions", description="Open live connections.")
        self._latency = Histogram(
            "faceswap_live_frame_latency_seconds",
            description="Seconds from a live frame's arrival to its swapped answer.",
            boundaries=[float(b) for b in LATENCY_BUCKETS_S],
        )
        self._dropped = Counter(
            "faceswap_live_dropped_frames",
            description="Live frames dropped: replaced by a newer one before their swap (backpressure), "
            "or sent faster than the frame-rate limit (rate).",
            tag_keys=_tag_keys("reason"),
        )
        self._sessions.set(0)

    def record_sessions(self, count: int) -> None:
        self._sessions.set(count)

    def record_frame(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def record_dropped(self, reason: DropReason, frames: int = 1) -> None:
        if frames:
            self._dropped.inc(frames, tags={"reason": reason})
