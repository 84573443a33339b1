"""The model catalogue: the real pipeline/models.yaml, field validation, and finding model files on disk."""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.catalogue import (
    Catalogue,
    ModelSpec,
    default_catalogue_path,
    default_models_dir,
    file_sha256,
    resolve_model_file,
)
from pipeline.errors import CatalogueError, ModelNotFoundError
from pipeline.geometry import TEMPLATES

REPO = Path(__file__).resolve().parents[1]
FACEFUSION_RELEASE = "https://github.com/facefusion/facefusion-assets/releases/download/models-3.0.0/"
FACEFUSION_MODELS = [
    "scrfd_2.5g",
    "retinaface_10g",
    "arcface_w600k_r50",
    "inswapper_128",
    "inswapper_128_fp16",
    "gfpgan_1.4",
]
# From ../shared/assets/README.md (and its SHA256SUMS).
SHARED_MODELS = {
    "yunet_2023mar": (
        "face_detection_yunet_2023mar.onnx",
        232589,
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    ),
    "yunet_2026may": (
        "face_detection_yunet_2026may.onnx",
        229738,
        "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
    ),
    "scrfd_500m": (
        "scrfd_500m_bnkps.onnx",
        2529618,
        "6c6ba7956684796d7d582bfa1ab95dfe01dd280159f6bff1e23c1bc32bcc8431",
    ),
    "mobilefacenet_128d": (
        "mobilefacenet_paddlex_128d.onnx",
        4001322,
        "6ced4e0c36abba9dd24b48d725f7dbb94089f75b3d3445d3d67b85157cb64743",
    ),
}

GOOD_ENTRY: dict[str, Any] = {
    "name": "toy",
    "kind": "embedder",
    "family": "arcface",
    "file": "toy.onnx",
    "url": "https://example.org/toy.onnx",
    "sha256": "0" * 64,
    "size": 10,
    "licence": "MIT",
    "input_size": 112,
    "template": "arcface_112_v2",
    "mean": 127.5,
    "std": 127.5,
    "channel_order": "rgb",
}


def write_catalogue(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": entries}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load(REPO / "pipeline" / "models.yaml")


def test_default_path_is_the_repo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACESWAP_CATALOGUE", raising=False)
    assert default_catalogue_path() == REPO / "pipeline" / "models.yaml"
    assert Catalogue.load().names() == Catalogue.load(REPO / "pipeline" / "models.yaml").names()


def test_env_var_selects_the_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESWAP_CATALOGUE", str(write_catalogue(tmp_path, [GOOD_ENTRY])))
    assert Catalogue.load().names() == ["toy"]


def test_real_catalogue_has_every_expected_model(catalogue: Catalogue) -> None:
    assert set(catalogue.names()) == set(FACEFUSION_MODELS) | set(SHARED_MODELS)
    for spec in catalogue:
        assert isinstance(spec, ModelSpec)
        assert spec.template is None or spec.template in TEMPLATES
        assert (spec.template is None) == (spec.kind == "detector"), spec.name


def test_facefusion_entries_point_at_the_release_and_are_pinned(catalogue: Catalogue) -> None:
    for name in FACEFUSION_MODELS:
        spec = catalogue.get(name)
        assert spec.url == FACEFUSION_RELEASE + spec.file
        # Pinned entries are checkable; an unpinned one must say so instead of carrying a guess.
        assert spec.verified == (spec.sha256 is not None and spec.size is not None)


def test_model_facts_follow_the_contracts(catalogue: Catalogue) -> None:
    facts = {
        name: (
            spec.kind,
            spec.family,
            spec.input_size,
            spec.template,
            spec.mean,
            spec.std,
            spec.channel_order,
        )
        for name, spec in catalogue.models.items()
    }
    assert facts["arcface_w600k_r50"] == ("embedder", "arcface", 112, "arcface_112_v2", 127.5, 127.5, "rgb")
    assert facts["inswapper_128"] == ("swapper", "inswapper", 128, "arcface_128", 0.0, 255.0, "rgb")
    assert facts["inswapper_128_fp16"] == facts["inswapper_128"]
    assert facts["gfpgan_1.4"] == ("enhancer", "gfpgan", 512, "ffhq_512", 127.5, 127.5, "rgb")
    assert facts["scrfd_2.5g"] == ("detector", "scrfd", 640, None, 127.5, 128.0, "rgb")
    assert facts["yunet_2026may"] == ("detector", "yunet", 640, None, 0.0, 1.0, "bgr")
    assert facts["mobilefacenet_128d"] == ("embedder", "arcface", 112, "arcface_112_v2", 127.5, 127.5, "bgr")
    assert "non-commercial" in catalogue.get("inswapper_128").licence
    assert "non-commercial" in catalogue.get("arcface_w600k_r50").licence
    assert "Apache-2.0" in catalogue.get("gfpgan_1.4").licence


def test_shared_model_pins_match_the_assets_readme(catalogue: Catalogue) -> None:
    for name, (file, size, sha256) in SHARED_MODELS.items():
        spec = catalogue.get(name)
        assert (spec.file, spec.size, spec.sha256) == (file, size, sha256)
        assert spec.verified


def test_by_kind_and_get(catalogue: Catalogue) -> None:
    detectors = {spec.name for spec in catalogue.by_kind("detector")}
    assert detectors == {"scrfd_2.5g", "retinaface_10g", "yunet_2023mar", "yunet_2026may", "scrfd_500m"}
    assert [s.name for s in catalogue.by_kind("enhancer")] == ["gfpgan_1.4"]
    with pytest.raises(CatalogueError, match="painter"):
        catalogue.by_kind("painter")
    with pytest.raises(ModelNotFoundError) as info:
        catalogue.get("no_such_model")
    assert "no_such_model" in info.value.message and "inswapper_128" in info.value.message


def test_spec_for_file(catalogue: Catalogue) -> None:
    assert catalogue.spec_for_file("inswapper_128.onnx").name == "inswapper_128"
    assert catalogue.spec_for_file("scrfd_500m_bnkps.onnx", kind="detector").name == "scrfd_500m"
    with pytest.raises(ModelNotFoundError, match="scrfd_500m_bnkps.onnx"):
        catalogue.spec_for_file("scrfd_500m_bnkps.onnx", kind="embedder")
    with pytest.raises(ModelNotFoundError, match="unknown.onnx"):
        catalogue.spec_for_file("unknown.onnx")
    assert [spec.name for spec in catalogue.specs] == catalogue.names()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "ABCDEF" + "0" * 58),
        ("sha256", "0" * 63),
        ("kind", "painter"),
        ("family", "stylegan"),
        ("file", "models/toy.onnx"),
        ("file", "..\\toy.onnx"),
        ("file", ".."),
        ("url", "ftp://example.org/toy.onnx"),
        ("url", "example.org/toy.onnx"),
        ("size", 0),
        ("size", -5),
        ("size", "10"),
        ("template", "arcface_96"),
        ("template", None),
        ("channel_order", "rgba"),
        ("input_size", 0),
        ("std", 0.0),
        ("licence", ""),
    ],
)
def test_bad_field_names_entry_and_field(tmp_path: Path, field: str, value: object) -> None:
    entry = {**GOOD_ENTRY, field: value}
    with pytest.raises(CatalogueError) as info:
        Catalogue.load(write_catalogue(tmp_path, [entry]))
    assert "'toy'" in info.value.message and repr(field) in info.value.message


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError) as info:
        Catalogue.load(write_catalogue(tmp_path, [{**GOOD_ENTRY, "colour": "blue"}]))
    assert "'toy'" in info.value.message and "'colour'" in info.value.message


