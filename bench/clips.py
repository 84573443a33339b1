"""Test clips with known landmark truth, made with the shipped video generator.

Every frame of ``../shared/assets/video/*.mp4`` is a photo seen through a known per-frame 2x3 matrix
(``make_test_video.frame_matrix``), so a frame's true landmarks are the photo's landmarks mapped by that
frame's matrix. This module imports the generator's own ``frame_matrix`` (one definition of the camera
path) and builds:

- the shipped clips (read from disk; the specs repeat the commands of the generator's docstring);
- more clips in the same way: other photos, faster motion, a grey occluder over the face for 1-5 frames,
  and two faces from two photos composited moving past each other (each face is its own layer with its
  own camera path, cut out with a soft ellipse).

A clip is a list of *layers*; each layer is one photo and one camera path. The first layer without a
cut-out mask fills the frame (as the generator does); masked layers are pasted over it in order, so later
layers are in front. The truth of each layer is its photo's landmarks (one detection on the photo) mapped
by the layer's matrix; frames where a face is hidden still have a truth, and :func:`visible` says whether
it can be seen.

Clips that are not shipped are encoded like the generator's (H.264 yuv420p, CRF 20, preset medium) to a
path the caller gives (under /tmp or ``out/``; never commit videos) and decoded back, so compression noise
is part of what the detector sees.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import av
import cv2
import numpy as np

from pipeline.types import Face, ImageBGR

GENERATOR = Path("video") / "make_test_video.py"
"""The generator, relative to the assets folder."""

Detect = Callable[[ImageBGR], list[Face]]


@cache
def generator(assets: Path) -> ModuleType:
    """``make_test_video.py`` of ``assets`` as a module (its ``frame_matrix`` and ``ease``)."""
    path = Path(assets) / GENERATOR
    spec = importlib.util.spec_from_file_location("make_test_video", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Layer:
    """One photo through one camera path (the generator's ``--center --zoom --pan --roll``)."""

    image: str
    """File name in ``assets/images``."""
    center: tuple[float, float]
    zoom: tuple[float, float]
    pan: tuple[float, float]
    roll: float
    cutout: bool = False
    """Paste only an ellipse around the photo's faces (soft edge) over the layers below."""


@dataclass(frozen=True)
class Occlusion:
    """A grey rectangle over the truth face box (plus a margin) of ``layer``'s face ``face``."""

    start: int
    frames: int
    layer: int = 0
    face: int = 0
    grey: int = 128
    margin: float = 0.25
    """Fraction of the box size added on every side."""


@dataclass(frozen=True)
class ClipSpec:
    name: str
    size: tuple[int, int]
    """(width, height) in pixels."""
    layers: tuple[Layer, ...]
    fps: int = 25
    seconds: float = 3.0
    occlusions: tuple[Occlusion, ...] = ()
    shipped: str | None = None
    """File name in ``assets/video`` when the clip is shipped (then it is read, not rendered)."""
    notes: str = ""
    background_seed: int = 0

    @property
    def frame_count(self) -> int:
        return int(round(self.fps * self.seconds))


ASTRONAUT = Layer("astronaut_eileen_collins_nasa.png", (240, 175), (1.6, 2.0), (25, 10), 4)
GROUP = Layer("pexels_group_meeting_1080865.jpeg", (640, 380), (1.06, 1.16), (20, 10), 2)

CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("astronaut", (640, 480), (ASTRONAUT,), shipped="astronaut_pan_zoom_640x480_25fps_h264.mp4"),
    ClipSpec("group", (1280, 720), (GROUP,), shipped="group_pan_1280x720_25fps_h264.mp4"),
    ClipSpec(
        "santa",
        (640, 480),
        (Layer("pexels_man_santa_costume_716658.jpeg", (840, 500), (0.55, 0.7), (40, 20), 5),),
        notes="another photo: glasses and a beard",
    ),
    ClipSpec(
        "fast",
        (640, 480),
        (Layer("pexels_woman_portrait_638700.jpeg", (487, 622), (0.38, 0.6), (330, 100), 15),),
        notes="faster motion: the face crosses half the frame while its size grows by 1.6x, roll +-15 deg "
        "(about 3x the astronaut clip's speed)",
    ),
    ClipSpec(
        "occluded",
        (640, 480),
        (ASTRONAUT,),
        occlusions=(Occlusion(14, 1), Occlusion(30, 3), Occlusion(52, 5)),
        notes="the astronaut with a grey box over the face for 1, 3 and 5 frames",
    ),
    ClipSpec(
        "crossing",
        (640, 480),
        (
            Layer("codait_luciano_cc0.png", (198, 209), (1.12, 0.92), (-150, 12), 3, cutout=True),
            Layer("paul_rudd_2009_ccbysa2.jpeg", (228, 190), (0.46, 0.58), (300, -16), 3, cutout=True),
        ),
        notes="two faces from two photos pass each other, the front one over the other's chin; the front "
        "one grows while the other shrinks, so the largest face of a frame changes person half-way",
    ),
    ClipSpec(
        "crossing_behind",
        (640, 480),
        (
            Layer("codait_luciano_cc0.png", (198, 180), (1.12, 0.92), (-150, 12), 3, cutout=True),
            Layer("paul_rudd_2009_ccbysa2.jpeg", (228, 235), (0.46, 0.58), (300, -16), 3, cutout=True),
        ),
        notes="as crossing, but the back face is hidden for about 16 frames (longer than max_gap)",
    ),
)


