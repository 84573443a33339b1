"""A bounded load test of ``POST /api/v1/swap`` over loopback: a fixed request count, a fixed number of
client workers and a wall-clock limit; records every error by status and code and the p50/p95/p99 latency.

Usage::

    python -m bench.load_test [--requests 200] [--concurrency 8] [--time-limit-s 120] [--timeout-s 60]
        [--rate RPS] [--memory-every-s 5] [--assets DIR] [--source NAME] [--target NAME] [--allow CODE ...]
        [--url URL] [--json OUT]

Without ``--url`` it starts a local Ray (``--num-cpus``, one logical GPU), deploys the ``lite`` profile
(no ONNX model, no download) at ``/`` on a free 127.0.0.1 port, sends the requests and shuts Ray down.
With ``--url`` it loads a service that is already running; the URL must be a loopback address.
The request: the real photos ``--source`` and ``--target`` from ``--assets/images`` (default
``../shared/assets``), JSON response.

Bounds: the workers stop taking new requests at ``--time-limit-s`` (the rest count as ``not_sent``) and
each request gives up after ``--timeout-s``, so a run ends within about their sum; ``--rate`` paces the
requests (the i-th starts no sooner than i / rate seconds in). An error is *unexpected* unless its code is
in ``--allow`` (e.g. ``overloaded`` when loading past the admission limits on purpose), and a 503 without
``Retry-After`` always is; the exit status is 1 when any error was unexpected. With a local app,
``--memory-every-s`` samples the resident memory of its ingress replica and of Serve's HTTP proxy during
the run (does it stay flat?).
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
    "landmarker": {"num_cpus": 0},
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
    memory: list[dict[str, float]] = field(default_factory=list)
    """Samples ``{"t_s", "ingress_mib", "proxy_mib"}`` (resident memory), when asked for."""


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
    rate: float | None = None,
) -> LoadResult:
    """Send ``requests`` swaps of ``payload`` to ``url`` (the app's base URL, loopback only) from
    ``concurrency`` threads, one keep-alive connection each, at most ``rate`` per second, and stop starting
    new ones after ``time_limit_s``."""
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
                    start_at = started + result.sent / rate if rate else 0.0
                    result.sent += 1
                time.sleep(max(0.0, start_at - time.perf_counter()))
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
                elif response.status_code == 503 and "retry-after" not in response.headers:
                    record_error("503 without Retry-After", "no-retry-after")
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


def _rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def serve_pids(app: str) -> dict[str, int]:
    """Process ids of the app's ingress replica and of Serve's HTTP proxy, from the GCS actor table."""
    import ray

    pids: dict[str, int] = {}
    for info in ray._private.state.actors().values():
        if info["State"] != "ALIVE":
            continue
        if info["ActorClassName"] == f"ServeReplica:{app}:SwapIngress":
            pids["ingress"] = int(info["Pid"])
        elif info["ActorClassName"] == "ProxyActor":
            pids["proxy"] = int(info["Pid"])
    return pids


@contextmanager
def memory_samples(pids: dict[str, int], every_s: float, into: list[dict[str, float]]) -> Iterator[None]:
    """Append a resident-memory sample of ``pids`` to ``into`` every ``every_s`` seconds while the block runs
    (and one at each end)."""
    stop = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        into.append(
            {
                "t_s": round(time.perf_counter() - started, 1),
                **{f"{k}_mib": round(_rss_mib(p), 1) for k, p in pids.items()},
            }
        )

    def loop() -> None:
        while not stop.wait(every_s):
            sample()

    sample()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sample()


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
    if result.memory:
        keys = list(result.memory[0])
        table += "\n\nresident memory (MiB) during the run:\n" + format_table(
            result.memory, [(k, k.replace("_mib", " MiB")) for k in keys]
        )
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
    parser.add_argument("--rate", type=float, help="requests per second at most (default: as fast as it can)")
    parser.add_argument(
        "--memory-every-s", type=float, help="with a local app: sample ingress and proxy memory this often"
    )
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
            rate=args.rate,
        )

    if args.url:
        result = run(args.url)
    else:
        with local_lite_app(args.num_cpus) as url:
            samples: list[dict[str, float]] = []
            if args.memory_every_s:
                with memory_samples(serve_pids(APP_NAME), args.memory_every_s, samples):
                    result = run(url)
            else:
                result = run(url)
            result.memory = samples
    sys.stdout.write(render(result) + "\n")
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        payload_json = {"environment": environment(), "config": config, "result": asdict(result)}
        sys.stdout.write(f"wrote {write_json(args.json, payload_json)}\n")
    return 1 if result.unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
