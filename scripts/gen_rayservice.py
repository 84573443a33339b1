#!/usr/bin/env python3
"""Generate configs/rayservice.yaml, the KubeRay RayService of this project, from configs/serve.yaml (the
Serve applications), cluster.yaml (Ray images, GPU worker shape, idle timeout) and pyproject.toml (Ray
pin and dependencies). Run from anywhere:

    python scripts/gen_rayservice.py            # (re)write configs/rayservice.yaml
    python scripts/gen_rayservice.py --check    # exit 1 when configs/rayservice.yaml is stale

The output is deterministic: the same inputs always give the same bytes.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
import tomllib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if __package__ in (None, ""):  # run as a file: import this checkout's packages without installing them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_app.config import AppArgs, ScalingArgs  # noqa: E402

logger = logging.getLogger("gen_rayservice")

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = Path("configs/serve.yaml")
CLUSTER_CONFIG = Path("cluster.yaml")
PYPROJECT = Path("pyproject.toml")
OUTPUT = Path("configs/rayservice.yaml")

NAME = "faceswap-serve"
MODELS_PVC = "faceswap-models"
MODELS_MOUNT = "/models"
MODELS_DIR_ENV = "FACESWAP_MODELS_DIR"
DEFAULT_WORKING_DIR_URL = "https://github.com/faceswap-serve/faceswap-serve/archive/refs/tags/v{version}.zip"
"""Where the pods fetch the code (``runtime_env.working_dir``): a zip of this repository at the release
that matches pyproject's version. Regenerate with ``--working-dir-url`` for a fork or a commit archive."""

HEAD_CPU_REQUEST = "2"
HEAD_MEMORY = "8Gi"
CPU_WORKER_CPUS = 4
CPU_WORKER_MEMORY = "8Gi"
GPU_WORKER_MEMORY = "12Gi"
_IMAGE_TAG = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py\d+-(?P<flavour>cpu|gpu)$")


class _Dumper(yaml.SafeDumper):
    """Block style with indented sequences (kubectl's layout); multi-line strings as ``|`` literals."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def worker_pods(demands: Sequence[tuple[Fraction, Fraction]], pod_gpus: Fraction, pod_cpus: Fraction) -> int:
    """Pods of ``pod_gpus`` GPUs and ``pod_cpus`` CPUs that replicas asking ``(gpus, cpus)`` each pack into,
    first fit by decreasing demand (exact fractions: 0.1 + 3 * 0.3 fills one GPU, as in Ray)."""
    free: list[list[Fraction]] = []
    for gpus, cpus in sorted(demands, reverse=True):
        if gpus > pod_gpus or cpus > pod_cpus:
            raise ValueError(f"a replica asking {gpus} GPUs and {cpus} CPUs fits no {pod_gpus}-GPU pod")
        pod = next((p for p in free if p[0] >= gpus and p[1] >= cpus), None)
        if pod is None:
            pod = [pod_gpus, pod_cpus]
            free.append(pod)
        pod[0] -= gpus
        pod[1] -= cpus
    return len(free)


def _replica_range(scaling: ScalingArgs) -> tuple[int, int]:
    if scaling.autoscaling is not None:
        return scaling.autoscaling.min_replicas, scaling.autoscaling.max_replicas
    fixed = scaling.num_replicas or 1
    return fixed, fixed


def _demands(apps: Sequence[AppArgs], gpu: bool, at_max: bool) -> list[tuple[Fraction, Fraction]]:
    """One ``(gpus, cpus)`` per replica of every deployment that asks for GPUs (``gpu``) or only CPUs, and
    (CPU only, at max) one per video job runner the cluster may run at once."""
    demands: list[tuple[Fraction, Fraction]] = []
    for app in apps:
        for scaling in app.deployed().values():
            if (scaling.num_gpus > 0) != gpu:
                continue
            count = _replica_range(scaling)[1 if at_max else 0]
            demands += [(Fraction(str(scaling.num_gpus)), Fraction(str(scaling.num_cpus)))] * count
        if not gpu and at_max:
            demands += [(Fraction(0), Fraction(str(app.jobs.runner_cpus)))] * app.jobs.max_running_jobs
    return demands


def _image_version(image: str, flavour: str) -> str:
    match = _IMAGE_TAG.match(image)
    if match is None or match["flavour"] != flavour:
        raise ValueError(f"cluster.yaml image {image!r} is not rayproject/ray:X.Y.Z-pyNN-{flavour}")
    return match["version"]


def _runtime_env_pip(pyproject: dict[str, Any]) -> tuple[str, list[str]]:
    """The Ray version pyproject pins, and the project's other requirements plus the ``gpu`` extra."""
    project = pyproject["project"]
    ray_pins = []
    packages = []
    for line in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == "ray":
            ray_pins += [s.version for s in requirement.specifier if s.operator == "=="]
        else:
            packages.append(line)
    if len(ray_pins) != 1:
        raise ValueError("pyproject.toml must pin ray with one '==' requirement")
    return ray_pins[0], packages


