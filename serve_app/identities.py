"""Source identities kept for a while, so a source photo is decoded, detected and embedded once.

Routes (wired into the ingress, relative to the application's route prefix):

- ``POST /api/v1/identities``: multipart ``source_image`` (JPEG, PNG or WebP), optional ``ttl_s`` and the
  swap options that decide the identity (:data:`IDENTITY_OPTIONS`; the others are accepted and ignored).
  Answers 201 ``{"identity_id", "expires_at", "ttl_s", "swapper", "kind", "face": {"box", "score"}}``;
  400, 413, 415 as a swap's uploads, 422 ``no_face``, 429 ``identity_quota`` when the key holds
  ``max_per_key`` identities already.
- ``GET /api/v1/identities/{identity_id}``: the same description; ``DELETE`` removes it (204). Both 404
  ``identity_not_found`` for an unknown, expired or another key's identity.

``POST /api/v1/swap`` and ``WS /api/v1/live`` take ``identity_id`` in place of ``source_image``; a swap by
identity is pixel-identical to the same swap with the photo the identity was made from, without decoding,
detecting and cropping (or embedding) that photo. An identity belongs to the API key that made it
(``serve_app.auth.key_id``; all callers share one owner when auth is off) and to the swapper it was made
for: after a model change it is answered 409 ``identity_mismatch``.

Where they live: a ``pyarrow.fs`` store (``identities.store_uri``: a local directory, or ``s3://...`` for a
cluster), one ``<root>/<owner>/<identity_id>.npz`` per identity (the value array and a JSON record, never
pickled), written atomically. Not a Serve deployment holding them in memory: a store is shared by every
ingress replica on every node, survives redeploys and replica restarts (a client that holds an id keeps
it for its TTL), costs no always-on replica and holds any number of identities (a mesh-swapper identity
is a 768 KiB crop). Its cost, a file read, is paid once per replica: each replica keeps the identities
it used recently and checks every ``revalidate_s`` that the file still exists (so a DELETE on one replica
is seen by the others within that time). The TTL is checked on every use; expired files are removed when
they are read and by a sweep at most every ``sweep_interval_s`` (run after a create).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.errors import FaceSwapError, InvalidInputError, InvalidOptionError
from pipeline.identities import Identity
from pipeline.imageio import decode_image
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from serve_app.config import IdentitiesArgs, IngressArgs
from serve_app.errors import ServiceUnavailableError
from serve_app.forms import options_from_fields, read_multipart
from serve_app.stores import check_one_node

log = logging.getLogger("ray.serve")

IDENTITIES_PATH = "/api/v1/identities"
IDENTITY_PATH = "/api/v1/identities/{identity_id}"
ANONYMOUS = "anonymous"
"""The owner of every identity when the service has no API keys."""
IDENTITY_FIELDS = ("source_image",)
IDENTITY_OPTIONS = ("detector_score", "refine_landmarks")
"""The swap options that decide an identity (a create request may send the others; they are ignored)."""
_IDENTITY_ID = re.compile(r"[0-9a-f]{32}")
_OWNER = re.compile(r"key-[0-9a-f]{8}|" + ANONYMOUS)

Orchestrator = Callable[[], Awaitable[SwapOrchestrator]]


class IdentityNotFoundError(FaceSwapError):
    """No identity with this id for this API key (unknown, expired, deleted or another key's)."""

    status = 404
    code = "identity_not_found"


class IdentityMismatchError(FaceSwapError):
    """The identity was made for another swapper than the one deployed now."""

    status = 409
    code = "identity_mismatch"


class IdentityQuotaError(FaceSwapError):
    """The API key holds as many identities as it may."""

    status = 429
    code = "identity_quota"


def check_identity_id(identity_id: object) -> str:
    """``identity_id`` when it is 32 lowercase hex digits, else InvalidInputError (400)."""
    if not isinstance(identity_id, str) or _IDENTITY_ID.fullmatch(identity_id) is None:
        raise InvalidInputError("identity_id: expected 32 lowercase hexadecimal digits")
    return identity_id


def owner_of(request: Request) -> str:
    """Who owns what ``request`` creates: the id of its API key (set by the ingress' auth check), or
    :data:`ANONYMOUS` when the service has no keys."""
    key_id = getattr(request.state, "api_key_id", None)
    return key_id if isinstance(key_id, str) else ANONYMOUS


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


@dataclass(frozen=True)
class StoredIdentity:
    """One kept identity. Times are Unix seconds; ``box`` (x1, y1, x2, y2) and ``score`` describe the
    source face it was made from, in the source image's pixels."""

    identity_id: str
    owner: str
    identity: Identity
    created_at: float
    expires_at: float
    box: tuple[float, float, float, float]
    score: float

    def public(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "expires_at": _iso(self.expires_at),
            "created_at": _iso(self.created_at),
            "ttl_s": round(self.expires_at - self.created_at, 3),
            "swapper": self.identity.swapper,
            "kind": self.identity.kind,
            "face": {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4)},
        }

    def to_npz(self) -> bytes:
        record = {
            "identity_id": self.identity_id,
            "owner": self.owner,
            "kind": self.identity.kind,
            "swapper": self.identity.swapper,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "box": list(self.box),
            "score": self.score,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            value=self.identity.value,
            record=np.frombuffer(json.dumps(record).encode(), np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> StoredIdentity:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            value = arrays["value"]
            record = json.loads(arrays["record"].tobytes())
        return cls(
            identity_id=check_identity_id(record["identity_id"]),
            owner=record["owner"],
            identity=Identity(record["kind"], value, record["swapper"]),
            created_at=float(record["created_at"]),
            expires_at=float(record["expires_at"]),
            box=tuple(float(v) for v in record["box"]),  # type: ignore[arg-type]
            score=float(record["score"]),
        )


class IdentityStore:
    """Identity files ``<root>/<owner>/<identity_id>.npz`` on a ``pyarrow.fs`` filesystem. Blocking calls:
    run them in a thread from async code. Owners and ids are checked before a path is built from them."""

    def __init__(self, filesystem: pafs.FileSystem, root: str) -> None:
        self.filesystem = filesystem
        self.root = root.rstrip("/") or "/"

    @classmethod
    def from_uri(cls, uri: str) -> IdentityStore:
        """A store at a local directory (made absolute) or a ``pyarrow.fs`` URI (``s3://bucket/prefix``)."""
        if "://" not in uri:
            return cls(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)))
        filesystem, root = pafs.FileSystem.from_uri(uri)
        return cls(filesystem, root)

    def _folder(self, owner: str) -> str:
        if _OWNER.fullmatch(owner) is None:
            raise ValueError(f"not an identity owner: {owner!r}")
        return f"{self.root}/{owner}"

    def path(self, owner: str, identity_id: str) -> str:
        return f"{self._folder(owner)}/{check_identity_id(identity_id)}.npz"

    def put(self, stored: StoredIdentity) -> None:
        """Write ``stored`` atomically (a temporary name, then moved): readers see all of it or nothing."""
        final = self.path(stored.owner, stored.identity_id)
        temporary = f"{final}.tmp-{uuid.uuid4().hex}"
        self.filesystem.create_dir(self._folder(stored.owner), recursive=True)
        try:
            with self.filesystem.open_output_stream(temporary) as out:
                out.write(stored.to_npz())
            self.filesystem.move(temporary, final)
        except BaseException:
            with suppress(OSError):
                self.filesystem.delete_file(temporary)
            raise

    def get(self, owner: str, identity_id: str, now: float) -> StoredIdentity:
        """The identity; IdentityNotFoundError when there is none or it expired (then it is removed)."""
        try:
            with self.filesystem.open_input_stream(self.path(owner, identity_id)) as stream:
                data = stream.read()
        except FileNotFoundError:
            raise IdentityNotFoundError(f"no identity {identity_id} (unknown, expired or deleted)") from None
        stored = StoredIdentity.from_npz(data)
        if stored.expires_at <= now:
            self.delete(owner, identity_id)
            raise IdentityNotFoundError(f"identity {identity_id} expired at {_iso(stored.expires_at)}")
        return stored

    def exists(self, owner: str, identity_id: str) -> bool:
        info = self.filesystem.get_file_info(self.path(owner, identity_id))
        return bool(info.type == pafs.FileType.File)

    def delete(self, owner: str, identity_id: str) -> bool:
        """Remove the identity; False when it did not exist."""
        try:
            self.filesystem.delete_file(self.path(owner, identity_id))
        except FileNotFoundError:
            return False
        return True

    def count(self, owner: str) -> int:
        selector = pafs.FileSelector(self._folder(owner), allow_not_found=True)
        return sum(1 for info in self.filesystem.get_file_info(selector) if info.base_name.endswith(".npz"))

    def sweep(self, now: float) -> int:
        """Remove every expired identity (and temporary files of failed writes older than a minute);
        returns how many identities were removed."""
        removed = 0
        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=True)
        for info in self.filesystem.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            if ".npz.tmp-" in info.base_name:
                if info.mtime is not None and info.mtime.timestamp() < now - 60:
                    with suppress(OSError):
                        self.filesystem.delete_file(info.path)
                continue
            if not info.base_name.endswith(".npz"):
                continue
            try:
                with self.filesystem.open_input_stream(info.path) as stream:
                    expires_at = StoredIdentity.from_npz(stream.read()).expires_at
            except (OSError, ValueError, KeyError):
                continue
            if expires_at <= now:
                with suppress(FileNotFoundError):
                    self.filesystem.delete_file(info.path)
                    removed += 1
        return removed


