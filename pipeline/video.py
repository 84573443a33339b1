"""Video files in and out with PyAV: probe, stream decoded frames as ImageBGR, encode H.264 with the source
audio track copied unchanged. The one place that decodes video (and reads folders of frames as video).

Frames are streamed: :func:`read_frames` holds one decoded frame (plus the decoder's own small
look-ahead) at a time, and :class:`VideoWriter` muxes each encoded packet as it comes out of the encoder,
interleaving the copied audio packets by time, so memory does not grow with the length of the video.

User-facing problems raise the typed errors of :mod:`pipeline.errors`: unknown container bytes (checked by
magic bytes) are :class:`UnsupportedMediaError` (415); an empty, truncated or corrupt container, one
without a video stream, or one without a decodable frame is :class:`InvalidInputError` (400).
:class:`VideoLimits` bound the decoded content (duration, pixels per frame), never the container's claims:
a header may undercount frames or durations.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import av
import av.container
import av.stream
import numpy as np
from av.audio.stream import AudioStream
from av.packet import Packet
from av.video.format import VideoFormat
from av.video.stream import VideoStream

from pipeline.errors import (
    InvalidInputError,
    InvalidOptionError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from pipeline.imageio import read_image_file
from pipeline.types import ImageBGR

logger = logging.getLogger(__name__)

VideoSource = str | os.PathLike[str] | IO[bytes]
"""A file path, or a seekable binary file object holding a whole file from byte 0 (e.g. an upload in
``io.BytesIO``)."""

SNIFF_BYTES = 512
"""Bytes of the file head :func:`sniff_video_type` needs (MPEG-TS checks the sync byte at 188)."""

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
_MP4_FAMILY = ("mp4", "mov")
_T = TypeVar("_T")


def sniff_video_type(data: bytes) -> str | None:
    """The container's media type from its first bytes (at least :data:`SNIFF_BYTES` when available):
    ``video/mp4``, ``video/quicktime``, ``video/webm``, ``video/x-matroska``, ``video/x-msvideo``,
    ``video/mp2t``, ``video/mpeg`` or ``video/x-flv``; None for anything else."""
    if data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:12] == b"qt  " else "video/mp4"
    if data[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "video/quicktime"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm" if b"webm" in data[:64] else "video/x-matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video/x-msvideo"
    if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47:
        return "video/mp2t"
    if data[:4] == b"\x00\x00\x01\xba":
        return "video/mpeg"
    if data[:4] == b"FLV\x01":
        return "video/x-flv"
    return None


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found. Sizes in pixels, times in seconds."""

    media_type: str
    """Container type from the magic bytes, e.g. ``video/mp4``."""
    width: int
    height: int
    fps: Fraction
    """Average frame rate of the video stream, e.g. ``Fraction(30000, 1001)``."""
    frame_count: int
    """From the container's header, or by counting the video packets when the header does not say."""
    duration_s: float
    video_codec: str
    time_base: Fraction
    """Unit of the video stream's ``pts`` values."""
    has_audio: bool
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame, in presentation order."""

    index: int
    """0-based position in presentation order."""
    pts: int
    """Presentation timestamp in the stream's ``time_base`` (as in the container)."""
    time_s: float
    """Seconds from the start of the video stream (the first frame is at 0.0)."""
    image: ImageBGR
    """(H, W, 3) uint8 BGR, C-contiguous."""


def _source_name(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "video"))