def _container(name: str, image: str, resources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        **extra,
        "resources": resources,
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
    }


def build_manifest(
    serve_config: dict[str, Any], cluster: dict[str, Any], pyproject: dict[str, Any], working_dir_url: str
) -> dict[str, Any]:
    """The RayService object: ``serve_config`` with a ``runtime_env`` per application as serveConfigV2, on
    a CPU head, a CPU worker group for CPU-only replicas and a GPU worker group sized for the replicas."""
    ray_version, pip = _runtime_env_pip(pyproject)
    head_image = cluster["docker"]["head_image"]
    gpu_image = cluster["docker"]["worker_image"]
    for image, flavour in ((head_image, "cpu"), (gpu_image, "gpu")):
        if _image_version(image, flavour) != ray_version:
            raise ValueError(f"cluster.yaml image {image!r} does not run pyproject's ray=={ray_version}")
    head_type = cluster["head_node_type"]
    gpu_types = [
        node["resources"]
        for name, node in cluster["available_node_types"].items()
        if name != head_type and node["resources"].get("GPU", 0) > 0
    ]
    if len(gpu_types) != 1:
        raise ValueError("cluster.yaml must have exactly one GPU worker node type")
    pod_gpus, pod_cpus = int(gpu_types[0]["GPU"]), int(gpu_types[0]["CPU"])

    runtime_env = {"working_dir": working_dir_url, "pip": pip}
    applications = []
    for app in serve_config["applications"]:
        items = list(app.items())
        at = next(i for i, (key, _) in enumerate(items) if key == "import_path") + 1
        applications.append(dict(items[:at] + [("runtime_env", runtime_env)] + items[at:]))
    serve_v2 = {**serve_config, "applications": applications}
    apps = [AppArgs.parse(app.get("args")) for app in serve_config["applications"]]

    def pods(gpu: bool, at_max: bool) -> int:
        capacity = (
            (Fraction(pod_gpus), Fraction(pod_cpus)) if gpu else (Fraction(0), Fraction(CPU_WORKER_CPUS))
        )
        return worker_pods(_demands(apps, gpu, at_max), *capacity)

    gpu_min, gpu_max = pods(True, False), max(pods(True, True), 1)
    cpu_min, cpu_max = pods(False, False), max(pods(False, True), 1)
    head = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {
            "spec": {
                "containers": [
                    _container(
                        "ray-head",
                        head_image,
                        {
                            "requests": {"cpu": HEAD_CPU_REQUEST, "memory": HEAD_MEMORY},
                            "limits": {"memory": HEAD_MEMORY},
                        },
                        ports=[
                            {"containerPort": 6379, "name": "gcs-server"},
                            {"containerPort": 8265, "name": "dashboard"},
                            {"containerPort": 10001, "name": "client"},
                            {"containerPort": 8000, "name": "serve"},
                        ],
                    )
                ]
            }
        },
    }
    cpu_group = {
        "groupName": "cpu",
        "replicas": cpu_min,
        "minReplicas": cpu_min,
        "maxReplicas": cpu_max,
        "rayStartParams": {"num-cpus": str(CPU_WORKER_CPUS)},
        "template": {
            "spec": {
                "containers": [
                    _container(
                        "ray-worker",
                        head_image,
                        {
                            "requests": {"cpu": str(CPU_WORKER_CPUS), "memory": CPU_WORKER_MEMORY},
                            "limits": {"memory": CPU_WORKER_MEMORY},
                        },
                    )
                ]
            }
        },
    }
    gpu_cpu_request = f"{pod_cpus * 1000 - 500}m"  # leaves the kubelet's share of a pod_cpus-vCPU node
    gpu_group = {
        "groupName": "gpu",
        "replicas": gpu_min,
        "minReplicas": gpu_min,
        "maxReplicas": gpu_max,
        "rayStartParams": {"num-cpus": str(pod_cpus)},
        "template": {
            "spec": {
                "containers": [
                    _container(
                        "ray-worker",
                        gpu_image,
                        {
                            "requests": {
                                "cpu": gpu_cpu_request,
                                "memory": GPU_WORKER_MEMORY,
                                "nvidia.com/gpu": pod_gpus,
                            },
                            "limits": {"memory": GPU_WORKER_MEMORY, "nvidia.com/gpu": pod_gpus},
                        },
                        env=[{"name": MODELS_DIR_ENV, "value": MODELS_MOUNT}],
                        volumeMounts=[{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}],
                    )
                ],
                "volumes": [
                    {"name": "models", "persistentVolumeClaim": {"claimName": MODELS_PVC, "readOnly": True}}
                ],
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
        },
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": NAME}},
        "spec": {
            "serveConfigV2": _dump(serve_v2),
            "rayClusterConfig": {
                "rayVersion": ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": int(cluster["idle_timeout_minutes"]) * 60,
                },
                "headGroupSpec": head,
                "workerGroupSpecs": [cpu_group, gpu_group],
            },
        },
    }


