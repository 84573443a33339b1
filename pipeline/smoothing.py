"""Landmark smoothing along a track: zero-phase Savitzky-Golay for offline tracks, a causal One-Euro filter
for streaming.

Both act on a face's box and 5 landmarks together, in image pixels, and both take a ``strength`` in
[0, 1] where 0 is off: the output is the input object itself.

- **Offline** (:func:`smooth_track`, :func:`smooth_tracks`): a Savitzky-Golay filter (least-squares
  polynomial of degree ``polyorder`` over a centred window of ``1 + 2 * round(strength *
  MAX_HALF_WINDOW)`` frames). It is zero-phase, so it does not lag, and a degree-2 polynomial follows
  smooth camera or head motion without flattening it. The ends of a track use the polynomial fitted to the
  first or last full window (scipy's ``mode="interp"``). Written with numpy because scipy is not a
  dependency of the project (``savgol_weights`` gives the same coefficients as
  ``scipy.signal.savgol_coeffs``).
- **Streaming** (:class:`OneEuroFilter`, :class:`TrackSmoother`): the One-Euro filter (Casiez, Roussel
  and Vogel, CHI 2012), an exponential smoother whose cutoff rises with speed, so it removes jitter when
  the face is still and lags little when it moves. Time is counted in frames, cutoffs in cycles per
  frame. One cutoff serves the whole face (box and landmarks), so the face's shape is not distorted by
  per-point lag, and the speed is measured in face sizes per frame, so the same settings suit small and
  large faces. Given each track's frame-to-frame motion (the optical flow of
  :mod:`pipeline.follow`), the filter is motion-compensated: it smooths only what that motion does not
  explain, so it removes detection noise without trailing behind a moving face.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import InvalidOptionError
from pipeline.tracking import Track, TrackedFace, Tracks, move_geometry

MAX_HALF_WINDOW = 8
"""Half-width in frames of the Savitzky-Golay window at strength 1 (a 17-frame window)."""
DEFAULT_POLYORDER = 2
ONE_EURO_MIN_CUTOFF = 0.02
"""Cycles per frame of the One-Euro filter at rest, at strength 1 (it is divided by the strength)."""
ONE_EURO_BETA = 2.0
"""Cutoff added per face size per frame of speed."""
ONE_EURO_D_CUTOFF = 0.2
"""Cycles per frame of the speed estimate's own smoothing."""


def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 1]; InvalidOptionError otherwise."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0 or math.isnan(strength):
        raise InvalidOptionError(f"smoothing strength must be in [0, 1], got {strength}")
    return strength


# ---------------------------------------------------------------------------------------------- offline
def savgol_weights(window: int, polyorder: int) -> npt.NDArray[np.float64]:
    """(window, window) float64: row k holds the weights that estimate sample k of a window from its
    samples by a least-squares polynomial of degree ``polyorder`` (the centre row is the usual
    Savitzky-Golay kernel)."""
    if window < 1 or window % 2 == 0:
        raise InvalidOptionError(f"Savitzky-Golay window must be odd and >= 1, got {window}")
    if not 0 <= polyorder < window:
        raise InvalidOptionError(f"polyorder must be in [0, window), got {polyorder} for window {window}")
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2
    vander = np.vander(x, polyorder + 1, increasing=True)
    return vander @ np.linalg.pinv(vander)


def savgol_smooth(
    series: npt.ArrayLike, window: int, polyorder: int = DEFAULT_POLYORDER
) -> npt.NDArray[np.float64]:
    """Zero-phase Savitzky-Golay smoothing of ``series`` (T, ...) along axis 0, as float64 of the same
    shape. A window longer than the series shrinks to the longest odd length that fits, and the degree
    to at most that length - 1; the ends use the fit of the first or last full window."""
    data = np.asarray(series, np.float64)
    length = data.shape[0]
    window = min(int(window), length if length % 2 else length - 1)
    if window <= 1:
        return data.copy()
    polyorder = min(int(polyorder), window - 1)
    weights = savgol_weights(window, polyorder)
    half = window // 2
    flat = data.reshape(length, -1)
    out = np.empty_like(flat)
    out[half : length - half] = sliding_window_view(flat, window, axis=0) @ weights[half]
    out[:half] = weights[:half] @ flat[:window]
    out[length - half :] = weights[half + 1 :] @ flat[length - window :]
    return out.reshape(data.shape)


def savgol_window(strength: float) -> int:
    """The odd window length in frames for ``strength`` in [0, 1] (1 = off at strength 0)."""
    return 1 + 2 * round(check_strength(strength) * MAX_HALF_WINDOW)


def smooth_track(track: Track, strength: float, polyorder: int = DEFAULT_POLYORDER) -> Track:
    """The track with its boxes and landmarks smoothed by :func:`savgol_smooth`; ``track`` itself when
    ``strength`` is 0."""
    window = savgol_window(strength)
    if window == 1:
        return track
    boxes = savgol_smooth(track.boxes(), window, polyorder)
    landmarks = savgol_smooth(track.landmarks(), window, polyorder)
    return track.with_geometry(boxes, landmarks)


def smooth_tracks(tracks: Tracks, strength: float, polyorder: int = DEFAULT_POLYORDER) -> Tracks:
    """Every track through :func:`smooth_track`; ``tracks`` itself when ``strength`` is 0."""
    if savgol_window(strength) == 1:
        return tracks
    return Tracks(tuple(smooth_track(t, strength, polyorder) for t in tracks), tracks.frame_count)


