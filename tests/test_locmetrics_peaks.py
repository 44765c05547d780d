"""Border-unbiased peaks (cxrbench.locmetrics.peaks) on analytic upsampled grids, constant, NaN and random maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.locmetrics.peaks import cell_centres, map_peaks


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """The way a localizer's grid becomes a map: torch bilinear, align_corners=False."""
    t = torch.from_numpy(np.asarray(grid, dtype=np.float64))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


def test_issue_example_hot_top_left_cell_of_3x3_on_96px():
    grid = np.zeros((3, 3))
    grid[0, 0] = 1.0
    m = upsample(grid, 96)
    # the plateau is [0, 16)^2: its centroid (8, 8) is the border-biased answer
    assert np.all(m[0, :16, :16] == m[0, 0, 0])
    peaks = map_peaks(m)
    assert peaks.valid.tolist() == [True]
    np.testing.assert_allclose(peaks.xy[0], [16.0, 16.0])
    np.testing.assert_allclose(map_peaks(m, grid_hw=(3, 3)).xy[0], [16.0, 16.0])


def test_cell_centres_follow_the_pixel_square_convention():
    cx, cy = cell_centres((3, 3), (96, 96))
    np.testing.assert_allclose(cx, [16, 48, 80])
    cx, cy = cell_centres((7, 14), (224, 224))
    np.testing.assert_allclose(cx, 16 * np.arange(14) + 8)
    np.testing.assert_allclose(cy, 32 * np.arange(7) + 16)


CELLS = ["corner00", "corner_far", "top_edge", "left_edge", "interior", "bottom_right_neighbour"]


def cell(name: str, g: int) -> tuple[int, int]:
    return {
        "corner00": (0, 0),
        "corner_far": (g - 1, g - 1),
        "top_edge": (0, g // 2),
        "left_edge": (g // 2, 0),
        "interior": (g // 2, g // 2),
        "bottom_right_neighbour": (g - 2, g - 1),
    }[name]


@pytest.mark.parametrize("g", [3, 7, 14])
@pytest.mark.parametrize("size", [96, 224])
@pytest.mark.parametrize("where", CELLS)
def test_hot_cell_peaks_at_its_cell_centre(g, size, where):
    i, j = cell(where, g)
    grid = np.random.default_rng(g * 1000 + size).uniform(0.0, 0.5, (g, g))
    grid[i, j] = 1.0
    m = upsample(grid, size)
    cx, cy = cell_centres((g, g), (size, size))
    expected = [cx[j], cy[i]]
    # with the grid: exactly the cell centre
    np.testing.assert_allclose(map_peaks(m, grid_hw=(g, g)).xy[0], expected, atol=1e-9)
    # without it: within half a pixel (the max of a non-integer upsampling sits next to the centre)
    np.testing.assert_allclose(map_peaks(m).xy[0], expected, atol=0.5)


@pytest.mark.parametrize("g,size", [(3, 96), (7, 224), (14, 224)])
def test_border_plateau_is_not_pulled_to_the_border(g, size):
    grid = np.zeros((g, g))
    grid[0, 0] = 1.0
    xy = map_peaks(upsample(grid, size)).xy[0]
    half = size / g / 2
    assert xy[0] >= half - 0.5 and xy[1] >= half - 0.5  # the plain centroid would be ~half / 2


def test_two_equal_hot_cells_give_the_mean_of_their_centres():
    grid = np.zeros((3, 3))
    grid[0, 0] = grid[2, 2] = 1.0
    m = upsample(grid, 96)
    np.testing.assert_allclose(map_peaks(m, grid_hw=(3, 3)).xy[0], [48.0, 48.0], atol=1e-9)
    np.testing.assert_allclose(map_peaks(m).xy[0], [48.0, 48.0], atol=1e-9)
    grid = np.zeros((7, 7))
    grid[1, 2] = grid[1, 5] = 1.0
    cx, cy = cell_centres((7, 7), (224, 224))
    np.testing.assert_allclose(map_peaks(upsample(grid, 224), grid_hw=(7, 7)).xy[0], [(cx[2] + cx[5]) / 2, cy[1]])


def test_constant_nan_and_all_nan_maps_have_no_peak():
    maps = np.stack(
        [
            np.full((8, 8), 0.3),
            np.full((8, 8), 0.3) + 1e-12 * np.arange(64).reshape(8, 8),  # constant within tolerance
            np.where(np.eye(8, dtype=bool), np.nan, np.random.default_rng(0).random((8, 8))),
            np.full((8, 8), np.nan),
            np.random.default_rng(1).random((8, 8)),
        ]
    )
    for grid in (None, (2, 2)):
        peaks = map_peaks(maps, grid_hw=grid)
        assert peaks.valid.tolist() == [False, False, False, False, True]
        assert np.isnan(peaks.xy[:4]).all()
        assert np.isfinite(peaks.xy[4]).all()
        assert peaks.xy.dtype == np.float64 and peaks.xy.shape == (5, 2)


def _edge_rule(lo: int, hi: int, size: int, centre: float) -> float:
    if lo == 0 and hi == size - 1:
        return size / 2
    if lo == 0:
        return hi + 1.0
    if hi == size - 1:
        return float(lo)
    return centre


def test_random_maps_against_a_plain_argmax_loop():
    rng = np.random.default_rng(2)
    maps = rng.random((200, 9, 11))
    peaks = map_peaks(maps)
    for m, xy in zip(maps, peaks.xy, strict=True):
        r, c = np.unravel_index(np.argmax(m), m.shape)  # random floats: a unique maximum
        expected = (_edge_rule(c, c, m.shape[1], c + 0.5), _edge_rule(r, r, m.shape[0], r + 0.5))
        np.testing.assert_allclose(xy, expected)


def _bilinear(m: np.ndarray, x: float, y: float) -> float:
    """Straightforward scalar bilinear interpolation between pixel centres, clamped."""
    h, w = m.shape
    u = min(max(x - 0.5, 0.0), w - 1)
    v = min(max(y - 0.5, 0.0), h - 1)
    c0, r0 = int(np.floor(u)), int(np.floor(v))
    c1, r1 = min(c0 + 1, w - 1), min(r0 + 1, h - 1)
    a, b = u - c0, v - r0
    return (1 - b) * ((1 - a) * m[r0, c0] + a * m[r0, c1]) + b * ((1 - a) * m[r1, c0] + a * m[r1, c1])


def test_random_maps_with_a_grid_against_a_sampling_loop():
    rng = np.random.default_rng(3)
    maps = rng.random((60, 30, 45))
    for grid in [(3, 3), (5, 7), (30, 45)]:
        peaks = map_peaks(maps, grid_hw=grid)
        cx, cy = cell_centres(grid, (30, 45))
        for m, xy in zip(maps, peaks.xy, strict=True):
            samples = np.array([[_bilinear(m, x, y) for x in cx] for y in cy])
            i, j = np.unravel_index(np.argmax(samples), samples.shape)
            np.testing.assert_allclose(xy, [cx[j], cy[i]])


def test_interior_single_pixel_maximum_is_its_centre():
    m = np.zeros((1, 10, 10))
    m[0, 4, 6] = 1.0
    np.testing.assert_allclose(map_peaks(m).xy[0], [6.5, 4.5])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="N x H x W"):
        map_peaks(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="grid_hw"):
        map_peaks(np.random.default_rng(0).random((1, 4, 4)), grid_hw=(0, 2))