def check_identity(identity: Identity, identity_id: str, orchestrator: SwapOrchestrator) -> Identity:
    """``identity`` when the deployed swapper takes it, else IdentityMismatchError (409)."""
    swapper = orchestrator.ports.swapper.info
    if (identity.kind, identity.swapper) != (swapper.identity, swapper.name):
        raise IdentityMismatchError(
            f"identity {identity_id} was made for {identity.swapper}; the service runs {swapper.name} now: "
            "create the identity again"
        )
    return identity


class IdentityService:
    """The identity routes and the lookups of one ingress replica (see the module docstring)."""

    def __init__(
        self,
        args: IdentitiesArgs,
        limits: IngressArgs,
        orchestrator: Orchestrator,
        *,
        store: IdentityStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._args = args
        self._limits = limits
        self._orchestrator = orchestrator
        if store is None:
            check_one_node("identities", args.store_uri)
            store = IdentityStore.from_uri(args.store_uri)
        self.store = store
        self._clock = clock
        self._recent: OrderedDict[tuple[str, str], tuple[StoredIdentity, float]] = OrderedDict()
        self._last_sweep = clock()

    def handlers(self) -> list[tuple[str, str, Callable[[Request], Awaitable[Response]]]]:
        """(path, method, handler) of the identity routes."""
        return [
            (IDENTITIES_PATH, "POST", self.create),
            (IDENTITY_PATH, "GET", self.show),
            (IDENTITY_PATH, "DELETE", self.delete),
        ]

    async def _blocking(self, function: Callable[..., Any], *args: object) -> Any:
        """A store call in a thread; filesystem errors are a 503 (the store is unreachable)."""
        try:
            return await asyncio.to_thread(function, *args)
        except FaceSwapError:
            raise
        except OSError as exc:
            log.warning("identity store error: %s", exc)
            raise ServiceUnavailableError("the identity store is unavailable, retry later") from None

    async def create(self, request: Request) -> Response:
        """``POST /api/v1/identities``."""
        owner = owner_of(request)
        async with read_multipart(
            request,
            self._limits.max_upload_bytes,
            IDENTITY_FIELDS,
            IDENTITY_FIELDS[0],
            self._limits.upload_pace(),
        ) as form:
            if "source_image" not in form.files:
                raise InvalidInputError("source_image: required")
            data = await form.files["source_image"].read()
            texts = dict(form.texts)
        ttl_s = self._ttl(texts.pop("ttl_s", None))
        options = options_from_fields(texts)
        stored = await self.create_identity(owner, data, options, ttl_s)
        location = f"{request.scope.get('root_path', '').rstrip('/')}{IDENTITIES_PATH}/{stored.identity_id}"
        return JSONResponse(stored.public(), status_code=201, headers={"Location": location})

    async def create_identity(
        self, owner: str, source: bytes, options: SwapOptions, ttl_s: float
    ) -> StoredIdentity:
        """Make, store and return the identity of the largest face in ``source`` (image bytes)."""
        if await self._blocking(self.store.count, owner) >= self._args.max_per_key:
            raise IdentityQuotaError(
                f"{owner} holds {self._args.max_per_key} identities, the most allowed: delete some or let "
                "them expire"
            )
        image = await asyncio.to_thread(
            decode_image, source, field="source_image", max_pixels=self._limits.max_pixels
        )
        orchestrator = await self._orchestrator()
        identity, face = await orchestrator.identify(image, options)
        now = self._clock()
        stored = StoredIdentity(
            identity_id=uuid.uuid4().hex,
            owner=owner,
            identity=identity,
            created_at=now,
            expires_at=now + ttl_s,
            box=tuple(float(v) for v in face.bbox),  # type: ignore[arg-type]
            score=float(face.score),
        )
        await self._blocking(self.store.put, stored)
        self._remember(stored)
        if now - self._last_sweep >= self._args.sweep_interval_s:
            self._last_sweep = now
            asyncio.get_running_loop().create_task(self._sweep())
        return stored

    async def _sweep(self) -> None:
        try:
            removed = await asyncio.to_thread(self.store.sweep, self._clock())
            if removed:
                log.info("identities: %d expired identities removed", removed)
        except Exception:
            log.exception("sweeping the expired identities failed")

    def _ttl(self, raw: str | None) -> float:
        if raw is None or not raw.strip():
            return self._args.ttl_s
        try:
            ttl_s = float(raw)
        except ValueError:
            raise InvalidOptionError("ttl_s: expected a number of seconds") from None
        if not 1.0 <= ttl_s <= self._args.max_ttl_s:
            raise InvalidOptionError(f"ttl_s: must be in [1, {self._args.max_ttl_s:g}] seconds")
        return ttl_s

    def _remember(self, stored: StoredIdentity) -> None:
        key = (stored.owner, stored.identity_id)
        self._recent[key] = (stored, self._clock())
        self._recent.move_to_end(key)
        while len(self._recent) > self._args.cache_size:
            self._recent.popitem(last=False)

    async def lookup(self, owner: str, identity_id: str) -> StoredIdentity:
        """The identity ``identity_id`` of ``owner`` (IdentityNotFoundError when it is not there)."""
        check_identity_id(identity_id)
        now = self._clock()
        key = (owner, identity_id)
        recent = self._recent.get(key)
        if recent is not None:
            stored, checked = recent
            if stored.expires_at <= now:
                self._recent.pop(key, None)
                await self._blocking(self.store.delete, owner, identity_id)
                raise IdentityNotFoundError(f"identity {identity_id} expired at {_iso(stored.expires_at)}")
            if now - checked < self._args.revalidate_s:
                self._recent.move_to_end(key)
                return stored
            if await self._blocking(self.store.exists, owner, identity_id):
                self._recent[key] = (stored, now)
                self._recent.move_to_end(key)
                return stored
            self._recent.pop(key, None)
            raise IdentityNotFoundError(f"no identity {identity_id} (unknown, expired or deleted)")
        stored = await self._blocking(self.store.get, owner, identity_id, now)
        self._remember(stored)
        return stored

    async def resolve(self, owner: str, identity_id: str) -> Identity:
        """The identity to swap with: found for ``owner`` and made for the deployed swapper."""
        stored = await self.lookup(owner, identity_id)
        return check_identity(stored.identity, identity_id, await self._orchestrator())

    async def show(self, request: Request) -> Response:
        """``GET /api/v1/identities/{identity_id}``."""
        stored = await self.lookup(owner_of(request), request.path_params["identity_id"])
        return JSONResponse(stored.public())

    async def delete(self, request: Request) -> Response:
        """``DELETE /api/v1/identities/{identity_id}``."""
        owner = owner_of(request)
        identity_id = check_identity_id(request.path_params["identity_id"])
        self._recent.pop((owner, identity_id), None)
        if not await self._blocking(self.store.delete, owner, identity_id):
            raise IdentityNotFoundError(f"no identity {identity_id} (unknown, expired or deleted)")
        return Response(status_code=204)
