"""A bounded load test of ``POST /api/v1/swap`` over loopback: a fixed request count, a fixed number of
client workers and a wall-clock limit; records every error by status and code and the p50/p95/p99 latency.

Usage::

    python -m bench.load_test [--requests 200] [--concurrency 8] [--time-limit-s 120] [--timeout-s 60]
        [--assets DIR] [--source NAME] [--target NAME] [--allow CODE ...] [--url URL] [--json OUT]

Without ``--url`` it starts a local Ray (``--num-cpus``, one logical GPU), deploys the ``lite`` profile
(no ONNX model, no download) at ``/`` on a free 127.0.0.1 port, sends the requests and shuts Ray down.
With ``--url`` it loads a service that is already running; the URL must be a loopback address.
The request: the real photos ``--source`` and ``--target`` from ``--assets/images`` (default
``../shared/assets``), JSON response.

Bounds: the workers stop taking new requests at ``--time-limit-s`` (the rest count as ``not_sent``) and
each request gives up after ``--timeout-s``, so a run ends within about their sum. An error is
*unexpected* unless its code is in ``--allow`` (e.g. ``overloaded`` when loading past the admission
limits on purpose); the exit status is 1 when any error was unexpected.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import environment, format_table, write_json
from serve_app.local import local_serve

log = logging.getLogger("bench.load_test")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = REPO.parent / "shared" / "assets"
SOURCE_IMAGE = "codait_luciano_cc0.png"
TARGET_IMAGE = "pexels_woman_portrait_638700.jpeg"
SWAP_URL_PATH = "/api/v1/swap"
APP_NAME = "loadtest"
LITE_ARGS: dict[str, Any] = {
    "profile": "lite",
    "enhance": False,
    "use_shared_assets": False,
    "ingress": {"num_cpus": 0},
    "detector": {"num_cpus": 0},
    "swapper": {"num_cpus": 0},
}
"""The deployed application: the lite profile, every deployment at 0 CPUs so any machine places it."""

FilePart = tuple[str, tuple[str, bytes, str]]
"""A multipart file part: (field name, (file name, bytes, content type))."""


@dataclass(frozen=True)
class Payload:
    """One swap request: its multipart files and text fields."""

    files: tuple[FilePart, ...]
    data: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadResult:
    """What one run saw. Latencies in milliseconds, over the successful (2xx) responses."""

    url: str
    requests: int
    concurrency: int
    time_limit_s: float
    sent: int = 0
    ok: int = 0
    not_sent: int = 0
    """Requests not started because the time limit passed."""
    errors: dict[str, int] = field(default_factory=dict)
    """``"<status> <code>"`` (or ``"transport <ExceptionName>"``) -> count."""
    unexpected: int = 0
    """Errors whose code is not allowed."""
    wall_s: float = 0.0
    throughput_rps: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    first_unexpected: str = ""


def check_loopback(url: str) -> str:
    """``url`` without a trailing slash when its host is a loopback address; ValueError otherwise."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the load test only targets loopback addresses, not {host or url!r}")
    return url.rstrip("/")


def _error_key(response: httpx.Response) -> tuple[str, str]:
    """(``"<status> <code>"``, code) of an error response; the code is ``?`` for a non-JSON body."""
    try:
        body = response.json()
        code = str(body.get("code")) if isinstance(body, dict) else "?"
    except ValueError:
        code = "?"
    return f"{response.status_code} {code}", code


