"""The application builder: ``serve run serve_app.app:build_app`` or ``import_path`` in a Serve config.

``build_app(args)`` validates ``args`` strictly (see :class:`serve_app.config.AppArgs`; an unknown key
is an error) and binds the graph ``SwapIngress(FaceDetector, FaceSwapper, FaceEmbedder?, FaceEnhancer?,
FaceLandmarker)``, each deployment with its own replicas or autoscaling range, CPUs, fractional GPUs,
admission limits and batch knobs (``user_config``). The enhancer is only deployed when ``enhance`` is true.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from serve_app.config import AppArgs
from serve_app.deployments import MODEL_DEPLOYMENTS
from serve_app.ingress import SwapIngress


def _deployment(decorated: object) -> Deployment:
    """The Deployment that ``@serve.deployment`` made of a class (mypy keeps the class type under a
    class decorator)."""
    if not isinstance(decorated, Deployment):
        raise TypeError(f"{decorated!r} is not a Serve deployment")
    return decorated


def build_app(args: dict[str, Any]) -> Application:
    """The swap graph for ``args`` (a dict as in ``configs/serve.yaml``, or an AppArgs)."""
    parsed = AppArgs.parse(args)
    deployed = parsed.deployed()
    bound = {
        stage: _deployment(cls).options(**deployed[stage].deployment_options()).bind(parsed)
        for stage, cls in MODEL_DEPLOYMENTS.items()
        if stage in deployed
    }
    ingress = _deployment(SwapIngress).options(**parsed.ingress.deployment_options())
    return ingress.bind(
        detector=bound["detector"],
        swapper=bound["swapper"],
        embedder=bound.get("embedder"),
        enhancer=bound.get("enhancer"),
        landmarker=bound.get("landmarker"),
        args=parsed,
    )
