"""The bad-input corpus (``tests/corpus.py``) against a real local Ray: every case gets its expected JSON
error (or a correct result where the input is valid), and the service answers a normal swap right after.

One local Ray (4 logical CPUs, 1 logical GPU) for the module with the ``corpus`` application at ``/``: the
project's test models, no enhancer, a 2 MB body limit (swaps and video jobs), a 4 M pixel limit and a 10 s
video limit. No rejected video job may leave anything in the job store. The case table (case, expected,
observed, the swap after it) is printed at the end of the module and written to
``<pytest tmp>/corpus-*/corpus_table.txt``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.local_ray import local_serve  # noqa: E402

pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
import httpx  # noqa: E402
from ray import serve  # noqa: E402

import pipeline.imageio as imageio  # noqa: E402
from pipeline.errors import PayloadTooLargeError  # noqa: E402
from serve_app.app import build_app  # noqa: E402
from tests import corpus  # noqa: E402
from tests.corpus import Case, CaseRequest, Inputs  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

INPUTS = Inputs()
SLOW_IDLE_S = 3.0
SLOW_GRACE_S = 2.0
"""The corpus app's upload pace: a body may pause 3 s, and must average 20 KB/s after 2 s."""
CASES = [
    *corpus.image_api_cases(INPUTS),
    *corpus.video_cases(INPUTS, source_field="source_image", video_field="target_video"),
    *corpus.task_id_cases(),
]


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(case, id=case.name) for case in cases]


def show(config: pytest.Config, text: str) -> None:
    """Write ``text`` to the terminal past pytest's output capture (as ``capsys.disabled()`` does)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in text.splitlines():
            reporter.write_line(line)


def render(rows: list[dict[str, str]]) -> str:
    """The case table, then the notes of the cases that have one."""
    columns = ("group", "case", "expected", "observed", "ms", "swap after", "verdict")
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    lines = [
        "  ".join(c.ljust(widths[c]) for c in columns).rstrip(),
        "  ".join("-" * widths[c] for c in columns),
    ]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    notes = [f"- {r['case']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


# -- fixtures ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class App:
    url: str
    store: Path
    """The video job store."""


@pytest.fixture(scope="module")
def app(test_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    store = tmp_path_factory.mktemp("corpus_jobs")
    with local_serve() as url:
        args = {
            "use_shared_assets": False,
            "overrides": {
                "detector": str(test_models["scrfd"]),
                "embedder": str(test_models["arcface"]),
                "swapper": str(test_models["inswapper_tint"]),
            },
            "enhance": False,
            "providers": ["cpu"],
            "intra_op_threads": 1,
            "ingress": {
                "num_cpus": 0,
                "max_upload_bytes": corpus.MAX_UPLOAD_BYTES,
                "max_pixels": corpus.MAX_PIXELS,
                "max_inflight_swaps": 4,
                "upload_idle_timeout_s": SLOW_IDLE_S,
                "upload_grace_s": SLOW_GRACE_S,
                "upload_min_bytes_per_s": 20_000,
            },
            "detector": {"num_cpus": 0},
            "embedder": {"num_cpus": 0},
            "swapper": {"num_cpus": 0},
            "jobs": {
                "store_uri": str(store),
                "max_upload_bytes": corpus.MAX_UPLOAD_BYTES,
                "max_duration_s": corpus.MAX_VIDEO_SECONDS,
                "preset": "ultrafast",
            },
        }
        serve.run(build_app(args), name="corpus", route_prefix="/")
        yield App(url=url, store=store)


@pytest.fixture(scope="module")
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict[str, str]]]:
    """Rows of the case table; printed and written to a file when the module's tests are done."""
    rows: list[dict[str, str]] = []
    yield rows
    if rows:
        table = render(rows)
        path = tmp_path_factory.mktemp("corpus") / "corpus_table.txt"
        path.write_text(table + "\n", encoding="utf-8")
        show(request.config, f"bad-input corpus: {len(rows)} cases (table in {path})\n{table}")


def _normal_swap(url: str) -> str:
    """``200`` when a normal swap succeeds with a correct result, else its status and what is wrong."""
    case = Case("normal swap", "check", INPUTS.with_fields(), corpus.OK)
    try:
        reply = corpus.send(url, case.request, timeout_s=30)
    except OSError as exc:
        return f"no answer ({type(exc).__name__})"
    found = corpus.problems(case, reply)
    return f"{reply.status} {found}" if found else str(reply.status)


def _observed(reply: corpus.Reply) -> str:
    code = ""
    if reply.headers.get("content-type", "").startswith("application/json"):
        try:
            body = reply.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = str(body.get("code") or "ok")
    return f"{reply.status} {code or reply.headers.get('content-type', '?')}"


def run_case(case: Case, app: App, ledger: list[dict[str, str]]) -> None:
    """Send ``case``, then a normal swap; record both; fail on any difference from what is expected."""
    url = app.url
    started = time.perf_counter()
    try:
        reply = corpus.send(url, case.request, timeout_s=60)
    except OSError as exc:  # connection reset, timeout: the service did not answer
        reply = corpus.Reply(status=0, headers={}, content=f"{type(exc).__name__}: {exc}".encode())
    elapsed_ms = 1000 * (time.perf_counter() - started)
    found = corpus.problems(case, reply)
    after = _normal_swap(url)
    ledger.append(
        {
            "group": case.group,
            "case": case.name,
            "expected": case.expected_text(),
            "observed": _observed(reply) if reply.status else reply.content.decode(),
            "ms": f"{elapsed_ms:.0f}",
            "swap after": after[:40],
            "verdict": "ok" if not found else "FAIL",
            "note": case.note,
        }
    )
    assert not found, f"{case.name}: {found}"
    assert after == "200", f"a normal swap after {case.name!r} answered {after}"
    assert sorted(os.listdir(app.store)) == [], "a rejected request left files in the job store"


