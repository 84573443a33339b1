"""Source identities kept between requests: a swap whose source photo was seen recently skips decoding,
detecting and embedding it again (the same photo onto many targets is the common case)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy.typing as npt

IdentityKind = Literal["embedding", "crop"]
"""What a swapper takes as the identity of the source face: the embedder's L2-normalised embedding
(``(D,)`` float32), or the source face itself aligned like the target crops (``(S, S, 3)`` uint8 BGR)."""


@dataclass(frozen=True)
class Identity:
    """The source face as the swapper takes it: ``value`` is a (D,) float32 embedding or an (S, S, 3)
    uint8 BGR aligned crop (``kind``), for the swapper named ``swapper``."""

    kind: IdentityKind
    value: npt.NDArray[Any]
    swapper: str


def source_key(source: bytes, detector_score: float, swapper: str) -> tuple[str, float, str]:
    """What decides a source's identity: the upload's bytes (by sha256), the detection threshold (which
    face is the largest found) and the swapper."""
    return hashlib.sha256(source).hexdigest(), detector_score, swapper


class IdentityCache:
    """The ``capacity`` most recently used identities by :func:`source_key` (least recently used out)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, float, str], Identity] = OrderedDict()

    def get(self, key: tuple[str, float, str]) -> Identity | None:
        identity = self._items.get(key)
        if identity is not None:
            self._items.move_to_end(key)
        return identity

    def put(self, key: tuple[str, float, str], identity: Identity) -> None:
        self._items[key] = identity
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
