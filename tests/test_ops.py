"""Operations: API keys and rate limits, Prometheus metrics and structured JSON logs.

The unit tests need no Ray. The rest run against one real local Ray for the module (4 logical CPUs,
1 logical GPU, the metrics agent on a free port reporting every second) with two applications:
- ``ops`` at ``/``: the project's test models, API keys given inline;
- ``limited`` at ``/limited``: the lite profile, API keys from a file, a tiny per-key rate limit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.local_ray import assert_error, free_port, local_serve  # noqa: E402

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from pipeline.errors import InvalidOptionError  # noqa: E402
from pipeline.types import ImageBGR  # noqa: E402
from serve_app.app import build_app  # noqa: E402
from serve_app.auth import (  # noqa: E402
    ApiKeyAuth,
    TokenBucket,
    find_key,
    key_id,
    presented_key,
    read_keys_file,
)
from serve_app.config import AppArgs  # noqa: E402
from serve_app.errors import (  # noqa: E402
    ForbiddenError,
    RateLimitedError,
    UnauthorizedError,
    error_response,
)
from serve_app.ingress import openapi_spec  # noqa: E402
from serve_app.metrics import JobMetrics  # noqa: E402

KEY_A = "ops-key-alpha-0123456789abcdef"
KEY_B = "ops-key-bravo-fedcba9876543210"
LIMITED_KEYS = ("limit-key-one-0123456789", "limit-key-two-0123456789")
RATE_PER_MINUTE = 1.0
BURST = 2


# -- unit: key comparison, header parsing, token bucket, key file, args ----------------------------------
def test_find_key_matches_exactly_one_key_or_none() -> None:
    keys = [KEY_A, KEY_B, "a-third-key-for-the-list"]
    digests = [hashlib.sha256(k.encode()).digest() for k in keys]
    for index, key in enumerate(keys):
        assert find_key(key, digests) == index
    for wrong in ("", KEY_A[:-1], KEY_A + "x", KEY_A.upper(), " " + KEY_A, "ops-key", "\udcff"):
        assert find_key(wrong, digests) is None
    assert find_key(KEY_A, []) is None


@pytest.mark.parametrize(
    "candidate", [KEY_A, KEY_B, "no-such-key-at-all-here"], ids=["first", "last", "none"]
)
def test_find_key_compares_against_every_key_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, candidate: str
) -> None:
    """No early exit: every configured key's digest goes through hmac.compare_digest, with equal-length
    arguments, whether the first key, the last or none matches."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = [KEY_A, "a-middle-key-0123456789", KEY_B]
    find_key(candidate, [hashlib.sha256(k.encode()).digest() for k in keys])
    assert calls == [(32, 32)] * len(keys)


def test_presented_key_from_either_header() -> None:
    assert presented_key({"authorization": f"Bearer {KEY_A}"}) == KEY_A
    assert presented_key({"authorization": f"bearer   {KEY_A} "}) == KEY_A
    assert presented_key({"x-api-key": KEY_B}) == KEY_B
    assert presented_key({"authorization": f"Bearer {KEY_A}", "x-api-key": KEY_B}) == KEY_A
    for headers in (
        {},
        {"x-api-key": "  "},
        {"authorization": "Bearer "},
        {"authorization": f"Basic {KEY_A}"},
    ):
        with pytest.raises(UnauthorizedError):
            presented_key(headers)


def test_token_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=0.5, capacity=2.0, tokens=2.0, updated=0.0)
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)  # one token takes 1 / 0.5 s
    assert bucket.take(1.0) == pytest.approx(1.0)  # half a token back
    assert bucket.take(2.0) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(1.0)  # capped at the burst


