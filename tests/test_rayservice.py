"""configs/rayservice.yaml (KubeRay RayService) against its generator, configs/serve.yaml, cluster.yaml and
pyproject.toml, and against the RayService field names of KubeRay's ray.io/v1 API. No Kubernetes needed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from pipeline.errors import InvalidOptionError
from serve_app.config import AppArgs, ScalingArgs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gen_rayservice.py"
MANIFEST = REPO / "configs" / "rayservice.yaml"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_rayservice", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

# Field names of KubeRay's ray.io/v1 API (ray-operator CRDs / docs/reference/api.md): RayService,
# RayServiceSpec, RayClusterSpec, AutoscalerOptions, HeadGroupSpec, WorkerGroupSpec. Unknown fields are
# pruned silently by the API server, so a typo here would deploy as if the field were absent.
_QUANTITY = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {
            "type": "string",
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
            r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
        },
    ]
}
_RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
    },
}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "additionalProperties": False,
    "properties": {
        key: {}
        for key in (
            "name image command args env envFrom ports resources volumeMounts lifecycle livenessProbe "
            "readinessProbe securityContext imagePullPolicy workingDir"
        ).split()
    }
    | {"resources": _RESOURCES},
}
_POD_TEMPLATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "additionalProperties": False,
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                **{
                    key: {}
                    for key in (
                        "volumes tolerations nodeSelector affinity serviceAccountName initContainers "
                        "imagePullSecrets securityContext terminationGracePeriodSeconds"
                    ).split()
                },
            },
        },
    },
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "idleTimeoutSeconds": {"type": "integer"},
        "rayStartParams": _RAY_START_PARAMS,
        "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object"},
        "numOfHosts": {"type": "integer"},
        "suspend": {"type": "boolean"},
    },
}
RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "additionalProperties": False,
            "properties": {
                "serveConfigV2": {"type": "string"},
                "serveService": {"type": "object"},
                "upgradeStrategy": {"type": "object"},
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
                    "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                                "version": {"enum": ["v1", "v2"]},
                                **{
                                    key: {}
                                    for key in "resources image imagePullPolicy securityContext env "
                                    "envFrom volumeMounts".split()
                                },
                            },
                        },
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["rayStartParams", "template"],
                            "additionalProperties": False,
                            "properties": {
                                "rayStartParams": _RAY_START_PARAMS,
                                "template": _POD_TEMPLATE,
                                "serviceType": {"type": "string"},
                                "headService": {"type": "object"},
                                "enableIngress": {"type": "boolean"},
                            },
                        },
                        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": _WORKER_GROUP},
                        "headServiceAnnotations": {"type": "object"},
                        "gcsFaultToleranceOptions": {"type": "object"},
                        "suspend": {"type": "boolean"},
                        "managedBy": {"type": "string"},
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def text() -> str:
    return MANIFEST.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def manifest(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def serve_v2(manifest: dict[str, Any]) -> dict[str, Any]:
    loaded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def serve_yaml() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _group(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    (group,) = [g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == name]
    return group


def _max_replicas(scaling: ScalingArgs) -> int:
    return scaling.autoscaling.max_replicas if scaling.autoscaling else (scaling.num_replicas or 1)


def _deployments(args: AppArgs) -> list[ScalingArgs]:
    return list(args.deployed().values())


def _copy_inputs(dest: Path) -> Path:
    for rel in ("configs/serve.yaml", "configs/rayservice.yaml", "cluster.yaml", "pyproject.toml"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, dest / rel)
    return dest


# -- generated, and up to date --------------------------------------------------------------------------
def test_committed_manifest_is_what_the_generator_writes(text: str) -> None:
    assert text == gen.generate(REPO)
    assert gen.generate(REPO) == gen.generate(REPO)  # deterministic


def test_check_cli_passes_on_the_committed_manifest() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_check_fails_after_the_serve_config_changes(tmp_path: Path) -> None:
    repo = _copy_inputs(tmp_path)
    assert gen.main(["--check", "--repo", str(repo)]) == 0
    serve = repo / "configs" / "serve.yaml"
    # 12 swappers + 8 enhancers at 0.3 GPU, 3 per one-GPU pod -> 7 pods (the 4 detectors take the rest)
    swapper = "min_replicas: 1, max_replicas: 8, target_ongoing_requests: 16"
    assert serve.read_text().count(swapper) == 1
    serve.write_text(serve.read_text().replace(swapper, swapper.replace("8", "12", 1)))
    assert gen.main(["--check", "--repo", str(repo)]) == 1
    assert gen.main(["--repo", str(repo)]) == 0
    assert gen.main(["--check", "--repo", str(repo)]) == 0
    regenerated = yaml.safe_load((repo / "configs" / "rayservice.yaml").read_text())
    assert _group(regenerated, "gpu")["maxReplicas"] == 7
    assert _group(regenerated, "cpu")["maxReplicas"] == 4  # 8 ingress replicas + 8 job runners, 1 CPU each
    assert AppArgs.parse(
        yaml.safe_load(regenerated["spec"]["serveConfigV2"])["applications"][0]["args"]
    ).swapper == (AppArgs.parse(yaml.safe_load(serve.read_text())["applications"][0]["args"]).swapper)


def test_check_fails_after_a_hand_edit(tmp_path: Path) -> None:
    repo = _copy_inputs(tmp_path)
    path = repo / "configs" / "rayservice.yaml"
    path.write_text(path.read_text().replace("maxReplicas: 6", "maxReplicas: 3"))
    assert gen.main(["--check", "--repo", str(repo)]) == 1


def test_invalid_app_args_fail_generation(tmp_path: Path) -> None:
    repo = _copy_inputs(tmp_path)
    serve = repo / "configs" / "serve.yaml"
    serve.write_text(serve.read_text().replace("enhance: true", "enhance: true\n      enhanse: false"))
    with pytest.raises(InvalidOptionError, match="enhanse"):
        gen.generate(repo)


# -- the RayService object --------------------------------------------------------------------------------
def test_api_version_kind_and_known_fields(manifest: dict[str, Any], text: str) -> None:
    validator = jsonschema.Draft202012Validator(RAYSERVICE_SCHEMA)
    validator.check_schema(RAYSERVICE_SCHEMA)
    assert [e.message for e in validator.iter_errors(manifest)] == []
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"] == "faceswap-serve"
    assert "\n  serveConfigV2: |\n" in text  # a block literal, readable in kubectl edit
    assert text.startswith("# GENERATED by scripts/gen_rayservice.py")
    assert "kubectl apply -f configs/rayservice.yaml" in text


def test_schema_catches_a_misspelt_field(manifest: dict[str, Any]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(manifest))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    errors = [e.message for e in jsonschema.Draft202012Validator(RAYSERVICE_SCHEMA).iter_errors(broken)]
    assert any("maxReplica" in e for e in errors) and any("0 is not of type 'string'" in e for e in errors)


def test_images_and_ray_version_match_cluster_yaml_and_pyproject(manifest: dict[str, Any]) -> None:
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (ray_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    config = manifest["spec"]["rayClusterConfig"]
    assert ray_pin.endswith(f"=={config['rayVersion']}") and config["rayVersion"] == "2.60.0"
    head = config["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == cluster["docker"]["head_image"]
    assert (
        _group(manifest, "gpu")["template"]["spec"]["containers"][0]["image"]
        == (cluster["docker"]["worker_image"])
    )
    assert cluster["docker"]["worker_image"] == "rayproject/ray:2.60.0-py311-gpu"
    assert _group(manifest, "cpu")["template"]["spec"]["containers"][0]["image"] == head["image"]
    assert config["autoscalerOptions"]["idleTimeoutSeconds"] == cluster["idle_timeout_minutes"] * 60


# -- serveConfigV2 against configs/serve.yaml --------------------------------------------------------------
def test_serve_config_v2_is_serve_yaml_plus_runtime_env(
    serve_v2: dict[str, Any], serve_yaml: dict[str, Any]
) -> None:
    ServeDeploySchema.model_validate(serve_v2)  # what the dashboard validates when KubeRay submits it
    without_env = {
        **serve_v2,
        "applications": [
            {k: v for k, v in a.items() if k != "runtime_env"} for a in serve_v2["applications"]
        ],
    }
    assert without_env == serve_yaml
    assert list(without_env["applications"][0]) == list(serve_yaml["applications"][0])  # key order kept


def test_runtime_env_ships_the_project(serve_v2: dict[str, Any]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    expected_pip = [d for d in pyproject["project"]["dependencies"] if not d.startswith("ray[")] + pyproject[
        "project"
    ]["optional-dependencies"]["gpu"]
    for app in serve_v2["applications"]:
        env = app["runtime_env"]
        assert set(env) == {"working_dir", "pip"}
        assert env["working_dir"].startswith("https://") and env["working_dir"].endswith(".zip")
        assert pyproject["project"]["version"] in env["working_dir"]
        assert env["pip"] == expected_pip
        assert any(p.startswith("onnxruntime-gpu") for p in env["pip"])


def test_every_application_args_validate(serve_v2: dict[str, Any]) -> None:
    for app in serve_v2["applications"]:
        args = AppArgs.parse(app["args"])
        assert app["import_path"] == "serve_app.app:build_app"
        assert args.profile == "full" and args.download is False  # the models come from the volume


# -- cluster capacity ----------------------------------------------------------------------------------------
def test_gpu_group_covers_every_deployment_at_max_replicas(
    manifest: dict[str, Any], serve_v2: dict[str, Any]
) -> None:
    gpu = _group(manifest, "gpu")
    container = gpu["template"]["spec"]["containers"][0]
    pod_gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    pod_cpus = Fraction(gpu["rayStartParams"]["num-cpus"])
    assert pod_gpus == 1 and container["resources"]["requests"]["nvidia.com/gpu"] == pod_gpus
    assert Fraction(container["resources"]["requests"]["cpu"].removesuffix("m")) / 1000 <= pod_cpus
    need_gpus, need_cpus, min_gpus = Fraction(0), Fraction(0), Fraction(0)
    for app in serve_v2["applications"]:
        args = AppArgs.parse(app["args"])
        for scaling in _deployments(args):
            if scaling.num_gpus == 0:
                continue
            gpus, cpus = Fraction(str(scaling.num_gpus)), Fraction(str(scaling.num_cpus))
            assert gpus <= pod_gpus and cpus <= pod_cpus  # one replica fits one pod
            need_gpus += gpus * _max_replicas(scaling)
            need_cpus += cpus * _max_replicas(scaling)
            min_gpus += gpus * (scaling.autoscaling.min_replicas if scaling.autoscaling else 1)
    assert need_gpus == Fraction("5.7")  # 4 x 0.1 + 4 x 0.1 + 2 x 0.05 + 8 x 0.3 + 8 x 0.3 (serve.yaml)
    assert gpu["maxReplicas"] * pod_gpus >= need_gpus
    assert gpu["maxReplicas"] * pod_cpus >= need_cpus
    assert gpu["minReplicas"] * pod_gpus >= min_gpus and gpu["minReplicas"] >= 1
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def test_cpu_group_holds_the_ingress_and_the_head_holds_no_replicas(
    manifest: dict[str, Any], serve_v2: dict[str, Any]
) -> None:
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    cpu = _group(manifest, "cpu")
    for group in (head, cpu):
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert not any("gpu" in key for part in resources.values() for key in part)
    need = Fraction(0)
    for app in serve_v2["applications"]:
        args = AppArgs.parse(app["args"])
        assert args.ingress.num_gpus == 0
        need += Fraction(str(args.ingress.num_cpus)) * _max_replicas(args.ingress)
    assert need == 8
    assert cpu["maxReplicas"] * Fraction(cpu["rayStartParams"]["num-cpus"]) >= need


def test_gpu_pods_mount_the_models(manifest: dict[str, Any]) -> None:
    spec = _group(manifest, "gpu")["template"]["spec"]
    (container,) = spec["containers"]
    assert {"name": "FACESWAP_MODELS_DIR", "value": "/models"} in container["env"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == "faceswap-models"


@pytest.mark.parametrize(
    ("demands", "pods"),
    [
        ([("0.3", "1")] * 16 + [("0.1", "0.5")] * 4, 6),
        ([("0.1", "0.5")] + [("0.3", "1")] * 3, 1),  # exactly one GPU: no float round-off
        ([("0.1", "1")] * 5, 2),  # CPU-bound
        ([], 0),
    ],
)
def test_worker_pods_packing(demands: list[tuple[str, str]], pods: int) -> None:
    exact = [(Fraction(g), Fraction(c)) for g, c in demands]
    assert gen.worker_pods(exact, Fraction(1), Fraction(4)) == pods


def test_worker_pods_rejects_a_replica_larger_than_a_pod() -> None:
    with pytest.raises(ValueError, match="fits no"):
        gen.worker_pods([(Fraction(2), Fraction(1))], Fraction(1), Fraction(4))
