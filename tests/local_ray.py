"""One way for test modules to start a local Ray with Serve's HTTP proxy on a free loopback port."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_serve(**ray_init: Any) -> Iterator[str]:
    """A fresh local Ray (4 logical CPUs, 1 logical GPU unless overridden; never a cluster that `ray start`
    left running) and Serve on a free 127.0.0.1 port; yields the base URL and shuts both down after."""
    import ray
    from ray import serve

    if ray.is_initialized():
        ray.shutdown()
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    options: dict[str, Any] = {
        "address": "local",
        "num_cpus": 4,
        "num_gpus": 1,
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {**RAY_ENV, "PYTHONPATH": python_path}},
    }
    ray.init(**{**options, **ray_init})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
