"""The Ray Data batch job end to end on the real test videos: timing, audio, frame order, the swapped face
region, Parquet, folders of frames, the command line and typed errors."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from pipeline.engine import crops_for

from pipeline.errors import InvalidInputError, InvalidOptionError, NoFaceError, UnsupportedMediaError
from pipeline.geometry import box_mask, face_region_mask
from pipeline.options import SwapOptions
from pipeline.profiles import PipelineConfig, build_pipeline
from pipeline.provenance import read_video_label
from pipeline.testmodels import CONSTANT_SWAP_RGB
from pipeline.video import probe_video, read_frames
from serve_app import batch
from serve_app.batch import (
    BatchJobConfig,
    DecodeFrames,
    FrameChunk,
    FrameProgress,
    FrameSource,
    decode_video_chunk,
    main,
    plan_video_pieces,
    resolve_uri,
    run_batch_job,
)

REPO = Path(__file__).resolve().parents[1]
AAC = "astronaut_pan_zoom_640x480_25fps_h264_aac.mp4"
SILENT = "astronaut_pan_zoom_640x480_25fps_h264.mp4"
SOURCE = "codait_luciano_cc0.png"
FOLDER_FRAMES = 12
BLANK_FRAME = 5
"""Index of the flat grey (faceless) frame in the folder-of-frames target."""
CONSTANT_BGR = np.array([round(c * 255) for c in reversed(CONSTANT_SWAP_RGB)])
"""What ``inswapper_constant`` paints, as BGR uint8 values."""

pytestmark = [pytest.mark.assets]


def _video(assets: Path, name: str) -> Path:
    return assets / "video" / name


def _audio_samples(path: Path | str) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def _mean_abs(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32))[where].mean())


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs and one logical GPU for this module (another module's Ray is shut down)."""
    if ray.is_initialized():
        ray.shutdown()
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(assets: Path, test_models: dict[str, Path]) -> PipelineConfig:
    """Real YuNet detector + the constant test swapper: the swapped face region is a flat known colour."""
    return PipelineConfig(
        overrides={
            "detector": str(assets / "models" / "face_detection_yunet_2026may.onnx"),
            "embedder": str(test_models["arcface"]),
            "swapper": str(test_models["inswapper_constant"]),
        },
        use_shared_assets=False,
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
    one GPU (num_gpus=0.5, so num_cpus=0), batches of 4."""
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
        preset="veryfast",
        write_parquet=True,
    )
    result = run_batch_job(config, progress=lambda done, total: calls.append((done, total)))
    return result, out, calls


@pytest.fixture(scope="module")
def face_regions(assets: Path, models: PipelineConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per source frame of the audio video: (pixels paste-back may touch, pixels fully inside the mask),
    from an in-process detection with the job's models."""
    pipeline = build_pipeline(models)
    options = SwapOptions()
    mask = box_mask(pipeline.swapper.crop_size, options.face_mask_blur, options.face_mask_padding)
    regions = []
    for frame in read_frames(_video(assets, AAC)):
        faces = pipeline.target_faces(frame.image, options)
        _, affines = crops_for(frame.image, faces, pipeline.swapper.template, pipeline.swapper.crop_size)
        region = face_region_mask(frame.image.shape, affines[0], mask)
        regions.append((region > 0, region >= 0.999))
    return regions


# -- decoding plan (no Ray) -------------------------------------------------------------------------------
def _pieces(info_and_pieces, target: int = 0) -> list[dict[str, np.ndarray]]:
    """Piece rows as the decode stage gets them (one per task)."""
    _, pieces = info_and_pieces
    return [
        {
            "target": np.array([target]),
            "start": np.array([p.start]),
            "count": np.array([p.count]),
            "start_pts": np.array([-1 if p.start_pts is None else p.start_pts]),
        }
        for p in pieces
    ]


def _decoded(decoder: DecodeFrames, rows: list[dict[str, np.ndarray]]) -> list[tuple[int, int, np.ndarray]]:
    return [
        (int(index), int(pts), image)
        for row in rows
        for index, pts, image in zip(*(decoder(row)[k] for k in ("index", "pts", "image")), strict=True)
    ]


def test_decode_stage_gives_read_frames_exactly_in_order_and_after_seeks(assets):
    path = _video(assets, AAC)
    reference = list(read_frames(path))
    planned = plan_video_pieces(path, piece_frames=8)
    assert [(p.start, p.count) for p in planned[1]] == [(s, min(8, 75 - s)) for s in range(0, 75, 8)]
    assert [p.start_pts for p in planned[1]] == [reference[s].pts for s in range(0, 75, 8)]
    source = FrameSource("video", str(path), (), (640, 480), Fraction(25))
    rows = _pieces(planned)
    in_order = _decoded(DecodeFrames([source]), rows)
    assert [(i, pts) for i, pts, _ in in_order] == [(f.index, f.pts) for f in reference]
    assert all(np.array_equal(image, f.image) for (_, _, image), f in zip(in_order, reference, strict=True))
    # pieces out of order: each jump is a keyframe seek (keyframes every 25 frames, B-frames between)
    shuffled = [rows[i] for i in (5, 1, 9, 0, 4)]
    for i, pts, image in _decoded(DecodeFrames([source]), shuffled):
        assert pts == reference[i].pts and np.array_equal(image, reference[i].image)
    past_the_end = {**rows[-1], "count": np.array([8])}
    with pytest.raises(InvalidInputError, match="only 3 of the 8 frames from frame 72"):
        DecodeFrames([source])(past_the_end)


def test_decode_chunk_with_and_without_pts(assets):
    path = _video(assets, AAC)
    reference = list(read_frames(path))
    for chunk in (FrameChunk(30, 7, reference[30].pts), FrameChunk(30, 7, None)):
        frames = list(decode_video_chunk(path, chunk))
        assert [f.index for f in frames] == list(range(30, 37))
        assert all(f.pts == reference[f.index].pts for f in frames)
        assert all(np.array_equal(f.image, reference[f.index].image) for f in frames)
    with pytest.raises(InvalidInputError, match="only 5 of 10 frames"):
        list(decode_video_chunk(path, FrameChunk(70, 10, reference[70].pts)))


def test_resolve_uri_local_paths_and_file_uris(tmp_path):
    fs, path = resolve_uri(str(tmp_path / "a.mp4"))
    assert type(fs).__name__ == "LocalFileSystem" and path == str(tmp_path / "a.mp4")
    fs, path = resolve_uri(f"file://{tmp_path}/b.mp4")
    assert type(fs).__name__ == "LocalFileSystem" and path == f"{tmp_path}/b.mp4"
    assert resolve_uri("relative/c.mp4")[1] == os.path.abspath("relative/c.mp4")
    with pytest.raises(InvalidInputError):
        resolve_uri("nosuchscheme://bucket/x.mp4")


def test_config_is_validated(tmp_path):
    base = {"source_image": "s.png", "targets": ("a.mp4",), "output": str(tmp_path)}
    assert BatchJobConfig(**{**base, "targets": "a.mp4"}).targets == ("a.mp4",)
    assert BatchJobConfig(**base, num_gpus=0.25).actor_resources == {"num_cpus": 0.0, "num_gpus": 0.25}
    assert BatchJobConfig(**base).actor_resources == {"num_cpus": 1.0, "num_gpus": 0.0}
    bad = [
        {"targets": ()},
        {"targets": ("a.mp4", "a.mp4")},
        {"targets": ("a.mp4", "b.mp4"), "output": "out.mp4"},
        {"batch_size": 0},
        {"num_actors": 0},
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


def test_progress_bar_shows_frames_percent_and_fps():
    stream = io.StringIO()
    clock = iter([0.0, 2.0, 2.1, 4.0])
    bar = FrameProgress(stream, min_interval=0.5, width=10, clock=lambda: next(clock))
    bar(0, 60)
    bar(20, 60)
    bar(21, 60)  # within min_interval: not drawn
    bar(60, 60)
    lines = stream.getvalue().split("\r")[1:]
    assert len(lines) == 3
    assert "20/60" in lines[1] and "33.3%" in lines[1] and "10.0 fps" in lines[1] and "ETA 4s" in lines[1]
    assert lines[2] == "frames [##########] 60/60 100.0% 15.0 fps\n"


# -- bad inputs are typed errors before any model runs ---------------------------------------------------
def test_bad_targets_are_typed_errors(assets, tmp_path):
    not_video = tmp_path / "bad.mp4"
    not_video.write_bytes(b"this is a text file, not a video" * 20)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(_video(assets, AAC).read_bytes()[:50_000])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    source = str(assets / "images" / SOURCE)
    cases = [
        (not_video, UnsupportedMediaError),
        (truncated, InvalidInputError),
        (tmp_path / "missing.mp4", InvalidInputError),
        (empty_dir, InvalidInputError),
    ]
    for target, error in cases:
        config = BatchJobConfig(source_image=source, targets=(str(target),), output=str(tmp_path / "out"))
        with pytest.raises(error):
            run_batch_job(config, progress=lambda done, total: None)
    assert not (tmp_path / "out").exists()
    video = tmp_path / "clip.mp4"
    video.write_bytes(_video(assets, AAC).read_bytes())
    in_place = BatchJobConfig(source_image=source, targets=(str(video),), output=f"file://{tmp_path}")
    with pytest.raises(InvalidOptionError, match="overwrite its own input"):
        run_batch_job(in_place, progress=lambda done, total: None)


# -- the job ------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_job_counts_frames_faces_and_progress(job):
    result, _, calls = job
    assert [t.frames for t in result.targets] == [75, FOLDER_FRAMES]
    assert result.frames_without_face == 1  # the grey frame of the folder
    assert result.faces_swapped == 75 + FOLDER_FRAMES - 1
    assert result.components["swapper"] == "test_inswapper_constant"
    assert calls[0] == (0, 87) and calls[-1] == (87, 87)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:], strict=False))


