"""Pure mesh functions: triangles, piecewise-affine warp, hull and region masks, 5 points from a mesh."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import cv2
import numpy as np
import pytest

from pipeline import mesh
from pipeline.errors import InvalidInputError, InvalidOptionError


def synthetic_mesh(size: int = 512) -> np.ndarray:
    """(468, 2) float32 planar mesh with the face mesh's topology (Tutte embedding): the face oval on an
    ellipse in a ``size`` crop, every other point the mean of its neighbours."""
    triangles = mesh.face_mesh_triangles()
    neighbours = [set() for _ in range(mesh.MESH_POINTS)]
    for a, b, c in triangles:
        neighbours[a] |= {b, c}
        neighbours[b] |= {a, c}
        neighbours[c] |= {a, b}
    angles = np.linspace(0, 2 * np.pi, len(mesh.FACE_OVAL), endpoint=False) - np.pi / 2
    points = np.zeros((mesh.MESH_POINTS, 2))
    points[list(mesh.FACE_OVAL)] = (
        np.stack([0.5 + 0.28 * np.cos(angles), 0.55 + 0.33 * np.sin(angles)], 1) * size
    )
    inner = [i for i in range(mesh.MESH_POINTS) if i not in set(mesh.FACE_OVAL)]
    index = {v: k for k, v in enumerate(inner)}
    system = np.zeros((len(inner), len(inner)))
    rhs = np.zeros((len(inner), 2))
    for v in inner:
        system[index[v], index[v]] = len(neighbours[v])
        for u in neighbours[v]:
            if u in index:
                system[index[v], index[u]] -= 1
            else:
                rhs[index[v]] += points[u]
    points[inner] = np.linalg.solve(system, rhs)
    return points.astype(np.float32)


def test_triangles_are_a_disc_over_all_468_points():
    triangles = mesh.face_mesh_triangles()
    assert triangles.shape == (898, 3) and triangles.dtype == np.int32
    assert set(np.unique(triangles)) == set(range(mesh.MESH_POINTS))
    edges = Counter(tuple(sorted(e)) for t in triangles.tolist() for e in combinations(t, 2))
    boundary = {e for e, n in edges.items() if n == 1}
    assert max(edges.values()) == 2
    oval = mesh.FACE_OVAL
    assert boundary == {tuple(sorted(p)) for p in zip(oval, oval[1:] + oval[:1], strict=True)}
    with pytest.raises(ValueError):
        triangles[0, 0] = 1


def _grid(n: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:n, 0:n]
    points = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64) * step + step
    cells = [(r * n + c, r * n + c + 1, (r + 1) * n + c) for r in range(n - 1) for c in range(n - 1)]
    cells += [
        (r * n + c + 1, (r + 1) * n + c + 1, (r + 1) * n + c) for r in range(n - 1) for c in range(n - 1)
    ]
    return points, np.array(cells)


def test_warp_maps_every_destination_vertex_onto_its_source_vertex():
    dst, triangles = _grid(5, 10.0)  # vertices on integer pixels
    src = dst * 1.3 + np.random.default_rng(0).uniform(-3, 3, dst.shape) + (5, 2)
    map_x, map_y, covered = mesh.piecewise_affine_maps(src, dst, triangles, (60, 60))
    cols, rows = dst[:, 0].astype(int), dst[:, 1].astype(int)
    np.testing.assert_allclose(map_x[rows, cols], src[:, 0], atol=1e-3)
    np.testing.assert_allclose(map_y[rows, cols], src[:, 1], atol=1e-3)
    assert covered[10:51, 10:51].all() and covered.sum() == 41 * 41
    assert (map_x[covered == 0] == -1).all()


def test_warp_of_a_global_affine_is_that_affine_everywhere():
    dst, triangles = _grid(6, 12.0)
    affine = np.array([[0.8, 0.2, 7.0], [-0.1, 1.1, 3.0]])
    src = dst @ affine[:, :2].T + affine[:, 2]
    map_x, map_y, covered = mesh.piecewise_affine_maps(src, dst, triangles, (80, 80))
    ys, xs = np.nonzero(covered)
    np.testing.assert_allclose(map_x[ys, xs], xs * 0.8 + ys * 0.2 + 7.0, atol=1e-3)
    np.testing.assert_allclose(map_y[ys, xs], xs * -0.1 + ys * 1.1 + 3.0, atol=1e-3)
    # pixels: a horizontal ramp image sampled through the warp equals the ramp at the source positions.
    ramp = np.tile(np.arange(100, dtype=np.uint8)[None, :, None] * 2, (100, 1, 3))
    warped, cover = mesh.piecewise_affine_warp(ramp, src, dst, triangles, (80, 80))
    assert warped.shape == (80, 80, 3) and warped.dtype == np.uint8
    np.testing.assert_allclose(warped[ys, xs, 0], 2 * map_x[ys, xs], atol=1.01)
    assert (warped[cover == 0] == 0).all()


def test_warp_lets_front_facing_triangles_win_a_fold():
    src = np.array([[0, 0], [40, 0], [0, 40], [40, 40]], np.float64)
    # point 3 folds over the diagonal x + y = 50: triangle 1 faces the other way and overlaps triangle 0
    dst = np.array([[5, 5], [45, 5], [5, 45], [20, 20]], np.float64)
    triangles = np.array([[0, 1, 2], [1, 3, 2]])
    map_x, map_y, _ = mesh.piecewise_affine_maps(src, dst, triangles, (50, 50))
    assert (map_x[22, 22], map_y[22, 22]) == pytest.approx((17.0, 17.0), abs=1e-3)  # triangle 0: shift by -5


def test_warp_rejects_mismatched_points():
    with pytest.raises(InvalidInputError):
        mesh.piecewise_affine_maps(np.zeros((4, 2)), np.zeros((5, 2)), np.array([[0, 1, 2]]), (8, 8))
    with pytest.raises(InvalidInputError):
        mesh.piecewise_affine_maps(np.zeros((4, 2)), np.zeros((4, 2)), np.array([[0, 1, 4]]), (8, 8))


def test_hull_mask_is_the_filled_hull_and_feathers_inside_only():
    square = np.array([[10, 10], [50, 10], [50, 50], [10, 50], [30, 30]], np.float32)
    hard = mesh.hull_mask(square, (64, 64))
    assert hard.dtype == np.float32 and set(np.unique(hard)) == {0.0, 1.0}
    assert hard[10:51, 10:51].all() and hard.sum() == 41 * 41
    soft = mesh.hull_mask(square, (64, 64), feather=8.0)
    assert (soft[hard == 0] == 0).all()
    assert soft[30, 30] == 1.0 and 0.0 < soft[10, 30] < soft[14, 30] < soft[20, 30] == 1.0
    with pytest.raises(InvalidOptionError):
        mesh.hull_mask(square, (64, 64), feather=-1.0)


def test_regions_partition_the_face_oval():
    points = synthetic_mesh()
    masks = {r: mesh.region_mask(points, (512, 512), [r]) for r in mesh.REGIONS}
    total = sum(masks.values())
    assert total.max() == 1.0  # disjoint
    oval = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(oval, [np.rint(points[list(mesh.FACE_OVAL)]).astype(np.int32)], 1)
    assert np.mean(total[oval == 1]) > 0.99 and total[oval == 0].sum() < 0.01 * oval.sum()
    for name, outline in (
        ("left-eye", mesh.LEFT_EYE),
        ("right-eye", mesh.RIGHT_EYE),
        ("mouth", mesh.LIPS_INNER),
    ):
        x, y = np.rint(points[list(outline)].mean(axis=0)).astype(int)
        assert masks[name][y, x] == 1.0, name
        assert masks[name].sum() > 20, name
    assert all(m.sum() > 0 for m in masks.values())
    union = mesh.region_mask(points, (512, 512), ["upper-lip", "lower-lip", "mouth"], feather=3.0)
    hard_union = masks["upper-lip"] + masks["lower-lip"] + masks["mouth"]
    assert (union[hard_union == 0] == 0).all() and union.max() == 1.0


def test_region_mask_rejects_unknown_regions():
    with pytest.raises(InvalidOptionError):
        mesh.region_mask(synthetic_mesh(), (512, 512), ["glasses"])
    with pytest.raises(InvalidOptionError):
        mesh.region_mask(synthetic_mesh(), (512, 512), [])
    with pytest.raises(InvalidInputError):
        mesh.region_labels(np.zeros((10, 2)), (64, 64))


def test_five_point_from_mesh_picks_eye_centres_nose_tip_and_mouth_corners():
    points = np.zeros((mesh.MESH_POINTS, 2), np.float32)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    circle = np.stack([np.cos(angles), np.sin(angles)], 1)
    points[list(mesh.RIGHT_EYE)] = (30, 40) + 6 * circle
    points[list(mesh.LEFT_EYE)] = (70, 41) + 6 * circle
    points[mesh.NOSE_TIP] = (50, 60)
    points[mesh.MOUTH_CORNERS[0]] = (36, 80)
    points[mesh.MOUTH_CORNERS[1]] = (64, 81)
    five = mesh.five_point_from_mesh(points)
    assert five.dtype == np.float32
    np.testing.assert_allclose(five, [[30, 40], [70, 41], [50, 60], [36, 80], [64, 81]], atol=1e-4)
    with pytest.raises(InvalidInputError):
        mesh.five_point_from_mesh(np.full((468, 2), np.nan))