def run_load(
    url: str,
    payload: Payload,
    *,
    requests: int,
    concurrency: int,
    time_limit_s: float,
    timeout_s: float = 60.0,
    allowed_codes: Sequence[str] = (),
) -> LoadResult:
    """Send ``requests`` swaps of ``payload`` to ``url`` (the app's base URL, loopback only) from
    ``concurrency`` threads, one keep-alive connection each, and stop starting new ones after
    ``time_limit_s``."""
    base = check_loopback(url)
    if requests < 1 or concurrency < 1 or time_limit_s <= 0 or timeout_s <= 0:
        raise ValueError("requests, concurrency, time_limit_s and timeout_s must be positive")
    result = LoadResult(url=base, requests=requests, concurrency=concurrency, time_limit_s=time_limit_s)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    remaining = [requests]
    started = time.perf_counter()
    deadline = started + time_limit_s
    data = dict(payload.data)

    def record_error(key: str, code: str) -> None:
        with lock:
            errors[key] += 1
            if code not in allowed_codes:
                result.unexpected += 1
                result.first_unexpected = result.first_unexpected or key

    def worker() -> None:
        with httpx.Client(timeout=timeout_s) as client:
            while True:
                with lock:
                    if remaining[0] <= 0 or time.perf_counter() >= deadline:
                        return
                    remaining[0] -= 1
                    result.sent += 1
                t0 = time.perf_counter()
                try:
                    response = client.post(f"{base}{SWAP_URL_PATH}", files=list(payload.files), data=data)
                except httpx.HTTPError as exc:
                    record_error(f"transport {type(exc).__name__}", "transport")
                    continue
                elapsed = time.perf_counter() - t0
                if response.is_success:
                    with lock:
                        latencies.append(elapsed)
                else:
                    record_error(*_error_key(response))

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load") as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    result.wall_s = round(time.perf_counter() - started, 3)
    result.ok = len(latencies)
    result.not_sent = requests - result.sent
    result.errors = dict(sorted(errors.items()))
    result.throughput_rps = round(result.ok / result.wall_s, 3) if result.wall_s > 0 else 0.0
    if latencies:
        ms = np.array(latencies) * 1e3
        result.p50_ms, result.p95_ms, result.p99_ms = (
            round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)
        )
        result.max_ms = round(float(ms.max()), 1)
    log.info(
        "%d ok of %d sent, %d errors, p99 %s ms", result.ok, result.sent, sum(errors.values()), result.p99_ms
    )
    return result


def photo_payload(assets: Path, source: str = SOURCE_IMAGE, target: str = TARGET_IMAGE) -> Payload:
    """The swap request of two real photos from ``assets/images``."""

    def part(field_name: str, name: str) -> FilePart:
        mime = "image/png" if name.lower().endswith(".png") else "image/jpeg"
        return (field_name, (name, (assets / "images" / name).read_bytes(), mime))

    return Payload(files=(part("source_image", source), part("target_image", target)))


@contextmanager
def local_lite_app(num_cpus: int | None) -> Iterator[str]:
    """A fresh local Ray with the lite profile deployed at ``/`` on a free 127.0.0.1 port; yields its URL."""
    from ray import serve

    from serve_app.app import build_app

    with local_serve(num_cpus) as url:
        serve.run(build_app(LITE_ARGS), name=APP_NAME, route_prefix="/")
        yield url


def render(result: LoadResult) -> str:
    rows = [
        {
            "requests": result.requests,
            "sent": result.sent,
            "ok": result.ok,
            "errors": sum(result.errors.values()),
            "unexpected": result.unexpected,
            "not_sent": result.not_sent,
            "concurrency": result.concurrency,
            "wall_s": result.wall_s,
            "rps": result.throughput_rps,
            "p50_ms": result.p50_ms,
            "p95_ms": result.p95_ms,
            "p99_ms": result.p99_ms,
            "max_ms": result.max_ms,
        }
    ]
    columns = [(key, key) for key in rows[0]]
    table = format_table(rows, columns)
    if result.errors:
        table += "\n\n" + format_table(
            [{"error": key, "count": count} for key, count in result.errors.items()],
            [("error", "error"), ("count", "count")],
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-limit-s", type=float, default=120.0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--source", default=SOURCE_IMAGE)
    parser.add_argument("--target", default=TARGET_IMAGE)
    parser.add_argument("--allow", nargs="*", default=[], help="error codes that are not failures")
    parser.add_argument("--url", help="a running service (loopback only) instead of a local lite app")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the result and the environment here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    payload = photo_payload(args.assets, args.source, args.target)
    if args.url:
        check_loopback(args.url)

    def run(url: str) -> LoadResult:
        return run_load(
            url,
            payload,
            requests=args.requests,
            concurrency=args.concurrency,
            time_limit_s=args.time_limit_s,
            timeout_s=args.timeout_s,
            allowed_codes=args.allow,
        )

    if args.url:
        result = run(args.url)
    else:
        with local_lite_app(args.num_cpus) as url:
            result = run(url)
    sys.stdout.write(render(result) + "\n")
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        payload_json = {"environment": environment(), "config": config, "result": asdict(result)}
        sys.stdout.write(f"wrote {write_json(args.json, payload_json)}\n")
    return 1 if result.unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