def clip(name: str) -> ClipSpec:
    for spec in CLIPS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown clip {name!r}, expected one of {[c.name for c in CLIPS]}")


def matrices(assets: Path, spec: ClipSpec, layer: Layer) -> np.ndarray:
    """(T, 2, 3) float64: photo pixels -> frame pixels for every frame of ``spec``, as the generator."""
    gen = generator(assets)
    n = spec.frame_count
    width, height = spec.size
    return np.stack(
        [
            gen.frame_matrix(i / (n - 1), layer.center, layer.zoom, layer.pan, layer.roll, width, height)
            for i in range(n)
        ]
    )


def map_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 2) points through a 2x3 affine ``matrix``."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def read_photo(assets: Path, layer: Layer) -> ImageBGR:
    image = cv2.imread(str(Path(assets) / "images" / layer.image), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(layer.image)
    return image


@dataclass(frozen=True)
class Truth:
    """The known faces of a clip."""

    landmarks: np.ndarray
    """(T, P, 5, 2) float64 frame pixels: every person P (layer by layer, face by face) in every frame."""
    inside: np.ndarray
    """(T, P) bool: all 5 landmarks lie inside the frame."""
    visible: np.ndarray
    """(T, P) bool: inside, and not covered by an occluder or a front layer (a detector can see it)."""

    def expected(self, max_hidden: int) -> np.ndarray:
        """(T, P) bool: frames where a person should be swapped: visible, or inside and hidden for at most
        ``max_hidden`` frames in a row (a short occlusion; a longer one is the person leaving)."""
        out = self.visible.copy()
        frames = len(out)
        for p in range(out.shape[1]):
            t = 0
            while t < frames:
                if self.visible[t, p] or not self.inside[t, p]:
                    t += 1
                    continue
                end = t
                while end < frames and self.inside[end, p] and not self.visible[end, p]:
                    end += 1
                if end - t <= max_hidden:
                    out[t:end, p] = True
                t = end
        return out


def photo_faces(assets: Path, layer: Layer, detect: Detect) -> list[Face]:
    """The faces of a layer's photo, detected once on the full photo, left to right."""
    faces = detect(read_photo(assets, layer))
    return sorted(faces, key=lambda f: float(f.bbox[0]))


def _inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T,) bool: all (T, 5, 2) points inside the frame."""
    width, height = size
    x, y = points[..., 0], points[..., 1]
    return np.all((x >= 0) & (x < width) & (y >= 0) & (y < height), axis=-1)


def _occluder_box(landmarks: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Integer x1, y1, x2, y2 around a face's (5, 2) landmarks, grown to cover the whole face."""
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    size = hi - lo
    # The 5 landmarks span about the middle half of a face box: eyes to mouth, eye to eye.
    lo = lo - size * (0.6 + margin) - np.array([0.0, size[1] * 0.4])
    hi = hi + size * (0.6 + margin)
    return int(lo[0]), int(lo[1]), int(math.ceil(hi[0])), int(math.ceil(hi[1]))


