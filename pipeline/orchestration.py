"""The one orchestration of a swap: decode, detect, select, source identity, align, swap, paste, enhance,
paste, encode. Written once, over model ports (:mod:`pipeline.ports`); the CLI, the Serve ingress, the Ray
Data job and the HTTP video jobs all run it, with in-process ports or ports over Serve deployment handles.

Frames stay here, where they were decoded: ports receive detector canvases (:mod:`pipeline.canvas`),
aligned face crops and identities, and return faces, embeddings and crops. Each stage makes at most one port
call per swap (one per batch of frames for video): the detector sees the target, source and reference
canvases together; the embedder sees the source, reference and candidate target faces together.

Faces of one image are all cropped from the image as it was before the stage, processed in one batch and
pasted back in order (largest or closest first). FaceFusion instead crops each face from the frame with the
earlier faces already pasted; the two differ only where faces overlap, and batching needs the former.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.canvas import faces_to_image, make_canvas
from pipeline.errors import InvalidInputError, InvalidOptionError, NoFaceError, UnsupportedOptionError
from pipeline.geometry import blend, box_mask, paste_back, warp_face
from pipeline.identities import Identity, IdentityCache, source_key
from pipeline.imageio import decode_image, encode_image
from pipeline.mesh import five_point_from_mesh, region_mask
from pipeline.options import MAX_FACES_CAP, SwapOptions
from pipeline.ports import CropSpec, Masks, Ports
from pipeline.provenance import label_output
from pipeline.selection import cosine_distance, largest_face, select_faces
from pipeline.types import Affine, CropsBGR, Embedding, Face, ImageBGR

log = logging.getLogger(__name__)

T = TypeVar("T")
CpuRunner = Callable[..., Awaitable[Any]]
"""Runs a CPU-bound step: ``await cpu(function, *args)``. ``asyncio.to_thread`` in a server (the event
loop keeps serving), :func:`run_inline` elsewhere."""

LANDMARKER_SCORE = 0.5
"""Dense landmarks of a face count only when the landmarker is this sure (FaceFusion's default
``face_landmarker_score``); otherwise the detector's landmarks and the box mask alone are used."""
REGION_FEATHER = 0.02
"""Soft inner edge of a region mask, as a fraction of the crop side."""
DEFAULT_MAX_FACES = 16
"""Faces processed per image when neither the request nor the service says otherwise."""
CANDIDATES_PER_FACE = 4
"""In reference mode, at most this many detected faces per face to process are embedded and compared."""


async def run_inline(function: Callable[..., T], /, *args: object) -> T:
    """Run ``function(*args)`` in the caller's thread (the CLI, Ray Data actors, tests)."""
    return function(*args)


@dataclass
class SwapResult:
    """A processed image and what produced it."""

    image: ImageBGR
    """(H, W, 3) uint8 BGR."""
    faces: list[Face]
    """The target faces processed, image pixels, in the order they were pasted."""
    components: dict[str, str | None] = field(default_factory=dict)
    identity: Identity | None = None
    """The source identity that was swapped in (None when nothing was swapped)."""
    notices: tuple[str, ...] = ()
    """What the user should know about this result (e.g. that the classical swapper made it)."""

    @property
    def faces_swapped(self) -> int:
        return len(self.faces)


@dataclass(frozen=True)
class EncodedSwap:
    """:class:`SwapResult` plus the result encoded as ``media_type`` (provenance label included)."""

    result: SwapResult
    data: bytes
    media_type: str


def crops_for(
    image: ImageBGR, faces: Sequence[Face], crop: CropSpec
) -> tuple[CropsBGR, npt.NDArray[np.float64]]:
    """Aligned crops ``(N, S, S, 3)`` uint8 BGR of ``faces`` and their forward affines ``(N, 2, 3)``
    float64."""
    crops = np.empty((len(faces), crop.size, crop.size, 3), np.uint8)
    affines = np.empty((len(faces), 2, 3), np.float64)
    for i, face in enumerate(faces):
        crops[i], affines[i] = warp_face(image, face.landmarks, crop.template, crop.size)
    return crops, affines


