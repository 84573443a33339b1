"""Offline batch face swap with Ray Data: one source face onto every frame of one or many target videos
(or folders of frames), written as videos with the original audio and, optionally, per-frame Parquet.

    python -m serve_app.batch SOURCE TARGET... -o OUT [--enhance] [--actors N] [--num-gpus 0.5] [--parquet]

The same command runs on a cluster: ``ray job submit --working-dir . -- python -m serve_app.batch ...
--address auto``. Paths may be local paths or any ``pyarrow.fs`` URI (``file://``, ``s3://``, ...).

Modules, by concern:

- :mod:`.config`: :class:`BatchJobConfig` (what a job does) and :class:`BatchJobResult` (what it wrote);
- :mod:`.storage`: pyarrow.fs paths, staging remote inputs locally, uploading outputs;
- :mod:`.targets`: planning each target in the driver (probe, frames, outputs);
- :mod:`.decode`: the ordered decode stage (one Ray Data actor, each video's pieces in order; no model code);
- :mod:`.plan`: the planner actor (with ``tracking``: pass 1 over each target, the faces of each frame);
- :mod:`.swap`: the swap stage (Ray Data actors running the one orchestration);
- :mod:`.sink`: the driver's writer: videos (audio copied, provenance label), sidecars and Parquet;
- :mod:`.job`: :func:`run_batch_job`, the dataset and its execution settings;
- :mod:`.cli`: :func:`add_batch_arguments` and :func:`run_batch`, shared by ``python -m serve_app.batch``
  and ``faceswap-serve batch``.

The names below are imported on first use: every Ray worker of a job imports this package, and a decode
worker must not pay for the model code, Ray Data's driver side or the command line.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType

_EXPORTS = MappingProxyType(
    {
        "BatchJobConfig": "config",
        "BatchJobResult": "config",
        "TargetResult": "config",
        "run_batch_job": "job",
        "add_batch_arguments": "cli",
        "run_batch": "cli",
        "main": "cli",
    }
)

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
