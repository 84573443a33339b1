#!/usr/bin/env python3
"""Load generator for ``WS /api/v1/live``: N live connections, each sending a test clip's frames at a fixed
frame rate; prints per connection the answered frames per second, the p50/p95 frame latency (from sending
a frame to receiving its swapped answer, on this client) and the frames the service dropped.

    python -m bench.live_load [--url http://host:8000] [--api-key KEY] [--connections 1 4] [--fps 25]
        [--duration 30] [--warmup 3] [--size 640x480] [--clip PATH] [--source PATH] [--profile lite]
        [--app-args JSON] [--json OUT]

Without ``--url`` it deploys the application on a fresh local Ray (``--num-cpus`` CPUs, no GPU; the
``--profile`` models, ``lite`` = the default no-download models; ``--app-args`` JSON is merged into the
application args, e.g. ``'{"live": {"pipeline_depth": 1}}'``). Each level of ``--connections`` runs in
turn against the same application, and the CPU time of every process of that local Ray (the ingress, the
proxy, each model deployment, Ray's own) is read from /proc before and after each level and printed per
answered frame. The clip (default: the shared 640x480 test video) is resized to
``--size`` and encoded to JPEG (quality 80, as the try-it page sends) once, before any connection opens;
frames are sent on a fixed schedule whatever comes back (the service drops what it cannot swap in time,
latest frame wins), looping over the clip. The first ``--warmup`` seconds of every connection are not
counted. The machine's 1-minute load average is printed before and after each level: this client, the
proxy and the replicas share the machine's cores, and so does anything else running on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: import this checkout's packages without installing them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import websockets  # noqa: E402

from bench.common import environment, write_json  # noqa: E402
from serve_app.live_protocol import LIVE_PATH, SUBPROTOCOL, read_frame_message  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("FACESWAP_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
CLIP = ASSETS / "video" / "astronaut_pan_zoom_640x480_25fps_h264.mp4"
SOURCE = ASSETS / "images" / "codait_luciano_cc0.png"
JPEG_QUALITY = 80


@dataclass
class Connection:
    """What one connection saw, counted after the warm-up."""

    index: int
    sent: int = 0
    answered: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    dropped_at_start: int = 0
    dropped: int = 0
    faces: int = 0
    keyframes: int = 0
    error: str | None = None

    def row(self, seconds: float) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "connection": self.index,
            "sent": self.sent,
            "answered": self.answered,
            "fps": round(self.answered / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "server_p50_ms": round(float(np.median(self.server_ms)), 1) if self.server_ms else None,
            "dropped": self.dropped - self.dropped_at_start,
            "frames_with_face": self.faces,
            "keyframes": self.keyframes,
            "error": self.error,
        }


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``: pid -> its role (``SwapIngress``, ``ProxyActor``, ``raylet``...)."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        # Ray titles its workers ray::<class>[:<app>:<deployment>][.<method>]
        role = title.removeprefix("ray::").split(":")[-1].split(".")[0] if title.startswith("ray::") else ""
        titles[int(entry.name)] = role or Path(title.split()[0] if title else "?").name
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = titles[child]
                frontier.append(child)
    return found


def cpu_seconds(pids: dict[int, str]) -> dict[str, float]:
    """User + system CPU seconds of each process so far, summed by role."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for pid, role in pids.items():
        try:
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        totals[role] = totals.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def clip_frames(path: Path, size: tuple[int, int]) -> list[bytes]:
    """Every frame of ``path`` resized to ``size`` (width, height) as JPEG bytes."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            image = np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)
            if (image.shape[1], image.shape[0]) != size:
                image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            assert ok
            frames.append(data.tobytes())
    return frames


def make_identity(url: str, source: Path, headers: dict[str, str]) -> str:
    response = httpx.post(
        f"{url}/api/v1/identities",
        files={"source_image": (source.name, source.read_bytes())},
        headers=headers,
        timeout=120,
    )
    response.raise_for_status()
    return str(response.json()["identity_id"])


async def run_connection(
    index: int,
    url: str,
    identity_id: str,
    frames: list[bytes],
    fps: float,
    duration: float,
    warmup: float,
    headers: dict[str, str],
) -> Connection:
    """One connection: setup, then ``fps`` frames a second for ``warmup + duration`` seconds."""
    result = Connection(index)
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + LIVE_PATH
    sent_at: dict[int, float] = {}
    try:
        async with websockets.connect(
            ws_url,
            subprotocols=[websockets.Subprotocol(SUBPROTOCOL)],
            additional_headers=headers,
            max_size=2**24,
        ) as ws:
            await ws.send(json.dumps({"identity_id": identity_id}))
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready", ready
            start = time.perf_counter()
            counted_from = start + warmup
            stop = counted_from + duration

            async def send() -> None:
                seq = 0
                while True:
                    due = start + seq / fps
                    if due >= stop:
                        return
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    sent_at[seq] = time.perf_counter()
                    await ws.send(frames[seq % len(frames)])
                    if sent_at[seq] >= counted_from:
                        result.sent += 1
                    seq += 1

            async def receive() -> None:
                while True:
                    header, _ = read_frame_message(await ws.recv())  # type: ignore[arg-type]
                    now = time.perf_counter()
                    sent = sent_at[header["seq"]]
                    if sent < counted_from:
                        result.dropped_at_start = header["dropped"]
                        continue
                    result.answered += 1
                    result.latencies_ms.append(1000 * (now - sent))
                    result.server_ms.append(header["server_ms"])
                    result.dropped = header["dropped"]
                    result.faces += header["faces"] > 0
                    result.keyframes += bool(header["detected"])

            sender = asyncio.create_task(send())
            receiver = asyncio.create_task(receive())
            await sender
            await asyncio.sleep(1.0)  # the answers to the last frames
            receiver.cancel()
            try:
                await receiver
            except asyncio.CancelledError:
                pass
    except Exception as exc:  # report it with the numbers so far
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def run_level(
    url: str, identity_id: str, frames: list[bytes], connections: int, args: argparse.Namespace
) -> list[Connection]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return list(
        await asyncio.gather(
            *(
                run_connection(i, url, identity_id, frames, args.fps, args.duration, args.warmup, headers)
                for i in range(connections)
            )
        )
    )


def report(levels: dict[int, list[Connection]], duration: float) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    single = None
    for count, connections in levels.items():
        rows = [c.row(duration) for c in connections]
        total = round(sum(r["fps"] for r in rows), 2)
        if count == 1:
            single = total
        summary[str(count)] = {"connections": rows, "total_fps": total}
        print(f"\n{count} connection(s): total {total} fps")
        print(f"{'conn':>4} {'sent':>5} {'answ':>5} {'fps':>6} {'p50 ms':>7} {'p95 ms':>7} {'srv p50':>7} "
              f"{'dropped':>7} {'faces':>5} {'keyfr':>5}")  # fmt: skip
        for r in rows:
            print(f"{r['connection']:>4} {r['sent']:>5} {r['answered']:>5} {r['fps']:>6} {r['p50_ms']:>7} "
                  f"{r['p95_ms']:>7} {r['server_p50_ms']!s:>7} {r['dropped']:>7} {r['frames_with_face']:>5} "
                  f"{r['keyframes']:>5}" + (f"  {r['error']}" if r["error"] else ""))  # fmt: skip
    if single:
        for values in summary.values():
            values["ratio_to_one"] = round(values["total_fps"] / single, 3)
        ratios = ", ".join(f"{k}: {v['ratio_to_one']}" for k, v in summary.items())
        print(f"\ntotal fps / one connection's: {ratios}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running service (default: deploy one on a local Ray)")
    parser.add_argument("--api-key", default=os.environ.get("FACESWAP_API_KEY"))
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--fps", type=float, default=25.0, help="frames sent per second per connection")
    parser.add_argument("--duration", type=float, default=30.0, help="counted seconds per connection")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not counted at the start")
    parser.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--source", type=Path, default=SOURCE, help="the source face photo")
    parser.add_argument("--profile", default="lite", choices=["lite", "auto", "full"])
    parser.add_argument("--app-args", default="{}", help="JSON merged into the application args")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    frames = clip_frames(args.clip, (width, height))
    print(f"clip {args.clip.name}: {len(frames)} frames at {width}x{height}, "
          f"mean {np.mean([len(f) for f in frames]) / 1024:.0f} KiB as JPEG")  # fmt: skip

    cpu: dict[str, dict[str, float]] = {}

    def measure(url: str, local: bool) -> dict[int, list[Connection]]:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        identity_id = make_identity(url, args.source, headers)
        levels = {}
        for count in args.connections:
            before = os.getloadavg()[0]
            pids = {**(_descendants(os.getpid()) if local else {}), os.getpid(): "client"}
            used = cpu_seconds(pids)
            levels[count] = asyncio.run(run_level(url, identity_id, frames, count, args))
            spent = {k: v - used.get(k, 0.0) for k, v in cpu_seconds(pids).items()}
            answered = sum(c.answered for c in levels[count]) or 1
            counted = args.duration / (args.warmup + args.duration + 1.0)  # the CPU of the counted seconds
            per_frame = {k: round(1000 * v * counted / answered, 1) for k, v in spent.items() if v > 0.05}
            cpu[str(count)] = dict(sorted(per_frame.items(), key=lambda kv: -kv[1]))
            after = os.getloadavg()[0]
            print(f"[{count} connection(s): load average {before:.2f} before, {after:.2f} after; "
                  f"CPU ms per answered frame: {cpu[str(count)]}]")  # fmt: skip
        return levels

    app_args: dict[str, Any] = {}
    if args.url:
        levels = measure(args.url.rstrip("/"), local=False)
    else:
        from ray import serve

        from serve_app.app import build_app
        from serve_app.local import local_serve

        app_args = {
            "profile": args.profile,
            "providers": ["cpu"],
            "enhance": False,
            "identities": {"store_uri": "/tmp/faceswap-bench-identities"},
            **{stage: {"num_cpus": 0} for stage in ("ingress", "detector", "swapper", "landmarker")},
        }
        for key, value in json.loads(args.app_args).items():
            app_args[key] = {**app_args.get(key, {}), **value} if isinstance(value, dict) else value
        with local_serve(num_cpus=args.num_cpus, num_gpus=0) as url:
            serve.run(build_app(app_args), name="live-bench", route_prefix="/")
            levels = measure(url, local=True)
    summary = report(levels, args.duration)
    if args.json:
        write_json(
            args.json,
            {
                "environment": environment(),
                "settings": {**{k: str(v) for k, v in vars(args).items()}, "app_args": app_args},
                "levels": summary,
                "cpu_ms_per_frame": cpu,
                "raw": {str(k): [asdict(c) for c in v] for k, v in levels.items()},
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
