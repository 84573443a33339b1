"""The try-it page (serve_app/static/index.html) in a real headless Chromium against a real local Serve app
(lite profile, CPU): the form built from openapi.json, one request per double click, a swap of the two
bundled photos, the before/after view and download, and a non-image answered with the error text; the Live
tab with a fake camera playing a test clip (a .y4m made here from ../shared/assets/video with PyAV).

The service sends the page with a strict Content-Security-Policy (hashes of its one inline script and
style, serve_app.page), so a CSP-unfriendly change fails here. Screenshots go to out/browser/ (test
artefacts)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from pipeline.bundled import bundled_image
from serve_app.page import content_security_policy, inline_blocks
from tests.browser import CHROMIUM, CHROMIUM_ARGS, chromium_context, require_chromium
from tests.conftest import shared_assets_dir

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "serve_app" / "static" / "index.html"
SCREENSHOTS = REPO / "out" / "browser"
SOURCE = "astronaut_eileen_collins_nasa.png"
TARGET = "codait_luciano_cc0.png"
PREFIX = "/try"
"""Served below a route prefix, and opened without the trailing slash, as a proxy might."""
WAIT_MS = 120_000
SKIPPED_FIELDS = {"source_image", "target_image", "reference_image", "options", "identity_id"}
CAMERA_CLIP = Path("video") / "astronaut_pan_zoom_640x480_25fps_h264.mp4"
"""The fake camera's clip, below ../shared/assets: one face, 640 x 480, 25 fps, 75 frames."""
RECORDER = """() => {
  const swap = document.getElementById("swap"), progress = document.getElementById("progress");
  const status = document.getElementById("status");
  window.__states = [];
  const record = () => window.__states.push([swap.disabled, progress.hidden, status.textContent]);
  new MutationObserver(record).observe(document.body, {attributes: true, childList: true, subtree: true,
                                                       characterData: true});
  window.__violations = [];
  document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(e.violatedDirective));
}"""


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The lite profile (no ONNX, CPU) deployed at /try on a fresh local Ray with Serve."""
    require_chromium()
    identities = tmp_path_factory.mktemp("identities")
    from ray import serve

    from serve_app.app import build_app
    from tests.local_ray import local_serve

    args = {
        "profile": "lite",
        "providers": ["cpu"],
        "use_shared_assets": False,
        "enhance": False,
        "ingress": {"num_cpus": 0},
        "detector": {"num_cpus": 0},
        "swapper": {"num_cpus": 0},
        "landmarker": {"num_cpus": 0},
        "identities": {"store_uri": str(identities)},
    }
    with local_serve(num_cpus=2, num_gpus=0) as url:
        serve.run(build_app(args), name="try", route_prefix=PREFIX)
        yield f"{url}{PREFIX}"


@pytest.fixture(scope="module")
def page(app_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The page in a fresh headless Chromium, with the service's own CSP, its swap form rendered."""
    with chromium_context(
        tmp_path_factory.mktemp("chromium") / "profile", viewport={"width": 1200, "height": 900}
    ) as context:
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))

        answer = tab.goto(app_url)
        assert answer is not None
        assert answer.headers["content-security-policy"] == content_security_policy(PAGE.read_text())
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        tab.evaluate(RECORDER)
        tab.wait_for_selector("#options .field", timeout=WAIT_MS)
        yield tab
        assert errors == [], "uncaught errors in the page"


def test_page_is_csp_friendly() -> None:
    html = PAGE.read_text(encoding="utf-8")
    blocks = inline_blocks(html)
    assert len(blocks["script"]) == 1 and len(blocks["style"]) == 1
    assert html.count("<script") == 1 and html.count("<style") == 1
    assert not re.search(r"\s(on[a-z]+|style)\s*=", html, re.IGNORECASE)
    assert not re.search(r"\b(eval|Function|setTimeout\(\s*[\"'`])\s*\(", blocks["script"][0])
    assert "http://" not in html and "https://" not in html


def test_the_page_runs_under_a_strict_csp(page: Any) -> None:
    """The service's CSP is in force (a probe style attribute is refused) and the page itself, with its
    form rendered, caused no violation."""
    assert page.evaluate("window.__violations") == []
    probe = '<b id="probe" style="color: red"></b>'
    page.evaluate("html => document.body.insertAdjacentHTML('beforeend', html)", probe)
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__violations") == ["style-src-attr"]
    page.evaluate("document.getElementById('probe').remove(); window.__violations = []")