# -- the corpus -------------------------------------------------------------------------------------------
def test_corpus_is_large_and_unique() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert any(c.valid for c in CASES) and sum(not c.valid for c in CASES) >= 30


@pytest.mark.parametrize("case", _params(CASES))
def test_case(case: Case, app: App, ledger: list[dict[str, str]]) -> None:
    run_case(case, app, ledger)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("plain-id.1:2_x", True),
        ("r" * 129, False),
        ("r" * 70_000, False),
        ("bad\xffid", False),
        ("a b", False),
    ],
)
def test_request_ids_are_bounded_and_echoed_only_when_plain(app: App, sent: str, kept: bool) -> None:
    headers = (("X-Request-ID", sent),)
    for request in (
        CaseRequest(method="GET", path="/healthz", headers=headers),
        INPUTS.with_fields(("detector_score", "0.99"), headers=headers),
    ):
        reply = corpus.send(app.url, request)
        echoed = reply.headers["x-request-id"]
        assert len(echoed) <= 128 and (echoed == sent) == kept, echoed[:200]
    body = reply.json()
    assert isinstance(body, dict) and body["code"] == "no_face" and body["request_id"] == echoed


def test_chunked_body_over_the_limit_is_stopped_while_streaming(app: App) -> None:
    """No Content-Length: the ingress counts the bytes as they arrive."""
    headers, body = corpus.encode_body(
        INPUTS.swap(os.urandom(corpus.MAX_UPLOAD_BYTES + 100_000), "big.png", "image/png")
    )

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    with httpx.Client(timeout=60) as client:
        response = client.post(f"{app.url}/api/v1/swap", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    reply = corpus.Reply(response.status_code, dict(response.headers), response.content)
    case = Case("chunked body over the limit", "form", CaseRequest(), corpus.TOO_LARGE)
    assert corpus.problems(case, reply) == []
    assert _normal_swap(app.url) == "200"


OVERSIZE = [c for c in CASES if c.group == "image" and c.expect == corpus.TOO_LARGE]


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case.name) for case in OVERSIZE],
)
def test_oversize_is_rejected_before_decoding(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decompression bombs are refused from their header: the decoder never runs (a 32-byte WebP of
    16383 x 16383 otherwise costs about 1.8 GB and 15 s of one core before its 413)."""

    def no_decode(*args: object) -> None:
        raise AssertionError("cv2.imdecode ran on an image over the pixel limit")

    data = dict(case.request.files)["target_image"][1]
    monkeypatch.setattr(imageio.cv2, "imdecode", no_decode)
    with pytest.raises(PayloadTooLargeError):
        imageio.decode_image(data, field="target_image", max_pixels=corpus.MAX_PIXELS)


def _slow_upload(url: str, pause_s: float, chunks: int) -> tuple[int, dict[str, str], bytes]:
    """A client that declares a 1 MB multipart body and then sends 16 bytes every ``pause_s`` seconds."""
    parsed = urllib.parse.urlsplit(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=60) as sock:
        head = (
            f"POST {corpus.SWAP_PATH} HTTP/1.1\r\nHost: {parsed.hostname}\r\n"
            "Content-Type: multipart/form-data; boundary=slow\r\nContent-Length: 1000000\r\n\r\n"
        )
        sock.sendall(head.encode() + b"--slow\r\n")
        try:
            for _ in range(chunks):
                time.sleep(pause_s)
                sock.sendall(b"x" * 16)
        except OSError:  # the server answered and closed: read what it said
            pass
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()


@pytest.mark.parametrize("pause_s", [0.5, SLOW_IDLE_S + 1.0], ids=["trickle", "stall"])
def test_slow_uploads_are_cut_with_408_and_block_no_one(app: App, pause_s: float) -> None:
    """Eight clients that declare a full body and trickle it (or stop) do not hold the swap slots (the body is
    read before a slot is taken) and are answered 408 JSON once under the pace; a normal swap goes through
    meanwhile."""
    with ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(_slow_upload, app.url, pause_s, 12) for _ in range(8)]
        time.sleep(0.5)
        assert _normal_swap(app.url) == "200"
        answers = [future.result(timeout=90) for future in slow]
    for status, headers, body in answers:
        assert status == 408, (status, body[:200])
        payload = json.loads(body)
        assert payload["code"] == "request_timeout" and payload["request_id"] == headers["x-request-id"]


def test_the_page_is_served_with_security_headers(app: App) -> None:
    reply = corpus.send(app.url, CaseRequest(method="GET", path="/"))
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/html")
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "'sha256-" in policy
    assert reply.headers["x-content-type-options"] == "nosniff" and reply.headers["x-frame-options"] == "DENY"
    api = corpus.send(app.url, CaseRequest(method="GET", path="/openapi.json"))
    assert api.headers["x-content-type-options"] == "nosniff"
