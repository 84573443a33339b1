"""Benchmark models (bench.export_models) and the model micro-benchmark (bench.micro).

Tiny-width exports must keep the production I/O contracts (names, dynamic batch, emap as the last
initializer) and run through the production wrappers; the full-width architectures must match the
published sizes of the real models. Skipped without torch (the ``bench`` extra)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="bench extra not installed")

from bench import export_models as em  # noqa: E402
from bench import micro  # noqa: E402
from bench.common import environment, format_table, write_json  # noqa: E402
from pipeline.models.embedder import ArcFaceEmbedder  # noqa: E402
from pipeline.models.enhancer import GfpganEnhancer  # noqa: E402
from pipeline.models.swapper import InswapperSwapper, load_emap  # noqa: E402
from pipeline.sessions import SessionConfig, create_session  # noqa: E402

WIDTH = 1 / 32
SEED = 3

CONTRACTS = {
    "inswapper": (
        {"target": ["batch", 3, 128, 128], "source": ["batch", 512]},
        {"output": ["batch", 3, 128, 128]},
    ),
    "arcface": ({"input.1": ["batch", 3, 112, 112]}, {"683": ["batch", 512]}),
    "gfpgan": ({"input": ["batch", 3, 512, 512]}, {"output": ["batch", 3, 512, 512]}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[em.ModelReport]]:
    """The three benchmark models at 1/32 width (verified against torch at batch 2 while exporting)."""
    out = tmp_path_factory.mktemp("bench_models")
    return out, em.export_all(out, width=WIDTH, seed=SEED)


def _session(path: Path):
    return create_session(path, SessionConfig(providers=("cpu",), intra_op_threads=1))


def _crops(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_exports_keep_the_production_io_contracts(exported: tuple[Path, list[em.ModelReport]]) -> None:
    out, reports = exported
    assert [r.name for r in reports] == list(em.MODEL_NAMES)
    for report in reports:
        path = out / f"bench_{report.name}.onnx"
        assert report.file == path.name and report.onnx_bytes == path.stat().st_size
        inputs, outputs = CONTRACTS[report.name]
        assert (report.inputs, report.outputs) == (inputs, outputs)  # as declared in the file
        session = _session(path)
        assert {i.name: list(i.shape) for i in session.get_inputs()} == inputs
        assert {o.name: list(o.shape) for o in session.get_outputs()} == outputs
        assert all(i.type == "tensor(float)" for i in session.get_inputs())
        rng = np.random.default_rng(0)
        feed = {name: rng.random((3, *shape[1:]), dtype=np.float32) for name, shape in inputs.items()}
        (result,) = session.run(None, feed)
        assert result.shape == (3, *next(iter(outputs.values()))[1:])
        assert np.isfinite(result).all()
        assert report.max_abs_diff_vs_torch is not None
        assert report.max_abs_diff_vs_torch <= 1e-3 * max(1.0, float(np.abs(result).max()))


def test_emap_is_the_last_initializer_and_load_emap_reads_it(
    exported: tuple[Path, list[em.ModelReport]],
) -> None:
    path = exported[0] / "bench_inswapper.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    assert graph.initializer[-1].name == "emap"
    assert list(graph.initializer[-1].dims) == [512, 512]
    assert all(node.input[i] != "emap" for node in graph.node for i in range(len(node.input)))
    emap = load_emap(path)
    np.testing.assert_array_equal(emap, em.emap_matrix(SEED))
    np.testing.assert_allclose(emap @ emap.T, np.eye(512), atol=1e-4)


def test_production_wrappers_accept_the_models(exported: tuple[Path, list[em.ModelReport]]) -> None:
    out = exported[0]
    embedder = ArcFaceEmbedder(_session(out / "bench_arcface.onnx"), name="bench_arcface")
    embeddings = embedder.embed_crops(_crops(3, 112, 1))
    assert embeddings.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])

    path = out / "bench_inswapper.onnx"
    swapper = InswapperSwapper(_session(path), load_emap(path), name="bench_inswapper")
    crop = _crops(1, 128, 2)
    crops = np.concatenate([crop, crop])
    swapped = swapper.swap_crops(crops, embeddings[:2])
    assert swapped.shape == (2, 128, 128, 3) and swapped.dtype == np.uint8
    # AdaIN: the source latent (embedding x emap) drives the output, so one target with two identities gives
    # two pictures.
    assert np.abs(swapped[0].astype(int) - swapped[1].astype(int)).max() > 0

    enhancer = GfpganEnhancer(_session(out / "bench_gfpgan.onnx"), name="bench_gfpgan")
    enhanced = enhancer.enhance_crops(_crops(2, 512, 3))
    assert enhanced.shape == (2, 512, 512, 3) and enhanced.dtype == np.uint8
    assert enhanced.std() > 0


def test_models_json_records_the_reports(exported: tuple[Path, list[em.ModelReport]]) -> None:
    out, reports = exported
    data = json.loads((out / "models.json").read_text())
    assert [m["name"] for m in data["models"]] == list(em.MODEL_NAMES)
    for entry, report in zip(data["models"], reports, strict=True):
        assert entry["params"] == em.count_params(em.build_model(report.name, WIDTH, SEED)) > 0
        assert entry["stored_values"] >= entry["params"]
        assert entry["gflops"] == pytest.approx(2 * entry["macs"] / 1e9, abs=1e-3)
        assert entry["width"] == WIDTH
        assert entry["published"]["file_bytes"] > 100_000_000
    table = format_table(em.table_rows(reports), em.TABLE_COLUMNS)
    assert all(name in table for name in em.MODEL_NAMES)


@pytest.mark.parametrize(
    ("name", "stored_m", "gmacs"),
    [("inswapper", 138.56, 174.58), ("arcface", 43.60, 6.31), ("gfpgan", 85.07, 197.77)],
)
def test_full_width_architectures_match_the_real_models(name: str, stored_m: float, gmacs: float) -> None:
    """Built on the meta device (shapes only): stored values within 0.5% of the real file's bytes / 4;
    multiply-adds pinned (ArcFace's agree with the published 6.3 G)."""
    spec = em.SPECS[name]
    with torch.device("meta"):
        model = spec.build(1.0).eval()
        macs = em.count_macs(model, [torch.empty(s) for s in spec.inputs.values()])
    stored = em.count_stored(model, name) / 1e6
    assert stored == pytest.approx(spec.published.params_m, rel=5e-3)
    assert stored == pytest.approx(stored_m, rel=5e-3)
    assert macs / 1e9 == pytest.approx(gmacs, rel=1e-3)
    if spec.published.gflops is not None:
        assert macs / 1e9 == pytest.approx(spec.published.gflops, rel=0.02)


def test_count_macs_counts_convs_and_linears() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),  # 8 * 16 * 16 outputs x 27
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),  # 8 * 16 * 16 outputs x 9
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 16 * 16, 5),  # 5 outputs x 2048
    )
    assert em.count_macs(model, [torch.zeros(1, 3, 16, 16)]) == 2048 * 27 + 2048 * 9 + 5 * 2048


