"""The Ray Data batch job: its frames equal the in-process orchestration's with the same face plan
(losslessly, through the Parquet PNG frames), in order, with the audio, the provenance label, the sidecar of
tracks, Parquet and pyarrow.fs paths; typed errors from the driver and from the Ray workers; the decode
stage, the sink and the command line on their own."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InvalidInputError, InvalidOptionError, NoFaceError, UnsupportedMediaError
from pipeline.imageio import read_image_file
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import ModelFactory, PipelineConfig, build_models
from pipeline.provenance import read_video_label
from pipeline.tracking import read_sidecar
from pipeline.video import (
    FrameChunk,
    VideoFrame,
    iter_frame_batches,
    plan_chunks,
    probe_video,
    read_frame_files,
    read_frames,
)
from pipeline.video_faces import local_detect, plan_video_faces
from serve_app.batch import BatchJobConfig, add_batch_arguments, main, run_batch_job
from serve_app.batch import storage as batch_storage
from serve_app.batch.cli import build_parser, config_from_args
from serve_app.batch.decode import DecodeFrames, FrameSource, piece_rows
from serve_app.batch.plan import face_limit, planner_pipeline
from serve_app.batch.sink import write_outputs
from serve_app.batch.storage import resolve_uri
from serve_app.batch.targets import plan_targets

REPO = Path(__file__).resolve().parents[1]
AAC = "astronaut_pan_zoom_640x480_25fps_h264_aac.mp4"
SILENT = "astronaut_pan_zoom_640x480_25fps_h264.mp4"
SOURCE = "codait_luciano_cc0.png"
FOLDER_FRAMES = 12
BLANK_FRAME = FOLDER_FRAMES - 1
"""Index of the flat grey (faceless) frame in the folder-of-frames target: the last, as a miss inside a
track would be filled by the tracker's interpolation."""

pytestmark = [pytest.mark.assets]


def _video(assets: Path, name: str) -> Path:
    return assets / "video" / name


def _audio_samples(path: Path | str) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def _png_frames(parquet: Path) -> list[np.ndarray]:
    table = pq.read_table(parquet, columns=["image_png"])
    return [
        cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) for png in table["image_png"].to_pylist()
    ]