def _read_head(source: VideoSource, name: str) -> tuple[bytes, int]:
    """The first :data:`SNIFF_BYTES` bytes and the total size; a file object is rewound to byte 0."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                return fh.read(SNIFF_BYTES), os.fstat(fh.fileno()).st_size
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
        head = source.read(SNIFF_BYTES)
        source.seek(0)
        return head, size
    except OSError as exc:
        raise InvalidInputError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _open_input(source: VideoSource) -> tuple[av.container.InputContainer, str, str]:
    """Open a video container after the magic-byte check; returns (container, media type, name).

    Rejects containers whose index points past the end of the data (truncated uploads)."""
    name = _source_name(source)
    head, size = _read_head(source, name)
    if not head:
        raise InvalidInputError(f"{name}: empty file")
    media_type = sniff_video_type(head)
    if media_type is None:
        raise UnsupportedMediaError(
            f"{name}: not a supported video container (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV)"
        )
    try:
        container = av.open(os.fspath(source) if isinstance(source, os.PathLike) else source, mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise InvalidInputError(f"{name}: corrupt or unreadable {media_type} container ({exc})") from None
    try:
        indexed_end = max(
            (entry.pos + entry.size for stream in container.streams for entry in stream.index_entries),
            default=0,
        )
        if indexed_end > size:
            raise InvalidInputError(
                f"{name}: truncated {media_type} file ({size} bytes, its index reaches byte {indexed_end})"
            )
    except BaseException:
        container.close()
        raise
    return container, media_type, name


def _video_stream(container: av.container.InputContainer, name: str) -> VideoStream:
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "no streams"
        raise InvalidInputError(f"{name}: no video stream ({kinds})")
    return container.streams.video[0]


def _stream_fps(stream: VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _first_audio(container: av.container.InputContainer) -> AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def probe_video(source: VideoSource) -> VideoInfo:
    """Container facts of a video file or file object, checked by decoding its first frame.

    Counts the video packets (a demux pass without decoding) only when the header has no frame count.
    A file object is read from byte 0 and left at the position it had.
    Raises UnsupportedMediaError (415) for non-video bytes, InvalidInputError (400) for empty, truncated
    or corrupt files, files without a video stream or without a decodable frame.
    """
    if isinstance(source, (str, os.PathLike)):
        return _probe(source)
    position = source.tell()
    try:
        return _probe(source)
    finally:
        source.seek(position)


def _probe(source: VideoSource) -> VideoInfo:
    container, media_type, name = _open_input(source)
    with container:
        stream = _video_stream(container, name)
        declared = stream.frames
        counted = 0
        decoded = False
        try:
            for packet in container.demux(stream):
                if not decoded:
                    decoded = bool(stream.decode(packet))
                if packet.size:
                    counted += 1
                if decoded and declared > 0:
                    break
            if not decoded:
                decoded = bool(stream.decode(None))
        except av.FFmpegError as exc:
            raise InvalidInputError(f"{name}: corrupt video data ({exc})") from None
        if not decoded:
            raise InvalidInputError(f"{name}: no decodable video frames")
        frame_count = declared if declared > 0 else counted
        tb = stream.time_base or Fraction(1, 1)
        fps = _stream_fps(stream)
        if stream.duration:
            duration_s = float(stream.duration * tb)
        elif container.duration:
            duration_s = container.duration / av.time_base
        elif fps is not None:
            duration_s = float(frame_count / fps)
        else:
            duration_s = 0.0
        if fps is None:
            if duration_s <= 0:
                raise InvalidInputError(f"{name}: neither frame rate nor duration is known")
            fps = Fraction(frame_count) / Fraction(duration_s).limit_denominator(1000)
        audio = _first_audio(container)
        return VideoInfo(
            media_type=media_type,
            width=stream.width,
            height=stream.height,
            fps=fps,
            frame_count=frame_count,
            duration_s=duration_s,
            video_codec=stream.codec_context.name,
            time_base=tb,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_sample_rate=audio.sample_rate if audio is not None else None,
            audio_channels=audio.channels if audio is not None else None,
        )


@dataclass(frozen=True)
class VideoLimits:
    """Bounds on a video's DECODED content, checked frame by frame as :func:`read_frames` decodes (a
    container's header may claim anything: fewer frames, a shorter duration, a smaller frame size).

    ``max_duration_s``: the frames decoded so far, divided by the stream's frame rate, and the span of
    their timestamps, must stay within it. ``max_frame_pixels``: width x height of every frame."""

    max_duration_s: float | None = None
    max_frame_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise InvalidOptionError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if self.max_frame_pixels is not None and self.max_frame_pixels < 1:
            raise InvalidOptionError(f"max_frame_pixels must be >= 1, got {self.max_frame_pixels}")


class _FrameCheck:
    """The checks of one stream's decoded frames, before each is converted: pixels over the limit
    (PayloadTooLargeError, 413), a size other than the first frame's (InvalidInputError, 400), and the
    decoded duration so far over the limit (PayloadTooLargeError, 413)."""

    def __init__(self, name: str, limits: VideoLimits | None, fps: Fraction) -> None:
        self._name = name
        self._limits = limits or VideoLimits()
        self._fps = fps
        self._size: tuple[int, int] | None = None

    def __call__(self, frame: str, width: int, height: int, count: int, span_s: float) -> None:
        """Check ``frame`` (its name in messages), the ``count``-th frame decoded, ``span_s`` seconds after
        the first frame's timestamp."""
        limit = self._limits.max_frame_pixels
        if limit is not None and width * height > limit:
            raise PayloadTooLargeError(
                f"{self._name}: {frame} is {width}x{height}, over the limit of {limit} pixels"
            )
        if self._size is None:
            self._size = (width, height)
        elif (width, height) != self._size:
            raise InvalidInputError(
                f"{self._name}: {frame} is {width}x{height} in a {self._size[0]}x{self._size[1]} video "
                "(the frame size changes mid-stream)"
            )
        limit_s = self._limits.max_duration_s
        if limit_s is None:
            return
        duration_s = max(float(count / self._fps), span_s)
        if duration_s > limit_s:
            raise PayloadTooLargeError(
                f"{self._name}: longer than the limit of {limit_s:g} s ({count} frames decoded at "
                f"{float(self._fps):g} fps, timestamps spanning {span_s:.2f} s)"
            )


