"""Kept source identities (serve_app.identities), without Ray: the store (atomic files, TTL, owners,
sweep), and a swap by identity against the same swap with the source image: pixel-identical.
The routes themselves are exercised on a real Serve app in tests/test_live.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.bundled import bundled_image
from pipeline.identities import Identity
from pipeline.imageio import decode_image, read_image_file
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import PipelineConfig, build_models
from pipeline.sessions import SessionConfig
from serve_app.identities import (
    ANONYMOUS,
    IdentityMismatchError,
    IdentityNotFoundError,
    IdentityStore,
    StoredIdentity,
    check_identity,
    check_identity_id,
)

SOURCE = "astronaut_eileen_collins_nasa.png"
TARGET = "codait_luciano_cc0.png"
OWNER = "key-0123abcd"


def _stored(
    identity_id: str, owner: str = OWNER, expires_in: float = 60.0, now: float = 1000.0
) -> StoredIdentity:
    value = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    return StoredIdentity(
        identity_id=identity_id,
        owner=owner,
        identity=Identity("crop", value, "mesh_classical"),
        created_at=now,
        expires_at=now + expires_in,
        box=(1.0, 2.0, 30.0, 40.0),
        score=0.9,
    )


def test_an_identity_file_round_trips_without_pickle(tmp_path: Path) -> None:
    store = IdentityStore.from_uri(str(tmp_path))
    stored = _stored("a" * 32)
    store.put(stored)
    path = tmp_path / OWNER / f"{'a' * 32}.npz"
    assert path.is_file() and not list(tmp_path.rglob("*.tmp-*"))
    back = store.get(OWNER, "a" * 32, now=1001.0)
    assert np.array_equal(back.identity.value, stored.identity.value)
    assert back.identity.value.dtype == np.uint8
    assert (back.identity.kind, back.identity.swapper) == ("crop", "mesh_classical")
    assert (back.created_at, back.expires_at, back.box, back.score) == (1000.0, 1060.0, stored.box, 0.9)
    vector = replace(stored, identity=Identity("embedding", np.ones(4, np.float32), "inswapper_128"))
    embedding = StoredIdentity.from_npz(vector.to_npz())
    assert embedding.identity.value.dtype == np.float32 and embedding.identity.kind == "embedding"
    public = back.public()
    assert public["identity_id"] == "a" * 32 and public["ttl_s"] == 60.0 and public["kind"] == "crop"


def test_identities_belong_to_their_owner_and_expire(tmp_path: Path) -> None:
    store = IdentityStore.from_uri(str(tmp_path))
    store.put(_stored("a" * 32))
    with pytest.raises(IdentityNotFoundError):
        store.get("key-ffffffff", "a" * 32, now=1001.0)
    with pytest.raises(IdentityNotFoundError):
        store.get(ANONYMOUS, "a" * 32, now=1001.0)
    assert store.count(OWNER) == 1 and store.count("key-ffffffff") == 0
    with pytest.raises(IdentityNotFoundError, match="expired"):
        store.get(OWNER, "a" * 32, now=1060.0)
    assert store.count(OWNER) == 0, "an expired identity is removed when it is read"
    store.put(_stored("b" * 32))
    assert store.delete(OWNER, "b" * 32) and not store.delete(OWNER, "b" * 32)


def test_ids_and_owners_are_checked_before_any_path_is_built(tmp_path: Path) -> None:
    store = IdentityStore.from_uri(str(tmp_path))
    for bad in ("../" + "a" * 29, "A" * 32, "a" * 31, "", None, 5):
        with pytest.raises(Exception, match="identity_id"):
            check_identity_id(bad)
    with pytest.raises(ValueError, match="owner"):
        store.path("../etc", "a" * 32)
    with pytest.raises(ValueError, match="owner"):
        store.path("key-123", "a" * 32)


def test_the_sweep_removes_expired_identities_only(tmp_path: Path) -> None:
    store = IdentityStore.from_uri(str(tmp_path))
    store.put(_stored("a" * 32, expires_in=10))
    store.put(_stored("b" * 32, owner=ANONYMOUS, expires_in=100))
    assert store.sweep(now=1050.0) == 1
    assert store.count(OWNER) == 0 and store.count(ANONYMOUS) == 1
    assert store.get(ANONYMOUS, "b" * 32, now=1050.0).identity_id == "b" * 32


@pytest.fixture(scope="module")
def lite() -> SwapOrchestrator:
    """The default no-download models in process, one ONNX thread (a steady CPU measure)."""
    session = SessionConfig(("cpu",), intra_op_threads=1)
    config = PipelineConfig(profile="lite", enhance=False, session=session)
    return SwapOrchestrator(build_models(config).ports())


@pytest.mark.parametrize("refine", [False, True])
def test_a_swap_by_identity_is_pixel_identical(lite: SwapOrchestrator, refine: bool) -> None:
    """As the swap route runs them: uploaded bytes in, JPEG out. (What it saves is measured by
    bench/identity_cpu.py.)"""
    uploads = {
        "source_image": bundled_image(SOURCE).read_bytes(),
        "target_image": bundled_image(TARGET).read_bytes(),
    }
    options = SwapOptions(refine_landmarks=refine)
    identity, face = asyncio.run(lite.identify(decode_image(uploads["source_image"]), options))
    assert identity.kind == "crop" and identity.value.shape == (512, 512, 3)
    assert face.area > 0
    check_identity(identity, "a" * 32, lite)
    encode = {"media_type": "image/jpeg", "quality": 92, "max_pixels": 40_000_000, "label": None}
    expected = asyncio.run(lite.swap_encoded(uploads, options, **encode)).data  # type: ignore[arg-type]
    target = read_image_file(str(bundled_image(TARGET)))
    assert np.abs(decode_image(expected).astype(int) - target.astype(int)).mean() > 1.0, "nothing swapped"
    targets = {"target_image": uploads["target_image"]}
    by_identity = asyncio.run(lite.swap_encoded(targets, options, identity=identity, **encode)).data  # type: ignore[arg-type]
    assert by_identity == expected, "the JPEG of a swap by identity differs from the swap by source image"


def test_a_swap_by_identity_never_looks_at_a_source(lite: SwapOrchestrator) -> None:
    """The saving is structural: the detector sees the target's canvas only."""
    source = read_image_file(str(bundled_image(SOURCE)))
    target = read_image_file(str(bundled_image(TARGET)))
    identity, _ = asyncio.run(lite.identify(source, SwapOptions()))
    seen: list[int] = []
    detector = lite.ports.detector

    class Counting:
        info = detector.info

        async def detect(self, canvases, score_threshold):  # type: ignore[no-untyped-def]
            seen.append(len(canvases))
            return await detector.detect(canvases, score_threshold)

    counted = SwapOrchestrator(replace(lite.ports, detector=Counting()))
    asyncio.run(counted.swap(source, target, SwapOptions()))
    asyncio.run(counted.swap(None, target, SwapOptions(), identity=identity))
    assert seen == [2, 1]


def test_an_identity_for_another_swapper_is_refused(lite: SwapOrchestrator) -> None:
    with pytest.raises(IdentityMismatchError, match="inswapper_128"):
        check_identity(Identity("embedding", np.ones(512, np.float32), "inswapper_128"), "a" * 32, lite)
