"""API keys and per-key rate limits for the ingress' ``/api/`` routes.

A request presents its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (Authorization is
used when both are sent). :class:`ApiKeyAuth` keeps only the keys' SHA-256 digests and compares the
presented key's digest with EVERY configured digest through ``hmac.compare_digest`` (no early exit, fixed
length), so the time taken tells nothing about which key, or how much of one, matched. Keys are never
logged; :func:`key_id` names a key in logs and metrics (``key-`` and 8 hex digits of its SHA-256:
``printf %s "$KEY" | sha256sum | cut -c1-8``).

The optional rate limit is a token bucket per key (``rate_limit_per_minute`` sustained, ``rate_limit_burst``
at once) held by each ingress replica: with R ingress replicas a key gets up to R times the configured rate,
so the limit is approximate unless the ingress runs one replica.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InvalidOptionError
from serve_app.config import AuthArgs, check_api_key
from serve_app.errors import ForbiddenError, RateLimitedError, UnauthorizedError

log = logging.getLogger("ray.serve")

API_KEY_HEADER = "X-API-Key"


def key_id(key: str) -> str:
    """A short name of ``key`` that is safe to log: ``key-`` and the first 8 hex digits of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def read_keys_file(path: str | Path) -> list[str]:
    """The keys in ``path``: one per line, blank lines and ``#`` comments skipped, a key may be followed by
    a comment. Raises InvalidOptionError (naming the line, never the key) for anything else, and when the
    file holds no key at all (a configured but empty file must not turn authentication off)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"api_keys_file {str(path)!r}: cannot read it ({exc})") from None
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key, *rest = line.split(None, 1) or [""]
        if not key or key.startswith("#"):
            continue
        if rest and not rest[0].startswith("#"):
            raise InvalidOptionError(f"api_keys_file {str(path)!r} line {number}: text after the key")
        try:
            keys.append(check_api_key(key))
        except ValueError as exc:
            raise InvalidOptionError(f"api_keys_file {str(path)!r} line {number}: {exc}") from None
    if not keys:
        raise InvalidOptionError(f"api_keys_file {str(path)!r} holds no API key")
    return keys


def find_key(candidate: str, digests: Sequence[bytes]) -> int | None:
    """Index of the digest that is SHA-256 of ``candidate``, or None.

    Every digest is compared, in constant time, whatever matched before: the work does not depend on the
    candidate's length or on where (or whether) it matches.
    """
    presented = hashlib.sha256(candidate.encode("utf-8", "surrogateescape")).digest()
    found = -1
    for index, digest in enumerate(digests):
        matches = hmac.compare_digest(presented, digest)
        found = index if matches else found
    return found if found >= 0 else None


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request presents. Raises UnauthorizedError when there is none or Authorization is not a
    ``Bearer`` credential."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <API key>'")
        return token.strip()
    key = headers.get(API_KEY_HEADER.lower())
    if key is None or not key.strip():
        raise UnauthorizedError(
            f"an API key is required: 'Authorization: Bearer <key>' or '{API_KEY_HEADER}'"
        )
    return key.strip()


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate_per_s``; a request takes one."""

    rate_per_s: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take a token at time ``now`` (seconds): 0.0 when one was there, else the seconds until one is."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class ApiKeyAuth:
    """Checks a request's API key and, when configured, its key's request rate (one instance per ingress
    replica; its buckets are this replica's)."""

    def __init__(
        self,
        keys: Sequence[str],
        *,
        rate_limit_per_minute: float | None = None,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not keys:
            raise InvalidOptionError("API key authentication needs at least one key")
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]
        self.key_ids = [key_id(key) for key in keys]
        self._clock = clock
        self._buckets: list[TokenBucket] | None = None
        if rate_limit_per_minute is not None:
            now = clock()
            self._buckets = [
                TokenBucket(rate_limit_per_minute / 60.0, float(burst), float(burst), now) for _ in keys
            ]

    @classmethod
    def from_args(cls, args: AuthArgs) -> ApiKeyAuth | None:
        """The authenticator ``args`` describe (reading ``api_keys_file`` now), or None when auth is off."""
        if not args.enabled:
            return None
        keys = [key.get_secret_value() for key in args.api_keys]
        if args.api_keys_file is not None:
            keys += read_keys_file(args.api_keys_file)
        auth = cls(
            list(dict.fromkeys(keys)),
            rate_limit_per_minute=args.rate_limit_per_minute,
            burst=args.rate_limit_burst,
        )
        log.info(
            "API keys required on /api/: %d key(s) %s, rate limit %s",
            len(auth.key_ids),
            auth.key_ids,
            f"{args.rate_limit_per_minute}/min burst {args.rate_limit_burst}"
            if args.rate_limit_per_minute
            else "off",
        )
        return auth

    @property
    def rate_limited(self) -> bool:
        return self._buckets is not None

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The id of the key the request presents. Raises UnauthorizedError (no key), ForbiddenError (not a
        configured key) or RateLimitedError (the key is over its rate)."""
        index = find_key(presented_key(headers), self._digests)
        if index is None:
            raise ForbiddenError("the API key is not valid")
        if self._buckets is not None:
            wait_s = self._buckets[index].take(self._clock())
            if wait_s > 0:
                raise RateLimitedError(
                    f"rate limit of API key {self.key_ids[index]} reached, retry later", wait_s
                )
        return self.key_ids[index]
