"""The Serve application end to end: one real local Ray (4 logical CPUs, 1 logical GPU) for the module,
the graph deployed on a free 127.0.0.1 port, exercised through real HTTP and through handles.

Applications deployed:
- ``tm`` at ``/``: the project's test models (test SCRFD, ArcFace, inswapper "tint", GFPGAN "sharpen"),
  its swapper batching across requests, its enhancer autoscaling 1 -> 4 replicas of 0.25 GPU;
- ``lite`` at ``/lite``: the lite profile (no ONNX) with tiny admission limits, for real photos and 503s;
- ``client``: another application that reaches ``tm`` through ``serve.get_app_handle``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.local_ray import assert_error, local_serve  # noqa: E402

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from pipeline.errors import NoFaceError  # noqa: E402
from pipeline.options import SwapOptions  # noqa: E402
from pipeline.orchestration import SwapOrchestrator, SwapResult  # noqa: E402
from pipeline.profiles import PipelineConfig, build_models  # noqa: E402
from pipeline.sessions import SessionConfig  # noqa: E402
from pipeline.types import ImageBGR  # noqa: E402
from serve_app.app import build_app  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(240),
    # metrics_interval_s (how often handles push autoscaling metrics) is deprecated in Ray 2.60 but is
    # still the only knob: the environment variables its warning names are not read yet.
    pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning"),
]

ENHANCER_GPUS = 0.25


def _noise(height: int, width: int, seed: int) -> ImageBGR:
    """Smooth random colours: any image at least 336 x 208 holds the test SCRFD's one face."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)


def _png(image: ImageBGR) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _decode(data: bytes) -> ImageBGR:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _files(source: ImageBGR | None, target: ImageBGR | None) -> dict[str, tuple[str, bytes, str]]:
    files = {}
    if source is not None:
        files["source_image"] = ("source.png", _png(source), "image/png")
    if target is not None:
        files["target_image"] = ("target.png", _png(target), "image/png")
    return files


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    """A local Ray with one logical GPU and Serve's HTTP proxy on a free 127.0.0.1 port, for this module
    (the only one of the session that deploys Serve; other Ray modules start and stop their own)."""
    with local_serve() as url:
        yield url


@pytest.fixture(scope="module")
def tm_args(test_models: dict[str, Path]) -> dict[str, Any]:
    return {
        "use_shared_assets": False,
        "overrides": {
            "detector": str(test_models["scrfd"]),
            "embedder": str(test_models["arcface"]),
            "swapper": str(test_models["inswapper_tint"]),
            "enhancer": str(test_models["gfpgan_sharpen"]),
        },
        "providers": ["cpu"],
        "intra_op_threads": 1,
        "ingress": {"num_cpus": 0, "max_upload_bytes": 2_000_000, "max_pixels": 4_000_000},
        "detector": {"num_cpus": 0},
        "embedder": {"num_cpus": 0},
        "swapper": {
            "num_cpus": 0,
            "max_ongoing_requests": 16,
            "batch": {"max_batch_size": 16, "batch_wait_timeout_s": 0.25},
        },
        "enhancer": {
            "num_cpus": 0,
            "num_gpus": ENHANCER_GPUS,
            "max_ongoing_requests": 2,
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 4,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 600,
                "look_back_period_s": 2,
                "metrics_interval_s": 0.5,
            },
        },
    }


@pytest.fixture(scope="module")
def tm(serve_url: str, tm_args: dict[str, Any]) -> str:
    """The test-model application at ``/``; returns its base URL."""
    serve.run(build_app(tm_args), name="tm", route_prefix="/")
    return serve_url


@pytest.fixture(scope="module")
def lite(serve_url: str) -> str:
    """The lite profile at ``/lite``: one detector call at a time (one more queued), three swaps at the
    ingress. Each detector call holds its replica for 0.3 s (a batch of 2 that can never fill while one
    request at a time is let in), so that three swaps at once overflow its queue whatever the load."""
    args = {
        "profile": "lite",
        "enhance": False,
        "use_shared_assets": False,
        "ingress": {"num_cpus": 0, "max_inflight_swaps": 3},
        "detector": {
            "num_cpus": 0,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "batch": {"max_batch_size": 2, "batch_wait_timeout_s": 0.3},
        },
        "swapper": {"num_cpus": 0},
    }
    serve.run(build_app(args), name="lite", route_prefix="/lite")
    return f"{serve_url}/lite"


