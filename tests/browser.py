"""Headless Chromium for the browser tests: Debian's ``chromium`` package driven by playwright (PyPI).

Playwright only speaks the DevTools protocol here: it is pointed at the system browser and never
downloads one. ``.ci/run`` installs the package (``apt-get install -y chromium``); where that failed the
browser tests skip with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("FACESWAP_CHROMIUM", "/usr/bin/chromium"))
"""The browser binary: Debian's chromium (override with FACESWAP_CHROMIUM)."""
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Headless, no sandbox (CI containers run as root), and no traffic of its own besides the page's."""
_INLINE = re.compile(r"<(script|style)(?:\s[^>]*)?>(.*?)</\1>", re.DOTALL | re.IGNORECASE)


def require_chromium() -> None:
    """Skip the calling test, with the reason, when playwright or the system chromium is missing."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (it is in the dev extra: pip install -e '.[cpu,dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            f"no chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium); "
            ".ci/run tries that and prints why it failed"
        )


@contextmanager
def chromium_context(profile_dir: Path, **options: Any) -> Iterator[Any]:
    """A playwright BrowserContext of a fresh headless system Chromium with its profile in ``profile_dir``
    (which must not exist yet); ``options`` go to ``launch_persistent_context`` (viewport, ...)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    profile_dir.mkdir(parents=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            **options,
        )
        try:
            yield context
        finally:
            context.close()


def inline_blocks(html: str) -> dict[str, list[str]]:
    """The bodies of the page's inline ``<script>`` and ``<style>`` elements, by tag name."""
    blocks: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        blocks[tag.lower()].append(body)
    return blocks


def strict_csp(html: str) -> str:
    """A Content-Security-Policy that allows exactly the page's inline script and style (by sha256 hash),
    same-origin requests and ``data:`` images, and nothing else."""

    def hashes(bodies: list[str]) -> str:
        digests = (base64.b64encode(hashlib.sha256(b.encode("utf-8")).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{d}'" for d in digests)

    blocks = inline_blocks(html)
    return (
        "default-src 'none'; "
        f"script-src {hashes(blocks['script'])}; "
        f"style-src {hashes(blocks['style'])}; "
        "img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
