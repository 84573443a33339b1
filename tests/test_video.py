import io
import itertools
import os
import struct
import weakref
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.errors import (
    InvalidInputError,
    InvalidOptionError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from pipeline.video import (
    VideoFrame,
    VideoLimits,
    VideoWriter,
    iter_frame_batches,
    plan_chunks,
    probe_video,
    read_frame_files,
    read_frames,
    sniff_video_type,
)

AAC = "astronaut_pan_zoom_640x480_25fps_h264_aac.mp4"
SILENT = "astronaut_pan_zoom_640x480_25fps_h264.mp4"
GROUP = "group_pan_1280x720_25fps_h264.mp4"


def _video(assets: Path, name: str) -> Path:
    return assets / "video" / name


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _audio_packets(path: Path) -> list[tuple[bytes, int | None, int | None]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(bytes(p), p.pts, p.duration) for p in container.demux(stream) if p.size]


def _audio_samples(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def _remux(src: Path, dst: Path, kinds: tuple[str, ...]) -> None:
    """Stream-copy the streams of the given kinds from src into dst (container from dst's extension)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in kinds}
        for packet in inp.demux(*[s for s in inp.streams if s.index in mapping]):
            if packet.size:
                packet.stream = mapping[packet.stream_index]
                out.mux(packet)


def _synthetic_frame(i: int, width: int, height: int) -> np.ndarray:
    """Smooth moving colour waves with a grey square: easy for H.264, different in every frame."""
    x = np.arange(width, dtype=np.float32)[None, :, None]
    y = np.arange(height, dtype=np.float32)[:, None, None]
    phase = np.array([0.0, 2.0, 4.0], np.float32) + 0.2 * i
    image = (128 + 90 * np.sin(x / 11 + phase) * np.cos(y / 13 - phase)).astype(np.uint8)
    s = (i * 4) % (width - 20)
    image[10:30, s : s + 20] = 200
    return image


def _write_synthetic(path: Path, frames: int, width: int, height: int, **kwargs) -> None:
    with VideoWriter(path, width=width, height=height, fps=Fraction(25), preset="ultrafast", **kwargs) as w:
        for i in range(frames):
            w.write(_synthetic_frame(i, width, height))


def test_sniff_video_type_by_magic_bytes():
    assert sniff_video_type(b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00") == "video/mp4"
    assert sniff_video_type(b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00") == "video/quicktime"
    assert sniff_video_type(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm") == "video/webm"
    assert sniff_video_type(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska") == "video/x-matroska"
    assert sniff_video_type(b"RIFF\x00\x00\x00\x00AVI LIST") == "video/x-msvideo"
    assert sniff_video_type((b"\x47" + b"\x00" * 187) * 2) == "video/mp2t"
    assert sniff_video_type(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR") is None
    assert sniff_video_type(b"hello, I am a text file named clip.mp4") is None
    assert sniff_video_type(b"") is None


@pytest.mark.assets
@pytest.mark.parametrize(
    ("name", "size", "audio"),
    [(AAC, (640, 480), True), (SILENT, (640, 480), False), (GROUP, (1280, 720), False)],
)
def test_probe_real_videos(assets, name, size, audio):
    info = probe_video(_video(assets, name))
    assert (info.width, info.height) == size
    assert info.fps == Fraction(25) and isinstance(info.fps, Fraction)
    assert info.frame_count == 75
    assert info.duration_s == pytest.approx(3.0, abs=1e-6)
    assert info.media_type == "video/mp4" and info.video_codec == "h264"
    assert info.time_base > 0
    assert info.has_audio is audio
    if audio:
        assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", 48000, 1)
    else:
        assert info.audio_codec is None and info.audio_sample_rate is None


@pytest.mark.assets
def test_probe_accepts_a_file_object_and_leaves_its_position(assets):
    data = _video(assets, AAC).read_bytes()
    upload = io.BytesIO(data)
    assert probe_video(upload) == probe_video(_video(assets, AAC))
    assert upload.tell() == 0
    frames = list(read_frames(io.BytesIO(data)))
    assert len(frames) == 75


@pytest.mark.assets
def test_read_frames_in_presentation_order_as_bgr(assets):
    path = _video(assets, SILENT)
    capture = cv2.VideoCapture(str(path))
    pts, times = [], []
    for frame in read_frames(path):
        ok, reference = capture.read()
        assert ok
        assert frame.image.shape == (480, 640, 3) and frame.image.dtype == np.uint8
        assert frame.image.flags["C_CONTIGUOUS"]
        if frame.index % 25 == 0:  # BGR like OpenCV; RGB would differ by tens of levels
            assert np.abs(frame.image.astype(int) - reference).mean() < 1.0
        pts.append(frame.pts)
        times.append(frame.time_s)
        assert frame.index == len(pts) - 1
    capture.release()
    assert len(pts) == 75
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    assert times[0] == 0.0
    assert times == pytest.approx([i / 25 for i in range(75)], abs=1e-6)


@pytest.fixture(scope="module")
def round_trip(assets, tmp_path_factory) -> tuple[Path, Path]:
    """The _aac video read and re-encoded at crf 18 with its audio copied and tags written."""
    src = _video(assets, AAC)
    out = tmp_path_factory.mktemp("video") / "round_trip.mp4"
    with VideoWriter(
        out, width=640, height=480, audio_from=src, metadata={"comment": "swapped é", "faceswap_task": "t-1"}
    ) as writer:
        for frame in read_frames(src):
            writer.write(frame.image)
    assert writer.frames_written == 75
    return src, out


@pytest.mark.assets
def test_round_trip_keeps_timing_and_quality(round_trip):
    src, out = round_trip
    a, b = probe_video(src), probe_video(out)
    assert (b.width, b.height, b.fps, b.video_codec) == (640, 480, Fraction(25), "h264")
    assert abs(b.frame_count - a.frame_count) <= 1
    assert b.duration_s == pytest.approx(a.duration_s, abs=1 / 25)
    psnrs = []
    for fa, fb in zip(read_frames(src), read_frames(out), strict=True):
        assert fb.time_s == pytest.approx(fa.time_s, abs=1e-3)
        psnrs.append(_psnr(fa.image, fb.image))
    assert min(psnrs) > 30, min(psnrs)


@pytest.mark.assets
def test_audio_is_copied_packet_for_packet(round_trip):
    src, out = round_trip
    assert probe_video(out).has_audio
    src_packets, out_packets = _audio_packets(src), _audio_packets(out)
    assert len(out_packets) == len(src_packets) > 100
    assert out_packets == src_packets  # bytes, pts and durations
    src_samples, out_samples = _audio_samples(src), _audio_samples(out)
    assert src_samples.shape == out_samples.shape and np.array_equal(src_samples, out_samples)


def test_audio_is_interleaved_with_the_video_in_a_long_file(tmp_path):
    """Beyond the muxer's 10 s interleaving buffer, audio appended after the video would end up in one
    block at the end of the file; the writer feeds it along with the video instead."""
    src = tmp_path / "long_source.mp4"
    seconds, rate = 14, 48000
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        video.width, video.height = 64, 48
        audio = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(25 * seconds):
            frame = av.VideoFrame.from_ndarray(_synthetic_frame(i, 64, 48), format="bgr24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        tone = (3000 * np.sin(np.arange(rate * seconds) * 2 * np.pi * 440 / rate)).astype(np.int16)
        for start in range(0, tone.size, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = rate, start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode())
    dst = tmp_path / "long_out.mp4"
    with VideoWriter(dst, width=64, height=48, audio_from=src, preset="ultrafast") as writer:
        for frame in read_frames(src):
            writer.write(frame.image)
    last = {"audio": 0.0, "video": 0.0}
    worst_gap = 0.0
    with av.open(str(dst)) as container:
        for packet in container.demux():
            if packet.size and packet.dts is not None:
                last[packet.stream.type] = float(packet.dts * packet.time_base)
                worst_gap = max(worst_gap, abs(last["audio"] - last["video"]))
    assert worst_gap < 1.0
    assert _audio_packets(dst) == _audio_packets(src)


@pytest.mark.assets
def test_metadata_round_trip(round_trip):
    _, out = round_trip
    with av.open(str(out)) as container:
        assert container.metadata["comment"] == "swapped é"
        assert container.metadata["faceswap_task"] == "t-1"


@pytest.mark.assets
def test_audio_keeps_its_offset_to_the_video_from_a_ts_source(assets, tmp_path):
    """MPEG-TS starts both streams at an arbitrary clock; the copy must keep audio-video sync."""
    ts = tmp_path / "source.ts"
    _remux(_video(assets, AAC), ts, ("video", "audio"))

    def first_times(path: Path) -> tuple[float, float]:
        with av.open(str(path)) as container:
            v, a = container.streams.video[0], container.streams.audio[0]
            first = {}
            for packet in container.demux(v, a):
                if packet.size and packet.stream.type not in first:
                    first[packet.stream.type] = packet
            video_start = float(v.start_time * v.time_base)
            return video_start, float(first["audio"].pts * first["audio"].time_base)

    info = probe_video(ts)  # MPEG-TS has no frame count in its header: probe counts the packets
    assert (info.media_type, info.frame_count, info.fps) == ("video/mp2t", 75, Fraction(25))
    src_video, src_audio = first_times(ts)
    assert src_video > 0.05  # the mpegts muxer's clock offset: the test would not test a shift without it
    out = tmp_path / "out.mp4"
    with VideoWriter(out, width=640, height=480, audio_from=ts, preset="ultrafast") as writer:
        for frame in read_frames(ts):
            writer.write(frame.image)
    out_video, out_audio = first_times(out)
    assert out_video == 0.0
    assert out_audio - out_video == pytest.approx(src_audio - src_video, abs=1e-4)


@pytest.mark.assets
def test_source_without_audio_gives_silent_output_at_source_fps(assets, tmp_path):
    out = tmp_path / "silent.mp4"
    with VideoWriter(out, width=640, height=480, audio_from=_video(assets, SILENT), preset="ultrafast") as w:
        assert w.fps == Fraction(25)
        for frame in read_frames(_video(assets, SILENT)):
            w.write(frame.image)
    info = probe_video(out)
    assert not info.has_audio and info.frame_count == 75 and info.fps == Fraction(25)


def test_writer_fps_sets_timing(tmp_path):
    out = tmp_path / "ntsc.mp4"
    with VideoWriter(out, width=64, height=48, fps=Fraction(30000, 1001), preset="ultrafast") as w:
        for i in range(30):
            w.write(_synthetic_frame(i, 64, 48))
    info = probe_video(out)
    assert info.fps == Fraction(30000, 1001) and info.frame_count == 30
    assert info.duration_s == pytest.approx(30 * 1001 / 30000, abs=1e-3)


def test_odd_sizes_are_padded_by_edge_replication(tmp_path):
    out = tmp_path / "odd.mp4"
    source = [_synthetic_frame(i, 65, 49) for i in range(5)]
    with VideoWriter(out, width=65, height=49, fps=25, crf=10, preset="ultrafast") as w:
        assert w.output_size == (66, 50)
        for image in source:
            w.write(image)
    decoded = [f.image for f in read_frames(out)]
    assert len(decoded) == 5 and decoded[0].shape == (50, 66, 3)
    for image, back in zip(source, decoded, strict=True):
        assert _psnr(image, back[:49, :65]) > 30
        padded = np.pad(image, ((0, 1), (0, 1), (0, 0)), mode="edge")
        assert np.abs(back[-1].astype(int) - padded[-1]).mean() < 6
        assert np.abs(back[:, -1].astype(int) - padded[:, -1]).mean() < 6
    with VideoWriter(tmp_path / "444.mp4", width=65, height=49, fps=25, pix_fmt="yuv444p") as w:
        assert w.output_size == (65, 49)
        w.write(source[0])
    assert [f.image.shape for f in read_frames(tmp_path / "444.mp4")] == [(49, 65, 3)]


def test_writer_rejects_bad_options_and_frames(tmp_path):
    out = tmp_path / "x.mp4"
    with pytest.raises(InvalidOptionError):
        VideoWriter(out, width=64, height=48, fps=25, crf=60)
    with pytest.raises(InvalidOptionError):
        VideoWriter(out, width=64, height=48, fps=25, preset="warp")
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(out, width=64, height=48)
    with VideoWriter(out, width=64, height=48, fps=25) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.write(np.zeros((48, 64, 3), np.float32))
        with pytest.raises(ValueError, match=r"\(48, 64, 3\)"):
            w.write(np.zeros((64, 48, 3), np.uint8))
        w.write(np.zeros((48, 64, 3), np.uint8))
    assert probe_video(out).frame_count == 1
    with pytest.raises(ValueError, match="closed"):
        w.write(np.zeros((48, 64, 3), np.uint8))


def test_failed_or_empty_writes_leave_no_file(tmp_path):
    out = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, width=64, height=48, fps=25) as w:
            w.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("boom")
    assert not out.exists()
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(out, width=64, height=48, fps=25):
            pass
    assert not out.exists()


@pytest.mark.assets
def test_bad_inputs_raise_typed_errors(assets, tmp_path):
    real = _video(assets, SILENT).read_bytes()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("hello, I am a text file named .mp4\n" * 20)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(real[:20_000])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(real[:12] + bytes(range(256)) * 40)
    audio_only = tmp_path / "audio_only.mp4"
    _remux(_video(assets, AAC), audio_only, ("audio",))
    assert sniff_video_type(audio_only.read_bytes()[:512]) == "video/mp4"
    cases = [
        (empty, InvalidInputError, "empty"),
        (text, UnsupportedMediaError, "not a supported video"),
        (truncated, InvalidInputError, "truncated"),
        (garbage, InvalidInputError, "corrupt"),
        (audio_only, InvalidInputError, "no video stream"),
        (tmp_path / "missing.mp4", InvalidInputError, "cannot read"),
    ]
    for path, error, message in cases:
        with pytest.raises(error, match=message) as probed:
            probe_video(path)
        assert probed.value.status == (415 if error is UnsupportedMediaError else 400)
        with pytest.raises(error, match=message):
            next(read_frames(path))
        if path != audio_only:
            with pytest.raises(error, match=message):
                VideoWriter(tmp_path / "out.mp4", width=64, height=48, fps=25, audio_from=path)
    assert not (tmp_path / "out.mp4").exists()
    # an audio-only file is no video, but a fine audio source
    out = tmp_path / "dubbed.mp4"
    with VideoWriter(out, width=64, height=48, fps=25, audio_from=audio_only, preset="ultrafast") as w:
        for i in range(75):
            w.write(_synthetic_frame(i, 64, 48))
    assert probe_video(out).has_audio
    assert _audio_packets(out) == _audio_packets(audio_only)


def test_audio_the_output_container_cannot_hold_is_refused(tmp_path):
    src = tmp_path / "mulaw.mov"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height = 64, 48
        audio = out.add_stream("pcm_mulaw", rate=8000, layout="mono")
        frame = av.VideoFrame.from_ndarray(_synthetic_frame(0, 64, 48), format="bgr24")
        frame.pts = 0
        out.mux(video.encode(frame))
        out.mux(video.encode())
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = 8000, 0
        out.mux(audio.encode(chunk))
        out.mux(audio.encode())
    assert probe_video(src).audio_codec == "pcm_mulaw"
    dst = tmp_path / "out.mp4"
    with pytest.raises(UnsupportedMediaError, match="pcm_mulaw audio cannot be copied into mp4"):
        VideoWriter(dst, width=64, height=48, audio_from=src)
    assert not dst.exists()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reading_streams_frames_and_closes_the_container(tmp_path):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to count open files")
    path = tmp_path / "long.mp4"
    _write_synthetic(path, 300, 320, 240)
    assert probe_video(path).frame_count == 300
    alive: list[weakref.ref] = []
    max_alive = 0
    count = 0
    for frame in read_frames(path):
        alive.append(weakref.ref(frame.image))
        del frame  # numpy arrays are freed by reference counting: no gc pass needed
        max_alive = max(max_alive, sum(ref() is not None for ref in alive))
        count += 1
    assert count == 300
    assert max_alive <= 2  # 300 frames of 230 KB were decoded, at most the current one is held
    before = _open_fds()
    frames = read_frames(path)
    first = next(frames)
    assert first.index == 0 and _open_fds() == before + 1
    frames.close()
    assert _open_fds() == before


def test_iter_frame_batches_is_lazy_and_keeps_order():
    pulled: list[int] = []

    def source():
        for i in range(7):
            pulled.append(i)
            yield i

    batches = iter_frame_batches(source(), 3)
    assert next(batches) == [0, 1, 2] and pulled == [0, 1, 2]
    assert list(batches) == [[3, 4, 5], [6]]
    assert list(iter_frame_batches([], 4)) == []
    with pytest.raises(InvalidOptionError):
        next(iter_frame_batches([1], 0))


# -- limits on decoded content: the container's claims are not trusted ------------------------------------
def _patch(data: bytearray, box: bytes, offset: int, fmt: str, value) -> None:
    """Overwrite the field at ``offset`` bytes after the 4-byte tag ``box`` (first occurrence)."""
    at = data.find(box)
    assert at > 0, box
    struct.pack_into(fmt, data, at + offset, value)


def _avi_claiming(path: Path, frames: int, claimed: int) -> None:
    """An AVI holding ``frames`` frames whose headers (main and stream header) say ``claimed``."""
    _write_synthetic(path, frames, 64, 48)
    data = bytearray(path.read_bytes())
    _patch(data, b"avih", 8 + 16, "<I", claimed)  # MainAVIHeader.dwTotalFrames
    _patch(data, b"strh", 8 + 32, "<I", claimed)  # AVIStreamHeader.dwLength
    path.write_bytes(bytes(data))


def _mp4_with_durations_scaled(path: Path, frames: int, scale: float) -> None:
    """An MP4 whose movie, track and media header durations are ``scale`` times the truth (the sample
    timing stays true)."""
    _write_synthetic(path, frames, 64, 48)
    data = bytearray(path.read_bytes())
    for box, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)):
        at = data.find(box)
        assert data[at + 4] == 0  # version 0: 32-bit times
        (duration,) = struct.unpack_from(">I", data, at + offset)
        struct.pack_into(">I", data, at + offset, int(duration * scale))
    path.write_bytes(bytes(data))


def _mjpeg_avi(path: Path, sizes: list[tuple[int, int]]) -> None:
    """A Motion-JPEG AVI whose stream header says the first size; frame ``i`` is a flat JPEG of
    ``sizes[i]`` (every JPEG carries its own size, so a frame can be any size)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for i, (width, height) in enumerate(sizes):
            ok, jpeg = cv2.imencode(".jpg", np.full((height, width), 60 + 10 * i, np.uint8))
            assert ok
            packet = av.Packet(jpeg.tobytes())
            packet.stream = stream
            packet.pts = packet.dts = i
            packet.time_base = Fraction(1, 25)
            packet.is_keyframe = True
            container.mux(packet)


def _read_until_error(path: Path, limits: VideoLimits | None) -> tuple[list[VideoFrame], Exception]:
    frames: list[VideoFrame] = []
    with pytest.raises((PayloadTooLargeError, InvalidInputError)) as caught:
        for frame in read_frames(path, limits=limits):
            frames.append(frame)
    return frames, caught.value


def test_duration_limit_counts_decoded_frames_not_the_avi_header(tmp_path):
    path = tmp_path / "claims_5_frames.avi"
    _avi_claiming(path, frames=60, claimed=5)
    info = probe_video(path)
    assert (info.frame_count, info.duration_s) == (5, pytest.approx(0.2))
    frames, error = _read_until_error(path, VideoLimits(max_duration_s=2.0))
    assert isinstance(error, PayloadTooLargeError) and error.status == 413
    assert len(frames) == 50  # frame 51 would make 2.04 s: refused before it is converted
    assert "51 frames at 25 fps" in str(error)
    assert len(list(read_frames(path, limits=VideoLimits(max_duration_s=2.4)))) == 60


def test_duration_limit_ignores_mp4_header_durations(tmp_path):
    path = tmp_path / "durations_x0.3.mp4"
    _mp4_with_durations_scaled(path, frames=75, scale=0.3)
    assert probe_video(path).duration_s == pytest.approx(0.9, abs=0.05)
    frames, error = _read_until_error(path, VideoLimits(max_duration_s=2.0))
    assert isinstance(error, PayloadTooLargeError)
    assert [f.index for f in frames] == list(range(50))
    assert len(list(read_frames(path, limits=VideoLimits(max_duration_s=3.0)))) == 75


def test_pixel_limit_stops_at_a_huge_frame_inside_a_small_stream(tmp_path):
    path = tmp_path / "bomb.avi"
    _mjpeg_avi(path, [(16, 16)] * 3 + [(9000, 9000)] + [(16, 16)] * 2)
    assert (probe_video(path).width, probe_video(path).height) == (16, 16)
    frames, error = _read_until_error(path, VideoLimits(max_frame_pixels=4096 * 4096))
    assert isinstance(error, PayloadTooLargeError)
    assert "frame 3 is 9000x9000" in str(error)
    assert [f.image.shape for f in frames] == [(16, 16, 3)] * 3


def test_a_frame_size_change_mid_stream_is_invalid_input(tmp_path):
    path = tmp_path / "resized.avi"
    _mjpeg_avi(path, [(16, 16)] * 3 + [(32, 32)] + [(16, 16)] * 2)
    frames, error = _read_until_error(path, None)
    assert type(error) is InvalidInputError and error.status == 400
    assert "frame 3 is 32x32 in a 16x16 video" in str(error)
    assert len(frames) == 3
    # the pixel limit is checked first: a frame both too big and resized is a 413
    _, error = _read_until_error(path, VideoLimits(max_frame_pixels=500))
    assert isinstance(error, PayloadTooLargeError)


def test_limits_are_validated():
    for bad in ({"max_duration_s": 0}, {"max_duration_s": -1.0}, {"max_frame_pixels": 0}):
        with pytest.raises(InvalidOptionError):
            VideoLimits(**bad)


def test_frame_files_read_as_a_video_with_the_same_checks(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"f{i}.png")
        cv2.imwrite(str(paths[-1]), _synthetic_frame(i, 40, 30))
    frames = list(read_frame_files(paths, Fraction(10)))
    assert [(f.index, f.pts, f.time_s) for f in frames] == [(i, i, i / 10) for i in range(4)]
    assert all(np.array_equal(f.image, _synthetic_frame(i, 40, 30)) for i, f in enumerate(frames))
    assert [(f.index, f.time_s) for f in read_frame_files(paths, Fraction(10), start=2)] == [
        (2, 0.2),
        (3, 0.3),
    ]
    with pytest.raises(PayloadTooLargeError, match="longer than the limit of 0.3 s"):
        list(read_frame_files(paths, Fraction(10), limits=VideoLimits(max_duration_s=0.3)))
    with pytest.raises(PayloadTooLargeError):
        list(read_frame_files(paths, Fraction(10), limits=VideoLimits(max_frame_pixels=1000)))
    cv2.imwrite(str(paths[2]), _synthetic_frame(2, 24, 30))
    with pytest.raises(InvalidInputError, match="f2.png is 24x30 in a 40x30 video"):
        list(read_frame_files(paths, Fraction(10)))


# -- chunks: planning from the packets, seeking to a chunk ------------------------------------------------
@pytest.mark.assets
def test_chunks_are_planned_from_the_packets_with_the_pts_of_their_first_frame(assets):
    path = _video(assets, AAC)
    reference = list(read_frames(path))
    chunks = plan_chunks(path, 8)
    assert [(c.start, c.count) for c in chunks] == [(s, min(8, 75 - s)) for s in range(0, 75, 8)]
    assert [c.start_pts for c in chunks] == [reference[s].pts for s in range(0, 75, 8)]
    with pytest.raises(InvalidOptionError):
        plan_chunks(path, 0)


def test_chunks_count_the_frames_a_lying_header_does_not(tmp_path):
    path = tmp_path / "claims_5_frames.avi"
    _avi_claiming(path, frames=60, claimed=5)
    assert probe_video(path).frame_count == 5
    assert sum(c.count for c in plan_chunks(path, 16)) == 60


@pytest.mark.assets
def test_reading_from_a_frame_by_seek_or_by_decoding_gives_the_same_frames(assets):
    """The video has a keyframe every 25 frames and B-frames: frame 30 is reached by a keyframe seek (to
    frame 25) and by decoding from the start, with the same indices, pts and pixels."""
    path = _video(assets, AAC)
    reference = list(read_frames(path))
    for start_pts in (reference[30].pts, None):
        frames = list(itertools.islice(read_frames(path, start=30, start_pts=start_pts), 7))
        assert [f.index for f in frames] == list(range(30, 37))
        assert [f.pts for f in frames] == [reference[i].pts for i in range(30, 37)]
        assert all(np.array_equal(f.image, reference[f.index].image) for f in frames)
        assert frames[0].time_s == pytest.approx(reference[30].time_s)
    # a wrong pts makes the seek miss: the reader falls back to decoding from the start
    missed = next(read_frames(path, start=30, start_pts=reference[30].pts + 1))
    assert missed.index == 30 and np.array_equal(missed.image, reference[30].image)
    assert len(list(read_frames(path, start=70))) == 5
    with pytest.raises(InvalidInputError, match="no decodable video frames from frame 80"):
        list(read_frames(path, start=80))