def read_frames(source: VideoSource, *, limits: VideoLimits | None = None) -> Iterator[VideoFrame]:
    """Decode the first video stream frame by frame, in presentation order, as ImageBGR.

    A generator: the container opens at the first ``next()`` and closes when the iterator is exhausted,
    closed or garbage-collected. Raises the same errors as :func:`probe_video`; InvalidInputError also
    for corrupt data mid-stream, for a stream that yields no frame and for a frame whose size differs
    from the first frame's; PayloadTooLargeError as soon as the decoded content exceeds ``limits``
    (before the frame over the limit is converted).
    """
    container, _, name = _open_input(source)
    try:
        stream = _video_stream(container, name)
        stream.thread_type = "AUTO"
        tb = stream.time_base or Fraction(1, 1)
        start = stream.start_time or 0
        fps = _stream_fps(stream) or Fraction(25)
        step = 1 / (fps * tb)
        check = _FrameCheck(name, limits, fps)
        first_pts: int | None = None
        index = 0
        try:
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else start + round(index * step)
                first_pts = pts if first_pts is None else first_pts
                check(f"frame {index}", frame.width, frame.height, index + 1, float((pts - first_pts) * tb))
                image = np.ascontiguousarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
                yield VideoFrame(index=index, pts=pts, time_s=float((pts - start) * tb), image=image)
                index += 1
        except av.FFmpegError as exc:
            raise InvalidInputError(f"{name}: corrupt video data after frame {index} ({exc})") from None
        if index == 0:
            raise InvalidInputError(f"{name}: no decodable video frames")
    finally:
        container.close()


def read_frame_files(
    paths: Sequence[str | os.PathLike[str]], fps: Fraction, *, limits: VideoLimits | None = None
) -> Iterator[VideoFrame]:
    """Image files (JPEG, PNG, WebP) as the frames of a video at ``fps``: frame ``i`` has pts ``i`` (time
    base ``1 / fps``) and time ``i / fps``. The same checks as :func:`read_frames`: every image must have
    the first one's size (else InvalidInputError), and ``limits`` hold (PayloadTooLargeError; the pixel
    limit is checked on each file's header, before decoding)."""
    fps = Fraction(fps)
    if fps <= 0:
        raise InvalidOptionError(f"fps must be positive, got {fps}")
    check = _FrameCheck(os.path.dirname(os.fspath(paths[0])) if paths else "frames", limits, fps)
    max_pixels = limits.max_frame_pixels if limits is not None else None
    pixels = {} if max_pixels is None else {"max_pixels": max_pixels}
    for index, path in enumerate(paths):
        image = read_image_file(os.fspath(path), **pixels)
        check(os.path.basename(path), image.shape[1], image.shape[0], index + 1, float(index / fps))
        yield VideoFrame(index=index, pts=index, time_s=float(index / fps), image=image)