def test_api_key_auth_statuses_and_per_key_limits() -> None:
    now = [0.0]
    auth = ApiKeyAuth([KEY_A, KEY_B], rate_limit_per_minute=6.0, burst=2, clock=lambda: now[0])
    assert auth.rate_limited and auth.key_ids == [key_id(KEY_A), key_id(KEY_B)]
    with pytest.raises(UnauthorizedError):
        auth.authenticate({})
    with pytest.raises(ForbiddenError):
        auth.authenticate({"x-api-key": KEY_A + "-not"})
    assert auth.authenticate({"x-api-key": KEY_A}) == key_id(KEY_A)
    assert auth.authenticate({"authorization": f"Bearer {KEY_A}"}) == key_id(KEY_A)
    with pytest.raises(RateLimitedError) as raised:
        auth.authenticate({"x-api-key": KEY_A})
    assert raised.value.retry_after_s == pytest.approx(10.0)  # 6 per minute
    assert auth.authenticate({"x-api-key": KEY_B}) == key_id(KEY_B)  # buckets are per key
    now[0] = 10.0
    assert auth.authenticate({"x-api-key": KEY_A}) == key_id(KEY_A)
    unlimited = ApiKeyAuth([KEY_A])
    assert not unlimited.rate_limited
    assert all(unlimited.authenticate({"x-api-key": KEY_A}) for _ in range(100))


def test_key_ids_are_short_hashes_not_keys() -> None:
    assert re.fullmatch(r"key-[0-9a-f]{8}", key_id(KEY_A))
    assert key_id(KEY_A) == "key-" + hashlib.sha256(KEY_A.encode()).hexdigest()[:8] != key_id(KEY_B)
    assert KEY_A not in key_id(KEY_A)