def _header(manifest: dict[str, Any]) -> str:
    cluster = manifest["spec"]["rayClusterConfig"]
    cpu, gpu = cluster["workerGroupSpecs"]
    image = gpu["template"]["spec"]["containers"][0]["image"]
    ray = cluster["rayVersion"]
    idle = cluster["autoscalerOptions"]["idleTimeoutSeconds"]
    cpu_pods = f"{cpu['minReplicas']}-{cpu['maxReplicas']} pods of {cpu['rayStartParams']['num-cpus']} CPUs"
    gpu_pods = f"{gpu['minReplicas']}-{gpu['maxReplicas']} pods"
    gpu_cpus = gpu["rayStartParams"]["num-cpus"]
    text = f"""\
GENERATED by scripts/gen_rayservice.py from configs/serve.yaml, cluster.yaml and pyproject.toml.
DO NOT EDIT BY HAND: change those files, then regenerate from the repository root:

  python scripts/gen_rayservice.py            # rewrite this file
  python scripts/gen_rayservice.py --check    # exit 1 when this file is stale (tests/test_rayservice.py)

Deploy to a Kubernetes cluster with the KubeRay operator (ray.io/v1) and the NVIDIA device plugin:

  kubectl apply -f configs/rayservice.yaml
  kubectl get rayservice {NAME}                   # wait until the Serve application is RUNNING
  kubectl port-forward svc/{NAME}-serve-svc 8000  # the Serve service KubeRay creates (port 8000)
  curl http://localhost:8000/healthz

serveConfigV2 is configs/serve.yaml (the same applications, args and HTTP options: `serve deploy` and
this manifest run the same settings) plus a runtime_env per application, which is how the code reaches
the pods. They run cluster.yaml's stock images ({image} and its -cpu twin,
Ray {ray} as pinned in pyproject.toml). Ray fetches the app from working_dir, a zip archive of this
repository, and pip-installs pyproject's dependencies (without ray, which the image has; with the gpu
extra's onnxruntime-gpu) once per node. Chosen over a custom image so that deploying needs no image
build or registry (the model catalogue travels inside the pipeline package). Point working_dir at
your fork or a commit archive with --working-dir-url. For faster cold starts, build an image FROM the
worker image with `pip install ".[gpu]"` and drop runtime_env.

Layout (sizes computed from the args by scripts/gen_rayservice.py):
- head: GCS, dashboard, Serve controller and an HTTP proxy. num-cpus "0": no replica lands on it, so a
  replica cannot starve or OOM the cluster's control plane.
- worker group "cpu" ({cpu_pods}): the CPU-only replicas (ingress); maxReplicas pods
  hold all of them at their max replicas.
- worker group "gpu" ({gpu_pods}): one GPU and {gpu_cpus} logical CPUs per pod, like cluster.yaml's GPU node
  type; the fractional-GPU replicas pack onto it as configs/serve.yaml describes.
  maxReplicas is the number of pods that every model deployment at its max replicas packs into (first
  fit decreasing), minReplicas the same at min replicas. The CPU request stays under the allocatable
  CPUs of such a node. The Ray autoscaler (enableInTreeAutoscaling) adds pods for pending replicas and
  removes pods idle for {idle} s, like cluster.yaml's idle_timeout_minutes.

Models: GPU pods mount the PersistentVolumeClaim "{MODELS_PVC}" read-only at {MODELS_MOUNT}
({MODELS_DIR_ENV}); replicas never download (args.download is false). Before applying, create
the claim (ReadOnlyMany or ReadWriteMany, a few GiB) and fill it from a pod that mounts it read-write:
`{MODELS_DIR_ENV}={MODELS_MOUNT} faceswap models download NAME` for each model configs/serve.yaml lists.
"""
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


def generate(repo: Path = REPO, working_dir_url: str | None = None) -> str:
    """The text of configs/rayservice.yaml for the inputs in ``repo``."""
    serve_config = yaml.safe_load((repo / SERVE_CONFIG).read_text(encoding="utf-8"))
    cluster = yaml.safe_load((repo / CLUSTER_CONFIG).read_text(encoding="utf-8"))
    pyproject = tomllib.loads((repo / PYPROJECT).read_text(encoding="utf-8"))
    url = working_dir_url or DEFAULT_WORKING_DIR_URL.format(version=pyproject["project"]["version"])
    manifest = build_manifest(serve_config, cluster, pyproject, url)
    return _header(manifest) + _dump(manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help=f"compare with {OUTPUT} instead of writing it")
    parser.add_argument("--repo", type=Path, default=REPO, help="repository root (default: this checkout)")
    parser.add_argument("--working-dir-url", help="zip archive of the repository the pods run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    text = generate(args.repo, args.working_dir_url)
    path = args.repo / OUTPUT
    if not args.check:
        path.write_text(text, encoding="utf-8")
        logger.info("wrote %s", path)
        return 0
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "generated"
    )
    sys.stderr.writelines(diff)
    logger.error("%s is stale: run python scripts/gen_rayservice.py", path)
    return 1


if __name__ == "__main__":
    sys.exit(main())
