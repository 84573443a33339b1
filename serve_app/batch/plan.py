"""The planning stage of a batch job with ``tracking``: pass 1 over each target, the faces of every frame
planned before its frames are swapped (:func:`pipeline.video_faces.plan_video_faces`).

One Ray actor (:class:`FacePlanner`) plans the targets one after another in job order (an actor runs its
calls in the order they were made), so target ``n + 1`` is planned while target ``n`` is being swapped. It
builds the detector (and, in ``reference`` mode, the embedder) in-process on the CPU, decodes each target
once, and returns the target's :class:`~pipeline.video_faces.FacePlan` (faces only, no frames). The swap
actors fetch a target's plan when its first frames reach them and swap with the planned faces.
"""

from __future__ import annotations

from dataclasses import replace

from pipeline.errors import NoFaceError, UnsupportedOptionError
from pipeline.imageio import decode_image
from pipeline.options import MAX_FACES_CAP, SwapOptions
from pipeline.orchestration import DEFAULT_MAX_FACES
from pipeline.profiles import ModelFactory, PipelineConfig
from pipeline.selection import largest_face
from pipeline.types import Embedding
from pipeline.video_faces import Embed, FacePlan, local_detect, local_embed, plan_video_faces
from serve_app.batch.decode import FrameSource


def planner_pipeline(pipeline: PipelineConfig) -> PipelineConfig:
    """The models a planner builds from the job's ``pipeline``: on the CPU with one thread (the planner has
    no CPU slot of its own and runs the detector on a fraction of the frames), no enhancer."""
    session = replace(pipeline.session, providers=("cpu",), intra_op_threads=1, spin=False)
    return replace(pipeline, enhance=False, session=session)


def face_limit(options: SwapOptions) -> int:
    """Faces swapped per frame, as the swap actors' orchestration (default ``max_faces``) counts them."""
    return min(options.max_faces or DEFAULT_MAX_FACES, MAX_FACES_CAP)


class FacePlanner:
    """The planning actor: one detector (and embedder) for every target of the job.

    ``reference``: the reference image's bytes (``reference`` mode); its embedding is computed on the first
    plan, so a reference without a face fails that plan with the typed NoFaceError."""

    def __init__(self, pipeline: PipelineConfig, options: SwapOptions, reference: bytes | None) -> None:
        factory = ModelFactory(planner_pipeline(pipeline))
        self._options = options
        self._detect = local_detect(factory.detector(), options.detector_score)
        self._embed: Embed | None = None
        self._reference_image = reference
        self._reference: Embedding | None = None
        if options.face_selector_mode == "reference":
            embedder = factory.embedder()
            if embedder is None:
                raise UnsupportedOptionError(
                    "face_selector_mode 'reference' needs an embedding model; this profile has none"
                )
            self._embed = local_embed(embedder)

    def _reference_embedding(self) -> Embedding | None:
        if self._embed is None or self._reference_image is None:
            return None
        if self._reference is None:
            image = decode_image(self._reference_image, field="reference_image")
            faces = self._detect(image)
            if not faces:
                raise NoFaceError("no face found in the reference image")
            self._reference = self._embed(image, [largest_face(faces)])[0]
        return self._reference

    def plan(self, source: FrameSource) -> FacePlan:
        """Pass 1 over one target: its frames decoded in order, the faces of each planned."""
        reference = self._reference_embedding()
        frames = source.frames()
        try:
            return plan_video_faces(
                frames,
                self._detect,
                self._options,
                max_faces=face_limit(self._options),
                embed=self._embed,
                reference=reference,
            )
        finally:
            frames.close()  # type: ignore[attr-defined]
