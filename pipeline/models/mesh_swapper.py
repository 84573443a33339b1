"""Classical (no-download) face swapper on MediaPipe's face mesh.

For each aligned target crop and the source face aligned the same way:
1. find both meshes (:class:`~pipeline.models.landmarker.FaceMeshLandmarker`);
2. warp the source face triangle by triangle onto the target's mesh (its inner points moved part of the
   way to the source's proportions), at the crop's full resolution;
3. match its skin tone to the target's (LAB, measured on the skin below the brows);
4. clone it into the target with Poisson blending (``cv2.seamlessClone``), so no colour step and no hard
   edge remains at the outline. Above the brows only what looks like skin in both faces is swapped, so
   hair and hats over the forehead stay the target's and never come along from the source.
The returned mask (that region, feathered inward) is where the result replaces the target.

Crop: ``ffhq_512`` at 512 px. FFHQ alignment holds the whole face with a margin (the mesh spans about
55% of the side, about 280 px at 512), and it is the alignment the landmarker wants (scaled to 192). A
face up to about 280 px across (eye to eye about 125 px) is therefore not downsampled at all; the shared
photos' faces are 90-440 px wide, so only the largest lose detail, against 128 px for the classical swapper.
Any other side works the same (every pixel setting scales with it): live video runs a smaller one.

Speed: every per-pixel step after the warp runs on the window of the crop around the two faces, grown by
the widest reach of those steps, so the result is the same, byte for byte, as computing them on the whole
crop; and a swapper made with ``source_meshes`` > 0 finds a source's mesh once and keeps it (by the
crop's bytes), for a stream of frames swapped to one source.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidInputError, InvalidOptionError
from pipeline.geometry import template_points
from pipeline.mesh import (
    FACE_OVAL,
    LEFT_EYEBROW,
    MESH_POINTS,
    REGIONS,
    RIGHT_EYEBROW,
    face_mesh_triangles,
    feather_inward,
    hull_mask,
    piecewise_affine_warp,
    region_labels,
)
from pipeline.models.landmarker import FaceMeshLandmarker
from pipeline.types import CropsBGR, ImageBGR, Mask

_BROWS = list(LEFT_EYEBROW + RIGHT_EYEBROW)
_SKIN_LABELS = (REGIONS.index("skin") + 1, REGIONS.index("nose") + 1)
_HAIR_MARGIN = 0.03
"""How far (fraction of the crop side) the swap keeps away from hair or a hat above the brows."""
_OPENING = 0.01
"""Radius (fraction of the crop side) of the opening and closing that clean the swapped region."""


def skin_like(
    image: ImageBGR, sample: npt.NDArray[np.bool_], limit: float = 3.0, rows: int | None = None
) -> npt.NDArray[np.bool_]:
    """(H, W) bool: pixels of ``image`` ((H, W, 3) uint8 BGR) whose LAB colour lies within ``limit``
    robust standard deviations (1.4826 x the median absolute deviation, per channel, Euclidean over the
    channels) of the median colour over ``sample`` ((H, W) bool, some of the face's skin). ``rows``: only
    the first this many rows are classified (the others are False)."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    values = lab[sample].astype(np.float32)
    median = np.median(values, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(values - median), axis=0), 1.0)
    like = np.zeros(sample.shape, bool)
    top = lab[:rows].astype(np.float32)
    like[: len(top)] = np.sqrt((((top - median) / spread) ** 2).sum(axis=2)) < limit
    return like


def match_skin_tone(
    source: ImageBGR, target: ImageBGR, source_skin: npt.NDArray[np.bool_], target_skin: npt.NDArray[np.bool_]
) -> ImageBGR:
    """``source`` ((H, W, 3) uint8 BGR) recoloured to ``target``'s skin tone, in float LAB: lightness
    gets the target's mean and standard deviation over the skin masks (the scale clipped to [0.5, 2]),
    the two colour channels only the target's mean. Scaling the colour channels too would amplify the
    source's blemishes whenever the target's skin is more even (red lips and make-up widen its spread)."""
    src = cv2.cvtColor(source.astype(np.float32) / np.float32(255.0), cv2.COLOR_BGR2LAB)
    ref = cv2.cvtColor(target.astype(np.float32) / np.float32(255.0), cv2.COLOR_BGR2LAB)
    src_values, ref_values = src[source_skin], ref[target_skin]
    src_mean, ref_mean = src_values.mean(axis=0), ref_values.mean(axis=0)
    ratio = ref_values.std(axis=0) / np.maximum(src_values.std(axis=0), 1e-3)
    scale = np.clip(ratio, 0.5, [2.0, 1.0, 1.0]).astype(np.float32)
    lab = ((src - src_mean) * scale + ref_mean).astype(np.float32)
    return np.clip(np.rint(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR) * 255.0), 0, 255).astype(np.uint8)


