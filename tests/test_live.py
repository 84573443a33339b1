"""Live swapping (pipeline.live, serve_app.live, serve_app.live_protocol, serve_app.tickets) and the
identity routes (serve_app.identities).

Unit tier (no Ray): the latest-frame mailbox, the messages and close codes, tickets, and a live stream of
frames in process with the default no-download models (keyframe detection, pixels). Serve tier: the lite
profile on a real local Ray with two API keys: the identity routes, then ``WS /api/v1/live`` through
Serve's proxy: frames in order, auth by header and by ticket, latest-frame-wins backpressure and a close
code for every error. Frames are made from the bundled photos (no ../shared needed)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from pipeline.bundled import bundled_image
from pipeline.errors import (
    InvalidInputError,
    InvalidOptionError,
    NoFaceError,
    OverloadedError,
    PayloadTooLargeError,
)
from pipeline.imageio import read_image_file
from pipeline.live import LatestFrame, LiveStream, resize_identity
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import PipelineConfig, build_models
from pipeline.sessions import SessionConfig
from pipeline.types import ImageBGR
from serve_app.errors import ForbiddenError, InternalError, UnauthorizedError
from serve_app.live_protocol import (
    FrameHeader,
    Tracking,
    close_for,
    close_reason,
    frame_message,
    parse_setup,
    read_frame_message,
)
from serve_app.tickets import TicketSigner, ticket_secret
from tests.local_ray import assert_error

SOURCE = "codait_luciano_cc0.png"
SCENE = "astronaut_eileen_collins_nasa.png"
DEFAULTS = Tracking(detect_every=4, max_gap=5, smoothing=0.5)
KEY_A = "live-test-key-a-0123456789"
KEY_B = "live-test-key-b-0123456789"


def clip(count: int, size: tuple[int, int] = (640, 480)) -> list[ImageBGR]:
    """``count`` frames of the bundled astronaut photo (a face about 90 px wide) panning slowly across a
    grey ``size`` (width, height) frame."""
    photo = read_image_file(str(bundled_image(SCENE)))
    photo = cv2.resize(photo, (400, 400), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(count):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        x, y = 60 + 3 * i, 40 + i
        frame[y : y + 400, x : x + 400] = photo
        frames.append(frame)
    return frames


def jpeg(image: ImageBGR, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


# -- the mailbox ----------------------------------------------------------------------------------------
def test_the_latest_frame_wins_and_the_replaced_ones_are_counted() -> None:
    async def scenario() -> list[Any]:
        box: LatestFrame[int] = LatestFrame()
        assert box.put(1) is False
        assert box.put(2) is True and box.put(3) is True
        first = await box.take()
        waiter = asyncio.create_task(box.take())
        await asyncio.sleep(0.01)
        assert not waiter.done(), "take() waits for the next item"
        box.put(4)
        second = await waiter
        box.put(5)
        box.close()
        return [first, second, await box.take(), await box.take(), box.dropped]

    assert asyncio.run(scenario()) == [3, 4, 5, None, 2]


# -- messages and close codes ---------------------------------------------------------------------------
def test_the_setup_message_is_parsed_and_checked() -> None:
    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    setup = parse_setup(
        json.dumps(
            {
                "source_image": "data:image/png;base64," + base64.b64encode(png).decode(),
                "options": {"face_selector_mode": "many", "blend_ratio": "0.5"},
                "tracking": {"detect_every": 2, "smoothing": 0},
            }
        ),
        DEFAULTS,
        1_000_000,
    )
    assert setup.source_image == png and setup.identity_id is None and setup.reference_image is None
    assert setup.options == SwapOptions(face_selector_mode="many", blend_ratio=0.5)
    assert setup.tracking == Tracking(detect_every=2, max_gap=5, smoothing=0.0)
    assert parse_setup('{"identity_id": "abc"}', DEFAULTS, 100).tracking == DEFAULTS
    bad = [
        ("not json", InvalidInputError, "JSON object"),
        ("[1]", InvalidInputError, "JSON object"),
        ("{}", InvalidInputError, "exactly one"),
        ('{"identity_id": "a", "source_image": "AAAA"}', InvalidInputError, "exactly one"),
        ('{"identity_id": "a", "extra": 1}', InvalidInputError, "unknown key"),
        ('{"source_image": "%%%"}', InvalidInputError, "base64"),
        ('{"identity_id": "a", "options": {"blend_ratio": 7}}', InvalidOptionError, "blend_ratio"),
        ('{"identity_id": "a", "options": {"nope": 1}}', InvalidOptionError, "unknown option"),
        ('{"identity_id": "a", "tracking": {"detect_every": 0}}', InvalidOptionError, "detect_every"),
        ('{"identity_id": "a", "tracking": {"max_gap": 1.5}}', InvalidOptionError, "integer"),
        ('{"identity_id": "a", "tracking": {"speed": 1}}', InvalidOptionError, "unknown key"),
    ]
    for text, error, match in bad:
        with pytest.raises(error, match=match):
            parse_setup(text, DEFAULTS, 1000)
    with pytest.raises(PayloadTooLargeError):
        parse_setup('{"identity_id": "' + "a" * 100 + '"}', DEFAULTS, 50)


def test_a_frame_message_round_trips() -> None:
    header = FrameHeader(7, 1, [[1.0, 2.0, 3.0, 4.0]], True, 123.5, 45.6, 9, 2)
    image = jpeg(np.zeros((8, 8, 3), np.uint8))
    decoded, data = read_frame_message(frame_message(header, image))
    assert data == image
    assert decoded == {
        "seq": 7, "faces": 1, "boxes": [[1.0, 2.0, 3.0, 4.0]], "detected": True, "server_time": 123.5,
        "server_ms": 45.6, "received": 9, "dropped": 2,
    }  # fmt: skip
    with pytest.raises(InvalidInputError):
        read_frame_message(b"\x00\x00\x01\x00{}")


def test_every_error_has_a_close_code_and_a_short_reason() -> None:
    assert close_for(InvalidInputError("bad")) == (4400, "invalid_input: bad")
    assert close_for(UnauthorizedError("who"))[0] == 4401
    assert close_for(ForbiddenError("no"))[0] == 4403
    assert close_for(NoFaceError("none"))[0] == 4422
    assert close_for(PayloadTooLargeError("big"))[0] == 4413
    assert close_for(OverloadedError("busy"))[0] == 1013
    assert close_for(InternalError("internal error")) == (1011, "internal_error: internal error")
    long = close_reason("é" * 200)
    assert len(long.encode()) <= 123 and long.endswith("...")
    assert close_reason("short") == "short"


# -- tickets --------------------------------------------------------------------------------------------
def test_tickets_are_signed_short_lived_and_used_once() -> None:
    now = [1000.0]
    signer = TicketSigner(ticket_secret([KEY_A, KEY_B]), 30, clock=lambda: now[0])
    ticket, expires = signer.issue("key-12345678")
    assert expires == 1030.0 and all(c.isalnum() or c in "-_." for c in ticket)
    other_replica = TicketSigner(ticket_secret([KEY_B, KEY_A]), 30, clock=lambda: now[0])
    assert other_replica.redeem(ticket) == "key-12345678", "any replica with the same keys accepts it"
    assert signer.redeem(ticket) == "key-12345678"
    with pytest.raises(ForbiddenError, match="used"):
        signer.redeem(ticket)
    with pytest.raises(ForbiddenError, match="not valid"):
        TicketSigner(ticket_secret([KEY_A]), 30, clock=lambda: now[0]).redeem(ticket)
    payload, _, signature = signer.issue("key-12345678")[0].partition(".")
    with pytest.raises(ForbiddenError, match="not valid"):
        signer.redeem(f"{payload}x.{signature}")
    with pytest.raises(UnauthorizedError, match="malformed"):
        signer.redeem("no-dot-here")
    late, _ = signer.issue("key-12345678")
    now[0] += 31
    with pytest.raises(ForbiddenError, match="expired"):
        signer.redeem(late)


# -- a live stream in process ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite() -> SwapOrchestrator:
    session = SessionConfig(("cpu",), intra_op_threads=1)
    config = PipelineConfig(profile="lite", enhance=False, session=session)
    return SwapOrchestrator(build_models(config).ports())


def test_a_live_stream_swaps_every_frame_with_keyframe_detection(lite: SwapOrchestrator) -> None:
    source = read_image_file(str(bundled_image(SOURCE)))
    identity, _ = asyncio.run(lite.identify(source, SwapOptions()))
    small = resize_identity(identity, 256)
    assert small.value.shape == (256, 256, 3) and resize_identity(small, 256) is small
    frames = clip(12)

    async def run() -> tuple[list[Any], int]:
        with ThreadPoolExecutor(1) as steps:
            stream = LiveStream(
                lite, identity, SwapOptions(), steps=steps, detect_every=4, max_gap=5, smoothing=0.5
            )
            out = [await stream.process(frame) for frame in frames]
            calls = stream.detector_calls
            # the face leaves: coasted on its motion for up to max_gap frames, then the track ends
            empty = [await stream.process(np.full_like(frames[0], 90)) for _ in range(7)]
            return [*out, *empty], calls

    results, calls = asyncio.run(run())
    assert calls <= 3, f"the detector ran on {calls} of 12 frames (keyframes every 4)"
    assert [r.detected for r in results[:5]] == [True, False, False, False, True]
    for frame, result in zip(frames, results, strict=False):
        assert len(result.faces) == 1 and result.tracked == 1
        x1, y1, x2, y2 = (int(v) for v in result.faces[0].bbox)
        inside = np.abs(result.image[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean()
        assert inside > 4.0, "the face was not swapped"
        assert np.array_equal(result.image[:, :30], frame[:, :30]), "pixels far from the face changed"
    assert len(results[12].faces) == 1, "a face missed for a frame is coasted"
    assert results[-1].faces == [] and np.array_equal(results[-1].image, np.full_like(frames[0], 90))


def test_after_a_cut_the_face_is_swapped_where_it_is_now(lite: SwapOrchestrator) -> None:
    """A jump (a cut, or a looping camera clip): the old track coasts on its motion for a few frames, but
    the detector finds the face elsewhere at once, and that is where it is swapped."""
    source = read_image_file(str(bundled_image(SOURCE)))
    identity, _ = asyncio.run(lite.identify(source, SwapOptions()))
    before, after = clip(6), clip(30)[24:]  # the photo jumps by 72 px right and 24 px down

    async def run() -> list[Any]:
        with ThreadPoolExecutor(1) as steps:
            stream = LiveStream(
                lite, identity, SwapOptions(), steps=steps, detect_every=4, max_gap=5, smoothing=0.5
            )
            return [await stream.process(frame) for frame in before + after]

    results = asyncio.run(run())
    truth = asyncio.run(lite.detect(after, 0.5))
    for result, found in zip(results[len(before) :], truth, strict=True):
        assert len(result.faces) == 1
        centre = (result.faces[0].bbox[:2] + result.faces[0].bbox[2:]) / 2
        expected = (found[0].bbox[:2] + found[0].bbox[2:]) / 2
        assert np.linalg.norm(centre - expected) < 10, (centre, expected)


# -- on a real Serve app --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A fresh local Ray with Serve; custom metrics exported every second."""
    from tests.local_ray import free_port, local_serve

    port = free_port()
    metrics = {"_metrics_export_port": port, "_system_config": {"metrics_report_interval_ms": 1000}}
    with local_serve(num_cpus=2, num_gpus=0, **metrics) as url:
        yield {"url": url, "metrics": f"http://127.0.0.1:{port}/metrics"}