def _ignore_progress(done: int, total: int) -> None:
    """A progress callback that draws nothing."""


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs and one logical GPU for this module (another module's Ray is shut down)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(assets: Path, test_models: dict[str, Path]) -> PipelineConfig:
    """Real YuNet detector + the test ArcFace and the constant test swapper."""
    return PipelineConfig(
        overrides={
            "detector": str(assets / "models" / "face_detection_yunet_2026may.onnx"),
            "embedder": str(test_models["arcface"]),
            "swapper": str(test_models["inswapper_constant"]),
        },
        enhance=False,
    )


@pytest.fixture(scope="module")
def frames_dir(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first frames of the silent video as PNG files, one replaced by a flat grey frame (no face),
    plus a file that is not a frame."""
    folder = tmp_path_factory.mktemp("frames") / "clip_frames"
    folder.mkdir()
    for frame in read_frames(_video(assets, SILENT)):
        if frame.index == FOLDER_FRAMES:
            break
        image = np.full_like(frame.image, 127) if frame.index == BLANK_FRAME else frame.image
        cv2.imwrite(str(folder / f"frame_{frame.index:04d}.png"), image)
    (folder / "notes.txt").write_text("not a frame")
    return folder


@pytest.fixture(scope="module")
def job(ray_local, assets: Path, models: PipelineConfig, frames_dir: Path, tmp_path_factory):
    """One job over a video (file:// URI, with audio) and a folder of frames: two swap actors sharing the
    one logical GPU (num_gpus=0.5, so no CPU each), batches of 4, Parquet with the PNG frames."""
    out = tmp_path_factory.mktemp("job_out")
    calls: list[tuple[int, int]] = []
    config = BatchJobConfig(
        source_image=f"file://{assets / 'images' / SOURCE}",
        targets=(f"file://{_video(assets, AAC)}", str(frames_dir)),
        output=f"file://{out}",
        pipeline=models,
        batch_size=4,
        num_actors=2,
        num_gpus=0.5,
        crf=12,
        preset="ultrafast",
        write_parquet=True,
        parquet_images=True,
    )
    result = run_batch_job(config, progress=lambda done, total: calls.append((done, total)))
    return config, result, out, calls


def _in_process(config: BatchJobConfig, frames: list[VideoFrame], assets: Path) -> list[np.ndarray]:
    """The same frames through the one orchestration with in-process ports, in one process, with the face
    plan the job's planner makes (same models, same settings)."""
    orchestrator = SwapOrchestrator(build_models(config.actor_pipeline).ports())
    options = config.options
    identity = asyncio.run(
        orchestrator.source_identity(read_image_file(str(assets / "images" / SOURCE)), options)
    )
    detector = ModelFactory(planner_pipeline(config.pipeline)).detector()
    plan = plan_video_faces(
        frames, local_detect(detector, options.detector_score), options, max_faces=face_limit(options)
    )
    out: list[np.ndarray] = []
    for batch in iter_frame_batches(frames, config.batch_size):
        faces = plan.faces(batch[0].index, batch[-1].index + 1)
        images = [f.image for f in batch]
        results = asyncio.run(orchestrator.swap_frames(images, identity, options, faces=faces, select=False))
        out += [r.image for r in results]
    return out


# -- the decode stage, the sink and the plan (no Ray) ------------------------------------------------------
def _decoded(decoder: DecodeFrames, rows: list[dict[str, int]]) -> list[tuple[int, int, int, np.ndarray]]:
    """(target, index, pts, image) of every frame the decode stage gives for ``rows``, one call per row."""
    out = []
    for row in rows:
        batch = decoder({k: np.array([v]) for k, v in row.items()})
        keys = ("target", "index", "pts", "image")
        out += [
            (int(t), int(i), int(p), image) for t, i, p, image in zip(*(batch[k] for k in keys), strict=True)
        ]
    return out


def test_decode_stage_gives_every_frame_in_order_and_seeks_when_pieces_jump(assets, frames_dir):
    video = _video(assets, AAC)
    reference = list(read_frames(video))
    files = tuple(str(p) for p in sorted(frames_dir.glob("*.png")))
    sources = [FrameSource("video", str(video)), FrameSource("frames", str(frames_dir), files, Fraction(10))]
    rows = piece_rows([(0, c) for c in plan_chunks(video, 8)] + [(1, FrameChunk(s, 4)) for s in (0, 4, 8)])
    frames = _decoded(DecodeFrames(sources), rows)
    assert [(t, i) for t, i, _, _ in frames] == [(0, i) for i in range(75)] + [(1, i) for i in range(12)]
    assert [p for t, _, p, _ in frames if t == 0] == [f.pts for f in reference]
    assert all(np.array_equal(image, reference[i].image) for t, i, _, image in frames if t == 0)
    assert all(np.array_equal(image, cv2.imread(files[i])) for t, i, _, image in frames if t == 1)
    # pieces out of order: each jump is a keyframe seek (keyframes every 25 frames, B-frames between)
    shuffled = [rows[i] for i in (5, 1, 9, 0, 4)]
    for _, i, pts, image in _decoded(DecodeFrames(sources), shuffled):
        assert pts == reference[i].pts and np.array_equal(image, reference[i].image)
    with pytest.raises(InvalidInputError, match="only 3 of the 8 frames from frame 72"):
        _decoded(DecodeFrames(sources), [{**rows[9], "count": 8}])


def _row(frame: int) -> dict[str, object]:
    landmarks = [10.0, 12.0, 20.0, 12.0, 15.0, 20.0, 11.0, 30.0, 19.0, 30.0]
    box = [1.0, 2.0, 30.0, 40.0]
    return {
        "frame": frame,
        "pts": frame * 512,
        "track_id": 3,
        "box": box,
        "landmarks": landmarks,
        "score": 0.9,
        "source": "tracked",
    }


def _swapped_batch(target: int, start: int, n: int, faces: int = 1) -> dict[str, np.ndarray]:
    images = np.stack([np.full((48, 64, 3), (start + i) * 40, np.uint8) for i in range(n)])
    return {
        "target": np.full(n, target, np.int32),
        "index": np.arange(start, start + n, dtype=np.int64),
        "pts": np.arange(start, start + n, dtype=np.int64) * 512,
        "time_s": np.arange(start, start + n) / 25.0,
        "image": images,
        "faces": np.full(n, faces, np.int32),
        "boxes": np.tile(np.array([1, 2, 30, 40] * faces, np.float32), (n, 1)),
        "scores": np.full((n, faces), 0.9, np.float32),
        "keyframe": np.arange(start, start + n) % 2 == 0,
        "tracks": np.array([json.dumps([_row(start + i)] * faces) for i in range(n)]),
        "components": np.array([json.dumps({"profile": "custom", "swapper": "x", "enhancer": None})] * n),
    }


def test_sink_writes_in_order_reports_progress_and_deletes_a_failed_target(tmp_path):
    source = tmp_path / "a.mp4"
    with av.open(str(source), "w") as container:  # a target to plan: 64x48, 6 frames
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    config = BatchJobConfig(source_image="s.png", targets=(str(source),), output=str(tmp_path / "out"), crf=0)
    plans = plan_targets(config, tmp_path / "staging")
    calls: list[tuple[int, int]] = []
    written = write_outputs(
        [_swapped_batch(0, 0, 4), _swapped_batch(0, 4, 2, faces=0)],
        plans,
        config,
        tmp_path,
        lambda *c: calls.append(c),
    )
    assert calls == [(0, 6), (4, 6), (6, 6)]  # as each batch arrives, then at the end
    (result,) = written.targets
    assert (result.frames, result.faces_swapped, result.frames_without_face) == (6, 4, 2)
    assert result.detector_calls == 3 and result.tracks == str(tmp_path / "out" / "a.tracks.jsonl")
    assert read_sidecar(tmp_path / "out" / "a.tracks.jsonl") == [_row(i) for i in range(4)]
    assert written.components["swapper"] == "x"
    out = tmp_path / "out" / "a.mp4"
    levels = [int(f.image[0, 0, 0]) for f in read_frames(out)]
    assert np.abs(np.array(levels) - [0, 40, 80, 120, 160, 200]).max() <= 8  # in order (YUV rounding)
    assert read_video_label(out).models == {"profile": "custom", "swapper": "x"}
    with pytest.raises(RuntimeError, match="out of order"):
        write_outputs(
            [_swapped_batch(0, 0, 2), _swapped_batch(0, 3, 2)], plans, config, tmp_path, _ignore_progress
        )
    assert not out.exists()


def test_plan_resolves_outputs_and_refuses_collisions(assets, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(_video(assets, AAC).read_bytes())
    config = BatchJobConfig(source_image="s.png", targets=(f"file://{video}",), output=str(tmp_path / "o"))
    (plan,) = plan_targets(config, tmp_path / "staging")
    assert plan.output == str(tmp_path / "o" / "clip.mp4") and plan.has_audio and plan.frames == 75
    assert plan.tracks == str(tmp_path / "o" / "clip.tracks.jsonl")
    in_place = BatchJobConfig(source_image="s.png", targets=(str(video),), output=f"file://{tmp_path}")
    with pytest.raises(InvalidOptionError, match="overwrite its own input"):
        plan_targets(in_place, tmp_path / "staging")


def test_resolve_uri_local_paths_and_file_uris(tmp_path):
    fs, path = resolve_uri(str(tmp_path / "a.mp4"))
    assert type(fs).__name__ == "LocalFileSystem" and path == str(tmp_path / "a.mp4")
    fs, path = resolve_uri(f"file://{tmp_path}/b.mp4")
    assert type(fs).__name__ == "LocalFileSystem" and path == f"{tmp_path}/b.mp4"
    assert resolve_uri("relative/c.mp4")[1] == os.path.abspath("relative/c.mp4")
    with pytest.raises(InvalidInputError):
        resolve_uri("nosuchscheme://bucket/x.mp4")


def test_config_is_validated_and_sizes_the_actor_thread_pools(tmp_path):
    base = {"source_image": "s.png", "targets": ("a.mp4",), "output": str(tmp_path)}
    assert BatchJobConfig(**{**base, "targets": "a.mp4"}).targets == ("a.mp4",)
    assert BatchJobConfig(**base, num_gpus=0.25).actor_resources == {"num_cpus": 0.0, "num_gpus": 0.25}
    assert BatchJobConfig(**base).actor_resources == {"num_cpus": 1.0, "num_gpus": 0.0}
    session = BatchJobConfig(**base, cpus_per_actor=1.5).actor_pipeline.session
    assert (session.intra_op_threads, session.spin) == (2, False)
    assert BatchJobConfig(**base, intra_op_threads=3).actor_pipeline.session.intra_op_threads == 3
    assert BatchJobConfig(**base, options=SwapOptions().with_enhance(True)).actor_pipeline.enhance
    bad = [
        {"targets": ()},
        {"targets": ("a.mp4", "a.mp4")},
        {"targets": ("a.mp4", "b.mp4"), "output": "out.mp4"},
        {"batch_size": 0},
        {"num_actors": 0},
        {"intra_op_threads": -1},
        {"num_gpus": -1.0},
        {"num_gpus": 1.5},
        {"crf": 60},
        {"preset": "warp"},
        {"parquet_images": True},
        {"options": SwapOptions(face_selector_mode="reference")},
    ]
    for change in bad:
        with pytest.raises(InvalidOptionError):
            BatchJobConfig(**{**base, **change})


def test_bad_inputs_are_typed_errors_before_any_model_runs(assets, tmp_path):
    not_video = tmp_path / "bad.mp4"
    not_video.write_bytes(b"this is a text file, not a video" * 20)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(_video(assets, AAC).read_bytes()[:50_000])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    source = str(assets / "images" / SOURCE)
    cases = [
        (source, not_video, UnsupportedMediaError),
        (source, truncated, InvalidInputError),
        (source, tmp_path / "missing.mp4", InvalidInputError),
        (source, empty_dir, InvalidInputError),
        (str(not_video), _video(assets, AAC), UnsupportedMediaError),  # the source is no image
    ]
    for source_image, target, error in cases:
        config = BatchJobConfig(
            source_image=source_image, targets=(str(target),), output=str(tmp_path / "out")
        )
        with pytest.raises(error):
            run_batch_job(config)
    assert not (tmp_path / "out").exists()


# -- the command line (no Ray) -----------------------------------------------------------------------------
def test_help_works_options_go_anywhere_and_the_usage_names_the_program(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["-h"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m serve_app.batch") and "--batch-size" in usage
    assert "--face-selector-mode" in usage and "exit codes" in usage
    args = build_parser().parse_args(
        ["-o", "out", "--actors", "2", "-v", "face.png", "a.mp4", "b.mp4", "--enhance"]
    )
    assert (args.source, args.targets, args.output, args.actors, args.verbose) == (
        "face.png",
        ["a.mp4", "b.mp4"],
        "out",
        2,
        True,
    )
    config = config_from_args(args)
    assert config.num_actors == 2 and config.options.enhance and config.targets == ("a.mp4", "b.mp4")
    # embedded as a subcommand, the way faceswap-serve does
    parser = argparse.ArgumentParser(prog="faceswap-serve")
    batch = parser.add_subparsers(dest="command").add_parser("batch")
    add_batch_arguments(batch)
    with pytest.raises(SystemExit):
        parser.parse_args(["batch", "--help"])
    assert capsys.readouterr().out.startswith("usage: faceswap-serve batch")
    assert parser.parse_args(["batch", "--crf", "20", "f.png", "v.mp4", "-o", "o"]).crf == 20


def test_bad_options_exit_2_without_starting_ray(capsys):
    assert main(["f.png", "v.mp4", "-o", "o", "--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err


# -- the job on Ray ------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_job_frames_equal_the_in_process_orchestration_in_order(job, assets):
    config, result, out, _ = job
    decoded = list(read_frames(_video(assets, AAC)))
    frames = [f.image for f in decoded]
    expected = _in_process(config, decoded, assets)
    table = pq.read_table(out / AAC.replace(".mp4", ".parquet"))
    assert table["frame"].to_pylist() == list(range(75))
    assert table["pts"].to_pylist() == [f.pts for f in read_frames(_video(assets, AAC))]
    got = _png_frames(out / AAC.replace(".mp4", ".parquet"))
    assert len(got) == len(expected) == 75
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(a, b), f"frame {i} differs from the in-process orchestration"
    assert not np.array_equal(got[0], frames[0])  # and the face was swapped
    assert set(table["faces"].to_pylist()) == {1}
    assert result.targets[0].faces_swapped == 75


@pytest.mark.ray
def test_job_writes_the_sidecar_of_tracks_beside_each_output(job, assets):
    """Tracking is on by default: the real clip's one face is one track, in every frame, found by the
    detector on at most 0.35 of the frames; the sidecar and the Parquet rows say the same."""
    _, result, out, _ = job
    clip = result.targets[0]
    assert clip.tracks == f"file://{out / AAC.replace('.mp4', '.tracks.jsonl')}"
    rows = read_sidecar(out / AAC.replace(".mp4", ".tracks.jsonl"))
    assert [r["frame"] for r in rows] == list(range(75))  # one row per frame per face
    assert [r["pts"] for r in rows] == [f.pts for f in read_frames(_video(assets, AAC))]
    assert {r["track_id"] for r in rows} == {0}
    assert {r["source"] for r in rows} == {"detected", "tracked"}
    assert sum(r["source"] == "detected" for r in rows) <= clip.detector_calls <= 0.35 * 75
    table = pq.read_table(out / AAC.replace(".mp4", ".parquet")).to_pylist()
    assert sum(r["keyframe"] for r in table) == clip.detector_calls
    for row, frame in zip(rows, table, strict=True):
        assert frame["track_ids"] == [row["track_id"]] and frame["sources"] == [row["source"]]
        assert np.allclose(frame["boxes"][0], row["box"], atol=0.01)
        assert np.allclose(frame["landmarks"][0], row["landmarks"], atol=0.01)
    folder = read_sidecar(out / "clip_frames.tracks.jsonl")
    assert [r["frame"] for r in folder] == [i for i in range(FOLDER_FRAMES) if i != BLANK_FRAME]


@pytest.mark.ray
def test_job_counts_progress_label_and_timing(job, assets):
    _, result, out, calls = job
    assert [t.frames for t in result.targets] == [75, FOLDER_FRAMES]
    assert result.frames_without_face == 1  # the grey frame of the folder
    assert result.components["swapper"] == "test_inswapper_constant"
    assert calls[0] == (0, 87) and calls[-1] == (87, 87)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:], strict=False))
    assert 0 < result.startup_s < result.elapsed_s
    video = out / AAC
    assert result.targets[0].output == f"file://{video}"
    source, output = probe_video(_video(assets, AAC)), probe_video(video)
    assert output.frame_count == source.frame_count == 75
    assert output.fps == source.fps == Fraction(25)
    assert output.duration_s == pytest.approx(source.duration_s, abs=0.04)
    label = read_video_label(video)
    assert label is not None and label.models["swapper"] == "test_inswapper_constant"


@pytest.mark.ray
def test_audio_samples_survive_unchanged(job, assets):
    _, _, out, _ = job
    source, output = _audio_samples(_video(assets, AAC)), _audio_samples(out / AAC)
    assert source.shape == output.shape and source.size > 48_000
    assert np.array_equal(source, output)


@pytest.mark.ray
def test_folder_of_frames_in_name_order_faceless_frame_unchanged(job, frames_dir, assets):
    config, result, out, _ = job
    assert result.targets[1].output == f"file://{out}/clip_frames.mp4"
    info = probe_video(out / "clip_frames.mp4")
    assert (info.frame_count, info.fps, info.has_audio) == (FOLDER_FRAMES, Fraction(25), False)
    files = sorted(str(p) for p in frames_dir.glob("*.png"))
    inputs = list(read_frame_files(files, Fraction(25)))
    got = _png_frames(out / "clip_frames.parquet")
    assert np.array_equal(got[BLANK_FRAME], inputs[BLANK_FRAME].image)
    expected = _in_process(config, inputs, assets)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert pq.read_table(out / "clip_frames.parquet")["faces"].to_pylist() == [
        0 if i == BLANK_FRAME else 1 for i in range(FOLDER_FRAMES)
    ]


@pytest.mark.ray
def test_no_face_in_the_source_fails_typed_from_the_swap_actor(ray_local, assets, models, tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((240, 320, 3), 127, np.uint8))
    config = BatchJobConfig(
        source_image=str(grey), targets=(str(_video(assets, SILENT)),), output=str(tmp_path), pipeline=models
    )
    with pytest.raises(NoFaceError, match="source"):
        run_batch_job(config)
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.ray
def test_a_frame_of_another_size_fails_typed_from_the_decode_stage(ray_local, assets, models, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.imread(str(assets / "images" / SOURCE)))
    cv2.imwrite(str(folder / "b.png"), np.zeros((100, 100, 3), np.uint8))
    config = BatchJobConfig(
        source_image=str(assets / "images" / SOURCE),
        targets=(str(folder),),
        output=str(tmp_path / "out"),
        pipeline=models,
        batch_size=1,
    )
    with pytest.raises(InvalidInputError, match="b.png is 100x100 in a 400x400 video"):
        run_batch_job(config)
    assert not (tmp_path / "out" / "mixed.mp4").exists()


@pytest.mark.ray
def test_command_line_joins_ray_and_stages_remote_inputs_and_outputs(
    ray_local, assets, frames_dir, tmp_path, monkeypatch, capsys
):
    """``main`` joins the running Ray; one CPU actor; the lite profile. Every filesystem is treated as
    remote, so inputs are staged to a temporary folder and outputs uploaded. Two targets of different
    frame sizes with batches of 5: one batch holds frames of both."""
    small = tmp_path / "small"
    small.mkdir()
    for path in sorted(frames_dir.glob("*.png"))[:5]:
        cv2.imwrite(str(small / path.name), cv2.resize(cv2.imread(str(path)), (320, 240)))
    monkeypatch.setattr(batch_storage, "is_local", lambda fs: False)
    output = tmp_path / "result"
    argv = [
        str(assets / "images" / SOURCE),
        str(frames_dir),
        str(small),
        "-o",
        str(output),
        "--profile",
        "lite",
    ]
    code = main([*argv, "--batch-size", "5", "--parquet", "--no-progress", "--preset", "ultrafast"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == FOLDER_FRAMES + 5 and summary["components"]["swapper"] == "mesh_classical"
    assert [t["output"] for t in summary["targets"]] == [
        str(output / "clip_frames.mp4"),
        str(output / "small.mp4"),
    ]
    assert [t["size"] for t in summary["targets"]] == [[640, 480], [320, 240]]
    big, little = probe_video(output / "clip_frames.mp4"), probe_video(output / "small.mp4")
    assert (big.frame_count, big.width, little.frame_count, little.width) == (FOLDER_FRAMES, 640, 5, 320)
    assert pq.read_table(output / "small.parquet")["frame"].to_pylist() == list(range(5))
    assert main([str(assets / "images" / SOURCE), str(tmp_path / "missing"), "-o", str(tmp_path)]) == 2


@pytest.mark.ray
def test_a_75_frame_run_prints_little_besides_the_progress_bar(assets, tmp_path):
    """``python -m serve_app.batch`` in a fresh process (its own local Ray): on stderr, a line while Ray
    starts, one while the models load, the bar (redrawn with carriage returns) and the summary; on stdout,
    the JSON summary. No Ray INFO lines, warnings or C++ log lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "serve_app.batch",
        str(assets / "images" / SOURCE),
        str(_video(assets, SILENT)),
    ]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "out.mp4"), "--profile", "lite", "--preset", "ultrafast"],
        capture_output=True,  # bytes: text mode would turn the bar's carriage returns into newlines
        env=env,
        cwd=REPO,
        timeout=300,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    lines = [line.split("\r")[-1] for line in stderr.split("\n") if line.strip()]
    assert len(lines) <= 4, stderr
    assert lines[0].startswith("starting Ray") and lines[1].startswith("loading the models")
    assert lines[2].startswith("frames: 100%") and "75/75" in lines[2]
    assert lines[3].startswith("75 frames") and "frames/s" in lines[3]
    assert json.loads(done.stdout)["frames"] == 75
    assert done.stdout.count(b"\n") == 1