@pytest.mark.ray
def test_output_has_the_source_frame_count_fps_duration_and_label(job, assets):
    result, out, _ = job
    video = out / AAC
    assert result.targets[0].output == f"file://{out}/{AAC}"
    source, output = probe_video(_video(assets, AAC)), probe_video(video)
    assert output.frame_count == source.frame_count == 75
    assert output.fps == source.fps == Fraction(25)
    assert output.duration_s == pytest.approx(source.duration_s, abs=0.04)
    assert output.has_audio and output.audio_codec == source.audio_codec
    label = read_video_label(video)
    assert label is not None and label.models["swapper"] == "test_inswapper_constant"


@pytest.mark.ray
def test_audio_samples_survive_unchanged(job, assets):
    _, out, _ = job
    source, output = _audio_samples(_video(assets, AAC)), _audio_samples(out / AAC)
    assert source.shape == output.shape and source.size > 48_000
    assert np.array_equal(source, output)


def _assert_swapped_in_order(output, source, regions) -> None:
    """Each output frame matches its own source frame outside the face (and not its neighbours: order),
    and holds the constant swapper's colour inside it."""
    margin = np.ones((33, 33), np.uint8)  # H.264 blocks around the pasted face also change a little
    for i, (touched, core) in enumerate(regions):
        outside = ~cv2.dilate(touched.astype(np.uint8), margin).astype(bool)
        same = _mean_abs(output[i], source[i], outside)
        neighbours = [
            _mean_abs(output[i], source[j], outside) for j in (i - 1, i + 1) if 0 <= j < len(source)
        ]
        assert same < 2.5, f"frame {i}: outside the face differs from its source frame by {same:.2f}"
        assert same < 0.7 * min(neighbours), f"frame {i} looks like a neighbour: {same:.2f} vs {neighbours}"
        assert core.sum() > 5000
        assert _mean_abs(output[i], source[i], core) > 40, f"frame {i}: the face was not swapped"
        painted = np.abs(output[i][core].astype(np.int32) - CONSTANT_BGR).mean()
        assert painted < 6, f"frame {i}: face region is not the swapper's colour ({painted:.1f})"


