"""Model downloads with resume and hash verification (urllib only), and finding models for air-gapped use.

A download goes to ``<file>.part`` next to the final file and is resumed with an HTTP ``Range`` request
when a ``.part`` exists. Only a file whose size and sha256 match the catalogue is moved (atomically, with
:func:`os.replace`) to its final name, so a half-written file never appears under that name. Network
failures keep the ``.part`` for the next attempt; content that fails verification is deleted.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pipeline.catalogue import Catalogue, ModelSpec, file_sha256, resolve_model_file
from pipeline.errors import DownloadError, ModelNotFoundError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes)``; ``total_bytes`` is None when the size is unknown."""

USER_AGENT = "faceswap-serve-model-downloader/1"
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class _RangeNotSatisfiable(Exception):
    """The server answered 416 to a resume request."""


def download_model(
    spec: ModelSpec,
    models_dir: Path,
    *,
    allow_unverified: bool = False,
    progress: ProgressCallback | None = None,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``spec`` into ``models_dir`` and return the verified final path.

    An existing final file that matches the pinned size and sha256 is returned without network access.
    Raises :class:`ModelNotFoundError` when the spec has no URL, :class:`DownloadError` when the spec is
    unverified (unless ``allow_unverified``), on network errors (the ``.part`` is kept for resuming) and
    on size or hash mismatch (the ``.part`` is deleted).
    """
    models_dir = Path(models_dir)
    if spec.url is None:
        raise ModelNotFoundError(missing_model_message(spec, models_dir, (models_dir,)))
    if not spec.verified and not allow_unverified:
        raise DownloadError(
            f"model {spec.name!r} has no pinned sha256 and size in the catalogue, so its download "
            f"cannot be verified; refusing to fetch {spec.url} (allow unverified downloads to override)"
        )
    final = models_dir / spec.file
    if final.is_file():
        if not spec.verified:
            log.info("using existing %s (model %s is unverified, nothing to check)", final, spec.name)
            return final
        if final.stat().st_size == spec.size and file_sha256(final) == spec.sha256:
            log.info("%s is already present and verified", final)
            return final
        log.warning("%s does not match the catalogue's size/sha256; downloading it again", final)
    models_dir.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    _fetch(spec, spec.url, part, progress, timeout, chunk_size)
    _verify(spec, part)
    os.replace(part, final)
    log.info("downloaded %s to %s", spec.name, final)
    return final


def _fetch(
    spec: ModelSpec,
    url: str,
    part: Path,
    progress: ProgressCallback | None,
    timeout: float,
    chunk_size: int,
) -> None:
    """Transfer ``url`` into ``part``, resuming from its current length when the server allows."""
    offset = part.stat().st_size if part.is_file() else 0
    if spec.size is not None and offset > spec.size:
        log.warning("%s is larger than %s should be; starting again", part, spec.name)
        part.unlink()
        offset = 0
    if spec.size is not None and offset == spec.size:
        log.info("%s is complete from an earlier attempt; verifying it", part)
        return
    try:
        response = _open(spec, url, offset, timeout)
    except _RangeNotSatisfiable:
        log.warning("server refused to resume %s at byte %d; starting again", spec.name, offset)
        part.unlink()
        offset = 0
        response = _open(spec, url, 0, timeout)
    with response:
        if response.status == 206:
            start, total = _parse_content_range(spec, response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"downloading {spec.name}: asked to resume at byte {offset}, the server sent from "
                    f"byte {start}; the partial file was discarded"
                )
            mode = "ab"
        else:
            if offset:
                log.info("server ignored the resume request for %s; downloading from the start", spec.name)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.strip().isdigit() else spec.size
            mode = "wb"
        done = offset
        overflow = False
        with open(part, mode) as out:
            if progress is not None:
                progress(done, total)
            while True:
                try:
                    chunk = response.read(chunk_size)
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(
                        f"downloading {spec.name} from {url} failed after {done} bytes ({exc}); "
                        f"{part} is kept and the next attempt resumes it"
                    ) from exc
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if spec.size is not None and done > spec.size:
                    overflow = True
                    break
                if progress is not None:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    if overflow:
        part.unlink()
        raise DownloadError(
            f"downloading {spec.name} from {url}: the server sent more than the expected {spec.size} "
            "bytes; the download was discarded"
        )
    if total is not None and done < total:
        raise DownloadError(
            f"downloading {spec.name} from {url}: the connection ended after {done} of {total} bytes; "
            f"{part} is kept and the next attempt resumes it"
        )


def _open(spec: ModelSpec, url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            raise _RangeNotSatisfiable from exc
        raise DownloadError(f"downloading {spec.name} from {url}: HTTP {exc.code} {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(f"downloading {spec.name} from {url}: {reason}") from exc
    if response.status not in (200, 206):
        response.close()
        raise DownloadError(f"downloading {spec.name} from {url}: unexpected HTTP {response.status}")
    return response


def _parse_content_range(spec: ModelSpec, header: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE_RE.match(header or "")
    if match is None:
        raise DownloadError(f"downloading {spec.name}: bad Content-Range {header!r} in a 206 response")
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


def _verify(spec: ModelSpec, part: Path) -> None:
    """Check a finished ``.part`` against the pins; delete it and raise on mismatch."""
    actual_size = part.stat().st_size
    if spec.size is not None and actual_size != spec.size:
        part.unlink()
        raise DownloadError(
            f"downloaded {spec.name} is {actual_size} bytes, expected {spec.size}; the download was discarded"
        )
    actual = file_sha256(part)
    if spec.sha256 is None:
        log.warning(
            "downloaded unverified model %s: sha256 %s, %d bytes (pin these in the catalogue)",
            spec.name,
            actual,
            actual_size,
        )
    elif actual != spec.sha256:
        part.unlink()
        raise DownloadError(
            f"downloaded {spec.name} has the wrong sha256: expected {spec.sha256}, got {actual}; "
            "the download was discarded"
        )


def missing_model_message(spec: ModelSpec, models_dir: Path, searched: Sequence[Path]) -> str:
    """What to do when ``spec``'s file is absent: the file name, where to put it and where to get it."""
    pins = []
    if spec.size is not None:
        pins.append(f"{spec.size} bytes")
    if spec.sha256 is not None:
        pins.append(f"sha256 {spec.sha256}")
    pinned = f" ({', '.join(pins)})" if pins else ""
    where = (
        f"download it from {spec.url}"
        if spec.url is not None
        else "it cannot be downloaded automatically; obtain it from its source"
    )
    looked = ", ".join(str(d) for d in searched)
    return (
        f"model {spec.name!r} is not installed: put {spec.file}{pinned} into {models_dir}; {where} "
        f"(licence: {spec.licence}; searched: {looked})"
    )


def ensure_models(
    names: Iterable[str],
    catalogue: Catalogue,
    models_dir: Path,
    download: bool = False,
    *,
    search_dirs: Sequence[Path] = (),
    verify: bool = False,
    allow_unverified: bool = False,
    progress_for: Callable[[ModelSpec], ProgressCallback | None] | None = None,
    timeout: float = 30.0,
) -> dict[str, Path]:
    """Path of each named model, looked up in ``models_dir`` then ``search_dirs``.

    Files are matched by size (and by sha256 with ``verify``). Missing models are downloaded into
    ``models_dir`` when ``download`` is set and the model has a URL; otherwise one
    :class:`ModelNotFoundError` lists every missing file with its URL and the directory to put it in.
    ``progress_for(spec)`` supplies a progress callback per download.
    """
    models_dir = Path(models_dir)
    dirs = list(dict.fromkeys([models_dir, *(Path(d) for d in search_dirs)]))
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        spec = catalogue.get(name)
        path = resolve_model_file(spec, dirs, verify=verify)
        if path is None and download and spec.url is not None:
            progress = progress_for(spec) if progress_for is not None else None
            path = download_model(
                spec, models_dir, allow_unverified=allow_unverified, progress=progress, timeout=timeout
            )
        if path is None:
            missing.append(missing_model_message(spec, models_dir, dirs))
        else:
            found[name] = path
    if missing:
        hint = (
            ""
            if download
            else "\nTo fetch those with a URL: `faceswap models download NAME`, or --download "
            "(the Serve app's `download: true`)."
        )
        raise ModelNotFoundError("\n".join(missing) + hint)
    return found
