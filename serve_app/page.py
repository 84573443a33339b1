"""The try-it page (``static/index.html``) and the headers it is served with.

The page is self-contained: one inline ``<script>``, one inline ``<style>``, no inline event handlers or
style attributes, nothing loaded from elsewhere. Its Content-Security-Policy allows exactly those two blocks
(by their sha256), same-origin requests and ``data:`` images (the result and the before/after view), and
nothing else; it may not be framed (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_INLINE = re.compile(r"<(script|style)(?:\s[^>]*)?>(.*?)</\1>", re.DOTALL | re.IGNORECASE)


def inline_blocks(html: str) -> dict[str, list[str]]:
    """The bodies of the page's inline ``<script>`` and ``<style>`` elements, by tag name."""
    blocks: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        blocks[tag.lower()].append(body)
    return blocks


def content_security_policy(html: str) -> str:
    """The strict policy of the module docstring for the page ``html``."""

    def hashes(bodies: list[str]) -> str:
        digests = (base64.b64encode(hashlib.sha256(b.encode("utf-8")).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

    blocks = inline_blocks(html)
    return (
        "default-src 'none'; "
        f"script-src {hashes(blocks['script'])}; "
        f"style-src {hashes(blocks['style'])}; "
        "img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@dataclass(frozen=True)
class Page:
    html: str
    headers: dict[str, str]


def load_page() -> Page:
    """The packaged page and its security headers."""
    html = resources.files("serve_app").joinpath("static/index.html").read_text(encoding="utf-8")
    headers = {
        "Content-Security-Policy": content_security_policy(html),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Page(html, headers)