@pytest.mark.ray
def test_frames_in_order_face_region_swapped_rest_unchanged(job, assets, face_regions):
    _, out, _ = job
    source = [f.image for f in read_frames(_video(assets, AAC))]
    output = [f.image for f in read_frames(out / AAC)]
    assert len(output) == len(source) == len(face_regions) == 75
    _assert_swapped_in_order(output, source, face_regions)


@pytest.mark.ray
def test_parquet_has_one_row_per_frame_with_boxes(job, assets, models):
    _, out, _ = job
    table = pq.read_table(out / AAC.replace(".mp4", ".parquet"))
    assert table.num_rows == 75
    assert table.column_names == ["frame", "pts", "time_s", "faces", "boxes", "scores"]
    source = list(read_frames(_video(assets, AAC)))
    assert table["frame"].to_pylist() == list(range(75))
    assert table["pts"].to_pylist() == [f.pts for f in source]
    assert table["time_s"].to_pylist() == pytest.approx([f.time_s for f in source])
    assert set(table["faces"].to_pylist()) == {1}
    detector = build_pipeline(models).detector
    for i in (0, 37, 74):
        (box,) = table["boxes"][i].as_py()
        expected = max(detector.detect(source[i].image), key=lambda f: f.area).bbox
        assert np.allclose(box, expected, atol=0.01)
        assert 0.5 < table["scores"][i].as_py()[0] <= 1.0


