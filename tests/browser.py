"""Headless Chromium for the browser tests: Debian's ``chromium`` package driven by playwright (PyPI).

Playwright only speaks the DevTools protocol here: it is pointed at the system browser and never
downloads one. ``.ci/run`` installs the package (``apt-get install -y chromium``); where that failed the
browser tests skip with the reason.
"""

from __future__ import annotations

import importlib.util
import os
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