# ---------------------------------------------------------------------------------------------- streaming
def _alpha(cutoff: float, dt: float) -> float:
    """Smoothing factor of an exponential filter with ``cutoff`` cycles per frame over ``dt`` frames."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One-Euro filter of a vector signal sampled at integer frames (gaps allowed).

    One cutoff for the whole vector: ``min_cutoff + beta * speed / scale``, where speed is the RMS of the
    smoothed per-frame derivative over the vector's components and ``scale`` (per call) converts it to the
    caller's unit, e.g. a face's size in pixels.

    Motion compensation: a call may pass ``motion``, a function that moves the previous output into the
    current frame (e.g. by the optical flow of the face). The filter then smooths the input's departure
    from that prediction instead of from the previous output, so motion the prediction explains is
    followed without lag, and only what it does not explain (detection noise) is smoothed. Without it,
    this is the plain One-Euro filter.
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = ONE_EURO_D_CUTOFF) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise InvalidOptionError(
                f"One-Euro: cutoffs must be > 0 and beta >= 0, got {min_cutoff}, {d_cutoff}, {beta}"
            )
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self._frame: int | None = None
        self._value: npt.NDArray[np.float64] | None = None
        self._speed: npt.NDArray[np.float64] | None = None

    def __call__(
        self,
        frame: int,
        value: npt.ArrayLike,
        scale: float = 1.0,
        motion: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]] | None = None,
    ) -> npt.NDArray[np.float64]:
        """The filtered value (float64, shape of ``value``) at ``frame`` (increasing)."""
        x = np.asarray(value, np.float64)
        if self._frame is None or self._value is None or self._speed is None:
            self._frame, self._value, self._speed = frame, x.copy(), np.zeros_like(x)
            return x.copy()
        dt = float(frame - self._frame)
        if dt <= 0:
            raise InvalidOptionError(f"One-Euro: frames must increase, got {frame} after {self._frame}")
        base = self._value if motion is None else np.asarray(motion(self._value), np.float64)
        derivative = (x - base) / dt
        a_d = _alpha(self.d_cutoff, dt)
        self._speed = self._speed + a_d * (derivative - self._speed)
        speed = float(np.sqrt(np.mean(self._speed**2))) / max(scale, 1e-9)
        a = _alpha(self.min_cutoff + self.beta * speed, dt)
        self._value = base + a * (x - base)
        self._frame = frame
        return self._value.copy()


@dataclass(frozen=True)
class OneEuroSettings:
    """The One-Euro parameters for a ``strength`` in (0, 1]."""

    min_cutoff: float
    beta: float
    d_cutoff: float

    @classmethod
    def for_strength(cls, strength: float) -> OneEuroSettings:
        strength = check_strength(strength)
        if strength == 0.0:
            raise InvalidOptionError("One-Euro smoothing at strength 0 is off; do not build a filter")
        return cls(ONE_EURO_MIN_CUTOFF / strength, ONE_EURO_BETA, ONE_EURO_D_CUTOFF)


class TrackSmoother:
    """Streaming smoothing of each track's box and landmarks with its own :class:`OneEuroFilter`.

    ``apply`` takes one frame's faces and returns them smoothed; state is dropped for tracks absent from
    the frame, so memory is bounded by the live tracks (a streaming tracker returns every live track in
    every frame, coasting through short misses). Strength 0: faces are returned unchanged.
    """

    def __init__(self, strength: float) -> None:
        self.strength = check_strength(strength)
        self._settings = OneEuroSettings.for_strength(self.strength) if self.strength > 0 else None
        self._filters: dict[int, OneEuroFilter] = {}

    def apply(
        self, faces: list[TrackedFace], motion: Mapping[int, npt.ArrayLike] | None = None
    ) -> list[TrackedFace]:
        """One frame's faces, smoothed. ``motion``: by track id, the (2, 3) similarity that moved the track
        from the previous frame into this one (:attr:`pipeline.follow.Followed.motion`); it
        motion-compensates the filter (see :class:`OneEuroFilter`)."""
        if self._settings is None:
            return faces
        settings = self._settings
        motion = motion or {}
        present = {f.track_id for f in faces}
        self._filters = {k: v for k, v in self._filters.items() if k in present}
        out = []
        for face in faces:
            filt = self._filters.get(face.track_id)
            if filt is None:
                filt = OneEuroFilter(settings.min_cutoff, settings.beta, settings.d_cutoff)
                self._filters[face.track_id] = filt
            matrix = motion.get(face.track_id)
            vector = np.concatenate(
                [np.asarray(face.bbox, np.float64), np.asarray(face.landmarks, np.float64).ravel()]
            )
            smoothed = filt(
                face.frame_index,
                vector,
                scale=math.sqrt(max(face.area, 1.0)),
                motion=None if matrix is None else partial(_move_vector, np.asarray(matrix, np.float64)),
            )
            out.append(face.moved(smoothed[:4], smoothed[4:].reshape(5, 2)))
        return out


def _move_vector(matrix: npt.NDArray[np.float64], vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A (14,) box + landmarks vector moved by a (2, 3) similarity."""
    bbox, landmarks = move_geometry(matrix, vector[:4], vector[4:].reshape(5, 2))
    return np.concatenate([bbox, landmarks.ravel()]).astype(np.float64)
