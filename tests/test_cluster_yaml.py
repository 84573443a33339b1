"""cluster.yaml against Ray's own cluster-launcher schema and validator (no Ray started, no cloud calls)."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from jsonschema.protocols import Validator
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    with (REPO / "cluster.yaml").open() as f:
        loaded = yaml.safe_load(f)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def validator() -> Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft7Validator, schema.get("$schema")
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator: Validator, config: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def test_matches_ray_schema(config: dict[str, Any], validator: Validator) -> None:
    assert _errors(validator, config) == []


def test_passes_ray_launcher_validation(config: dict[str, Any]) -> None:
    # What `ray up` does before it talks to the cloud: merge provider defaults, then validate.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"] == config["available_node_types"]
    assert prepared["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]


def test_unknown_top_level_key_fails(config: dict[str, Any], validator: Validator) -> None:
    broken = copy.deepcopy(config)
    broken["gpu_workers"] = {"max": 4}
    assert any("gpu_workers" in e for e in _errors(validator, broken))
    with pytest.raises(jsonschema.ValidationError, match="gpu_workers"):
        validate_config(prepare_config(broken))


def test_fractional_gpu_resource_fails(config: dict[str, Any], validator: Validator) -> None:
    # Node resources are whole units; fractions belong to Serve's ray_actor_options.
    broken = copy.deepcopy(config)
    name = next(iter(_worker_types(broken)))
    broken["available_node_types"][name]["resources"]["GPU"] = 0.5
    assert any(name in e and "GPU" in e for e in _errors(validator, broken))


def test_head_is_cpu_only(config: dict[str, Any]) -> None:
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] > 0
    assert head["resources"].get("GPU", 0) == 0
    assert head.get("max_workers", 0) == 0


def test_gpu_worker_type_scales_from_zero(config: dict[str, Any]) -> None:
    gpu_types = {k: v for k, v in _worker_types(config).items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker type with GPU resources"
    for node in gpu_types.values():
        assert node["resources"]["CPU"] >= 1
        assert node["min_workers"] == 0
        assert 1 <= node["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_images_match_pinned_ray(config: dict[str, Any]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"ray\[", d)]
    assert len(pins) == 1
    pinned = pins[0].split("==")[1]
    assert pinned == ray.__version__
    docker = config["docker"]
    assert docker["head_image"] == f"rayproject/ray:{pinned}-py311-cpu"
    assert docker["worker_image"] == f"rayproject/ray:{pinned}-py311-gpu"


def test_setup_installs_synced_checkout_with_gpu_extra(config: dict[str, Any]) -> None:
    mounts = config["file_mounts"]
    remote = next(r for r, local in mounts.items() if (REPO / local).resolve() == REPO)
    assert (REPO / mounts[remote] / "pyproject.toml").is_file()
    install = re.compile(rf"cd {re.escape(remote)} && pip install -e \"\.\[gpu\]\"$")
    assert any(install.match(cmd) for cmd in config["setup_commands"]), config["setup_commands"]
    assert any("FACESWAP_MODELS_DIR=" in cmd for cmd in config["setup_commands"])


def test_start_commands(config: dict[str, Any]) -> None:
    head = " ".join(config["head_start_ray_commands"])
    assert config["head_start_ray_commands"][0] == "ray stop"
    flags = (
        "--head",
        "--port=6379",
        "--dashboard-host=0.0.0.0",
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
    )
    for flag in flags:
        assert flag in head.split(), flag
    worker = " ".join(config["worker_start_ray_commands"])
    assert config["worker_start_ray_commands"][0] == "ray stop"
    assert "--address=$RAY_HEAD_IP:6379" in worker.split()
