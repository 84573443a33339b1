"""A local Ray with Serve on a free loopback port: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.proxy:middlewares",
}
"""Ray 2.60 outside a managed cluster: no token-auth prompt, no usage-stats network calls; the service's
middleware in Serve's HTTP proxy (``serve_app.proxy``)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_serve(num_cpus: int | None = 4, num_gpus: int = 1, port: int = 0, **ray_init: Any) -> Iterator[str]:
    """A fresh local Ray (never a cluster that `ray start` left running) with ``num_cpus`` CPUs (None: all)
    and ``num_gpus`` logical GPUs, and Serve's HTTP proxy on 127.0.0.1:``port`` (0: a free port). Ray's
    own log lines stay in its log files (``logging_level`` WARNING for the driver). Yields the base URL;
    shuts both down afterwards."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve

    if ray.is_initialized():
        ray.shutdown()
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    options: dict[str, Any] = {
        "address": "local",
        "num_cpus": num_cpus or os.cpu_count(),
        "num_gpus": num_gpus,
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": {**RAY_ENV, "PYTHONPATH": python_path}},
    }
    options.update(ray_init)
    ray.init(**options)
    try:
        port = port or free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # Serve's driver-side logger says "Started Serve", "Connecting to existing Serve app", "Application
        # ... is ready" at INFO on stderr: kept at the driver's level.
        logging.getLogger("ray.serve").setLevel(options["logging_level"])
        yield f"http://127.0.0.1:{port}"
    finally:
        # Serve's controller kills itself while the driver's graceful_shutdown call waits, and Ray's error
        # listener prints the retried call as "(raylet) Task ... failed" on sys.stdout: kept to the log.
        notices = io.StringIO()
        with redirect_stdout(notices):
            serve.shutdown()
            ray.shutdown()
        for line in notices.getvalue().splitlines():
            log.debug("ray shutdown: %s", line)
