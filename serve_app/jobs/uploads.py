"""A job request's uploads: read the multipart body (its limit enforced while it streams in) and check
each file before anything is stored: the images by magic bytes and by decoding them, the video by magic
bytes and by probing it (its container's claims: duration, frame size; the runner holds the decoded frames
to the same limits, since a container may lie)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import IO, Any

from starlette.requests import Request

from pipeline.errors import InvalidInputError, PayloadTooLargeError
from pipeline.imageio import decode_image, sniff_image_type
from pipeline.video import VideoInfo, VideoLimits, probe_video
from serve_app.config import AppArgs
from serve_app.forms import UploadPace, read_multipart

JOB_FILE_FIELDS = ("source_image", "target_video", "reference_image")
_IMAGE_EXTENSIONS = MappingProxyType({"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"})
_VIDEO_EXTENSIONS = MappingProxyType(
    {
        "video/mp4": "mp4",
        "video/quicktime": "mov",
        "video/webm": "webm",
        "video/x-matroska": "mkv",
        "video/x-msvideo": "avi",
        "video/mp2t": "ts",
        "video/mpeg": "mpg",
        "video/x-flv": "flv",
    }
)


def video_limits(args: AppArgs) -> VideoLimits:
    """The limits a job's target video is held to, on its container's claims at submission and on its
    decoded frames while it runs: ``jobs.max_duration_s`` and ``jobs.max_frame_pixels`` (else
    ``ingress.max_pixels``)."""
    jobs = args.jobs
    return VideoLimits(
        max_duration_s=jobs.max_duration_s,
        max_frame_pixels=jobs.max_frame_pixels or args.ingress.max_pixels,
    )


class NamedReader(io.RawIOBase):
    """Reads ``file`` under the name ``name``, the prefix of the video errors' messages (a spooled upload's
    own name is None or a file descriptor; a stored file's is a server path, not for clients' eyes)."""

    def __init__(self, file: IO[bytes], name: str) -> None:
        super().__init__()
        self._file = file
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


@dataclass(frozen=True)
class CheckedUploads:
    """Uploads that passed :func:`check_uploads`: file objects by their name in the job folder."""

    files: Mapping[str, IO[bytes]]
    video: VideoInfo

    def name(self, stem: str) -> str | None:
        """The stored name of ``source``, ``target`` or ``reference`` (None when not uploaded)."""
        return next((name for name in self.files if name.partition(".")[0] == stem), None)


def _file_size(file: IO[bytes]) -> int:
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    return size


def check_uploads(
    files: Mapping[str, IO[bytes]], *, max_image_bytes: int, max_pixels: int, limits: VideoLimits
) -> CheckedUploads:
    """Check a job's uploads (blocking: decodes the images, probes the video).

    ``source_image`` and ``target_video`` are required, ``reference_image`` optional. Images: JPEG, PNG or
    WebP by magic bytes (415), at most ``max_image_bytes`` and ``max_pixels`` (413), decodable (400). The
    video: a known container by magic bytes (415), not truncated or corrupt and with a decodable video
    stream (400), claiming no more than ``limits`` (413)."""
    for required in ("source_image", "target_video"):
        if required not in files:
            raise InvalidInputError(f"{required}: required")
    stored: dict[str, IO[bytes]] = {}
    for field_name, stem in (("source_image", "source"), ("reference_image", "reference")):
        file = files.get(field_name)
        if file is None:
            continue
        size = _file_size(file)
        if size > max_image_bytes:
            raise PayloadTooLargeError(
                f"{field_name}: {size} bytes is over the image limit of {max_image_bytes}"
            )
        data = file.read()
        decode_image(data, field=field_name, max_pixels=max_pixels)
        media_type = sniff_image_type(data)
        assert media_type is not None  # decode_image accepted it
        stored[f"{stem}.{_IMAGE_EXTENSIONS[media_type]}"] = file
    video = files["target_video"]
    with io.BufferedReader(NamedReader(video, "target_video")) as named:
        info = probe_video(named)
    max_s, max_frame = limits.max_duration_s, limits.max_frame_pixels
    if max_s is not None and info.duration_s > max_s:
        raise PayloadTooLargeError(
            f"target_video: {info.duration_s:.1f} s long, over the limit of {max_s:g} s"
        )
    if max_frame is not None and info.width * info.height > max_frame:
        raise PayloadTooLargeError(
            f"target_video: {info.width}x{info.height} frames are over the limit of {max_frame} pixels"
        )
    stored[f"target.{_VIDEO_EXTENSIONS[info.media_type]}"] = video
    return CheckedUploads(files=stored, video=info)


@dataclass(frozen=True)
class JobForm:
    """A parsed job request: upload file objects (spooled to disk past 1 MiB) and the text fields."""

    files: Mapping[str, IO[bytes]]
    texts: Mapping[str, str]


@asynccontextmanager
async def read_job_form(request: Request, max_bytes: int, pace: UploadPace) -> AsyncIterator[JobForm]:
    """Read a multipart job request, enforcing ``max_bytes`` and ``pace`` while the body streams in. The
    uploads are temporary files, deleted when the block ends."""
    what = "source_image and target_video"
    async with read_multipart(request, max_bytes, JOB_FILE_FIELDS, what, pace) as form:
        yield JobForm(files={key: upload.file for key, upload in form.files.items()}, texts=form.texts)