def iter_frame_batches(frames: Iterable[_T], batch_size: int) -> Iterator[list[_T]]:
    """Consecutive lists of ``batch_size`` items (the last one shorter), pulling lazily from ``frames``."""
    if batch_size < 1:
        raise InvalidOptionError(f"batch_size must be >= 1, got {batch_size}")
    iterator = iter(frames)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


def _chroma_alignment(pix_fmt: str) -> tuple[int, int]:
    """(x, y) multiples a frame size must have for ``pix_fmt`` (2, 2 for 4:2:0; 1, 1 for 4:4:4)."""
    chroma = [c for c in VideoFormat(pix_fmt, 4, 4).components if c.is_chroma]
    if not chroma:
        return 1, 1
    return 4 // min(c.width for c in chroma), 4 // min(c.height for c in chroma)


class VideoWriter:
    """Encode ImageBGR frames to a video file, optionally with the audio of a source video copied in.

    Use as a context manager; ``write(image)`` once per frame. Frame ``i`` gets ``pts = i`` in a time
    base of ``1 / fps``, so a video written at the source's fps has the source's frame count and duration.

    - ``fps`` defaults to the frame rate of ``audio_from`` (the source video); one of them is required.
    - ``crf`` (0..51, lower is better) and ``preset`` are passed to the encoder (libx264/libx265 options).
    - Odd sizes: a chroma-subsampled ``pix_fmt`` (yuv420p needs even width and height) gets the last
      column/row replicated to the next allowed size, so e.g. 641x481 frames are stored as 642x482
      (``output_size``); frames passed to ``write`` keep the ``width`` x ``height`` given here.
    - ``audio_from``: the first audio stream of that file is remuxed packet for packet (no re-encode),
      interleaved with the video by time, shifted so that the source's first video frame lines up with
      frame 0. A source without audio gives a silent output. Raises UnsupportedMediaError when the output
      container cannot hold the source's audio codec.
    - ``metadata``: container tags. MP4/MOV output is written with ``movflags=+faststart+use_metadata_tags``
      so any key round-trips and the file plays while downloading.

    On an exception inside the ``with`` block the partial output file is deleted. Closing without a frame
    written raises ValueError (and deletes the file).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        fps: Fraction | int | None = None,
        crf: int = 18,
        preset: str = "medium",
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        audio_from: VideoSource | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if not 0 <= crf <= 51:
            raise InvalidOptionError(f"crf must be in 0..51, got {crf}")
        if codec in ("libx264", "libx265") and preset not in X264_PRESETS:
            raise InvalidOptionError(f"preset must be one of {', '.join(X264_PRESETS)}, got {preset!r}")
        if width < 1 or height < 1:
            raise InvalidOptionError(f"frame size must be positive, got {width}x{height}")
        self.path = Path(path)
        self.width = width
        self.height = height
        align_x, align_y = _chroma_alignment(pix_fmt)
        self.output_size = (-(-width // align_x) * align_x, -(-height // align_y) * align_y)
        if self.output_size != (width, height):
            logger.info(
                "%s: %dx%d frames padded to %dx%d for %s", path, width, height, *self.output_size, pix_fmt
            )
        self.frames_written = 0
        self._closed = False
        self._source: av.container.InputContainer | None = None
        self._audio_packets: Iterator[Packet] | None = None
        self._audio_out: av.stream.Stream | None = None
        self._pending_audio: Packet | None = None
        self._audio_shift = 0
        src_video: VideoStream | None = None
        src_audio: AudioStream | None = None
        if audio_from is not None:
            self._source, _, _ = _open_input(audio_from)
            src_video = self._source.streams.video[0] if self._source.streams.video else None
            src_audio = _first_audio(self._source)
        if fps is None:
            fps = _stream_fps(src_video) if src_video is not None else None
            if fps is None:
                self._close_source()
                raise ValueError("fps is required when audio_from is not a video with a known frame rate")
        self.fps = Fraction(fps)
        try:
            self._output = av.open(os.fspath(path), mode="w")
        except BaseException:
            self._close_source()
            raise
        try:
            self._setup_streams(crf, preset, codec, pix_fmt, metadata or {}, src_video, src_audio)
        except BaseException:
            self.abort()
            raise

    def _setup_streams(
        self,
        crf: int,
        preset: str,
        codec: str,
        pix_fmt: str,
        metadata: dict[str, str],
        src_video: VideoStream | None,
        src_audio: AudioStream | None,
    ) -> None:
        output = self._output
        if output.format.name in _MP4_FAMILY:
            output.container_options["movflags"] = "+faststart+use_metadata_tags"
        output.metadata.update(metadata)
        stream = output.add_stream(codec, rate=self.fps, options={"crf": str(crf), "preset": preset})
        if not isinstance(stream, VideoStream):
            raise InvalidOptionError(f"{codec} is not a video codec")
        stream.width, stream.height = self.output_size
        stream.pix_fmt = pix_fmt
        stream.time_base = 1 / self.fps
        self._video_out = stream
        if src_audio is None or self._source is None:
            return
        try:
            self._audio_out = output.add_stream_from_template(src_audio)
        except ValueError:
            raise UnsupportedMediaError(
                f"the source's {src_audio.codec_context.name} audio cannot be copied into "
                f"{output.format.name}; use another output container"
            ) from None
        if src_video is not None and src_video.start_time and src_video.time_base and src_audio.time_base:
            self._audio_shift = round(src_video.start_time * src_video.time_base / src_audio.time_base)
        self._audio_packets = self._source.demux(src_audio)
        self._pending_audio = self._next_audio()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, image: ImageBGR) -> None:
        """Encode one (height, width, 3) uint8 BGR frame."""
        if self._closed:
            raise ValueError("write() on a closed VideoWriter")
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected a ({self.height}, {self.width}, 3) uint8 frame, got {image.shape} {image.dtype}"
            )
        pad_x, pad_y = self.output_size[0] - self.width, self.output_size[1] - self.height
        if pad_x or pad_y:
            image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts = self.frames_written
        self.frames_written += 1
        for packet in self._video_out.encode(frame):
            self._mux_video(packet)

    def close(self) -> None:
        """Flush the encoder, copy the rest of the audio and finish the file. Idempotent."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"{self.path}: no frames written")
        try:
            for packet in self._video_out.encode(None):
                self._mux_video(packet)
            self._mux_audio_until(None)
            self._closed = True
            self._output.close()
        except BaseException:
            self.abort()
            raise
        finally:
            self._close_source()

    def abort(self) -> None:
        """Close everything and delete the partial output file."""
        self._closed = True
        try:
            self._output.close()
        except av.FFmpegError as exc:
            logger.debug("%s: error closing an aborted output: %s", self.path, exc)
        finally:
            self._close_source()
            self.path.unlink(missing_ok=True)

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
            self._audio_packets = None
            self._pending_audio = None

    def _next_audio(self) -> Packet | None:
        assert self._audio_packets is not None and self._audio_out is not None
        for packet in self._audio_packets:
            if packet.size == 0:
                continue
            if self._audio_shift:
                if packet.pts is not None:
                    packet.pts -= self._audio_shift
                if packet.dts is not None:
                    packet.dts -= self._audio_shift
            packet.stream = self._audio_out
            return packet
        return None

    def _mux_audio_until(self, time_s: float | None) -> None:
        """Mux the source audio packets that start before ``time_s`` seconds (all of them for None)."""
        while self._pending_audio is not None:
            packet = self._pending_audio
            ts = packet.dts if packet.dts is not None else packet.pts
            if time_s is not None and ts is not None and float(ts * packet.time_base) > time_s:
                return
            self._output.mux(packet)
            self._pending_audio = self._next_audio()

    def _mux_video(self, packet: Packet) -> None:
        ts = packet.dts if packet.dts is not None else packet.pts
        if self._pending_audio is not None and ts is not None:
            self._mux_audio_until(float(ts * packet.time_base))
        self._output.mux(packet)
