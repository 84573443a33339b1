"""Shared helpers of the benchmark scripts: environment facts, plain-text tables and JSON results."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "opencv-python-headless", "torch", "ray")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> list[dict[str, str]]:
    """Name, driver and memory of each NVIDIA GPU that ``nvidia-smi`` lists; empty without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def environment() -> dict[str, object]:
    """Facts that make a benchmark number reproducible: date, device, CPU, memory, versions, providers."""
    cpus_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = _gpus()
    cpu = _cpu_model()
    device = f"{gpus[0]['name']} (+ {cpu})" if gpus else f"CPU only: {cpu}, {cpus_usable} usable cores"
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus_usable,
        "memory_gib": _memory_gib(),
        "load_average_1_5_15m": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpus": gpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_device": ort.get_device(),
        "onnxruntime_providers": ort.get_available_providers(),
        "packages": _versions(),
    }


def _cell(value: object, spec: str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float | np.number) and spec is not None:
        return format(value, spec)
    if isinstance(value, float | np.floating):
        v = float(value)
        if v == 0.0 or abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.01:
            return f"{v:.2f}"
        return f"{v:.2g}"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return str(value)


Column = tuple[str, str] | tuple[str, str, str]
"""(key, header) or (key, header, format spec for numbers, e.g. ``".2f"``)."""


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[Column]) -> str:
    """A plain-text table of ``rows``; numeric columns right-aligned, missing or None cells blank.
    Without a format spec, floats get about 3 significant figures and ints thousands separators."""
    keys = [c[0] for c in columns]
    headers = [c[1] for c in columns]
    specs = [c[2] if len(c) == 3 else None for c in columns]
    cells = [[_cell(row.get(k), spec) for k, spec in zip(keys, specs, strict=True)] for row in rows]
    numeric = [
        all(isinstance(row.get(k), int | float | np.number) for row in rows if row.get(k) is not None)
        for k in keys
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(c) for c in cells)])


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_json(path: Path | str, payload: Mapping[str, object]) -> Path:
    """Write ``payload`` as indented JSON (numpy scalars, paths and dataclasses converted), creating
    parent folders. Returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return target
