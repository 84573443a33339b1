"""The face-swap pipeline: detect -> select -> align -> swap -> (enhance) -> paste back.

The batched model calls (``swap_crops``, ``enhance_crops``) are separate from the geometry so the
Serve layer can run them in other processes and batch them across requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidOptionError, NoFaceError, UnsupportedOptionError
from pipeline.geometry import box_mask, paste_back, warp_face
from pipeline.models.base import Detector, Embedder, Enhancer, Swapper
from pipeline.options import SwapOptions
from pipeline.selection import largest_face, select_faces
from pipeline.types import Affine, CropsBGR, Embedding, Face, ImageBGR

log = logging.getLogger(__name__)


def crops_for(
    image: ImageBGR, faces: list[Face], template: str, size: int
) -> tuple[CropsBGR, npt.NDArray[np.float32]]:
    """Aligned crops ``(N, size, size, 3)`` BGR and their forward affines ``(N, 2, 3)``."""
    crops = np.empty((len(faces), size, size, 3), np.uint8)
    affines = np.empty((len(faces), 2, 3), np.float32)
    for i, face in enumerate(faces):
        crops[i], affines[i] = warp_face(image, face.landmarks, template, size)
    return crops, affines


def paste_crops(
    image: ImageBGR,
    processed: CropsBGR,
    affines: npt.NDArray[np.float32] | list[Affine],
    *,
    ratio: float,
    mask_blur: float,
    mask_padding: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> ImageBGR:
    """Paste each processed crop back through a box mask scaled by ``ratio``.

    ``ratio * pasted + (1 - ratio) * frame`` inside the mask (FaceFusion's frame blend): ratio 0 gives
    the frame back exactly, with no resampling loss.
    """
    if not 0.0 <= ratio <= 1.0:
        raise InvalidOptionError(f"blend ratio must be in [0, 1], got {ratio}")
    if len(processed) == 0 or ratio == 0.0:
        return image
    mask = box_mask(processed.shape[1], mask_blur, mask_padding) * np.float32(ratio)
    out = image
    for done, affine in zip(processed, affines, strict=True):
        out = paste_back(out, done, np.asarray(affine, np.float32), mask)
    return out


def _apply_to_faces(
    images: list[ImageBGR],
    faces: list[list[Face]],
    template: str,
    size: int,
    model: Callable[[CropsBGR], CropsBGR],
    *,
    ratio: float,
    options: SwapOptions,
) -> list[ImageBGR]:
    """Crop every face of every image, run ``model`` once over all crops, paste each back into its image."""
    cropped = [
        crops_for(image, image_faces, template, size)
        for image, image_faces in zip(images, faces, strict=True)
    ]
    if sum(len(crops) for crops, _ in cropped) == 0:
        return images
    done = model(np.concatenate([crops for crops, _ in cropped]))
    out: list[ImageBGR] = []
    at = 0
    for image, (crops, affines) in zip(images, cropped, strict=True):
        n = len(crops)
        out.append(
            paste_crops(
                image,
                done[at : at + n],
                affines,
                ratio=ratio,
                mask_blur=options.face_mask_blur,
                mask_padding=options.face_mask_padding,
            )
        )
        at += n
    return out


def embed_faces(embedder: Embedder | None, image: ImageBGR, faces: list[Face]) -> list[Face]:
    """The faces with L2-normalised embeddings attached; UnsupportedOptionError without an embedder."""
    if embedder is None:
        raise UnsupportedOptionError(
            "face_selector_mode 'reference' needs an embedding model; this profile has none"
        )
    if not faces:
        return []
    crops, _ = crops_for(image, faces, embedder.template, embedder.crop_size)
    vectors = embedder.embed_crops(crops)
    return [f.with_embedding(v) for f, v in zip(faces, vectors, strict=True)]


def choose_faces(
    embedder: Embedder | None,
    image: ImageBGR,
    faces: list[Face],
    options: SwapOptions,
    reference: Embedding | None = None,
) -> list[Face]:
    """The detected ``faces`` of ``image`` that ``options`` selects; NoFaceError when none qualifies."""
    if not faces:
        raise NoFaceError("no face found in the target image")
    if options.face_selector_mode == "reference":
        faces = embed_faces(embedder, image, faces)
    selected = select_faces(faces, options.face_selector_mode, reference, options.reference_face_distance)
    if not selected:
        raise NoFaceError(
            f"no target face within distance {options.reference_face_distance} of the reference face"
        )
    return selected


@dataclass
class SwapResult:
    """A swapped image and what produced it."""

    image: ImageBGR
    faces_swapped: int
    components: dict[str, str | None] = field(default_factory=dict)


class FacePipeline:
    """The in-process pipeline over injected models. ``embedder`` is only needed for reference mode."""

    def __init__(
        self,
        detector: Detector,
        swapper: Swapper,
        embedder: Embedder | None = None,
        enhancer: Enhancer | None = None,
        profile: str = "custom",
    ) -> None:
        self.detector = detector
        self.swapper = swapper
        self.embedder = embedder
        self.enhancer = enhancer
        self.profile = profile

    @property
    def components(self) -> dict[str, str | None]:
        """Which profile and models run, for logs and responses."""
        return {
            "profile": self.profile,
            "detector": self.detector.name,
            "embedder": self.embedder.name if self.embedder else None,
            "swapper": self.swapper.name,
            "enhancer": self.enhancer.name if self.enhancer else None,
        }

    def check_options(self, options: SwapOptions) -> None:
        """Raise UnsupportedOptionError for options the loaded models cannot honour."""
        if options.enhance and self.enhancer is None:
            raise UnsupportedOptionError("face_enhancer was asked for but no enhancer model is loaded")
        if options.face_enhance_model and (
            self.enhancer is None or options.face_enhance_model != self.enhancer.name
        ):
            loaded = self.enhancer.name if self.enhancer else "none"
            raise UnsupportedOptionError(
                f"face_enhance_model {options.face_enhance_model!r} is not loaded (loaded: {loaded})"
            )
        if options.face_selector_mode == "reference" and self.embedder is None:
            raise UnsupportedOptionError(
                "face_selector_mode 'reference' needs an embedding model; this profile has none"
            )

    def detect(self, image: ImageBGR, options: SwapOptions) -> list[Face]:
        return self.detector.detect(image, options.detector_score)

    def embed(self, image: ImageBGR, faces: list[Face]) -> list[Face]:
        """The faces with L2-normalised embeddings attached."""
        return embed_faces(self.embedder, image, faces)

    def source_face(self, source: ImageBGR, options: SwapOptions) -> Face:
        faces = self.detect(source, options)
        if not faces:
            raise NoFaceError("no face found in the source image")
        return largest_face(faces)

    def reference_embedding(self, reference: ImageBGR, options: SwapOptions) -> Embedding:
        faces = self.detect(reference, options)
        if not faces:
            raise NoFaceError("no face found in the reference image")
        embedding = self.embed(reference, [largest_face(faces)])[0].embedding
        assert embedding is not None
        return embedding

    def target_faces(
        self, target: ImageBGR, options: SwapOptions, reference: Embedding | None = None
    ) -> list[Face]:
        """Detected and selected target faces; NoFaceError when none qualifies."""
        return choose_faces(self.embedder, target, self.detect(target, options), options, reference)

    def process(
        self,
        target: ImageBGR,
        faces: list[Face],
        identity: npt.NDArray[np.float32] | None,
        options: SwapOptions,
    ) -> ImageBGR:
        """Swap then enhance the given faces of ``target``."""
        return self.process_frames([target], [faces], identity, options)[0]

    def process_frames(
        self,
        images: list[ImageBGR],
        faces: list[list[Face]],
        identity: npt.NDArray[np.float32] | None,
        options: SwapOptions,
    ) -> list[ImageBGR]:
        """Swap then enhance ``faces[i]`` of each ``images[i]``: one swapper call (and one enhancer call)
        over all faces of all images."""
        out = images
        if options.swap:
            if identity is None:
                raise UnsupportedOptionError("face_swapper needs a source identity")
            swapper = self.swapper
            out = _apply_to_faces(
                out,
                faces,
                swapper.template,
                swapper.crop_size,
                lambda crops: swapper.swap_crops(crops, np.repeat(identity[None], len(crops), axis=0)),
                ratio=options.blend_ratio,
                options=options,
            )
        if options.enhance:
            if self.enhancer is None:
                raise UnsupportedOptionError("face_enhancer was asked for but no enhancer model is loaded")
            out = _apply_to_faces(
                out,
                faces,
                self.enhancer.template,
                self.enhancer.crop_size,
                self.enhancer.enhance_crops,
                ratio=options.face_enhancer_blend / 100.0,
                options=options,
            )
        return out

    def swap(
        self,
        source: ImageBGR,
        target: ImageBGR,
        options: SwapOptions | None = None,
        reference: ImageBGR | None = None,
    ) -> SwapResult:
        """Swap the source face onto the selected target faces."""
        options = options or SwapOptions()
        self.check_options(options)
        identity = None
        if options.swap:
            identity = self.swapper.encode_source(source, self.source_face(source, options))
        ref = None
        if options.face_selector_mode == "reference":
            if reference is None:
                raise InvalidOptionError("face_selector_mode 'reference' needs a reference image")
            ref = self.reference_embedding(reference, options)
        faces = self.target_faces(target, options, ref)
        image = self.process(target, faces, identity, options)
        log.info("swapped %d face(s) with %s", len(faces), self.components)
        return SwapResult(image=image, faces_swapped=len(faces), components=self.components)
