"""Landmark smoothing: Savitzky-Golay (offline, zero-phase) and One-Euro (streaming, causal), on series
with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InvalidOptionError
from pipeline.smoothing import (
    MAX_HALF_WINDOW,
    OneEuroFilter,
    TrackSmoother,
    savgol_smooth,
    savgol_weights,
    savgol_window,
    smooth_track,
    smooth_tracks,
)
from pipeline.tracking import Track, TrackedFace, Tracks

_LAYOUT = np.array([[-0.2, -0.12], [0.2, -0.12], [0.0, 0.05], [-0.15, 0.22], [0.15, 0.22]])


def _face(frame: int, track_id: int, centre: np.ndarray, size: float = 100.0) -> TrackedFace:
    box = np.array([*(centre - size / 2), *(centre + size / 2)], np.float32)
    return TrackedFace(frame, track_id, box, (_LAYOUT * size + centre).astype(np.float32), 0.9, "detected")


def _second_difference_rms(series: np.ndarray) -> float:
    return float(np.sqrt(np.mean((series[2:] - 2 * series[1:-1] + series[:-2]) ** 2)))


# ---------------------------------------------------------------------------------------------- offline
def test_savgol_weights_match_the_textbook_kernel_and_reproduce_polynomials():
    weights = savgol_weights(5, 2)
    np.testing.assert_allclose(weights[2], np.array([-3, 12, 17, 12, -3]) / 35, atol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    x = np.arange(7.0)
    for poly in (np.ones(7), x, 0.5 * x**2 - x):
        np.testing.assert_allclose(savgol_weights(7, 2) @ poly, poly, atol=1e-9)
    with pytest.raises(InvalidOptionError):
        savgol_weights(4, 2)
    with pytest.raises(InvalidOptionError):
        savgol_weights(5, 5)


def test_savgol_smooth_has_no_lag_on_smooth_motion_even_at_the_ends():
    t = np.arange(40.0)
    path = np.stack([3.0 * t + 0.05 * t**2, 200 - 2.0 * t], axis=1)  # (T, 2), quadratic motion
    np.testing.assert_allclose(savgol_smooth(path, 9, 2), path, atol=1e-8)


def test_savgol_smooth_removes_most_of_the_noise():
    rng = np.random.default_rng(0)
    t = np.arange(200.0)
    truth = np.stack([2.0 * t, 50 * np.sin(t / 40)], axis=1)
    noisy = truth + rng.normal(0, 2.0, truth.shape)
    smoothed = savgol_smooth(noisy, 17, 2)
    assert np.sqrt(np.mean((smoothed - truth) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - truth) ** 2))
    assert _second_difference_rms(smoothed) < 0.1 * _second_difference_rms(noisy)


def test_savgol_smooth_shrinks_its_window_for_short_series():
    assert savgol_smooth(np.array([1.0]), 9).tolist() == [1.0]
    assert savgol_smooth(np.array([1.0, 5.0]), 9).tolist() == [1.0, 5.0]
    three = np.array([0.0, 3.0, 0.0])
    np.testing.assert_allclose(savgol_smooth(three, 9, 2), three)  # 3 points, degree 2: exact fit
    np.testing.assert_allclose(savgol_smooth(three, 9, 1), [1.0, 1.0, 1.0])


def test_savgol_window_from_strength():
    assert savgol_window(0.0) == 1
    assert savgol_window(1.0) == 1 + 2 * MAX_HALF_WINDOW
    assert savgol_window(0.5) % 2 == 1 and 1 < savgol_window(0.5) < savgol_window(1.0)
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(InvalidOptionError):
            savgol_window(bad)


def _noisy_track(track_id: int = 0, length: int = 60, seed: int = 1) -> tuple[Track, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.stack([100 + 2.0 * np.arange(length), np.full(length, 120.0)], axis=1)
    faces = tuple(_face(t, track_id, centres[t] + rng.normal(0, 1.5, 2)) for t in range(length))
    truth = np.stack([_LAYOUT * 100 + c for c in centres])
    return Track(track_id, faces), truth


def test_smooth_track_strength_zero_is_the_input_itself():
    track, _ = _noisy_track()
    assert smooth_track(track, 0.0) is track
    tracks = Tracks((track,), 60)
    assert smooth_tracks(tracks, 0.0) is tracks


def test_smooth_track_reduces_jitter_and_error_and_keeps_everything_else():
    track, truth = _noisy_track()
    smoothed = smooth_track(track, 0.5)
    assert [f.frame_index for f in smoothed.faces] == [f.frame_index for f in track.faces]
    assert [f.source for f in smoothed.faces] == [f.source for f in track.faces]
    assert smoothed.landmarks().dtype == np.float32 and smoothed.boxes().shape == (60, 4)
    raw_err = np.sqrt(np.mean((track.landmarks() - truth) ** 2))
    err = np.sqrt(np.mean((smoothed.landmarks() - truth) ** 2))
    assert err < 0.6 * raw_err
    assert _second_difference_rms(smoothed.landmarks()) < 0.2 * _second_difference_rms(track.landmarks())
    (again,) = smooth_tracks(Tracks((track,), 60), 0.5)
    np.testing.assert_array_equal(again.landmarks(), smoothed.landmarks())


# ---------------------------------------------------------------------------------------------- streaming
def test_one_euro_holds_a_constant_and_converges_after_a_step():
    filt = OneEuroFilter(min_cutoff=0.05, beta=0.0)
    for t in range(5):
        np.testing.assert_allclose(filt(t, [3.0, 4.0]), [3.0, 4.0])
    outputs = [float(filt(t, [10.0, 4.0])[0]) for t in range(5, 80)]
    assert all(a <= b + 1e-12 for a, b in zip(outputs, outputs[1:], strict=False))  # monotone, no overshoot
    assert 3.0 < outputs[0] < 10.0 and outputs[-1] == pytest.approx(10.0, abs=0.05)


def test_one_euro_beta_reduces_lag_on_fast_motion():
    def lag(beta: float) -> float:
        filt = OneEuroFilter(min_cutoff=0.02, beta=beta)
        out = [filt(t, [5.0 * t], scale=100.0)[0] for t in range(60)]
        return 5.0 * 59 - float(out[-1])

    assert lag(20.0) < 0.5 * lag(0.0)


def test_one_euro_motion_compensation_follows_known_motion_without_lag():
    rng = np.random.default_rng(2)
    velocity = 4.0
    plain = OneEuroFilter(min_cutoff=0.02, beta=0.0)
    compensated = OneEuroFilter(min_cutoff=0.02, beta=0.0)
    plain_err, comp_err = [], []
    for t in range(100):
        truth = np.array([velocity * t, 50.0])
        noisy = truth + rng.normal(0, 1.0, 2)
        plain_err.append(plain(t, noisy) - truth)
        comp_err.append(compensated(t, noisy, motion=lambda prev: prev + [velocity, 0.0]) - truth)
    comp = np.array(comp_err[20:])
    assert np.abs(comp.mean(axis=0)).max() < 0.3  # no lag
    assert np.sqrt(np.mean(comp**2)) < 0.6  # and less noise than the input's 1.0
    assert abs(float(np.mean(np.array(plain_err[20:])[:, 0]))) > 20  # the plain filter trails far behind


def test_one_euro_rejects_bad_settings_and_frame_order():
    with pytest.raises(InvalidOptionError):
        OneEuroFilter(0.0, 1.0)
    filt = OneEuroFilter(0.1, 0.0)
    filt(2, [1.0])
    with pytest.raises(InvalidOptionError):
        filt(2, [1.0])


def test_track_smoother_off_is_identity_and_on_smooths_each_track_separately():
    faces = [_face(0, 0, np.array([100.0, 100.0])), _face(0, 1, np.array([400.0, 100.0]))]
    assert TrackSmoother(0.0).apply(faces) is faces
    smoother = TrackSmoother(0.5)
    first = smoother.apply(faces)
    for got, want in zip(first, faces, strict=True):
        np.testing.assert_allclose(got.landmarks, want.landmarks)
    # A jump of track 0 is damped; track 1 did not move and is untouched.
    moved = [_face(1, 0, np.array([110.0, 100.0])), _face(1, 1, np.array([400.0, 100.0]))]
    second = smoother.apply(moved)
    shift = second[0].landmarks - faces[0].landmarks
    assert 0.0 < float(shift[0, 0]) < 10.0
    np.testing.assert_allclose(second[1].landmarks, faces[1].landmarks, atol=1e-5)
    # A track absent from a frame is forgotten: when an id comes back, it starts from its new position.
    smoother.apply([_face(2, 1, np.array([400.0, 100.0]))])
    back = smoother.apply([_face(3, 0, np.array([300.0, 100.0]))])
    np.testing.assert_allclose(back[0].landmarks, _face(3, 0, np.array([300.0, 100.0])).landmarks)


def test_track_smoother_uses_the_tracks_motion():
    smoother = TrackSmoother(1.0)
    smoother.apply([_face(0, 0, np.array([100.0, 100.0]))])
    shift = np.array([[1.0, 0.0, 12.0], [0.0, 1.0, 0.0]])
    (out,) = smoother.apply([_face(1, 0, np.array([112.0, 100.0]))], {0: shift})
    np.testing.assert_allclose(out.landmarks, _face(1, 0, np.array([112.0, 100.0])).landmarks, atol=1e-4)
