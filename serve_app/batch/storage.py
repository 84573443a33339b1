"""Where a batch job reads and writes: local paths or ``pyarrow.fs`` URIs (``file://``, ``s3://``, ...).

Remote inputs are copied to a local staging folder before decoding (PyAV reads local files), and outputs
are written locally and uploaded when they are complete, so a failed target never leaves a partial remote
file.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import InvalidInputError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Image files a folder-of-frames target is made of (sorted by name)."""


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or a ``pyarrow.fs`` URI. Local paths are made absolute."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InvalidInputError(f"{uri}: unsupported or invalid URI ({exc})") from None


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def same_location(a: str, b: str) -> bool:
    """Whether two paths or URIs name the same file."""
    (fs_a, path_a), (fs_b, path_b) = resolve_uri(a), resolve_uri(b)
    return type(fs_a) is type(fs_b) and path_a.rstrip("/") == path_b.rstrip("/")


def file_type(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileType:
    try:
        return fs.get_file_info(path).type
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot read ({exc})") from None


def read_bytes(uri: str) -> bytes:
    """The whole file at ``uri``; InvalidInputError when it is missing or unreadable."""
    fs, path = resolve_uri(uri)
    if file_type(fs, path, uri) != pafs.FileType.File:
        raise InvalidInputError(f"{uri}: no such file")
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot read ({exc})") from None


def stage_in(fs: pafs.FileSystem, path: str, uri: str, staging: Path) -> str:
    """A local path for the file ``path``: itself on a local filesystem, else a copy in ``staging``."""
    if is_local(fs):
        return path
    local = staging / PurePosixPath(path).name
    staging.mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot download ({exc})") from None
    return str(local)


def stage_frame_files(fs: pafs.FileSystem, path: str, uri: str, staging: Path) -> list[str]:
    """Local paths of the frame files (:data:`FRAME_SUFFIXES`) of the folder ``path``, in name order."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot list ({exc})") from None
    names = sorted(
        PurePosixPath(i.path).name
        for i in infos
        if i.type == pafs.FileType.File and PurePosixPath(i.path).suffix.lower() in FRAME_SUFFIXES
    )
    if not names:
        raise InvalidInputError(f"{uri}: no frames ({', '.join(FRAME_SUFFIXES)} files) in this folder")
    return [stage_in(fs, f"{path.rstrip('/')}/{n}", f"{uri.rstrip('/')}/{n}", staging) for n in names]


def join(base: str, name: str) -> str:
    """``name`` inside the folder ``base`` (a path or URI)."""
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)


def local_output(uri: str, staging: Path) -> tuple[str, bool]:
    """Where to write the output ``uri``: (path, whether it must be uploaded to ``uri`` when done). A
    local output's folder is created; a remote one is written in ``staging``."""
    fs, path = resolve_uri(uri)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path, False
    staging.mkdir(parents=True, exist_ok=True)
    return str(staging / PurePosixPath(path).name), True


def upload(local: str, uri: str) -> None:
    """Copy the local file ``local`` to ``uri`` (creating its folder)."""
    fs, path = resolve_uri(uri)
    try:
        fs.create_dir(str(PurePosixPath(path).parent), recursive=True)
        pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except OSError as exc:
        raise InvalidInputError(f"{uri}: cannot upload ({exc})") from None
