"""Heatmap peaks without border bias, and maps that have none.

Coordinates: pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)``, so its centre
is ``(col + 0.5, row + 0.5)``; a box ``x, y, w, h`` in the same space covers
``[x, x + w) x [y, y + h)``. A localizer's feature grid of ``h x w`` cells laid over an
``H x W`` map puts cell ``(i, j)`` over ``[j W / w, (j + 1) W / w) x [i H / h, (i + 1) H / h)``
with centre ``((j + 0.5) W / w, (i + 0.5) H / h)``: a 3x3 grid on 96 px has centres at 16, 48, 80.

Why not the plain argmax: a grid map upsampled bilinearly with ``align_corners=False``
(torch's ``F.interpolate``, OpenCV's ``resize``) is flat over the outer half cell (the
sampling positions there fall outside the grid and are clamped), so a hot corner cell of
a 3x3 grid on 96 px is a 16 x 16 plateau ``[0, 16)^2`` whose centroid (8, 8) is half a
cell off the cell centre (16, 16), always towards the border.

Rules:

* A map holding NaN, or a constant map (max - min <= ``CONSTANT_ATOL``), has no peak:
  ``valid`` is False and ``xy`` is NaN.
* With ``grid_hw`` the map is sampled at the cell centres (bilinear interpolation between
  pixel centres, clamped at the border); the peak is the centre of the best cell, or the
  mean of the centres of the cells within ``TIE_RTOL`` (of the map's range) of the best.
* Without it, the pixels within ``TIE_RTOL`` of the maximum form plateaus (8-connected).
  Along each axis a plateau that touches one border gives its inner edge (the clamped
  half cell ends at the cell centre), one that touches both borders gives the middle of
  the map, and one that touches neither gives the mean of its pixel centres. Several
  plateaus give the mean of their points. A genuine single-pixel maximum on the border
  (no upsampling) is thus placed on its inner edge, half a pixel from its centre.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["CONSTANT_ATOL", "TIE_RTOL", "Peaks", "cell_centres", "map_peaks"]

CONSTANT_ATOL = 1e-9
"""A map whose max - min is at most this (maps are in [0, 1]) is constant: no peak."""

TIE_RTOL = 1e-6
"""Values within this fraction of the map's range of the maximum tie with it (float32 noise of interpolation)."""


class Peaks(NamedTuple):
    """Peaks of ``N`` maps: ``xy`` ``N x 2`` float64 ``(x, y)`` in map pixels (NaN if invalid), ``valid`` ``(N,)``."""

    xy: np.ndarray
    valid: np.ndarray


def cell_centres(grid_hw: tuple[int, int], map_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(x (w,), y (h,))`` centres of a grid's cells in the pixels of an ``H x W`` map."""
    gh, gw = grid_hw
    mh, mw = map_hw
    return (np.arange(gw) + 0.5) * (mw / gw), (np.arange(gh) + 0.5) * (mh / gh)


def _sample(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples ``N x len(y) x len(x)`` at continuous points (pixel centres at +0.5), clamped."""
    _, h, w = maps.shape
    u = np.clip(x - 0.5, 0, w - 1)
    v = np.clip(y - 0.5, 0, h - 1)
    c0 = np.floor(u).astype(np.int64)
    r0 = np.floor(v).astype(np.int64)
    c1 = np.minimum(c0 + 1, w - 1)
    r1 = np.minimum(r0 + 1, h - 1)
    fu = (u - c0)[None, None, :]
    fv = (v - r0)[None, :, None]
    top = maps[:, r0][:, :, c0] * (1 - fu) + maps[:, r0][:, :, c1] * fu
    bottom = maps[:, r1][:, :, c0] * (1 - fu) + maps[:, r1][:, :, c1] * fu
    return top * (1 - fv) + bottom * fv


def _axis_point(lo: int, hi: int, size: int, centroid: float) -> float:
    """The peak coordinate along one axis of a plateau spanning pixels ``lo..hi`` (see module doc)."""
    if lo == 0 and hi == size - 1:
        return size / 2.0
    if lo == 0:
        return hi + 1.0
    if hi == size - 1:
        return float(lo)
    return centroid


def _plateau_point(tied: np.ndarray) -> tuple[float, float]:
    h, w = tied.shape
    n, _, stats, centroids = cv2.connectedComponentsWithStats(tied.astype(np.uint8), connectivity=8)
    xs, ys = [], []
    for k in range(1, n):
        left, top, width, height = stats[k, :4]
        xs.append(_axis_point(left, left + width - 1, w, centroids[k, 0] + 0.5))
        ys.append(_axis_point(top, top + height - 1, h, centroids[k, 1] + 0.5))
    return float(np.mean(xs)), float(np.mean(ys))


def map_peaks(maps: np.ndarray, grid_hw: tuple[int, int] | None = None) -> Peaks:
    """The peak of every map (see the module docstring for the rules).

    Args:
        maps: ``N x H x W`` maps (any real dtype).
        grid_hw: ``(h, w)`` of the localizer's raw feature grid the maps were upsampled
            from; None when unknown.

    Returns:
        ``Peaks(xy, valid)``.

    """
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"maps must be N x H x W, got shape {np.shape(maps)}")
    n, h, w = arr.shape
    xy = np.full((n, 2), np.nan)
    if n == 0 or h == 0 or w == 0:
        return Peaks(xy, np.zeros(n, bool))
    flat = arr.reshape(n, -1)
    has_nan = np.isnan(flat).any(axis=1)
    with np.errstate(invalid="ignore"):
        top = np.where(has_nan, np.nan, flat.max(axis=1))
        span = top - np.where(has_nan, np.nan, flat.min(axis=1))
    valid = ~has_nan & (span > CONSTANT_ATOL)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return Peaks(xy, valid)
    tol = TIE_RTOL * span[idx]
    if grid_hw is not None:
        gh, gw = (int(g) for g in grid_hw)
        if gh < 1 or gw < 1:
            raise ValueError(f"grid_hw must be positive, got {grid_hw}")
        cx, cy = cell_centres((gh, gw), (h, w))
        samples = _sample(arr[idx], cx, cy).reshape(idx.size, -1)
        tied = samples >= samples.max(axis=1, keepdims=True) - tol[:, None]
        count = tied.sum(axis=1)
        gx = np.tile(cx, gh)
        gy = np.repeat(cy, gw)
        xy[idx, 0] = (tied * gx).sum(axis=1) / count
        xy[idx, 1] = (tied * gy).sum(axis=1) / count
        return Peaks(xy, valid)
    tied_all = flat[idx] >= top[idx, None] - tol[:, None]
    for row, i in enumerate(idx):
        xy[i] = _plateau_point(tied_all[row].reshape(h, w))
    return Peaks(xy, valid)