def _crop_all(
    images: Sequence[ImageBGR], faces: Sequence[Sequence[Face]], crop: CropSpec
) -> tuple[CropsBGR, list[npt.NDArray[np.float64]]]:
    """The crops of every face of every image, concatenated, and each image's affines."""
    parts = [crops_for(image, image_faces, crop) for image, image_faces in zip(images, faces, strict=True)]
    crops = (
        np.concatenate([c for c, _ in parts]) if parts else np.empty((0, crop.size, crop.size, 3), np.uint8)
    )
    return crops, [a for _, a in parts]


def paste_crops(
    image: ImageBGR,
    processed: CropsBGR,
    affines: Sequence[Affine] | npt.NDArray[np.float64],
    mask: npt.NDArray[np.float32],
    masks: Masks | None = None,
) -> ImageBGR:
    """Paste each processed crop back through ``mask`` (S, S) float32, times its own ``masks[i]`` when
    given. An empty batch or a zero mask gives the image back untouched."""
    out = image
    for i, (crop, affine) in enumerate(zip(processed, affines, strict=True)):
        crop_mask = mask if masks is None else mask * masks[i]
        out = paste_back(out, crop, affine, crop_mask)
    return out


def _paste_all(
    images: Sequence[ImageBGR],
    processed: CropsBGR,
    affines: Sequence[npt.NDArray[np.float64]],
    mask: npt.NDArray[np.float32],
    masks: Masks | None,
) -> list[ImageBGR]:
    out: list[ImageBGR] = []
    at = 0
    for image, image_affines in zip(images, affines, strict=True):
        n = len(image_affines)
        part_masks = None if masks is None else masks[at : at + n]
        out.append(
            paste_crops(image, processed[at : at + n], image_affines, mask, part_masks) if n else image
        )
        at += n
    return out


def _to_image(points: npt.NDArray[np.float32], affine: Affine) -> npt.NDArray[np.float32]:
    """(P, 2) crop pixels -> image pixels through the inverse of the forward ``affine``."""
    inverse = cv2.invertAffineTransform(affine)
    return (points @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)


def _to_crop(points: npt.NDArray[np.float32], affine: Affine) -> npt.NDArray[np.float32]:
    """(P, 2) image pixels -> crop pixels through the forward ``affine``."""
    return (points @ affine[:, :2].T + affine[:, 2]).astype(np.float32)


def _region_masks(
    faces: Sequence[Face], affines: npt.NDArray[np.float64], size: int, regions: Sequence[str]
) -> npt.NDArray[np.float32]:
    """(N, S, S) float32: each face's region mask in its crop (all ones where the face has no mesh)."""
    masks = np.ones((len(faces), size, size), np.float32)
    for i, (face, affine) in enumerate(zip(faces, affines, strict=True)):
        if face.mesh is not None:
            masks[i] = region_mask(_to_crop(face.mesh, affine), (size, size), regions, REGION_FEATHER * size)
    return masks


def _blend_all(before: Sequence[ImageBGR], after: Sequence[ImageBGR], ratio: float) -> list[ImageBGR]:
    """``ratio * after + (1 - ratio) * before`` per image (images that did not change stay as they are)."""
    return [b if a is b else blend(b, a, ratio) for b, a in zip(before, after, strict=True)]


def _canvases(images: Sequence[ImageBGR], spec: Any) -> list[tuple[ImageBGR, float]]:
    return [make_canvas(image, spec) for image in images]