def largest_part(region: npt.NDArray[np.bool_], radius: int) -> npt.NDArray[np.bool_]:
    """``region`` ((H, W) bool) opened then closed with a disc of ``radius`` px, keeping only its
    largest 8-connected part (all False when nothing is left)."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_OPEN, disc)
    closed = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, disc)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    if count <= 1:
        return np.zeros(region.shape, bool)
    return np.asarray(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))


class MeshSwapper:
    """Crop-level swapper: ``swap_crops(target crops, aligned source crops) -> (swapped crops, masks)``.

    ``landmarker``: the face mesh; its ``template`` must equal ``template`` so its landmarks land in
    these crops. ``shape_transfer`` in [0, 1]: how far the inner face (every mesh point off the face
    oval) takes the source's proportions instead of the target's; the oval always follows the target so
    the clone fits the target's outline. ``forehead`` in [0, 1]: how much of the forehead above the brows
    may be swapped (the mesh reaches mid-forehead). ``feather``: width of the mask's soft inner edge as a
    fraction of the crop side. ``source_meshes``: how many source meshes to keep (least recently used
    out; 0 = none), so a source swapped again is not landmarked again. Deterministic: the same crops give
    the same bytes.
    """

    identity = "crop"
    """The source face itself, aligned like the target crops."""
    identity_dim = None
    notice = (
        "the classical no-download swapper ran: it moves the source's features onto the target's face, "
        "without a trained model. For FaceFusion's inswapper_128: `faceswap models download inswapper_128 "
        "arcface_w600k_r50` (InsightFace weights, non-commercial research only), then the auto or full "
        "profile."
    )
    """Said with every result it makes (responses, CLI, page)."""

    def __init__(
        self,
        landmarker: FaceMeshLandmarker,
        *,
        name: str = "mesh_classical",
        template: str = "ffhq_512",
        crop_size: int = 512,
        shape_transfer: float = 1.0,
        forehead: float = 0.5,
        feather: float = 0.03,
        source_meshes: int = 0,
    ) -> None:
        template_points(template, crop_size)  # validates template and crop_size
        if landmarker.template != template:
            raise InvalidOptionError(
                f"{name}: landmarker {landmarker.name!r} takes {landmarker.template!r} crops, "
                f"not {template!r}"
            )
        for what, value in (("shape_transfer", shape_transfer), ("forehead", forehead)):
            if not 0.0 <= value <= 1.0:
                raise InvalidOptionError(f"{name}: {what} must be in [0, 1], got {value}")
        if not 0.0 < feather < 0.5:
            raise InvalidOptionError(f"{name}: feather must be in (0, 0.5), got {feather}")
        self.name = name
        self.template = template
        self.crop_size = crop_size
        self._landmarker = landmarker
        self._shape_transfer = np.float32(shape_transfer)
        self._forehead = np.float32(forehead)
        self._feather_px = feather * crop_size
        self._triangles = face_mesh_triangles()
        inner = np.ones(MESH_POINTS, bool)
        inner[list(FACE_OVAL)] = False
        self._inner = inner
        """(468,) bool: the mesh points that move with ``shape_transfer``."""
        self._opening = max(1, round(crop_size * _OPENING))
        reach = round(crop_size * _HAIR_MARGIN)
        self._margin = max(reach, 2 * self._opening + 1, math.ceil(self._feather_px) + 1) + 2
        """Pixels around the meshes that the dilation, opening, closing, feathering and cloning may reach."""
        self._keep = source_meshes
        self._source_meshes: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def swap_crops(self, crops: CropsBGR, identities: CropsBGR) -> tuple[CropsBGR, npt.NDArray[np.float32]]:
        """(N, S, S, 3) uint8 BGR target crops and (N, S, S, 3) uint8 BGR source crops, both aligned to
        ``template`` at ``crop_size`` -> ((N, S, S, 3) uint8 BGR swapped crops, (N, S, S) float32 masks in
        [0, 1]). Where a mask is 0 the crop is the target's, byte for byte."""
        s = self.crop_size
        for what, array in (("crops", crops), ("identities", identities)):
            if array.ndim != 4 or array.shape[1:] != (s, s, 3) or array.dtype != np.uint8:
                raise InvalidInputError(
                    f"{self.name}: {what} must be (N, {s}, {s}, 3) uint8, got {array.shape} {array.dtype}"
                )
        if len(identities) != len(crops):
            raise InvalidInputError(f"{self.name}: {len(crops)} crops but {len(identities)} identities")
        out = crops.copy()
        masks = np.zeros((len(crops), s, s), np.float32)
        if len(crops) == 0:
            return out, masks
        target_meshes, source_meshes = self._meshes(crops, identities)
        for i, (target, source) in enumerate(zip(crops, identities, strict=True)):
            out[i], masks[i] = self._swap_one(target, source, target_meshes[i], source_meshes[i])
        return out, masks

    def _meshes(self, crops: CropsBGR, identities: CropsBGR) -> tuple[np.ndarray, list[np.ndarray]]:
        """(N, 468, 2) meshes of the target crops and the mesh of each source crop: one landmarker call
        for the targets and the sources (only those not kept from before when ``source_meshes`` > 0)."""
        if self._keep == 0:
            found, _ = self._landmarker.landmarks(np.concatenate([crops, identities]))
            return found[: len(crops)], list(found[len(crops) :])
        keys = [hashlib.blake2b(np.ascontiguousarray(i).data, digest_size=16).digest() for i in identities]
        with self._lock:
            known = {key: self._source_meshes[key] for key in keys if key in self._source_meshes}
        new = list(dict.fromkeys(key for key in keys if key not in known))
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        found, _ = self._landmarker.landmarks(np.concatenate([crops, identities[[first[k] for k in new]]]))
        known.update(zip(new, found[len(crops) :], strict=True))
        with self._lock:
            for key in keys:
                self._source_meshes[key] = known[key]
                self._source_meshes.move_to_end(key)
            while len(self._source_meshes) > self._keep:
                self._source_meshes.popitem(last=False)
        return found[: len(crops)], [known[key] for key in keys]

    def _destination(self, target_mesh: np.ndarray, source_mesh: np.ndarray) -> npt.NDArray[np.float32]:
        """(468, 2) float32: the target mesh, its inner points moved ``shape_transfer`` of the way to the
        source mesh fitted onto it by a similarity."""
        fit, _ = cv2.estimateAffinePartial2D(source_mesh, target_mesh, method=cv2.LMEDS)
        fitted = source_mesh @ fit[:, :2].T + fit[:, 2]
        moved = target_mesh + self._shape_transfer * (fitted - target_mesh)
        return np.where(self._inner[:, None], moved, target_mesh).astype(np.float32)

    def _region(self, mesh: np.ndarray, brows: int, covered: Mask) -> npt.NDArray[np.bool_]:
        """(S, S) bool: the hull of the face oval of ``mesh`` with its part above ``brows`` (row) lowered
        to ``forehead`` of its height, where the warp ``covered`` the crop."""
        oval = mesh[list(FACE_OVAL)].copy()
        above = oval[:, 1] < brows
        oval[above, 1] = brows - self._forehead * (brows - oval[above, 1])
        return (hull_mask(oval, (self.crop_size, self.crop_size)) * covered) > 0

    def _window(self, *meshes: np.ndarray) -> tuple[slice, slice]:
        """Rows and columns of the crop around ``meshes`` grown by :attr:`_margin`: every per-pixel step
        after the warp reads and writes only inside it (the regions are inside the meshes' hulls)."""
        points = np.concatenate(meshes)
        low = np.floor(points.min(axis=0)).astype(int) - self._margin
        high = np.ceil(points.max(axis=0)).astype(int) + self._margin + 1
        x0, y0 = np.clip(low, 0, self.crop_size)
        x1, y1 = np.clip(high, 0, self.crop_size)
        return slice(int(y0), int(y1)), slice(int(x0), int(x1))

    def _swap_one(
        self, target: ImageBGR, source: ImageBGR, target_mesh: np.ndarray, source_mesh: np.ndarray
    ) -> tuple[ImageBGR, Mask]:
        s = self.crop_size
        destination = self._destination(target_mesh, source_mesh)
        warped, covered = piecewise_affine_warp(source, source_mesh, destination, self._triangles, (s, s))
        brows = max(0, int(destination[_BROWS, 1].min()))
        skin = np.isin(region_labels(destination, (s, s)), _SKIN_LABELS)
        skin[:brows] = False
        target_skin = np.isin(region_labels(target_mesh, (s, s)), _SKIN_LABELS)
        target_skin[:brows] = False
        region = self._region(destination, brows, covered)
        if not skin.any() or not target_skin.any() or not region.any():
            return target.copy(), np.zeros((s, s), np.float32)
        w = self._window(destination, target_mesh)
        top = w[0].start
        # above the brows swap only skin (in both faces), kept well away from any hair or hat edge.
        above = max(0, brows - top)
        like = skin_like(warped[w], skin[w], rows=above) & skin_like(target[w], target_skin[w], rows=above)
        other = ~like
        other[above:] = False
        reach = 2 * round(s * _HAIR_MARGIN) + 1
        kept = region[w] & (cv2.dilate(other.astype(np.uint8), np.ones((reach, reach), np.uint8)) == 0)
        region = np.zeros((s, s), bool)
        region[w] = largest_part(kept, self._opening)
        # seamlessClone needs the mask off the crop's border.
        region[:2], region[-2:], region[:, :2], region[:, -2:] = False, False, False, False
        mask = np.zeros((s, s), np.float32)
        mask[w] = feather_inward(region[w], self._feather_px)
        if not mask.any():
            return target.copy(), np.zeros((s, s), np.float32)
        toned = match_skin_tone(warped[w], target[w], skin[w], target_skin[w])
        clone_mask = region[w].astype(np.uint8) * 255
        x, y, width, height = cv2.boundingRect(clone_mask)
        cloned = cv2.seamlessClone(
            toned, target[w], clone_mask, (x + width // 2, y + height // 2), cv2.NORMAL_CLONE
        )
        out = target.copy()
        out[w] = np.where(mask[w][..., None] > 0, cloned, target[w])
        return out, mask
