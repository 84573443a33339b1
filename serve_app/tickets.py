"""Short-lived connection tickets for browsers, which cannot send an API key on a WebSocket handshake.

An authenticated ``POST /api/v1/live/tickets`` returns a ticket; the browser offers it as the subprotocol
``ticket.<ticket>``. A ticket is ``<payload>.<signature>`` in base64url: the payload names the API key's id,
the expiry (Unix seconds) and a random nonce; the signature is HMAC-SHA256 over it with a secret derived
from the SHA-256 digests of every configured API key. Every ingress replica is configured with the same
keys, so any replica verifies a ticket another issued, without shared state; changing the keys voids the
outstanding tickets. The secret is never any single key: holding one key does not let a client forge
tickets for another. A replica accepts a ticket once (it remembers the nonces it saw until they expire);
a ticket replayed on another replica within its lifetime is accepted there once more, so lifetimes are
short (``live.ticket_ttl_s``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence

from serve_app.auth import read_keys_file
from serve_app.config import AuthArgs
from serve_app.errors import ForbiddenError, UnauthorizedError

_CONTEXT = b"faceswap-serve live ticket v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ticket_secret(keys: Sequence[str]) -> bytes:
    """The signing secret for the API keys ``keys`` (their order does not matter)."""
    digests = sorted(hashlib.sha256(key.encode()).digest() for key in keys)
    return hmac.new(_CONTEXT, b"".join(digests), hashlib.sha256).digest()


def configured_keys(args: AuthArgs) -> list[str]:
    """Every API key ``args`` configure (inline and in ``api_keys_file``), as the ingress' auth reads them."""
    keys = [key.get_secret_value() for key in args.api_keys]
    if args.api_keys_file is not None:
        keys += read_keys_file(args.api_keys_file)
    return list(dict.fromkeys(keys))


class TicketSigner:
    """Issues and checks tickets (see the module docstring) valid for ``ttl_s`` seconds."""

    def __init__(self, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock
        self._seen: dict[str, float] = {}

    def issue(self, key_id: str) -> tuple[str, float]:
        """A ticket for the key ``key_id`` and its expiry (Unix seconds)."""
        expires = self._clock() + self.ttl_s
        payload = _b64(json.dumps({"k": key_id, "e": round(expires, 3), "n": secrets.token_hex(8)}).encode())
        return f"{payload}.{self._sign(payload)}", expires

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def redeem(self, ticket: str) -> str:
        """The key id of a valid, unexpired ticket not redeemed on this replica before. UnauthorizedError
        when it is malformed, ForbiddenError when its signature is wrong, it expired or it was used."""
        payload, dot, signature = ticket.partition(".")
        if not dot or not payload or not signature:
            raise UnauthorizedError("malformed live ticket")
        if not hmac.compare_digest(self._sign(payload), signature):
            raise ForbiddenError("the live ticket is not valid")
        try:
            fields = json.loads(_unb64(payload))
            key_id, expires, nonce = str(fields["k"]), float(fields["e"]), str(fields["n"])
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise UnauthorizedError("malformed live ticket") from None
        now = self._clock()
        self._seen = {n: e for n, e in self._seen.items() if e > now}
        if expires <= now:
            raise ForbiddenError("the live ticket expired: ask for a new one")
        if nonce in self._seen:
            raise ForbiddenError("the live ticket was used already: ask for a new one")
        self._seen[nonce] = expires
        return key_id