def test_micro_benchmark_runs_the_wrappers_and_skips_slow_cells(
    exported: tuple[Path, list[em.ModelReport]], tmp_path: Path
) -> None:
    run = micro.run_benchmarks(exported[0], batch_sizes=(1, 2), seconds=0.05, threads=1, assets=None)
    cells = {(c.model, c.batch): c for c in run.cells}
    assert set(cells) == {(m, b) for m in ("arcface", "inswapper", "gfpgan") for b in (1, 2)}
    for (_, batch), cell in cells.items():
        assert cell.status == "ok" and cell.path == "wrapper" and cell.provider == "CPU"
        assert cell.iterations >= 1 and cell.ms_median is not None and cell.ms_median > 0
        assert cell.items_per_s == pytest.approx(batch * 1e3 / cell.ms_median, rel=1e-2)
    assert any("real detectors skipped" in n for n in run.notes)

    slow = micro.run_benchmarks(
        exported[0], batch_sizes=(1, 4), seconds=0.01, max_call_seconds=1e-6, threads=1, assets=None
    )
    for cell in slow.cells:
        if cell.batch == 1:
            assert cell.status == "ok"
        else:
            assert cell.status == "skipped" and cell.ms_median is None
            assert "--max-call-seconds" in cell.note

    path = write_json(tmp_path / "micro.json", run.to_json())
    data = json.loads(path.read_text())
    assert data["environment"]["onnxruntime_providers"] == environment()["onnxruntime_providers"]
    assert len(data["results"]) == 6 and data["settings"]["batch_sizes"] == [1, 2]


@pytest.mark.assets
def test_micro_benchmark_times_the_real_detectors(assets: Path, tmp_path: Path) -> None:
    run = micro.run_benchmarks(tmp_path, batch_sizes=(1, 2), seconds=0.05, threads=1, assets=assets)
    cells = {(c.model, c.path, c.batch): c for c in run.cells}
    assert set(cells) == {
        ("yunet", "wrapper", 1),
        ("scrfd", "wrapper", 1),
        ("scrfd", "session", 1),
        ("scrfd", "session", 2),
    }
    assert all(c.status == "ok" for c in run.cells)
    for key in (("yunet", "wrapper", 1), ("scrfd", "wrapper", 1)):
        found = re.match(r"(\d+) faces", cells[key].note)
        assert found is not None and int(found.group(1)) >= 4, cells[key].note
    assert any("bench_arcface.onnx missing" in n for n in run.notes)
    assert any("bench_gfpgan.onnx missing" in n for n in run.notes)


def test_format_table_aligns_and_blanks_missing_cells() -> None:
    table = format_table(
        [{"a": "x", "n": 1234, "f": 0.5}, {"a": "longer", "f": None}],
        [("a", "name"), ("n", "count"), ("f", "value", ".3f")],
    )
    assert table.splitlines() == [
        "name    count  value",
        "------  -----  -----",
        "x       1,234  0.500",
        "longer",
    ]
