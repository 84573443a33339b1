"""The try-it page (serve_app/static/index.html) in a real headless Chromium against a real local Serve app
(lite profile, CPU): the form built from openapi.json, one request per double click, a swap of the two
bundled photos, the before/after view and download, and a non-image answered with the error text.

The service sends the page with a strict Content-Security-Policy (hashes of its one inline script and
style, serve_app.page), so a CSP-unfriendly change fails here. Screenshots go to out/browser/ (test
artefacts)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from pipeline.bundled import bundled_image
from serve_app.page import content_security_policy, inline_blocks
from tests.browser import chromium_context, require_chromium

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "serve_app" / "static" / "index.html"
SCREENSHOTS = REPO / "out" / "browser"
SOURCE = "astronaut_eileen_collins_nasa.png"
TARGET = "codait_luciano_cc0.png"
PREFIX = "/try"
"""Served below a route prefix, and opened without the trailing slash, as a proxy might."""
WAIT_MS = 120_000
SKIPPED_FIELDS = {"source_image", "target_image", "reference_image", "options"}
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
def app_url() -> Iterator[str]:
    """The lite profile (no ONNX, CPU) deployed at /try on a fresh local Ray with Serve."""
    require_chromium()
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
    assert re.fullmatch(r"Swapped 1 face in \d+\.\d s with \S+ \+ classical swapper\.", status), status
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