class SwapOrchestrator:
    """Runs swaps over ``ports``. ``max_faces``: the service's default number of faces processed per image
    (a request may ask for fewer or more, never above :data:`pipeline.options.MAX_FACES_CAP`); ``cpu``
    runs the CPU-bound steps (canvases, crops, paste-back, decoding and encoding); ``identities``: where
    :meth:`swap_encoded` keeps the identities of recent source uploads (None: no reuse)."""

    def __init__(
        self,
        ports: Ports,
        *,
        max_faces: int = DEFAULT_MAX_FACES,
        cpu: CpuRunner = run_inline,
        identities: IdentityCache | None = None,
    ) -> None:
        if not 1 <= max_faces <= MAX_FACES_CAP:
            raise InvalidOptionError(f"max_faces must be in [1, {MAX_FACES_CAP}], got {max_faces}")
        self.ports = ports
        self.max_faces = max_faces
        self._cpu = cpu
        self._identities = identities

    @property
    def components(self) -> dict[str, str | None]:
        return self.ports.components

    # -- checks -------------------------------------------------------------------------------------------
    def check(self, options: SwapOptions, *, has_source: bool, has_reference: bool) -> None:
        """Fail before any model runs for a request the loaded models cannot serve."""
        if options.swap and not has_source:
            raise InvalidInputError("source_image: required (face_swapper is in frame_processors)")
        enhancer = self.ports.enhancer.info.name if self.ports.enhancer is not None else None
        if options.enhance and enhancer is None:
            raise UnsupportedOptionError("face_enhancer was asked for but no enhancer is loaded")
        if options.face_enhance_model and options.face_enhance_model != enhancer:
            raise UnsupportedOptionError(
                f"face_enhance_model {options.face_enhance_model!r} is not loaded "
                f"(loaded: {enhancer or 'none'})"
            )
        if options.face_selector_mode == "reference":
            if self.ports.embedder is None:
                raise UnsupportedOptionError(
                    "face_selector_mode 'reference' needs an embedding model; this profile has none"
                )
            if not has_reference:
                raise InvalidOptionError("face_selector_mode 'reference' needs a reference image")

    def _notices(self, options: SwapOptions) -> tuple[str, ...]:
        notice = self.ports.swapper.info.notice
        return (notice,) if options.swap and notice else ()

    def face_limit(self, options: SwapOptions) -> int:
        """Faces processed per image for ``options``."""
        return min(options.max_faces or self.max_faces, MAX_FACES_CAP)

    # -- stages -------------------------------------------------------------------------------------------
    async def detect(self, images: Sequence[ImageBGR], score_threshold: float) -> list[list[Face]]:
        """Faces of each image (image pixels, best score first): one detector call for all canvases."""
        if not images:
            return []
        canvases = await self._cpu(_canvases, images, self.ports.detector.info.canvas)
        found = await self.ports.detector.detect([c for c, _ in canvases], score_threshold)
        return [faces_to_image(f, scale) for f, (_, scale) in zip(found, canvases, strict=True)]

    async def _embed(self, pairs: Sequence[tuple[ImageBGR, Face]]) -> npt.NDArray[np.float32]:
        """(N, D) embeddings of the faces of ``pairs`` (image, face): one embedder call."""
        embedder = self.ports.embedder
        if embedder is None:
            raise UnsupportedOptionError("this needs an embedding model; this profile has none")
        if not pairs:
            return np.zeros((0, embedder.info.dim), np.float32)
        crops, _ = await self._cpu(
            _crop_all, [image for image, _ in pairs], [[face] for _, face in pairs], embedder.info.crop
        )
        return await embedder.embed(crops)

    async def _crop_identity(self, image: ImageBGR, face: Face) -> Identity:
        info = self.ports.swapper.info
        crops, _ = await self._cpu(crops_for, image, [face], info.crop)
        return Identity("crop", crops[0], info.name)

    async def identify(self, source: ImageBGR, options: SwapOptions) -> tuple[Identity, Face]:
        """The identity of the largest face of ``source``, and that face, exactly as :meth:`swap` makes them
        (refined when ``options.refine_landmarks``); NoFaceError (422) when it has none."""
        face = _largest((await self.detect([source], options.detector_score))[0], "source")
        if options.refine_landmarks:
            face = (await self.refined([source], [[face]], options))[0][0]
        info = self.ports.swapper.info
        if info.identity == "crop":
            return await self._crop_identity(source, face), face
        return Identity("embedding", (await self._embed([(source, face)]))[0], info.name), face

    async def source_identity(self, source: ImageBGR, options: SwapOptions) -> Identity:
        """The identity of the largest face of ``source`` (see :meth:`identify`)."""
        return (await self.identify(source, options))[0]

    async def reference_embedding(self, reference: ImageBGR, options: SwapOptions) -> Embedding:
        """The embedding of the largest face of ``reference``; NoFaceError when it has none."""
        faces = (await self.detect([reference], options.detector_score))[0]
        return (await self._embed([(reference, _largest(faces, "reference"))]))[0]

    async def with_meshes(self, images: Sequence[ImageBGR], faces: Sequence[list[Face]]) -> list[list[Face]]:
        """The faces with their dense landmarks attached (image pixels): one landmarker call for every face
        without them. A face the landmarker is unsure of (under :data:`LANDMARKER_SCORE`) gets none."""
        landmarker = self.ports.landmarker
        if landmarker is None:
            raise UnsupportedOptionError(
                "region masks and refined landmarks need the face mesh; none is loaded"
            )
        todo = [[f for f in image_faces if f.mesh is None] for image_faces in faces]
        if not any(todo):
            return [list(f) for f in faces]
        crops, affines = await self._cpu(_crop_all, images, todo, landmarker.info.crop)
        dense = await landmarker.landmarks(crops)
        meshes = iter(zip(dense.points, dense.scores, np.concatenate(affines), strict=True))
        out = []
        for image_faces in faces:
            done = []
            for face in image_faces:
                if face.mesh is None:
                    points, score, affine = next(meshes)
                    if score >= LANDMARKER_SCORE:
                        face = replace(face, mesh=_to_image(points, affine))
                done.append(face)
            out.append(done)
        return out

    async def refined(
        self, images: Sequence[ImageBGR], faces: Sequence[list[Face]], options: SwapOptions
    ) -> list[list[Face]]:
        """The faces aligned on 5 points from their dense landmarks when ``options.refine_landmarks`` (as
        FaceFusion's 5/68 landmarks), and with their meshes when region masks will need them."""
        if not (options.refine_landmarks or "region" in options.face_mask_types):
            return [list(f) for f in faces]
        meshed = await self.with_meshes(images, faces)
        if not options.refine_landmarks:
            return meshed
        return [
            [f if f.mesh is None else replace(f, landmarks=five_point_from_mesh(f.mesh)) for f in image_faces]
            for image_faces in meshed
        ]

    async def select(
        self,
        images: Sequence[ImageBGR],
        faces: Sequence[list[Face]],
        options: SwapOptions,
        reference: Embedding | None = None,
    ) -> list[list[Face]]:
        """The faces of each image that ``options`` selects, at most :meth:`face_limit` each (an image may
        get none). In reference mode the candidates of every image are embedded in one call."""
        limit = self.face_limit(options)
        if options.face_selector_mode != "reference":
            chosen = [select_faces(f, options.face_selector_mode)[:limit] for f in faces]
            return await self.refined(images, chosen, options)
        if reference is None:
            raise InvalidOptionError("face_selector_mode 'reference' needs a reference face")
        candidates = await self.refined(images, [_candidates(f, limit) for f in faces], options)
        pairs = [(image, face) for image, found in zip(images, candidates, strict=True) for face in found]
        vectors = await self._embed(pairs)
        selected, at = [], 0
        for found in candidates:
            selected.append(_by_reference(found, vectors[at : at + len(found)], reference, options, limit))
            at += len(found)
        return selected

    async def process(
        self,
        images: Sequence[ImageBGR],
        faces: Sequence[Sequence[Face]],
        identity: Identity | None,
        options: SwapOptions,
    ) -> list[ImageBGR]:
        """Swap, then enhance, ``faces[i]`` of each ``images[i]``: one swapper call and one enhancer call over
        all faces of all images. Images without faces come back as they are."""
        out = list(images)
        if not any(faces):
            return out
        if "region" in options.face_mask_types:
            faces = await self.with_meshes(out, faces)
        if options.swap:
            swapper = self.ports.swapper
            if identity is None or (identity.kind, identity.swapper) != (
                swapper.info.identity,
                swapper.info.name,
            ):
                raise UnsupportedOptionError(f"face_swapper needs a source identity for {swapper.info.name}")
            spec = swapper.info.crop
            crops, affines = await self._cpu(_crop_all, out, faces, spec)
            identities = np.repeat(identity.value[None], len(crops), axis=0)
            swapped = await swapper.swap(crops, identities)
            mask = box_mask(spec.size, options.face_mask_blur, options.face_mask_padding)
            masks = swapped.masks
            if "region" in options.face_mask_types:
                # FaceFusion combines its masks by their minimum; the swapper's own mask multiplies in
                meshed = [f for image_faces in faces for f in image_faces]
                regions = await self._cpu(
                    _region_masks, meshed, np.concatenate(affines), spec.size, options.face_mask_regions
                )
                mask_each = np.minimum(mask, regions)
                masks = mask_each if masks is None else mask_each * masks
                mask = np.ones_like(mask)
            ratio = np.float32(options.blend_ratio)
            out = await self._cpu(_paste_all, out, swapped.crops, affines, mask * ratio, masks)
        if options.enhance:
            enhancer = self.ports.enhancer
            if enhancer is None:
                raise UnsupportedOptionError("face_enhancer was asked for but no enhancer is loaded")
            spec = enhancer.info.crop
            crops, affines = await self._cpu(_crop_all, out, faces, spec)
            enhanced = await enhancer.enhance(crops)
            # FaceFusion: the enhancer's box mask ignores face_mask_padding, and face_enhancer_blend mixes
            # each frame before and after the paste (a rounded addWeighted of the whole frame).
            mask = box_mask(spec.size, options.face_mask_blur)
            pasted = await self._cpu(_paste_all, out, enhanced, affines, mask, None)
            out = await self._cpu(_blend_all, out, pasted, options.face_enhancer_blend / 100.0)
        return out

    # -- whole swaps ----------------------------------------------------------------------------------------
    async def swap(
        self,
        source: ImageBGR | None,
        target: ImageBGR,
        options: SwapOptions | None = None,
        reference: ImageBGR | None = None,
        identity: Identity | None = None,
    ) -> SwapResult:
        """Swap the largest face of ``source`` (or the given source ``identity``) onto the selected faces
        of ``target``, then enhance, as ``options`` ask. NoFaceError (422) when the source, the reference
        or the target has no usable face."""
        options = options or SwapOptions()
        has_source = source is not None or identity is not None
        self.check(options, has_source=has_source, has_reference=reference is not None)
        by_reference = options.face_selector_mode == "reference"
        need_source = options.swap and identity is None
        images = [target]
        if need_source:
            assert source is not None  # check() guarantees it
            images.append(source)
        if by_reference:
            assert reference is not None
            images.append(reference)
        detected = await self.detect(images, options.detector_score)
        if not detected[0]:
            raise NoFaceError("no face found in the target image")
        limit = self.face_limit(options)
        # the target faces to process (reference mode: the candidates), then the source and reference faces
        groups = [
            _candidates(detected[0], limit)
            if by_reference
            else select_faces(detected[0], options.face_selector_mode)[:limit]
        ]
        if need_source:
            groups.append([_largest(detected[1], "source")])
        if by_reference:
            groups.append([_largest(detected[-1], "reference")])
        if not options.refine_landmarks:  # region masks only need the target faces' meshes
            groups = (await self.refined([target], groups[:1], options)) + groups[1:]
        else:
            groups = await self.refined(images, groups, options)
        targets = groups[0]
        source_face = groups[1][0] if need_source else None
        pairs: list[tuple[ImageBGR, Face]] = []
        embed_source = source_face is not None and self.ports.swapper.info.identity == "embedding"
        if embed_source:
            assert source is not None and source_face is not None
            pairs.append((source, source_face))
        if by_reference:
            assert reference is not None
            pairs.append((reference, groups[-1][0]))
            pairs += [(target, face) for face in targets]
        vectors = await self._embed(pairs) if pairs else None
        if source_face is not None:
            assert source is not None
            if embed_source:
                assert vectors is not None
                identity = Identity("embedding", vectors[0], self.ports.swapper.info.name)
            else:
                identity = await self._crop_identity(source, source_face)
        selected = targets
        if by_reference:
            assert vectors is not None
            at = 1 if embed_source else 0
            reference_vector = vectors[at]
            selected = _by_reference(targets, vectors[at + 1 :], reference_vector, options, limit)
            if not selected:
                closest = min(cosine_distance(v, reference_vector) for v in vectors[at + 1 :])
                raise NoFaceError(
                    f"no target face within distance {options.reference_face_distance} of the reference face "
                    f"(closest: {closest:.2f})"
                )
        image = (await self.process([target], [selected], identity, options))[0]
        log.info("processed %d face(s) with %s", len(selected), self.components)
        return SwapResult(
            image, selected, self.components, identity if options.swap else None, self._notices(options)
        )

    async def swap_encoded(
        self,
        uploads: dict[str, bytes],
        options: SwapOptions,
        *,
        media_type: str,
        quality: int = 92,
        max_pixels: int | None = None,
        label: dict[str, Any] | None = None,
        identity: Identity | None = None,
    ) -> EncodedSwap:
        """Decode ``uploads`` (``source_image``, ``target_image``, ``reference_image``: JPEG, PNG or WebP
        bytes), swap, and encode the result as ``media_type`` (``image/jpeg`` or ``image/png``), labelled as
        synthetic with ``label`` (``request_id`` and other fields of the provenance label) unless it is
        None. A given source ``identity`` stands in for ``source_image``; a source seen recently (see
        ``identities``) is neither decoded nor detected again."""
        if "target_image" not in uploads:
            raise InvalidInputError("target_image: required")
        has_source = "source_image" in uploads or identity is not None
        self.check(options, has_source=has_source, has_reference="reference_image" in uploads)
        key = None
        source = uploads.get("source_image")
        if options.swap and identity is None and source is not None and self._identities is not None:
            key = source_key(source, options.detector_score, self.ports.swapper.info.name)
            identity = self._identities.get(key)
        to_decode = {k: v for k, v in uploads.items() if not (k == "source_image" and identity is not None)}
        images = await self._cpu(_decode_all, to_decode, max_pixels)
        result = await self.swap(
            images.get("source_image"),
            images["target_image"],
            options,
            images.get("reference_image"),
            identity=identity,
        )
        if (
            key is not None
            and identity is None
            and result.identity is not None
            and self._identities is not None
        ):
            self._identities.put(key, result.identity)
        data = await self._cpu(encode_image, result.image, media_type, quality)
        if label is not None:
            data = label_output(data, media_type, result.components, **label)
        return EncodedSwap(result, data, media_type)

    async def swap_frames(
        self,
        frames: Sequence[ImageBGR],
        identity: Identity | None,
        options: SwapOptions,
        reference: Embedding | None = None,
        faces: Sequence[list[Face]] | None = None,
        *,
        select: bool = True,
    ) -> list[SwapResult]:
        """Process a batch of video frames: detect (unless ``faces`` per frame are given, e.g. by a tracker),
        select (unless ``select`` is False: ``faces`` are then exactly the faces to process, e.g. a video's
        plan, and ``reference`` is not used), refine as ``options`` ask, and process; a frame without a face
        to process comes back unchanged with no faces."""
        if faces is None and not select:
            raise ValueError("select=False needs the faces to process")
        detected = list(faces) if faces is not None else await self.detect(frames, options.detector_score)
        if select:
            selected = await self.select(frames, detected, options, reference)
        else:
            selected = await self.refined(frames, detected, options)
        images = await self.process(frames, selected, identity, options)
        notices = self._notices(options)
        return [
            SwapResult(image, f, self.components, identity, notices)
            for image, f in zip(images, selected, strict=True)
        ]


def _candidates(faces: list[Face], limit: int) -> list[Face]:
    """The faces compared with a reference: the largest ``limit * CANDIDATES_PER_FACE``."""
    return sorted(faces, key=lambda f: -f.area)[: limit * CANDIDATES_PER_FACE]


def _by_reference(
    candidates: list[Face],
    vectors: npt.NDArray[np.float32],
    reference: Embedding,
    options: SwapOptions,
    limit: int,
) -> list[Face]:
    """The candidates (with their embeddings ``vectors``) within the reference distance, closest first."""
    embedded = [face.with_embedding(v) for face, v in zip(candidates, vectors, strict=True)]
    return select_faces(embedded, "reference", reference, options.reference_face_distance)[:limit]


def _largest(faces: list[Face], what: str) -> Face:
    if not faces:
        raise NoFaceError(f"no face found in the {what} image")
    return largest_face(faces)


def _decode_all(uploads: dict[str, bytes], max_pixels: int | None) -> dict[str, ImageBGR]:
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    return {name: decode_image(data, field=name, **limit) for name, data in uploads.items()}