@pytest.mark.ray
def test_folder_of_frames_in_name_order_faceless_frame_passes_through(job, frames_dir, face_regions):
    result, out, _ = job
    video = out / "clip_frames.mp4"
    assert result.targets[1].output == f"file://{video}"
    info = probe_video(video)
    assert (info.frame_count, info.fps, info.has_audio) == (FOLDER_FRAMES, Fraction(25), False)
    output = [f.image for f in read_frames(video)]
    inputs = [cv2.imread(str(p)) for p in sorted(frames_dir.glob("*.png"))]
    blank = output[BLANK_FRAME].reshape(-1, 3).astype(np.int32)
    assert np.ptp(blank, axis=0).max() <= 2, "something was pasted into the faceless frame"
    assert np.abs(blank.mean(axis=0) - 127).max() < 5
    # the folder holds the first frames of the silent video, whose picture is the audio video's
    faced = [i for i in range(FOLDER_FRAMES) if i != BLANK_FRAME]
    _assert_swapped_in_order(
        [output[i] for i in faced], [inputs[i] for i in faced], [face_regions[i] for i in faced]
    )
    assert pq.read_table(out / "clip_frames.parquet")["faces"].to_pylist() == [
        0 if i == BLANK_FRAME else 1 for i in range(FOLDER_FRAMES)
    ]


# -- failures in Ray workers come back typed --------------------------------------------------------------
@pytest.mark.ray
def test_no_face_in_the_source_image_fails_the_job(ray_local, assets, models, tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((240, 320, 3), 127, np.uint8))
    config = BatchJobConfig(
        source_image=str(grey), targets=(str(_video(assets, SILENT)),), output=str(tmp_path), pipeline=models
    )
    with pytest.raises(NoFaceError, match="source"):
        run_batch_job(config, progress=lambda done, total: None)
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
    with pytest.raises(InvalidInputError, match="100x100 frame in a 400x400 frame sequence"):
        run_batch_job(config, progress=lambda done, total: None)
    assert not (tmp_path / "out" / "mixed.mp4").exists()


@pytest.mark.ray
def test_command_line_on_the_cpu_path_with_staged_inputs_and_outputs(
    ray_local, assets, frames_dir, tmp_path, monkeypatch, capsys
):
    """``main`` joins the running Ray; one CPU actor; the auto profile (YuNet + classical swapper). Every
    filesystem is treated as remote here, so inputs are staged to a temporary folder and outputs uploaded.
    Two targets of different frame sizes with batches of 5: one batch holds frames of both."""
    small = tmp_path / "small"
    small.mkdir()
    for path in sorted(frames_dir.glob("*.png"))[:5]:
        cv2.imwrite(str(small / path.name), cv2.resize(cv2.imread(str(path)), (320, 240)))
    monkeypatch.setattr(batch, "_is_local", lambda fs: False)
    output = tmp_path / "result"
    code = main(
        [
            str(assets / "images" / SOURCE),
            str(frames_dir),
            str(small),
            "-o",
            str(output),
            "--profile",
            "auto",
            "--models-dir",
            str(tmp_path / "no_models"),
            "--batch-size",
            "5",
            "--parquet",
            "--no-progress",
            "--preset",
            "ultrafast",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == FOLDER_FRAMES + 5 and summary["frames_without_face"] == 1
    assert summary["components"]["swapper"] == "classical"
    assert [t["output"] for t in summary["targets"]] == [
        str(output / "clip_frames.mp4"),
        str(output / "small.mp4"),
    ]
    assert [t["size"] for t in summary["targets"]] == [[640, 480], [320, 240]]
    big, little = probe_video(output / "clip_frames.mp4"), probe_video(output / "small.mp4")
    assert (big.frame_count, big.width, little.frame_count, little.width) == (FOLDER_FRAMES, 640, 5, 320)
    assert pq.read_table(output / "small.parquet")["frame"].to_pylist() == list(range(5))
    assert main([str(assets / "images" / SOURCE), str(tmp_path / "missing"), "-o", str(tmp_path)]) == 2