class LocalSwaps:
    """The same models and orchestration in process: what every served result must equal."""

    def __init__(self, config: PipelineConfig) -> None:
        self.orchestrator = SwapOrchestrator(build_models(config).ports())
        self.components = self.orchestrator.components

    def swap(self, source: ImageBGR, target: ImageBGR, options: SwapOptions | None = None) -> SwapResult:
        return asyncio.run(self.orchestrator.swap(source, target, options))


@pytest.fixture(scope="module")
def local_pipeline(tm_args: dict[str, Any]) -> LocalSwaps:
    return LocalSwaps(
        PipelineConfig(
            use_shared_assets=False, overrides=tm_args["overrides"], session=SessionConfig(intra_op_threads=1)
        )
    )


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


SOURCE = _noise(360, 480, seed=1)
TARGET = _noise(400, 560, seed=2)


# -- test-model application ------------------------------------------------------------------------------
def test_swap_returns_the_seed_json_shape(tm: str, http: httpx.Client, local_pipeline: LocalSwaps) -> None:
    response = http.post(
        f"{tm}/api/v1/swap", files=_files(SOURCE, TARGET), headers={"X-Request-ID": "req-json-1"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    documented = http.get(f"{tm}/openapi.json").json()["components"]["schemas"]["SwapResponse"]
    assert set(body) == set(documented["required"]) == set(documented["properties"])
    assert {"result_image", "faces_swapped", "notices"} <= set(body)
    assert body["success"] is True and body["message"] == "swapped 1 face"
    assert body["request_id"] == "req-json-1" == response.headers["x-request-id"]
    assert body["faces_swapped"] == 1
    assert body["components"] == local_pipeline.components
    prefix = "data:image/jpeg;base64,"
    assert body["result_image"].startswith(prefix)
    image = _decode(base64.b64decode(body["result_image"][len(prefix) :]))
    expected = local_pipeline.swap(SOURCE, TARGET).image
    assert image.shape == TARGET.shape
    assert np.abs(image.astype(int) - expected).mean() < 2.0  # JPEG
    assert np.abs(image.astype(int) - TARGET).mean() > 1.0  # the tint changed the face region


@pytest.mark.parametrize(
    ("fields", "accept"),
    [
        ({}, "image/png"),
        ({"enhance_output": "true", "options": '{"blend_ratio": 0.7}'}, "image/png"),
        ({"frame_processors": "face_enhancer", "face_enhancer_blend": "100"}, "image/png, */*;q=0.5"),
    ],
    ids=["swap", "swap+enhance", "enhance-only"],
)
def test_image_bytes_equal_the_in_process_pipeline(
    tm: str, http: httpx.Client, local_pipeline, fields: dict[str, str], accept: str
) -> None:
    response = http.post(
        f"{tm}/api/v1/swap", files=_files(SOURCE, TARGET), data=fields, headers={"Accept": accept}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-faces-swapped"] == "1"
    served = _decode(response.content)
    mapping: dict[str, object] = {k: v for k, v in fields.items() if k not in ("enhance_output", "options")}
    if "options" in fields:
        mapping.update({"blend_ratio": 0.7})
    options = SwapOptions.from_mapping(mapping)
    if "enhance_output" in fields:
        options = options.with_enhance(True)
    expected = local_pipeline.swap(SOURCE, TARGET, options).image
    assert np.array_equal(served, expected)  # the same orchestration on the same models: the same pixels


def test_accept_jpeg_returns_jpeg_bytes(tm: str, http: httpx.Client) -> None:
    response = http.post(f"{tm}/api/v1/swap", files=_files(SOURCE, TARGET), headers={"Accept": "image/jpeg"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff"
    assert _decode(response.content).shape == TARGET.shape


def _big_png() -> bytes:
    """A 2100 x 2000 black PNG: few bytes, 4.2 M pixels (over the test app's 4 M limit)."""
    return _png(np.zeros((2000, 2100, 3), np.uint8))


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({"source_image": _png(SOURCE)}, {}, 400, "invalid_input"),
        (_files(SOURCE, TARGET), {"blend_ratio": "2"}, 400, "invalid_option"),
        (_files(SOURCE, TARGET), {"colour": "red"}, 400, "invalid_option"),
        (_files(SOURCE, TARGET), {"options": "{not json"}, 400, "invalid_option"),
        (_files(SOURCE, TARGET), {"face_selector_mode": "reference"}, 400, "invalid_option"),
        (_files(None, TARGET), {}, 400, "invalid_input"),
        (
            {**_files(SOURCE, None), "target_image": ("t.png", b"\x89PNG\r\n\x1a\ntruncated", "image/png")},
            {},
            400,
            "invalid_input",
        ),
        (
            {**_files(SOURCE, None), "target_image": ("notes.txt", b"hello, not an image", "text/plain")},
            {},
            415,
            "unsupported_media_type",
        ),
        (
            {**_files(SOURCE, None), "target_image": ("big.png", os.urandom(2_100_000), "image/png")},
            {},
            413,
            "payload_too_large",
        ),
        (
            {**_files(SOURCE, None), "target_image": ("huge.png", _big_png(), "image/png")},
            {},
            413,
            "payload_too_large",
        ),
        (_files(SOURCE, TARGET), {"detector_score": "0.99"}, 422, "no_face"),
        (_files(SOURCE, TARGET), {"face_enhance_model": "gfpgan_1.4"}, 422, "unsupported_option"),
    ],
    ids=[
        "missing-target",
        "bad-option",
        "unknown-option",
        "bad-options-json",
        "reference-without-image",
        "missing-source",
        "corrupt-image",
        "text-file",
        "body-too-large",
        "too-many-pixels",
        "no-face",
        "enhancer-not-loaded",
    ],
)
def test_bad_requests_get_typed_json_errors(
    tm: str, http: httpx.Client, files: dict, data: dict, status: int, code: str
) -> None:
    assert_error(http.post(f"{tm}/api/v1/swap", files=files, data=data), status, code)


def test_upload_limit_is_enforced_while_the_body_streams(tm: str, http: httpx.Client) -> None:
    """No Content-Length (chunked): the ingress counts bytes as they arrive and stops at the limit."""
    boundary = "faceswap-test-boundary"

    def part(name: str) -> bytes:
        disposition = f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"'
        return f"--{boundary}\r\n{disposition}\r\nContent-Type: image/png\r\n\r\n".encode()

    def body() -> Iterator[bytes]:
        for name in ("source_image", "target_image"):
            yield part(name) + _png(SOURCE) + b"\r\n"
        yield part("reference_image")
        for _ in range(40):
            yield os.urandom(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = http.post(
        f"{tm}/api/v1/swap",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")


def test_non_multipart_and_routing_errors_are_json(tm: str, http: httpx.Client) -> None:
    assert_error(http.post(f"{tm}/api/v1/swap", json={"source_image": "x"}), 415, "unsupported_media_type")
    assert_error(http.get(f"{tm}/api/v1/swap"), 405, "method_not_allowed")
    assert_error(http.get(f"{tm}/api/v2/nothing"), 404, "not_found")


def test_health_readiness_openapi_and_page(tm: str, http: httpx.Client, local_pipeline) -> None:
    assert http.get(f"{tm}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{tm}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "components": local_pipeline.components}
    spec = http.get(f"{tm}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == {
        ("/api/v1/swap", "post"),
        ("/api/v1/jobs", "post"),
        ("/api/v1/tasks/{task_id}", "get"),
        ("/api/v1/tasks/{task_id}", "delete"),
        ("/api/v1/identities", "post"),
        ("/api/v1/identities/{identity_id}", "get"),
        ("/api/v1/identities/{identity_id}", "delete"),
        ("/api/v1/live/tickets", "post"),
        ("/api/v1/tasks/{task_id}/result", "get"),
        ("/api/v1/tasks/{task_id}/tracks", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
    }
    for path, method in routes:  # every documented route answers with its documented method
        if method == "get" and "{" not in path:
            assert http.get(f"{tm}{path}").status_code == 200, path
    page = http.get(f"{tm}/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'name="source_image"' in page.text and "api/v1/swap" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained, no CDN


def _swapper_stats() -> dict[str, Any]:
    return serve.get_deployment_handle("FaceSwapper", app_name="tm").stats.remote().result()


def test_concurrent_requests_share_swapper_calls(tm: str) -> None:
    before = _swapper_stats()
    n = 8

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{tm}/api/v1/swap",
                        files=_files(SOURCE, _noise(400, 560, seed=10 + i)),
                        headers={"Accept": "image/png"},
                    )
                    for i in range(n)
                )
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * n
    after = _swapper_stats()
    assert after["requests"] - before["requests"] == n
    assert after["items"] - before["items"] == n  # one face each
    calls = after["calls"] - before["calls"]
    assert 1 <= calls < n, after["sizes"]
    assert after["largest"] >= 2
    # the batch knobs came from user_config through reconfigure, and batches respect them
    assert (after["max_batch_size"], after["batch_wait_timeout_s"]) == (16, 0.25)
    assert max(after["sizes"]) <= 16


def test_python_handle_from_the_driver(tm: str, local_pipeline) -> None:
    handle = serve.get_app_handle("tm")
    result = handle.swap_images.remote(SOURCE, TARGET, {"face_selector_mode": "many"}).result()
    assert isinstance(result, SwapResult)
    expected = local_pipeline.swap(SOURCE, TARGET, SwapOptions(face_selector_mode="many"))
    assert result.faces_swapped == expected.faces_swapped == 1
    assert np.array_equal(result.image, expected.image)
    with pytest.raises(NoFaceError):
        handle.swap_images.remote(SOURCE, TARGET, {"detector_score": 0.99}).result()


@serve.deployment(name="SwapClient", ray_actor_options={"num_cpus": 0})
class SwapClient:
    """Another application's deployment that uses the swap graph through its app handle."""

    def __init__(self, app_name: str) -> None:
        self._swap = serve.get_app_handle(app_name)

    async def run(self, source: ImageBGR, target: ImageBGR) -> SwapResult:
        return await self._swap.swap_images.remote(source, target, {"blend_ratio": 0.5})


def test_python_handle_from_another_application(tm: str, local_pipeline) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client = serve.run(SwapClient.bind("tm"), name="client", route_prefix=None)
    result = client.run.remote(SOURCE, TARGET).result()
    expected = local_pipeline.swap(SOURCE, TARGET, SwapOptions(blend_ratio=0.5)).image
    assert np.array_equal(result.image, expected)
    serve.delete("client")


def _enhancer_replicas() -> int:
    status = serve.status().applications["tm"].deployments["FaceEnhancer"]
    return int(status.replica_states.get("RUNNING", 0))


def test_enhancer_autoscales_to_four_quarter_gpu_replicas_on_one_gpu(tm: str, http: httpx.Client) -> None:
    assert ray.cluster_resources()["GPU"] == 1
    assert _enhancer_replicas() == 1
    crops = np.stack([_noise(512, 512, seed=20)] * 2)
    enhancer = serve.get_deployment_handle("FaceEnhancer", app_name="tm")
    # made here, not in the threads: a handle creates its router on first use, and threads racing to
    # do so each create one, which nothing shuts down
    enhance = enhancer.enhance
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            assert enhance.remote(crops).result().shape == crops.shape

    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(8) as pool:
        workers = [pool.submit(load) for _ in range(8)]
        try:
            while time.monotonic() < deadline and _enhancer_replicas() < 4:
                time.sleep(0.5)
        finally:
            stop.set()
        for worker in workers:
            worker.result()
    assert _enhancer_replicas() == 4
    stats = enhancer.broadcast("stats").results()
    assert len({s["replica"] for s in stats}) == 4
    assert all(s["gpu_ids"] == ["0"] for s in stats)  # all four share the one logical GPU
    assert ray.available_resources().get("GPU", 0.0) == pytest.approx(1 - 4 * ENHANCER_GPUS)
    # the scaled-up deployment still serves
    response = http.post(f"{tm}/api/v1/swap", files=_files(SOURCE, TARGET), data={"enhance_output": "true"})
    assert response.status_code == 200


# -- lite application: real photos, backpressure ----------------------------------------------------------
@pytest.mark.assets
def test_lite_profile_swaps_two_real_photos(lite: str, http: httpx.Client, load_image) -> None:
    source = load_image("paul_rudd_2009_ccbysa2.jpeg")
    target = load_image("pexels_woman_portrait_638700.jpeg")
    response = http.post(f"{lite}/api/v1/swap", files=_files(source, target), headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    served = _decode(response.content)
    expected = LocalSwaps(PipelineConfig(profile="lite", use_shared_assets=False, enhance=False)).swap(
        source, target
    )
    assert int(response.headers["x-faces-swapped"]) == expected.faces_swapped == 1
    assert (served == expected.image).all()
    changed = np.abs(served.astype(int) - target).sum(axis=2) > 0
    assert 0.005 < changed.mean() < 0.5  # the face changed, the rest of the photo did not


def test_overload_is_answered_503_json(lite: str) -> None:
    image = _png(_noise(900, 1200, seed=6))
    files = {"source_image": ("s.png", image, "image/png"), "target_image": ("t.png", image, "image/png")}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{lite}/api/v1/swap", files=files) for _ in range(12)))

    responses = asyncio.run(fire())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {422, 503}, statuses  # noise holds no face; the rest is shed
    shed = [assert_error(r, 503, "overloaded") for r in responses if r.status_code == 503]
    assert shed, statuses
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 503)
    messages = " ".join(body["error"] for body in shed)
    assert "maximum of 3 swaps" in messages  # the ingress' own limit
    assert "at capacity" in messages  # Ray's max_queued_requests on the detector (BackPressureError)