@pytest.fixture(scope="module")
def app(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The lite profile with two API keys and small live limits, at ``/``."""
    from ray import serve

    from serve_app.app import build_app

    args = {
        "profile": "lite",
        "providers": ["cpu"],
        "enhance": False,
        "auth": {"api_keys": [KEY_A, KEY_B]},
        "identities": {"store_uri": str(tmp_path_factory.mktemp("identities"))},
        "live": {
            "max_sessions_per_key": 2,
            "idle_timeout_s": 4,
            "max_frame_bytes": 200_000,
            "max_fps": 240,
            "ticket_ttl_s": 30,
        },
        "ingress": {"num_cpus": 0, "provenance": False},
        "detector": {"num_cpus": 0},
        "swapper": {"num_cpus": 0},
        "landmarker": {"num_cpus": 0},
    }
    serve.run(build_app(args), name="live", route_prefix="/")
    return cluster["url"]


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _identity(url: str, key: str = KEY_A, **fields: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/api/v1/identities",
        files={"source_image": (SOURCE, bundled_image(SOURCE).read_bytes())},
        data=fields,
        headers=_headers(key),
        timeout=120,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _swap(url: str, key: str, **fields: Any) -> httpx.Response:
    files = {"target_image": (SCENE, bundled_image(SCENE).read_bytes())}
    if fields.pop("with_source", False):
        files["source_image"] = (SOURCE, bundled_image(SOURCE).read_bytes())
    return httpx.post(
        f"{url}/api/v1/swap", files=files, data=fields, headers={**_headers(key), "Accept": "image/png"},
        timeout=120,
    )  # fmt: skip


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_identity_routes_and_a_swap_by_identity(app: str) -> None:
    made = _identity(app)
    identity_id = made["identity_id"]
    assert made["swapper"] == "mesh_classical" and made["kind"] == "crop" and made["ttl_s"] == 3600
    assert httpx.get(f"{app}/api/v1/identities/{identity_id}", headers=_headers(KEY_A)).json() == made
    by_source = _swap(app, KEY_A, with_source=True)
    by_identity = _swap(app, KEY_A, identity_id=identity_id)
    assert by_source.status_code == by_identity.status_code == 200, by_identity.text
    pixels = [
        cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR) for r in (by_source, by_identity)
    ]
    assert np.array_equal(pixels[0], pixels[1]), "a swap by identity differs from the swap by source image"

    other = httpx.get(f"{app}/api/v1/identities/{identity_id}", headers=_headers(KEY_B))
    assert_error(other, 404, "identity_not_found")
    assert_error(_swap(app, KEY_B, identity_id=identity_id), 404, "identity_not_found")
    assert_error(_swap(app, KEY_A, identity_id=identity_id, with_source=True), 400, "invalid_input")
    assert_error(_swap(app, KEY_A, identity_id="not-an-id"), 400, "invalid_input")
    assert_error(httpx.get(f"{app}/api/v1/identities/{identity_id}"), 401, "unauthorized")

    blank = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    for files, status, code in (
        ({"source_image": ("blank.png", blank)}, 422, "no_face"),
        ({"source_image": ("notes.txt", b"hello")}, 415, "unsupported_media_type"),
        ({"other": ("x.png", blank)}, 400, "invalid_input"),
    ):
        response = httpx.post(f"{app}/api/v1/identities", files=files, headers=_headers(KEY_A), timeout=60)
        assert_error(response, status, code)

    deleted = httpx.delete(f"{app}/api/v1/identities/{identity_id}", headers=_headers(KEY_A))
    assert deleted.status_code == 204
    assert_error(_swap(app, KEY_A, identity_id=identity_id), 404, "identity_not_found")

    short = _identity(app, ttl_s="1")
    assert short["ttl_s"] == 1
    time.sleep(1.5)
    gone = httpx.get(f"{app}/api/v1/identities/{short['identity_id']}", headers=_headers(KEY_A))
    assert_error(gone, 404, "identity_not_found")


# -- the WebSocket --------------------------------------------------------------------------------------
def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/api/v1/live"


async def _connect(
    url: str, headers: dict[str, str] | None = None, protocols: list[str] | None = None
) -> Any:
    import websockets

    return await websockets.connect(
        _ws_url(url),
        subprotocols=[websockets.Subprotocol(p) for p in protocols or ["faceswap.v1"]],
        additional_headers=headers or {},
        max_size=2**24,
        open_timeout=60,
    )


async def _closed_with(ws: Any, send: Sequence[str | bytes] = (), wait_s: float = 60) -> tuple[int, str]:
    """Send ``send``, then read until the server closes; its close code and reason."""
    import websockets

    for message in send:
        await ws.send(message)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), wait_s)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_live_frames_come_back_swapped_in_order(app: str) -> None:
    identity_id = _identity(app)["identity_id"]
    frames = clip(6)

    async def session() -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]], str | None]:
        ws = await _connect(app, _headers(KEY_A))
        async with ws:
            await ws.send(json.dumps({"identity_id": identity_id, "options": {"blend_ratio": 1}}))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 120))
            answers = []
            for frame in frames:  # one at a time: nothing is dropped
                await ws.send(jpeg(frame))
                answers.append(read_frame_message(await asyncio.wait_for(ws.recv(), 120)))
            return ready, answers, ws.subprotocol

    ready, answers, subprotocol = asyncio.run(session())
    assert subprotocol == "faceswap.v1"
    assert ready["type"] == "ready" and ready["identity_id"] == identity_id and ready["crop_size"] == 256
    assert ready["components"]["swapper"] == "mesh_classical" and "classical" in ready["notice"]
    assert ready["limits"]["max_frame_bytes"] == 200_000
    assert [h["seq"] for h, _ in answers] == list(range(len(frames)))
    assert [h["dropped"] for h, _ in answers] == [0] * len(frames)
    assert answers[0][0]["detected"] and not answers[1][0]["detected"]
    for frame, (header, data) in zip(frames, answers, strict=True):
        assert header["faces"] == 1 and header["server_ms"] > 0
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == frame.shape
        x1, y1, x2, y2 = (int(v) for v in header["boxes"][0])
        inside = np.abs(image[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean()
        outside = np.abs(image[:, :40].astype(int) - frame[:, :40]).mean()
        assert inside > 4.0 and outside < 3.0, (inside, outside)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_live_backpressure_drops_frames_and_the_latest_wins(app: str) -> None:
    identity_id = _identity(app)["identity_id"]
    data = [jpeg(frame) for frame in clip(30)]

    async def session() -> list[dict[str, Any]]:
        ws = await _connect(app, _headers(KEY_A))
        async with ws:
            await ws.send(json.dumps({"identity_id": identity_id}))
            await asyncio.wait_for(ws.recv(), 120)
            for frame in data:  # all at once: far faster than they are swapped
                await ws.send(frame)
            headers: list[dict[str, Any]] = []
            while not headers or headers[-1]["seq"] < len(data) - 1:
                headers.append(read_frame_message(await asyncio.wait_for(ws.recv(), 120))[0])
            return headers

    headers = asyncio.run(session())
    seqs = [h["seq"] for h in headers]
    assert seqs == sorted(set(seqs)) and seqs[-1] == len(data) - 1, "answers out of order, or the last lost"
    assert len(headers) < len(data) and headers[-1]["received"] == len(data)
    assert headers[-1]["dropped"] == len(data) - len(headers), "every frame is answered or counted as dropped"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_live_tickets_authenticate_a_browser(app: str) -> None:
    answer = httpx.post(f"{app}/api/v1/live/tickets", headers=_headers(KEY_B), timeout=30)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["subprotocols"] == ["faceswap.v1", f"ticket.{body['ticket']}"] and body["ttl_s"] == 30
    assert_error(httpx.post(f"{app}/api/v1/live/tickets", timeout=30), 401, "unauthorized")
    source = base64.b64encode(bundled_image(SOURCE).read_bytes()).decode()

    async def sessions() -> tuple[dict[str, Any], tuple[int, str]]:
        ws = await _connect(app, protocols=body["subprotocols"])
        async with ws:
            await ws.send(json.dumps({"source_image": source}))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 120))
        again = await _connect(app, protocols=body["subprotocols"])
        return ready, await _closed_with(again)

    ready, (code, reason) = asyncio.run(sessions())
    assert ready["type"] == "ready" and ready["identity_id"] is None
    assert code == 4403 and "used already" in reason


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_live_errors_close_with_their_codes(app: str) -> None:
    identity_id = _identity(app)["identity_id"]
    setup = json.dumps({"identity_id": identity_id})
    blank_png = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    blank = base64.b64encode(blank_png).decode()
    frame = jpeg(clip(1)[0])

    async def closes() -> dict[str, tuple[int, str]]:
        found = {}
        found["no key"] = await _closed_with(await _connect(app))
        found["wrong key"] = await _closed_with(await _connect(app, _headers("not-a-key-of-this-service")))
        forged = ["faceswap.v1", "ticket.x.y"]
        found["bad ticket"] = await _closed_with(await _connect(app, protocols=forged))
        a = _headers(KEY_A)
        found["not json"] = await _closed_with(await _connect(app, a), ["{nope"])
        found["binary setup"] = await _closed_with(await _connect(app, a), [b"\x00"])
        found["unknown identity"] = await _closed_with(
            await _connect(app, a), [json.dumps({"identity_id": "0" * 32})]
        )
        found["other key's identity"] = await _closed_with(await _connect(app, _headers(KEY_B)), [setup])
        found["no face"] = await _closed_with(await _connect(app, a), [json.dumps({"source_image": blank})])
        found["text frame"] = await _closed_with(await _connect(app, a), [setup, "hello"])
        gif = b"GIF89a" + b"\x00" * 64
        found["not an image"] = await _closed_with(await _connect(app, a), [setup, gif])
        huge = b"\xff\xd8" + b"\x00" * 300_000
        found["too large"] = await _closed_with(await _connect(app, a), [setup, huge])
        found["idle"] = await _closed_with(await _connect(app, a), [setup])
        first, second = await _connect(app, a), await _connect(app, a)
        await first.send(setup)
        await second.send(setup)
        await asyncio.wait_for(first.recv(), 120)
        await asyncio.wait_for(second.recv(), 120)
        found["third session"] = await _closed_with(await _connect(app, a))
        await first.send(frame)
        await asyncio.wait_for(first.recv(), 120)
        await first.close()
        await second.close()
        return found

    found = asyncio.run(closes())
    plain = httpx.get(f"{app}/api/v1/live", headers=_headers(KEY_A), timeout=30)
    assert_error(plain, 426, "upgrade_required")
    expected = {
        "no key": (4401, "unauthorized"),
        "wrong key": (4403, "forbidden"),
        "bad ticket": (4403, "forbidden"),
        "not json": (4400, "invalid_input"),
        "binary setup": (4400, "invalid_input"),
        "unknown identity": (4404, "identity_not_found"),
        "other key's identity": (4404, "identity_not_found"),
        "no face": (4422, "no_face"),
        "text frame": (4415, "unsupported_media_type"),
        "not an image": (4415, "unsupported_media_type"),
        "too large": (4413, "payload_too_large"),
        "idle": (4408, "request_timeout"),
        "third session": (4429, "too_many_sessions"),
    }
    for case, (code, prefix) in expected.items():
        got_code, reason = found[case]
        assert (got_code, reason.split(":")[0]) == (code, prefix), (case, found[case])
        assert len(reason.encode()) <= 123


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def _metric(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels`` (None when there is none)."""
    found = None
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            tags = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            if labels.items() <= tags.items():
                found = (found or 0.0) + float(match["value"])
    return found


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_live_metrics_are_exported(app: str, cluster: dict[str, str]) -> None:
    identity_id = _identity(app)["identity_id"]
    data = [jpeg(frame) for frame in clip(12)]

    async def burst() -> None:
        ws = await _connect(app, _headers(KEY_A))
        async with ws:
            await ws.send(json.dumps({"identity_id": identity_id}))
            await asyncio.wait_for(ws.recv(), 120)
            for frame in data:
                await ws.send(frame)
            while read_frame_message(await asyncio.wait_for(ws.recv(), 120))[0]["seq"] < len(data) - 1:
                pass

    asyncio.run(burst())
    ws_ok = {"route": "/api/v1/live", "method": "WS", "status": "101"}
    wanted = {
        "frames": ("ray_faceswap_live_frame_latency_seconds_count", {}),
        "dropped": ("ray_faceswap_live_dropped_frames_total", {"reason": "backpressure"}),
        "sessions": ("ray_faceswap_live_sessions", {}),
        "requests": ("ray_faceswap_requests_total", ws_ok),
    }
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(cluster["metrics"], timeout=10).text
        values = {k: _metric(text, name, application="live", **tags) for k, (name, tags) in wanted.items()}
        # the gauge reads 0 once every connection has ended (it may show the last one for a report or two)
        seen = None not in values.values() and values["frames"] and values["requests"]
        if seen and values["sessions"] == 0:
            break
        assert time.monotonic() < deadline, values
        time.sleep(0.5)
    assert values["frames"] >= 1 and values["dropped"] >= 1 and values["requests"] >= 1


def test_the_live_args_are_checked() -> None:
    from serve_app.config import AppArgs, LiveArgs

    assert AppArgs.parse({}).live == LiveArgs()
    for bad in ({"max_fps": 0}, {"pipeline_depth": 0}, {"mesh_crop_size": 32}, {"unknown": 1}):
        with pytest.raises(InvalidOptionError, match="live"):
            AppArgs.parse({"live": bad})
    with pytest.raises(InvalidOptionError, match="ttl_s"):
        AppArgs.parse({"identities": {"ttl_s": 100, "max_ttl_s": 10}})
