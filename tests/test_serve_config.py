"""The Serve layer without a Ray cluster: strict builder args, the Serve configs, request parsing and
content negotiation, the error mapping, the OpenAPI document, and the model deployments run in process
(batching across concurrent calls, reconfigure, health checks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import yaml
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.schema import ServeDeploySchema
from starlette.formparsers import MultiPartException

from pipeline.errors import (
    InvalidInputError,
    InvalidOptionError,
    NoFaceError,
    OverloadedError,
    UnsupportedOptionError,
)
from pipeline.inprocess import detector_info, embedder_info, enhancer_info, swapper_info
from pipeline.options import SwapOptions, option_facts
from pipeline.profiles import PipelineConfig, build_models
from pipeline.sessions import SessionConfig
from serve_app.app import build_app
from serve_app.config import AppArgs, ModelDeploymentArgs
from serve_app.deployments import FaceDetector, FaceEmbedder, FaceEnhancer, FaceSwapper
from serve_app.errors import InternalError, error_response, to_service_error
from serve_app.forms import negotiate, options_from_fields
from serve_app.openapi import openapi_spec

REPO = Path(__file__).resolve().parents[1]


# -- builder args -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "where"),
    [
        ({"profle": "lite"}, "profle"),
        ({"ingress": {"max_upload": 10}}, "ingress.max_upload"),
        ({"swapper": {"batch": {"size": 4}}}, "swapper.batch.size"),
        ({"enhancer": {"autoscaling": {"max": 3}}}, "enhancer.autoscaling.max"),
        ({"overrides": {"face": "x.onnx"}}, "overrides.face"),
        ({"providers": ["rocm"]}, "providers.0"),
        ({"detector": {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}}, "detector"),
        ({"swapper": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "swapper.autoscaling"),
        (
            {"swapper": {"autoscaling": {"metrics_interval_s": 5, "look_back_period_s": 5}}},
            "swapper.autoscaling",
        ),
        ({"swapper": {"num_gpus": 1.5}}, "swapper"),
        ({"ingress": {"max_upload_bytes": "big"}}, "ingress.max_upload_bytes"),
    ],
)
def test_build_app_rejects_unknown_keys_and_bad_values(args: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidOptionError, match=rf"invalid application args: {where}\b"):
        build_app(args)


def test_deployments_carry_their_placement_scaling_and_batch_knobs() -> None:
    args = AppArgs.parse(
        {
            "swapper": {
                "num_gpus": 0.25,
                "num_cpus": 0.5,
                "max_ongoing_requests": 24,
                "max_queued_requests": 5,
                "autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3},
                "batch": {"max_batch_size": 12, "batch_wait_timeout_s": 0.02},
            },
            "detector": {"num_replicas": 2},
        }
    )
    swapper = FaceSwapper.options(**args.swapper.deployment_options())
    assert swapper.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.25}
    assert swapper.max_ongoing_requests == 24 and swapper.max_queued_requests == 5
    assert swapper.user_config == {"max_batch_size": 12, "batch_wait_timeout_s": 0.02}
    autoscaling = swapper._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (
        1,
        4,
        3,
    )
    assert FaceDetector.options(**args.detector.deployment_options()).num_replicas == 2
    assert args.detector.batch == ModelDeploymentArgs().batch


def test_pipeline_config_and_session_follow_the_args(tmp_path: Path) -> None:
    args = AppArgs.parse(
        {
            "profile": "lite",
            "models_dir": str(tmp_path),
            "providers": ["cuda", "cpu"],
            "intra_op_threads": 3,
            "gpu_mem_limit_mb": 512,
            "overrides": {"detector": "yunet_2026may"},
            "enhance": False,
        }
    )
    config = args.pipeline_config()
    assert config.models_dir == tmp_path and config.profile == "lite" and config.enhance is False
    assert config.session == SessionConfig(
        providers=("cuda", "cpu"), intra_op_threads=3, gpu_mem_limit_mb=512, spin=False
    )
    assert dict(config.overrides) == {"detector": "yunet_2026may"}
    assert args.profile_label == "custom"
    assert AppArgs.parse({"profile": "full"}).profile_label == "full"


@pytest.mark.parametrize("name", ["serve.yaml", "serve.local.yaml"])
def test_serve_configs_are_valid_and_fit_their_machines(name: str) -> None:
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    ServeDeploySchema.model_validate(config)  # Ray's own schema for `serve run` / `serve deploy`
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    args = AppArgs.parse(app["args"])
    build_app(app["args"])
    deployed = args.deployed()
    assert set(deployed) == {"ingress", "detector", "embedder", "swapper", "enhancer", "landmarker"}
    assert args.ingress.num_gpus == 0 and args.spin is False
    models = [deployed[name] for name in ("detector", "embedder", "swapper", "enhancer", "landmarker")]
    if name == "serve.local.yaml":
        # a CPU-only machine: no GPU anywhere, and every replica at its maximum count fits 2 cores
        assert all(m.num_gpus == 0 for m in deployed.values())
        replicas = [
            m.autoscaling.max_replicas if m.autoscaling else (m.num_replicas or 1) for m in deployed.values()
        ]
        assert sum(m.num_cpus * n for m, n in zip(deployed.values(), replicas, strict=True)) <= 2.0
    else:
        assert all(0 < m.num_gpus < 1 for m in models)  # fractional GPUs for every model deployment
        assert sum(m.num_gpus for m in models) <= 1.0  # one of each fits a one-GPU worker node
        assert args.providers == ["cuda", "cpu"] and args.profile == "full"


# -- request parsing, negotiation, support checks ------------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/html", "application/json"),
        ("image/jpeg", "image/jpeg"),
        ("image/png", "image/png"),
        ("image/*", "image/jpeg"),
        ("image/png, */*;q=0.8", "image/png"),
        ("application/json, image/png", "application/json"),
        ("image/png;q=0.5, application/json;q=0.9", "application/json"),
        ("image/jpeg;q=0", "application/json"),
        ("image/jpeg;q=0.4, image/png;q=0.6", "image/png"),
    ],
)
def test_accept_negotiation(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


def test_options_from_individual_fields_and_json() -> None:
    fields = {"blend_ratio": "0.7", "face_selector_mode": "many", "enhance_output": "true"}
    assert options_from_fields(fields) == SwapOptions(
        blend_ratio=0.7, face_selector_mode="many", frame_processors=("face_swapper", "face_enhancer")
    )
    as_json = {
        "options": json.dumps({"blend_ratio": 0.7, "face_mask_padding": [1, 2, 3, 4]}),
        "detector_score": "0.3",
    }
    assert options_from_fields(as_json) == SwapOptions(
        blend_ratio=0.7, face_mask_padding=(1, 2, 3, 4), detector_score=0.3
    )
    assert options_from_fields({"enhance_output": "0"}) == SwapOptions()
    assert options_from_fields({}) == SwapOptions()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"blend_ratio": "1.5"}, "out of range"),
        ({"colour": "red"}, "unknown option"),
        ({"options": "[1, 2]"}, "expected a JSON object"),
        ({"options": "{oops"}, "invalid JSON"),
        ({"options": '{"blend_ratio": 0.5}', "blend_ratio": "0.4"}, "given both"),
        ({"enhance_output": "maybe"}, "expected true or false"),
        ({"frame_processors": "face_enhancer", "enhance_output": "false"}, "at least one processor"),
    ],
)
def test_bad_fields_are_invalid_options(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        options_from_fields(fields)


# -- errors ------------------------------------------------------------------------------------------
def test_errors_map_to_statuses_codes_and_retry_after() -> None:
    wrapped = RayTaskError(function_name="swap", traceback_str="", cause=NoFaceError("no face found"))
    error, retry = to_service_error(wrapped)
    assert isinstance(error, NoFaceError) and retry is None
    error, retry = to_service_error(
        BackPressureError(num_queued_requests=3, max_queued_requests=3, retry_after_s=2.5)
    )
    assert isinstance(error, OverloadedError) and error.status == 503 and retry == 2.5
    error, _ = to_service_error(MultiPartException("Missing boundary in multipart."))
    assert isinstance(error, InvalidInputError) and "boundary" in error.message
    error, _ = to_service_error(KeyError("secret internals"))
    assert isinstance(error, InternalError) and error.status == 500 and "secret" not in error.message

    response = error_response(BackPressureError(num_queued_requests=1, max_queued_requests=1), "rid-1")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert json.loads(response.body) == {
        "success": False,
        "code": "overloaded",
        "request_id": "rid-1",
        "error": "the service is at capacity, retry later (Request dropped due to backpressure "
        "(num_queued_requests=1, max_queued_requests=1).)",
    }
    response = error_response(NoFaceError("no face found in the target image"), "rid-2")
    assert response.status_code == 422 and "retry-after" not in response.headers


# -- OpenAPI -----------------------------------------------------------------------------------------
def test_openapi_documents_every_option_with_its_default() -> None:
    spec = openapi_spec("/prefix")
    assert spec["openapi"] == "3.0.3" and spec["servers"] == [{"url": "/prefix"}]
    form = spec["paths"]["/api/v1/swap"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    option_names = {fact.name for fact in option_facts()}
    assert set(form["properties"]) == option_names | {
        "source_image",
        "target_image",
        "reference_image",
        "enhance_output",
        "options",
        "identity_id",
    }
    defaults = SwapOptions()
    assert form["properties"]["blend_ratio"] == {
        "type": "number",
        "minimum": 0.0,
        "maximum": 1.0,
        "default": defaults.blend_ratio,
        "description": SwapOptions.model_fields["blend_ratio"].description,
    }
    assert form["properties"]["face_selector_mode"]["enum"] == ["one", "many", "reference"]
    assert (
        form["properties"]["max_faces"]["maximum"] == 64 and "default" not in form["properties"]["max_faces"]
    )
    assert form["properties"]["detector_score"]["minimum"] == 0.1
    assert (
        options_from_fields(
            {
                "frame_processors": form["properties"]["frame_processors"]["default"],
                "face_mask_padding": form["properties"]["face_mask_padding"]["default"],
            }
        )
        == defaults
    )
    responses = spec["paths"]["/api/v1/swap"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(responses)
    schemas = spec["components"]["schemas"]
    success = {
        "success": True,
        "message": "swapped 1 face",
        "result_image": "data:image/jpeg;base64,AA==",
        "request_id": "r",
        "faces_swapped": 1,
        "faces_processed": 1,
        "components": {"profile": "lite", "embedder": None},
        "notices": [],
    }
    jsonschema.validate(
        success,
        {
            **schemas["SwapResponse"],
            "properties": {**schemas["SwapResponse"]["properties"], "components": {"type": "object"}},
        },
    )
    jsonschema.validate({**NoFaceError("x").to_dict(), "request_id": "r"}, schemas["Error"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"success": False, "error": "x"}, schemas["Error"])


# -- the model deployments in process ---------------------------------------------------------------
def _noise(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)


def test_deployments_in_process_health_reconfigure_and_info(test_models: dict[str, Path]) -> None:
    """Batching itself needs a replica (Ray 2.60's @serve.batch reads the replica context); it is tested
    through a real cluster in test_serve.py."""
    overrides = {
        "detector": str(test_models["scrfd"]),
        "embedder": str(test_models["arcface"]),
        "swapper": str(test_models["inswapper_tint"]),
        "enhancer": str(test_models["gfpgan_sharpen"]),
    }
    args = AppArgs.parse({"use_shared_assets": False, "overrides": overrides, "providers": ["cpu"]})
    detector = FaceDetector.func_or_class(args)
    embedder = FaceEmbedder.func_or_class(args)
    swapper = FaceSwapper.func_or_class(args)
    enhancer = FaceEnhancer.func_or_class(args)
    for deployment in (detector, embedder, swapper, enhancer):
        deployment.check_health()  # runs each model once on a tiny input
    local = build_models(PipelineConfig(use_shared_assets=False, overrides=overrides))
    assert detector.info() == detector_info(local.detector)
    assert embedder.info() == embedder_info(local.embedder)
    assert swapper.info() == swapper_info(local.swapper)
    assert enhancer.info() == enhancer_info(local.enhancer)
    swapper.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.2})
    stats = swapper.stats()
    assert (stats["max_batch_size"], stats["batch_wait_timeout_s"], stats["calls"]) == (4, 0.2, 0)
    assert stats["replica"] is None and stats["model"] == "test_inswapper_tint"
    with pytest.raises(ValueError, match="max_batch_sizes"):
        swapper.reconfigure({"max_batch_sizes": 4})
    with pytest.raises(ValueError, match="max_batch_size"):
        enhancer.reconfigure({"max_batch_size": 0})
    with pytest.raises(UnsupportedOptionError, match="enhance"):
        FaceEnhancer.func_or_class(AppArgs.parse({"use_shared_assets": False, "enhance": False}))


def test_an_embedder_deployment_without_a_model_reports_none(tmp_path: Path) -> None:
    args = AppArgs.parse({"models_dir": str(tmp_path), "providers": ["cpu"]})
    embedder = FaceEmbedder.func_or_class(args)
    assert embedder.info() is None
    embedder.check_health()
    assert AppArgs.parse({"profile": "lite"}).has_embedder is False
    assert "embedder" not in AppArgs.parse({"profile": "lite"}).deployed()