def test_the_form_follows_openapi(page: Any, app_url: str) -> None:
    spec = httpx.get(f"{app_url}/openapi.json", timeout=30).raise_for_status().json()
    schema = spec["paths"]["/api/v1/swap"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    options = {name: prop for name, prop in schema["properties"].items() if name not in SKIPPED_FIELDS}
    rendered = page.eval_on_selector_all("#options [name]", "els => els.map(e => [e.name, e.type, e.value])")
    assert [name for name, _, _ in rendered] == list(options)
    for name, kind, value in rendered:
        prop = options[name]
        if "enum" in prop:
            assert kind == "select-one" and value == str(prop.get("default", prop["enum"][0]))
            listed = page.eval_on_selector_all(f"#opt-{name} option", "els => els.map(e => e.value)")
            assert listed == [str(v) for v in prop["enum"]]
        elif prop["type"] == "boolean":
            assert kind == "checkbox"
        elif prop["type"] in ("number", "integer") and {"minimum", "maximum"} <= set(prop):
            assert kind == "range" and float(value) == pytest.approx(prop.get("default", prop["minimum"]))
            label = page.text_content(f"#opt-{name} + output")
            assert float(label) == pytest.approx(float(value))
        else:
            assert kind in ("text", "number") and value == str(prop.get("default", ""))
        assert page.get_attribute(f"#opt-{name}", "title") == prop.get("description")
        assert page.text_content(f"label[for='opt-{name}']")


def test_swap_the_bundled_photos(page: Any, app_url: str) -> None:
    target = cv2.imread(str(bundled_image(TARGET)), cv2.IMREAD_COLOR)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.method) if r.url.endswith("/api/v1/swap") else None)
    page.set_input_files("#source", str(bundled_image(SOURCE)))
    page.set_input_files("#target", str(bundled_image(TARGET)))
    page.dblclick("#swap")
    page.wait_for_selector("#result", state="visible", timeout=WAIT_MS)
    page.wait_for_function("!document.getElementById('swap').disabled", timeout=WAIT_MS)

    assert requests == ["POST"], "a double click sent more than one request"
    states = page.evaluate("window.__states")
    assert [True, False] in [s[:2] for s in states], "no disabled button and visible progress while waiting"
    assert any(re.fullmatch(r"Swapping\.\.\. \d+\.\d s", s[2]) for s in states), "no elapsed time shown"
    assert page.is_hidden("#progress") and page.is_hidden("#error")

    natural = page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [target.shape[1], target.shape[0]]
    status = page.text_content("#status")
    assert re.fullmatch(r"Swapped 1 face in \d+\.\d s with \S+ \+ \S*classical swapper\.", status), status
    notice = page.text_content("#notice")
    assert page.is_visible("#notice") and notice.startswith("The classical no-download swapper ran"), notice
    box = page.eval_on_selector("#result", "img => img.getBoundingClientRect().toJSON()")
    viewport = page.viewport_size
    assert 0 < box["width"] <= viewport["width"] and 0 < box["height"] <= 0.7 * viewport["height"] + 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "swap-result.png"), full_page=True)

    page.fill("#split", "30")
    split = page.eval_on_selector("#compare", "el => getComputedStyle(el).getPropertyValue('--split')")
    assert split == "30%"
    page.screenshot(path=str(SCREENSHOTS / "swap-before-after.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "faceswap-codait_luciano_cc0.jpg"
    saved = cv2.imdecode(np.fromfile(download.value.path(), np.uint8), cv2.IMREAD_COLOR)
    assert saved is not None and saved.shape == target.shape
    assert float(np.abs(saved.astype(np.int16) - target.astype(np.int16)).mean()) > 1.0, "nothing swapped"
    assert page.evaluate("window.__violations") == []


def test_a_non_image_shows_the_error_text(page: Any, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n", encoding="utf-8")
    page.set_input_files("#source", str(bundled_image(SOURCE)))
    page.set_input_files("#target", str(notes))
    page.click("#swap")
    page.wait_for_selector("#error", state="visible", timeout=WAIT_MS)
    page.wait_for_function("!document.getElementById('swap').disabled", timeout=WAIT_MS)
    error = page.text_content("#error")
    assert error == "target_image: not a JPEG, PNG or WebP image", error
    assert re.fullmatch(r"Failed after \d+\.\d s \(HTTP 415\)\.", page.text_content("#status"))
    assert page.is_hidden("#output") and page.is_hidden("#progress")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "swap-error.png"), full_page=True)
    assert page.evaluate("window.__violations") == []


# -- the Live tab ---------------------------------------------------------------------------------------
LIVE_WATCH = """() => {
  window.__violations = [];
  document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(e.violatedDirective));
}"""


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The test clip as a .y4m for Chromium's fake camera (written with PyAV), and its frames (BGR)."""
    import av

    video = shared_assets_dir() / CAMERA_CLIP
    if not video.is_file():
        pytest.skip(f"the camera clip {video} is missing: it comes from ../shared/assets")
    y4m = tmp_path_factory.mktemp("camera") / "clip.y4m"
    frames = []
    with av.open(str(video)) as source, av.open(str(y4m), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for frame in source.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return y4m, frames


@contextmanager
def camera_browser(profile_dir: Path, clip: Path) -> Iterator[Any]:
    """A headless system Chromium whose camera plays ``clip`` (granted without asking)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    profile_dir.mkdir(parents=True)
    camera = (
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    )
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, *camera],
            viewport={"width": 1200, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def _closest(image: np.ndarray, frames: list[np.ndarray]) -> np.ndarray:
    """The clip frame ``image`` was made from: the least mean absolute difference."""
    scores = [np.abs(cv2.resize(f, image.shape[1::-1]).astype(np.int16) - image).mean() for f in frames]
    return frames[int(np.argmin(scores))]


def test_the_live_tab_swaps_the_camera(
    app_url: str, camera_clip: tuple[Path, list[np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Webcam -> WS /api/v1/live -> the swapped stream on the page: frames come back changed in the face
    region (and nearly unchanged elsewhere), the counters move, Stop stops, and the page breaks no CSP.
    Its own browser runs in a thread of its own: playwright's sync API allows one per thread, and the
    module's ``page`` may be open."""
    profile = tmp_path_factory.mktemp("camera-browser") / "profile"
    with ThreadPoolExecutor(1) as thread:
        thread.submit(_live_tab, app_url, *camera_clip, profile).result()


def _live_tab(app_url: str, clip: Path, frames: list[np.ndarray], profile: Path) -> None:
    from pipeline.profiles import PipelineConfig, build_models

    detector = build_models(PipelineConfig(profile="lite", enhance=False)).detector
    with camera_browser(profile, clip) as context:
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(app_url)
        tab.evaluate(LIVE_WATCH)
        tab.wait_for_selector("#options .field", timeout=WAIT_MS)
        tab.click("#tab-live")
        assert tab.is_visible("#panel-live") and tab.is_hidden("#panel-image")
        assert tab.get_attribute("#tab-live", "aria-selected") == "true"
        tab.set_input_files("#live-source", str(bundled_image(TARGET)))
        tab.click("#live-start")
        frames_shown = "Number(document.getElementById('live-output').dataset.frames || 0)"
        # functions, not expressions: an expression would be evaluated by eval, which the CSP refuses
        tab.wait_for_function(f"() => {frames_shown} >= 5", timeout=WAIT_MS)
        status = tab.text_content("#live-status")
        expected = r"Live: swapping with \S+ \+ mesh_classical swapper at 640 x 480, up to 15 fps\."
        assert re.fullmatch(expected, status), status
        assert tab.text_content("#live-notice").startswith("The classical no-download swapper ran")
        readings = []
        for _ in range(4):
            time.sleep(1.0)
            readings.append(
                (
                    float(tab.text_content("#live-fps-shown")),
                    tab.evaluate(frames_shown),
                    tab.text_content("#live-latency"),
                    tab.text_content("#live-dropped"),
                )
            )
        fps = [r[0] for r in readings]
        assert min(fps) > 0 and len(set(fps)) > 1, f"the fps counter did not move: {readings}"
        assert readings[-1][1] > readings[0][1], "no new frames were shown"
        assert re.fullmatch(r"\d+ ms \(p95 \d+\)", readings[-1][2]) and readings[-1][3].isdigit()
        assert tab.text_content("#live-faces") == "1"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / "live.png"), full_page=True)

        shown = tab.evaluate("document.getElementById('live-output').toDataURL('image/png')")
        png = base64.b64decode(shown.split(",", 1)[1])
        swapped = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert swapped.shape == (480, 640, 3)
        original = cv2.resize(_closest(swapped, frames), (640, 480))
        face = max(detector.detect(original), key=lambda f: f.area)
        x1, y1, x2, y2 = (int(v) for v in face.bbox)
        diff = np.abs(swapped.astype(np.int16) - original).mean(axis=2)
        inside = float(diff[y1:y2, x1:x2].mean())
        ring = np.ones(diff.shape, bool)
        pad = (x2 - x1) // 2
        ring[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad] = False
        outside = float(diff[ring].mean())
        changed = f"the face region changed by {inside:.1f}, the rest by {outside:.1f}"
        assert inside > 12 and inside > 3 * outside, changed

        tab.click("#live-stop")
        tab.wait_for_function("() => !document.getElementById('live-start').disabled", timeout=WAIT_MS)
        assert re.fullmatch(r"Stopped after \d+ frame\(s\)\.", tab.text_content("#live-status"))
        assert tab.text_content("#live-fps-shown") == "0.0" and tab.is_hidden("#live-error")
        assert tab.evaluate("window.__violations") == [] and errors == []
