"""The downloader against a real HTTP server on 127.0.0.1 that supports (or ignores) Range requests."""

from __future__ import annotations

import hashlib
import io
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.catalogue import Catalogue, ModelSpec
from pipeline.download import download_model, ensure_models
from pipeline.errors import DownloadError, ModelNotFoundError
from pipeline.progress import Progress

PAYLOAD = random.Random(20261124).randbytes(300_000)
CHUNK = 16 * 1024


@dataclass
class ServerState:
    """What the test handler serves, and what it saw."""

    body: bytes = PAYLOAD
    honour_range: bool = True
    cut_after: int | None = None  # send only this many body bytes, then drop the connection (once)
    status: int = 200
    range_headers: list[str | None] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            header = self.headers.get("Range")
            state.range_headers.append(header)
            if state.status != 200:
                state.statuses.append(state.status)
                self.send_error(state.status)
                return
            body, start = state.body, 0
            match = re.fullmatch(r"bytes=(\d+)-", header or "")
            if match and state.honour_range:
                start = int(match.group(1))
                if start >= len(body):
                    state.statuses.append(416)
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                state.statuses.append(206)
            else:
                self.send_response(200)
                state.statuses.append(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if state.cut_after is not None:
                self.wfile.write(body[start : start + state.cut_after])
                state.cut_after = None
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/models/", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def spec_for(base_url: str, payload: bytes = PAYLOAD, **overrides: object) -> ModelSpec:
    values: dict[str, object] = {
        "name": "toy",
        "kind": "swapper",
        "family": "inswapper",
        "file": "toy.onnx",
        "url": base_url + "toy.onnx",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
        "licence": "test only",
        "input_size": 128,
        "template": "arcface_128",
        "mean": 0.0,
        "std": 255.0,
        "channel_order": "rgb",
    }
    values.update(overrides)
    return ModelSpec(**values)  # type: ignore[arg-type]


def test_good_download_is_verified_and_atomic(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    calls: list[tuple[int, int | None]] = []
    path = download_model(
        spec_for(base), tmp_path / "models", progress=lambda d, t: calls.append((d, t)), chunk_size=CHUNK
    )
    assert path == tmp_path / "models" / "toy.onnx"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "models" / "toy.onnx.part").exists()
    done = [d for d, _ in calls]
    assert done == sorted(set(done)) and len(done) > 2
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert {t for _, t in calls} == {len(PAYLOAD)}
    assert state.range_headers == [None]


def test_existing_verified_file_is_not_downloaded_again(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    (tmp_path / "toy.onnx").write_bytes(PAYLOAD)
    assert download_model(spec_for(base), tmp_path) == tmp_path / "toy.onnx"
    assert state.range_headers == []


def test_existing_wrong_file_is_replaced(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    (tmp_path / "toy.onnx").write_bytes(b"stale")
    assert download_model(spec_for(base), tmp_path).read_bytes() == PAYLOAD
    assert state.statuses == [200]


def test_corrupt_download_is_discarded(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    corrupt = bytearray(PAYLOAD)
    corrupt[1234] ^= 0xFF
    state.body = bytes(corrupt)
    spec = spec_for(base)
    with pytest.raises(DownloadError) as info:
        download_model(spec, tmp_path, chunk_size=CHUNK)
    assert spec.sha256 is not None and spec.sha256 in info.value.message
    assert hashlib.sha256(corrupt).hexdigest() in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_wrong_length_download_is_discarded(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.body = PAYLOAD[:-10]
    with pytest.raises(DownloadError, match="expected 300000"):
        download_model(spec_for(base), tmp_path, chunk_size=CHUNK)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_part_and_resumes(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    half = len(PAYLOAD) // 2
    state.cut_after = half
    spec = spec_for(base)
    part = tmp_path / "toy.onnx.part"
    with pytest.raises(DownloadError, match="resume"):
        download_model(spec, tmp_path, chunk_size=CHUNK)
    assert part.read_bytes() == PAYLOAD[:half]
    assert not (tmp_path / "toy.onnx").exists()

    calls: list[tuple[int, int | None]] = []
    path = download_model(spec, tmp_path, chunk_size=CHUNK, progress=lambda d, t: calls.append((d, t)))
    assert state.range_headers == [None, f"bytes={half}-"]
    assert state.statuses == [200, 206]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert not part.exists()
    assert calls[0] == (half, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_server_ignoring_range_restarts_from_zero(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.honour_range = False
    (tmp_path / "toy.onnx.part").write_bytes(b"garbage that is not a prefix of the payload")
    path = download_model(spec_for(base), tmp_path, chunk_size=CHUNK)
    assert state.range_headers == ["bytes=43-"] and state.statuses == [200]
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "toy.onnx.part").exists()


def test_range_not_satisfiable_restarts(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.body = PAYLOAD[:1000]
    spec = spec_for(base, PAYLOAD[:1000], size=None)  # unpinned size: the stale .part cannot be judged
    (tmp_path / "toy.onnx.part").write_bytes(b"x" * 5000)
    assert download_model(spec, tmp_path, allow_unverified=True).read_bytes() == PAYLOAD[:1000]
    assert state.statuses == [416, 200]


def test_http_error_is_a_download_error(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.status = 404
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_model(spec_for(base), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="toy"):
        download_model(spec_for("http://127.0.0.1:9/"), tmp_path, timeout=2.0)


def test_unverified_spec_is_refused_unless_allowed(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    spec = spec_for(base, sha256=None, size=None)
    with pytest.raises(DownloadError, match="no pinned sha256"):
        download_model(spec, tmp_path)
    assert state.range_headers == [] and list(tmp_path.iterdir()) == []
    assert download_model(spec, tmp_path, allow_unverified=True).read_bytes() == PAYLOAD


def test_spec_without_url_cannot_be_downloaded(tmp_path: Path) -> None:
    spec = spec_for("http://unused/", url=None)
    with pytest.raises(ModelNotFoundError) as info:
        download_model(spec, tmp_path)
    assert "toy.onnx" in info.value.message and str(tmp_path) in info.value.message


def catalogue_for(spec: ModelSpec) -> Catalogue:
    entry = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    return Catalogue.from_data({"version": 1, "models": [entry]})


def test_ensure_models_without_download_explains_what_to_do(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    spec = spec_for(base)
    with pytest.raises(ModelNotFoundError) as info:
        ensure_models(["toy"], catalogue_for(spec), tmp_path / "models")
    message = info.value.message
    assert "toy.onnx" in message and base + "toy.onnx" in message and str(tmp_path / "models") in message
    assert state.range_headers == []


def test_ensure_models_finds_downloads_and_searches(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    catalogue = catalogue_for(spec_for(base))
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "toy.onnx").write_bytes(PAYLOAD)
    found = ensure_models(["toy"], catalogue, tmp_path / "models", search_dirs=[extra], verify=True)
    assert found == {"toy": extra / "toy.onnx"} and state.range_headers == []

    seen: list[str] = []
    found = ensure_models(
        ["toy"], catalogue, tmp_path / "models", download=True, progress_for=lambda s: seen.append(s.name)
    )
    assert found == {"toy": tmp_path / "models" / "toy.onnx"}
    assert found["toy"].read_bytes() == PAYLOAD and seen == ["toy"]


def test_ensure_models_unknown_name() -> None:
    with pytest.raises(ModelNotFoundError, match="nope"):
        ensure_models(["nope"], catalogue_for(spec_for("http://unused/")), Path("/nonexistent"))


def test_progress_bar_counts_bytes_and_closes_at_the_total() -> None:
    stream = io.StringIO()
    bar = Progress("toy.onnx", "B", stream=stream)
    bar(0, 2 * 1024 * 1024)
    bar(1024 * 1024, 2 * 1024 * 1024)
    bar(2 * 1024 * 1024, 2 * 1024 * 1024)  # reaching the total closes the bar: the line ends
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert "toy.onnx" in text and "100%" in text and "2.00M/2.00M" in text
    grown = io.StringIO()
    frames = Progress("frames", "frame", stream=grown)
    frames(3, None)  # total unknown, then known
    frames(5, 10)
    frames.close()
    assert "5/10" in grown.getvalue() and "frame" in grown.getvalue()