def test_keys_file_skips_comments_and_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# service keys\n\n{KEY_A}\n  {KEY_B}   # team b\n#{KEY_A}-old\n", encoding="utf-8")
    assert read_keys_file(path) == [KEY_A, KEY_B]
    for text, message in [
        ("# only comments\n\n", "holds no API key"),
        (f"{KEY_A} trailing words\n", "line 1: text after the key"),
        ("short\n", "at least 16"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(InvalidOptionError, match=message) as raised:
            read_keys_file(path)
        assert "short" not in str(raised.value) and KEY_A not in str(raised.value)
    with pytest.raises(InvalidOptionError, match="cannot read"):
        read_keys_file(tmp_path / "missing")


def test_auth_args_validate_without_echoing_keys(tmp_path: Path) -> None:
    assert AppArgs.parse({}).auth.enabled is False
    assert ApiKeyAuth.from_args(AppArgs.parse({}).auth) is None
    args = AppArgs.parse({"auth": {"api_keys": [KEY_A], "rate_limit_per_minute": 60}})
    assert args.auth.enabled and KEY_A not in repr(args) and KEY_A not in str(args.model_dump())
    for auth, message in [
        ({"api_keys": ["too-short-key"]}, "at least 16"),
        ({"api_keys": ["a key with spaces in it"]}, "without whitespace"),
        ({"api_keys": [KEY_A, KEY_A]}, "same key twice"),
        ({"rate_limit_per_minute": 10}, "per API key"),
        ({"api_keys": [KEY_A], "rate_limit_burst": 0}, "rate_limit_burst"),
        ({"api_key": [KEY_A]}, "api_key"),
    ]:
        with pytest.raises(InvalidOptionError, match=message) as raised:
            AppArgs.parse({"auth": auth})
        assert "too-short-key" not in str(raised.value) and "spaces in it" not in str(raised.value)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{KEY_B}\n{KEY_A}\n", encoding="utf-8")
    merged = ApiKeyAuth.from_args(
        AppArgs.parse({"auth": {"api_keys": [KEY_A], "api_keys_file": str(keys_file)}}).auth
    )
    assert merged is not None and merged.key_ids == [key_id(KEY_A), key_id(KEY_B)]


def test_auth_errors_are_json_with_their_headers() -> None:
    response = error_response(UnauthorizedError("an API key is required"), "rid-401")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert json.loads(response.body) == {
        "success": False,
        "error": "an API key is required",
        "code": "unauthorized",
        "request_id": "rid-401",
    }
    response = error_response(ForbiddenError("the API key is not valid"), "rid-403")
    assert response.status_code == 403 and "www-authenticate" not in response.headers
    response = error_response(RateLimitedError("slow down", 12.2), "rid-429")
    assert response.status_code == 429 and response.headers["retry-after"] == "13"
    assert json.loads(response.body)["code"] == "rate_limited"


def test_openapi_documents_the_security_scheme_only_when_auth_is_on() -> None:
    plain = openapi_spec()
    assert "security" not in plain["paths"]["/api/v1/swap"]["post"]
    assert "securitySchemes" not in plain["components"]
    spec = openapi_spec(auth=True, rate_limit=True)
    swap = spec["paths"]["/api/v1/swap"]["post"]
    assert swap["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    assert {"401", "403", "429"} <= set(swap["responses"])
    assert spec["components"]["securitySchemes"] == {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    assert "429" not in openapi_spec(auth=True)["paths"]["/api/v1/swap"]["post"]["responses"]
    for path in ("/healthz", "/readyz", "/openapi.json", "/"):
        assert "security" not in spec["paths"][path]["get"]


# -- a real local Ray --------------------------------------------------------------------------------------


def _noise(height: int, width: int, seed: int) -> ImageBGR:
    """Smooth random colours: any image at least 336 x 208 holds the test SCRFD's one face."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)


def _files(seed: int) -> dict[str, tuple[str, bytes, str]]:
    source, target = _noise(360, 480, seed), _noise(400, 560, seed + 1)
    return {
        "source_image": ("source.png", cv2.imencode(".png", source)[1].tobytes(), "image/png"),
        "target_image": ("target.png", cv2.imencode(".png", target)[1].tobytes(), "image/png"),
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """Local Ray + Serve on free 127.0.0.1 ports; custom metrics exported every second."""
    metrics_port = free_port()
    metrics = {"_metrics_export_port": metrics_port, "_system_config": {"metrics_report_interval_ms": 1000}}
    with local_serve(**metrics) as url:
        logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
        yield {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "logs": logs_dir}


@pytest.fixture(scope="module")
def ops(cluster: dict[str, Any], test_models: dict[str, Path]) -> str:
    """Test models, inline API keys, JSON replica logs; its base URL."""
    args = {
        "use_shared_assets": False,
        "overrides": {
            "detector": str(test_models["scrfd"]),
            "embedder": str(test_models["arcface"]),
            "swapper": str(test_models["inswapper_tint"]),
            "enhancer": str(test_models["gfpgan_sharpen"]),
        },
        "providers": ["cpu"],
        "intra_op_threads": 1,
        "auth": {"api_keys": [KEY_A, KEY_B]},
        "ingress": {"num_cpus": 0},
        "detector": {"num_cpus": 0},
        "swapper": {"num_cpus": 0},
        "enhancer": {"num_cpus": 0, "num_gpus": 0.25},
    }
    serve.run(build_app(args), name="ops", route_prefix="/", logging_config={"encoding": "JSON"})
    return str(cluster["url"])


@pytest.fixture(scope="module")
def limited(cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The lite profile with keys from a file and a tiny rate limit; its base URL."""
    keys_file = tmp_path_factory.mktemp("auth") / "api-keys"
    keys_file.write_text("# keys of the rate-limit test\n" + "\n".join(LIMITED_KEYS) + "\n", encoding="utf-8")
    args = {
        "profile": "lite",
        "enhance": False,
        "use_shared_assets": False,
        "auth": {
            "api_keys_file": str(keys_file),
            "rate_limit_per_minute": RATE_PER_MINUTE,
            "rate_limit_burst": BURST,
        },
        "ingress": {"num_cpus": 0},
        "detector": {"num_cpus": 0},
        "swapper": {"num_cpus": 0},
    }
    serve.run(build_app(args), name="limited", route_prefix="/limited")
    return f"{cluster['url']}/limited"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


# -- auth over HTTP ------------------------------------------------------------------------------------------
def test_api_without_a_key_is_401_and_with_a_wrong_key_403(ops: str, http: httpx.Client) -> None:
    swap = f"{ops}/api/v1/swap"
    for headers in ({}, {"Authorization": f"Basic {KEY_A}"}, {"Authorization": "Bearer"}, {"X-API-Key": ""}):
        response = http.post(swap, files=_files(1), headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    for headers in ({"Authorization": f"Bearer {KEY_A}x"}, {"X-API-Key": KEY_B[:-1]}):
        assert_error(http.post(swap, files=_files(1), headers=headers), 403, "forbidden")
    # every /api/ path is behind the key, also unknown ones and wrong methods: no route discovery
    assert_error(http.get(f"{ops}/api/v2/nothing"), 401, "unauthorized")
    assert_error(http.get(swap), 401, "unauthorized")
    assert_error(http.get(f"{ops}/api/v2/nothing", headers={"X-API-Key": KEY_A}), 404, "not_found")
    assert_error(http.get(swap, headers={"X-API-Key": KEY_A}), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY_A}"}, {"X-API-Key": KEY_B}], ids=["bearer", "x-api-key"]
)
def test_api_with_a_right_key_swaps(ops: str, http: httpx.Client, headers: dict[str, str]) -> None:
    response = http.post(f"{ops}/api/v1/swap", files=_files(3), headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["faces_swapped"] == 1
    assert response.headers["x-faces-swapped"] == "1"
    image = cv2.imdecode(np.frombuffer(base64.b64decode(body["result_image"].split(",", 1)[1]), np.uint8), 1)
    assert image.shape == (400, 560, 3)


def test_health_page_and_spec_stay_open(ops: str, http: httpx.Client) -> None:
    assert http.get(f"{ops}/healthz").json() == {"status": "ok"}
    assert http.get(f"{ops}/readyz").json()["status"] == "ready"
    assert http.get(f"{ops}/").headers["content-type"].startswith("text/html")
    spec = http.get(f"{ops}/openapi.json").json()
    swap = spec["paths"]["/api/v1/swap"]["post"]
    assert swap["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    assert {"401", "403"} <= set(swap["responses"]) and "429" not in swap["responses"]  # no rate limit here
    assert set(spec["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyHeader"}


def test_rate_limit_answers_429_after_the_burst(limited: str, http: httpx.Client) -> None:
    swap = f"{limited}/api/v1/swap"
    first, second = LIMITED_KEYS
    # a JSON body is refused (415) after the key check, so no model runs; each request takes a token
    for _ in range(BURST):
        assert_error(http.post(swap, json={}, headers={"X-API-Key": first}), 415, "unsupported_media_type")
    limited_response = http.post(swap, json={}, headers={"Authorization": f"Bearer {first}"})
    body = assert_error(limited_response, 429, "rate_limited")
    assert key_id(first) in body["error"] and first not in body["error"]
    retry_after = int(limited_response.headers["retry-after"])
    assert 1 <= retry_after <= 60 / RATE_PER_MINUTE
    # the other key has its own bucket; a wrong key is still 403, a missing one 401; health stays open
    assert_error(http.post(swap, json={}, headers={"X-API-Key": second}), 415, "unsupported_media_type")
    assert_error(http.post(swap, json={}, headers={"X-API-Key": "not-a-key-0123456789"}), 403, "forbidden")
    assert_error(http.post(swap, json={}), 401, "unauthorized")
    assert http.get(f"{limited}/healthz").status_code == 200
    assert "429" in http.get(f"{limited}/openapi.json").json()["paths"]["/api/v1/swap"]["post"]["responses"]


# -- metrics -------------------------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels`` (replicas, workers)."""
    return sum(v for n, tags, v in samples if n == name and labels.items() <= tags.items())


def _poll_metrics(
    url: str, done: Callable[[list[tuple[str, dict[str, str], float]]], bool], timeout_s: float = 30.0
) -> list[tuple[str, dict[str, str], float]]:
    """Scrape ``url`` until ``done(samples)`` (metrics reach the agent about once a second)."""
    deadline = time.monotonic() + timeout_s
    samples: list[tuple[str, dict[str, str], float]] = []
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        samples = _samples(response.text)
        if done(samples):
            break
        time.sleep(0.5)
    return samples


def test_stage_request_and_error_metrics_are_exported(
    ops: str, cluster: dict[str, Any], http: httpx.Client
) -> None:
    n = 3
    components = http.get(f"{ops}/readyz").json()["components"]
    for i in range(n):
        response = http.post(
            f"{ops}/api/v1/swap",
            files=_files(20 + i),
            data={"enhance_output": "true"},
            headers={"X-API-Key": KEY_A},
        )
        assert response.status_code == 200, response.text
    assert_error(http.post(f"{ops}/api/v1/swap", files=_files(1)), 401, "unauthorized")
    assert_error(
        http.post(f"{ops}/api/v1/swap", files=_files(1), headers={"X-API-Key": "x" * 20}), 403, "forbidden"
    )

    def count(s: list, stage: str) -> float:
        return _total(s, "ray_faceswap_stage_latency_seconds_count", stage=stage, application="ops")

    def batch_count(s: list, stage: str) -> float:
        return _total(s, "ray_faceswap_batch_size_count", stage=stage, application="ops")

    def done(s: list) -> bool:  # every replica has reported since the last model call
        # one detector call a swap: its target and source canvases go together
        return (
            count(s, "detect") >= n
            and count(s, "enhance") >= n
            and all(count(s, stage) == batch_count(s, stage) for stage in ("swap", "enhance"))
            and _total(s, "ray_faceswap_errors_total", code="forbidden", application="ops") >= 1
            and _total(s, "ray_faceswap_faces_per_request_count", application="ops") >= n
        )

    samples = _poll_metrics(cluster["metrics"], done)
    assert done(samples), {
        "detect": count(samples, "detect"),
        "enhance": count(samples, "enhance"),
        "swap": count(samples, "swap"),
        "batches": {stage: batch_count(samples, stage) for stage in ("swap", "enhance")},
        "forbidden": _total(samples, "ray_faceswap_errors_total", code="forbidden", application="ops"),
        "faces": _total(samples, "ray_faceswap_faces_per_request_count", application="ops"),
    }
    # every model call of each stage is timed, tagged with the stage's model
    for stage, model in (
        ("detect", components["detector"]),
        ("swap", components["swapper"]),
        ("enhance", components["enhancer"]),
    ):
        calls = _total(samples, "ray_faceswap_stage_latency_seconds_count", stage=stage, model=model)
        seconds = _total(samples, "ray_faceswap_stage_latency_seconds_sum", stage=stage, model=model)
        assert calls >= (n if stage == "detect" else 1), stage
        assert 0 < seconds / calls < 10, stage
        slowest = _total(
            samples, "ray_faceswap_stage_latency_seconds_bucket", stage=stage, model=model, le="+Inf"
        )
        assert slowest == calls, stage
        # one batch observation per batched model call
        batches = _total(samples, "ray_faceswap_batch_size_count", stage=stage, model=model)
        assert _total(samples, "ray_faceswap_batch_items_count", stage=stage, model=model) == batches, stage
        assert batches == calls, stage
        # Ray 2.60 exports a histogram's _sum from bucket midpoints, so sizes are checked through buckets:
        # no call went over max_batch_size (8) or 8 items; with one face per image, a swap or enhance call
        # had as many crops as requests, and this test's swaps (one after another) each made a detector
        # call of two canvases (the target and the source)
        size_buckets, item_buckets = (
            [
                _total(samples, f"ray_faceswap_{kind}_bucket", stage=stage, model=model, le=f"{float(le)}")
                for le in (1, 2, 4, 8)
            ]
            for kind in ("batch_size", "batch_items")
        )
        assert size_buckets[-1] == item_buckets[-1] == batches, (stage, size_buckets, item_buckets)
        if stage == "detect":
            assert item_buckets[1] - item_buckets[0] >= n, (stage, item_buckets)
        else:
            assert size_buckets == item_buckets, (stage, size_buckets, item_buckets)
    # the test images hold one face each: every successful swap observed exactly one face
    faces = _total(samples, "ray_faceswap_faces_per_request_count", application="ops")
    assert faces >= n
    assert _total(samples, "ray_faceswap_faces_per_request_bucket", application="ops", le="1.0") == faces
    ok = _total(samples, "ray_faceswap_requests_total", route="/api/v1/swap", method="POST", status="200")
    assert ok >= n
    assert _total(samples, "ray_faceswap_requests_total", route="/api/v1/swap", status="401") >= 1
    assert _total(samples, "ray_faceswap_errors_total", code="unauthorized", route="/api/v1/swap") >= 1
    assert _total(samples, "ray_faceswap_errors_total", code="forbidden", route="/api/v1/swap") >= 1
    # Serve's built-in metrics are exported next to them
    assert any(name.startswith("ray_serve_") for name, _, _ in samples)


def test_job_state_gauge_reports_every_state(cluster: dict[str, Any]) -> None:
    reporter = ray.remote(num_cpus=0)(JobMetrics).remote()
    ray.get(reporter.record_job_state_counts.remote({"running": 2, "queued": 1, "paused": 4}))
    ray.get(reporter.record_job_state_counts.remote({"completed": 3, "failed": 1}))

    def jobs(s: list, state: str) -> float:
        return _total(s, "ray_faceswap_jobs", state=state)

    samples = _poll_metrics(
        cluster["metrics"], lambda s: jobs(s, "completed") == 3 and jobs(s, "running") == 0
    )
    expected = {"queued": 0, "running": 0, "completed": 3, "failed": 1, "cancelled": 0, "paused": 0}
    assert {state: jobs(samples, state) for state in expected} == expected
    ray.kill(reporter)


# -- structured logs ---------------------------------------------------------------------------------------
def _json_records(logs_dir: Path, request_id: str) -> dict[str, list[dict[str, Any]]]:
    """File name -> the JSON records of ``request_id`` in the Serve replica logs."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(logs_dir.glob("replica_ops_*.log")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if request_id in line:
                found.setdefault(path.name, []).append(json.loads(line))  # every line is JSON
    return found


def test_replica_logs_are_json_lines_with_the_request_id(
    ops: str, cluster: dict[str, Any], http: httpx.Client
) -> None:
    request_id = f"ops-log-{uuid.uuid4().hex}"
    response = http.post(
        f"{ops}/api/v1/swap", files=_files(5), headers={"X-Request-ID": request_id, "X-API-Key": KEY_B}
    )
    assert response.status_code == 200 and response.json()["request_id"] == request_id
    denied_id = f"ops-log-{uuid.uuid4().hex}"
    denied = http.post(
        f"{ops}/api/v1/swap", files=_files(5), headers={"X-Request-ID": denied_id, "X-API-Key": KEY_A + "0"}
    )
    assert_error(denied, 403, "forbidden")

    logs_dir: Path = cluster["logs"]
    deadline = time.monotonic() + 15
    records = _json_records(logs_dir, request_id)
    while time.monotonic() < deadline and not any(
        r.get("status") for recs in records.values() for r in recs if "SwapIngress" in r.get("deployment", "")
    ):
        time.sleep(0.5)
        records = _json_records(logs_dir, request_id)
    ingress = [r for name, recs in records.items() if "SwapIngress" in name for r in recs]
    (access,) = [r for r in ingress if "status" in r]
    assert access["request_id"] == request_id and access["levelname"] == "INFO"
    assert (access["method"], access["status"], access["route"], access["faces"]) == (
        "POST",
        200,
        "/api/v1/swap",
        1,
    )
    assert access["api_key_id"] == key_id(KEY_B)
    assert 0 < access["latency_ms"] < 60_000
    assert access["application"] == "ops" and access["message"].startswith("POST /api/v1/swap 200 ")
    assert {"asctime", "timestamp_ns", "replica", "route"} <= set(access)
    # the request id travels with the request: the model deployments' records of it carry it too
    assert any("FaceDetector" in name for name in records) and any("FaceSwapper" in name for name in records)

    (refused,) = [r for recs in _json_records(logs_dir, denied_id).values() for r in recs if "status" in r]
    assert (refused["status"], refused["code"], refused["error"]) == (
        403,
        "forbidden",
        "the API key is not valid",
    )
    assert "api_key_id" not in refused
    # no key is ever written to a log
    for path in logs_dir.glob("*.log"):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert KEY_A not in text and KEY_B not in text, path.name