def test_missing_field_is_an_error(tmp_path: Path) -> None:
    entry = copy.deepcopy(GOOD_ENTRY)
    del entry["licence"]
    with pytest.raises(CatalogueError, match="'licence': is missing"):
        Catalogue.load(write_catalogue(tmp_path, [entry]))


def test_duplicate_names_and_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="defined twice"):
        Catalogue.load(write_catalogue(tmp_path, [GOOD_ENTRY, {**GOOD_ENTRY, "file": "other.onnx"}]))
    with pytest.raises(CatalogueError, match="'file'"):
        Catalogue.load(write_catalogue(tmp_path, [GOOD_ENTRY, {**GOOD_ENTRY, "name": "toy2"}]))


def test_null_pins_make_an_unverified_entry(tmp_path: Path) -> None:
    entry = {**GOOD_ENTRY, "sha256": None, "size": None, "url": None}
    spec = Catalogue.load(write_catalogue(tmp_path, [entry])).get("toy")
    assert not spec.verified and spec.url is None
    assert ModelSpec(**GOOD_ENTRY).verified


def test_detector_needs_no_template() -> None:
    spec = ModelSpec(**{**GOOD_ENTRY, "kind": "detector", "family": "yunet", "template": None})
    assert spec.template is None


@pytest.mark.parametrize(
    "text",
    ["models: [", "- just a list", "version: 2\nmodels: []", "models: []", "extra: 1\nmodels: [1]"],
)
def test_malformed_files_raise_catalogue_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError):
        Catalogue.load(path)


def test_missing_catalogue_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read"):
        Catalogue.load(tmp_path / "absent.yaml")


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACESWAP_MODELS_DIR", str(tmp_path / "m"))
    assert default_models_dir() == tmp_path / "m"
    monkeypatch.delenv("FACESWAP_MODELS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_models_dir() == tmp_path / ".cache" / "faceswap-serve" / "models"


def test_resolve_skips_wrong_size_and_wrong_hash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    payload = b"0123456789"
    spec = ModelSpec(**{**GOOD_ENTRY, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)})
    short, corrupt, good = (tmp_path / d for d in ("short", "corrupt", "good"))
    for directory, content in ((short, payload[:-1]), (corrupt, b"9123456789"), (good, payload)):
        directory.mkdir()
        (directory / spec.file).write_bytes(content)
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="pipeline.catalogue"):
        assert resolve_model_file(spec, [empty, short, corrupt, good]) == corrupt / spec.file
        assert "9 bytes" in caplog.text
        assert resolve_model_file(spec, [empty, short, corrupt, good], verify=True) == good / spec.file
        assert "sha256" in caplog.text
    assert resolve_model_file(spec, [empty, short]) is None


def test_resolve_unverified_spec_accepts_any_file(tmp_path: Path) -> None:
    spec = ModelSpec(**{**GOOD_ENTRY, "sha256": None, "size": None})
    (tmp_path / spec.file).write_bytes(b"anything")
    assert resolve_model_file(spec, [tmp_path], verify=True) == tmp_path / spec.file


def test_real_shared_models_resolve_by_size_and_hash(assets: Path, catalogue: Catalogue) -> None:
    models = assets / "models"
    for name, (file, _, sha256) in SHARED_MODELS.items():
        path = resolve_model_file(catalogue.get(name), [models], verify=True)
        assert path == models / file
        assert file_sha256(path) == sha256
