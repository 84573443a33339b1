"""The swap stage of a batch job: stateful Ray Data actors (``map_batches`` over numpy batches) that each
build the models once, compute the source identity (and the reference embedding) once from the source
bytes, then run the one orchestration
(:meth:`~pipeline.orchestration.SwapOrchestrator.swap_frames`, in-process ports) on each batch of frames
(:mod:`.decode`). With ``tracking``, each frame is swapped with the faces its target's plan gives it
(:mod:`.plan`; an actor fetches a target's plan when its first frames arrive); without, the orchestration
detects the faces of each batch.

The stage replaces ``image`` by the result ((N, H, W, 3) uint8 BGR, or an object array of (H, W, 3) images
when a batch spans targets of different sizes) and adds ``faces`` (int32: faces processed), ``boxes``
((4 * faces,) float32 x1, y1, x2, y2 per face, image pixels), ``scores`` ((faces,) float32),
``keyframe`` (bool: the detector ran on this frame), ``tracks`` (the frame's sidecar rows as a JSON list,
:func:`pipeline.video_faces.sidecar_rows`, in the order of ``boxes``) and ``components`` (the JSON of the
models that ran, the same in every row).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import numpy as np
import ray

from pipeline.identities import Identity
from pipeline.imageio import decode_image
from pipeline.options import SwapOptions
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import PipelineConfig, build_models
from pipeline.types import Embedding
from pipeline.video_faces import FacePlan, PlannedFace, detected, sidecar_rows
from serve_app.batch.decode import Batch


def column(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """A batch column: stacked when every row has one shape, else an object array of the rows."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    out[:] = list(arrays)
    return out


class SwapFrames:
    """The swap stage: one orchestration over in-process ports, built once per actor.

    The source identity (and the reference embedding in ``reference`` mode) is computed from the image
    bytes on the first batch, so a source without a face fails the first batch with the typed
    :class:`~pipeline.errors.NoFaceError` rather than the actor's start. ``images`` holds the object
    references of the source and reference image bytes: the constructor's arguments stay small. ``plans``:
    with ``tracking``, the object reference of each target's :class:`~pipeline.video_faces.FacePlan`."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        options: SwapOptions,
        images: tuple[ray.ObjectRef, ray.ObjectRef | None],
        plans: tuple[ray.ObjectRef, ...] | None = None,
    ) -> None:
        self._orchestrator = SwapOrchestrator(build_models(pipeline).ports())
        self._orchestrator.check(options, has_source=True, has_reference=images[1] is not None)
        self._options = options
        self._images = images
        self._plans = plans
        self._plan: tuple[int, FacePlan, frozenset[int]] | None = None
        """The latest target's plan (a batch spans two targets at most once per target)."""
        self._prepared: tuple[Identity | None, Embedding | None] | None = None
        self._components = json.dumps(self._orchestrator.components)
        self._loop = asyncio.new_event_loop()

    def _prepare(self) -> tuple[Identity | None, Embedding | None]:
        if self._prepared is None:
            source, reference = (None if ref is None else ray.get(ref) for ref in self._images)
            options, run = self._options, self._loop.run_until_complete
            identity = None
            if options.swap:
                image = decode_image(source, field="source_image")
                identity = run(self._orchestrator.source_identity(image, options))
            embedding = None
            if options.face_selector_mode == "reference" and reference is not None:
                image = decode_image(reference, field="reference_image")
                embedding = run(self._orchestrator.reference_embedding(image, options))
            self._prepared = (identity, embedding)
        return self._prepared

    def _plan_of(self, target: int) -> tuple[FacePlan, frozenset[int]]:
        """Target ``target``'s plan and its keyframes (fetched once per target)."""
        assert self._plans is not None
        if self._plan is None or self._plan[0] != target:
            plan = ray.get(self._plans[target])
            self._plan = (target, plan, frozenset(plan.keyframes))
        return self._plan[1], self._plan[2]

    def __call__(self, batch: Batch) -> Batch:
        identity, reference = self._prepare()
        images = list(batch["image"])
        indices, stamps = batch["index"].tolist(), batch["pts"].tolist()
        run = self._loop.run_until_complete
        planned: list[tuple[PlannedFace, ...]]
        if self._plans is None:
            results = run(self._orchestrator.swap_frames(images, identity, self._options, reference))
            planned = [detected(r.faces) for r in results]
            keyframes = [True] * len(results)
        else:
            plans = [self._plan_of(t) for t in batch["target"].tolist()]
            faces = [plan.faces(i, i + 1)[0] for (plan, _), i in zip(plans, indices, strict=True)]
            swap = self._orchestrator.swap_frames(images, identity, self._options, faces=faces, select=False)
            results = run(swap)
            planned = [plan.per_frame[i] for (plan, _), i in zip(plans, indices, strict=True)]
            keyframes = [i in keys for (_, keys), i in zip(plans, indices, strict=True)]
        found = [r.faces for r in results]
        tracks = [
            json.dumps(sidecar_rows(i, pts, faces), separators=(",", ":"))
            for i, pts, faces in zip(indices, stamps, planned, strict=True)
        ]
        return {
            "target": batch["target"],
            "index": batch["index"],
            "pts": batch["pts"],
            "time_s": batch["time_s"],
            "image": column([r.image for r in results]),
            "faces": np.array([len(f) for f in found], np.int32),
            "boxes": column([np.array([f.bbox for f in fs], np.float32).reshape(-1) for fs in found]),
            "scores": column([np.array([f.score for f in fs], np.float32) for fs in found]),
            "keyframe": np.array(keyframes, bool),
            "tracks": np.array(tracks),
            "components": np.array([self._components] * len(results)),
        }
