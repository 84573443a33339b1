"""Which target faces to swap: pure functions over detections and embeddings."""

from __future__ import annotations

import numpy as np

from pipeline.errors import InvalidOptionError
from pipeline.types import Embedding, Face


def largest_face(faces: list[Face]) -> Face:
    """The face with the largest box area; score breaks ties."""
    if not faces:
        raise InvalidOptionError("no faces to choose from")
    return max(faces, key=lambda f: (f.area, f.score))


def cosine_distance(a: Embedding, b: Embedding) -> float:
    """1 - cosine similarity, in [0, 2]."""
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denom == 0.0:
        return 1.0
    return 1.0 - float(np.dot(a, b)) / denom


def select_faces(
    faces: list[Face], mode: str, reference: Embedding | None = None, max_distance: float = 0.6
) -> list[Face]:
    """Faces to process.

    ``one``: the largest face; ``many``: all, largest first; ``reference``: every face whose
    ``embedding`` lies within ``max_distance`` (cosine distance) of ``reference``, closest first.
    """
    if not faces:
        return []
    if mode == "one":
        return [largest_face(faces)]
    if mode == "many":
        return sorted(faces, key=lambda f: -f.area)
    if mode == "reference":
        if reference is None:
            raise InvalidOptionError("face_selector_mode 'reference' needs a reference face")
        scored = []
        for face in faces:
            if face.embedding is None:
                raise InvalidOptionError("reference selection needs face embeddings")
            d = cosine_distance(face.embedding, reference)
            if d <= max_distance:
                scored.append((d, face))
        return [f for _, f in sorted(scored, key=lambda t: t[0])]
    raise InvalidOptionError(f"face_selector_mode: unknown {mode!r}, expected one, many or reference")