def _ellipse_mask(photo: ImageBGR, faces: Sequence[Face]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: soft ellipses around ``faces`` (head-sized) in photo pixels."""
    mask = np.zeros(photo.shape[:2], np.float32)
    for face in faces:
        x1, y1, x2, y2 = (float(v) for v in face.bbox)
        w, h = x2 - x1, y2 - y1
        centre = (int(round((x1 + x2) / 2)), int(round((y1 + y2) / 2 - 0.05 * h)))
        axes = (int(round(w * 0.78)), int(round(h * 0.78)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    blur = max(3, int(round(0.08 * max(photo.shape[:2]))) | 1)
    return cv2.GaussianBlur(mask, (blur, blur), 0)


def _background(size: tuple[int, int], seed: int) -> ImageBGR:
    """A faceless, muted, textured backdrop (H, W, 3) uint8 BGR: low-frequency seeded grey noise with a
    slight tint, plus fine grain."""
    width, height = size
    rng = np.random.default_rng(seed)
    cells = (width // 40 + 2, height // 40 + 2)
    grey = rng.uniform(70, 190, cells[::-1])[..., None] + rng.uniform(-15, 15, (*cells[::-1], 3))
    smooth = cv2.resize(grey.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


class ClipRenderer:
    """Frames and truth of one clip: the photos, their faces and every layer's matrices, computed once."""

    def __init__(self, assets: Path, spec: ClipSpec, detect: Detect) -> None:
        self.assets = Path(assets)
        self.spec = spec
        self.photos = [read_photo(self.assets, layer) for layer in spec.layers]
        self.faces = [photo_faces(self.assets, layer, detect) for layer in spec.layers]
        self.matrices = [matrices(self.assets, spec, layer) for layer in spec.layers]
        self.masks = [
            _ellipse_mask(photo, faces) if layer.cutout else None
            for photo, faces, layer in zip(self.photos, self.faces, spec.layers, strict=True)
        ]

    def truth(self) -> Truth:
        n = self.spec.frame_count
        people, visible, owner = [], [], []
        for li, (faces, mats) in enumerate(zip(self.faces, self.matrices, strict=True)):
            for fi, face in enumerate(faces):
                points = np.stack([map_points(m, face.landmarks) for m in mats])
                inside = _inside(points, self.spec.size)
                if not inside.any():
                    continue
                people.append(points)
                visible.append(inside)
                owner.append((li, fi))
        landmarks = np.stack(people, axis=1)
        inside = np.stack(visible, axis=1)
        seen = inside.copy()
        for occ in self.spec.occlusions:
            if (occ.layer, occ.face) in owner:
                seen[occ.start : occ.start + occ.frames, owner.index((occ.layer, occ.face))] = False
        for t in range(n):
            for p, (li, _) in enumerate(owner):
                seen[t, p] &= not self._covered(t, landmarks[t, p], li)
        return Truth(landmarks, inside, seen)

    def _covered(self, t: int, landmarks: np.ndarray, layer: int) -> bool:
        """Whether a front cut-out layer hides more than one landmark of this face at frame ``t``."""
        hidden = np.zeros(len(landmarks), bool)
        for front in range(layer + 1, len(self.spec.layers)):
            mask = self.masks[front]
            if mask is None:
                continue
            inverse = cv2.invertAffineTransform(self.matrices[front][t])
            src = map_points(inverse, landmarks)
            h, w = mask.shape
            for k, (x, y) in enumerate(src):
                if 0 <= x < w and 0 <= y < h and mask[int(y), int(x)] > 0.5:
                    hidden[k] = True
        return int(hidden.sum()) > 1

    def render(self, index: int) -> ImageBGR:
        """Frame ``index`` as (H, W, 3) uint8 BGR, before encoding."""
        width, height = self.spec.size
        frame = None
        for photo, mask, mats in zip(self.photos, self.masks, self.matrices, strict=True):
            warped = cv2.warpAffine(
                photo, mats[index], (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
            )
            if mask is None:
                frame = warped
                continue
            if frame is None:
                frame = _background(self.spec.size, self.spec.background_seed)
            alpha = cv2.warpAffine(mask, mats[index], (width, height), flags=cv2.INTER_LINEAR)[..., None]
            frame = (warped * alpha + frame * (1.0 - alpha)).round().clip(0, 255).astype(np.uint8)
        assert frame is not None
        for occ in self.spec.occlusions:
            if occ.start <= index < occ.start + occ.frames:
                face = self.faces[occ.layer][occ.face]
                x1, y1, x2, y2 = _occluder_box(
                    map_points(self.matrices[occ.layer][index], face.landmarks), occ.margin
                )
                cv2.rectangle(frame, (x1, y1), (x2, y2), (occ.grey,) * 3, -1)
        return frame

    def write(self, path: Path) -> Path:
        """Encode every frame as the generator does (H.264 yuv420p, CRF 20, preset medium, one thread)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = self.spec.size
        with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=self.spec.fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {
                "crf": "20",
                "preset": "medium",
                "g": str(self.spec.fps),
                "keyint_min": str(self.spec.fps),
                "threads": "1",
            }
            for i in range(self.spec.frame_count):
                frame = av.VideoFrame.from_ndarray(self.render(i), format="bgr24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        return path


def clip_video(assets: Path, spec: ClipSpec, renderer: ClipRenderer, workdir: Path) -> Path:
    """The clip's video file: the shipped one, or this clip encoded into ``workdir``."""
    if spec.shipped is not None:
        return Path(assets) / "video" / spec.shipped
    return renderer.write(Path(workdir) / f"{spec.name}.mp4")
