"""Pointing game (Zhang et al., ECCV 2016; TorchRay's ``PointingGame``).

Reference: J. Zhang, Z. Lin, J. Brandt, X. Shen, S. Sclaroff, "Top-down Neural Attention by
Excitation Backprop", ECCV 2016; code ``facebookresearch/TorchRay``
(``torchray/benchmark/pointing_game.py``).

A pair is a hit when its map's peak lies within ``tolerance`` (default 15 px, in ORIGINAL
image pixels) of the ground truth; a pair whose map has no peak (constant or NaN map) is a
miss. The score of a class is hits / pairs of that class, and the reported score is the
mean over classes.

Geometry, in continuous map pixels (pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)``):
the distance from a point to a box ``x, y, w, h`` is that to the closed rectangle
``[x, x + w] x [y, y + h]`` (0 inside); to a mask, the least distance to the closed square of
any mask pixel. A pair's offsets ``dx, dy`` are scaled by its ``(sx, sy)`` (original pixels per
map pixel) before ``hypot``, so the tolerance is isotropic in the original image even when
the map is not. A hit is ``distance <= tolerance``.

Where we differ from TorchRay: TorchRay takes integer points and counts a mask pixel as
reached when the distance between pixel indices is STRICTLY below the tolerance, in the
pixels of the image it is given; we use the continuous geometry above with ``<=`` (so
tolerance 0 still hits inside the box), and the tolerance is in original pixels whatever
the map size. TorchRay's mean over classes counts a class without pairs as 0; we leave it
out (its rate is NaN). TorchRay's "difficult" subsets (VOC/COCO) do not apply here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cxrbench.locmetrics._common import as_box_lists, as_classes, nanmean

__all__ = ["DEFAULT_TOLERANCE", "PointingResult", "pointing_game", "pointing_game_masks", "point_box_distances"]

DEFAULT_TOLERANCE = 15.0
"""Tolerance in original image pixels (Zhang et al. 2016; TorchRay's default)."""


@dataclasses.dataclass(frozen=True)
class PointingResult:
    """Hits of the pointing game.

    Attributes:
        tolerance: the tolerance, in original pixels.
        classes: ``(N,)`` class of every pair.
        distance: ``(N,)`` distance (original pixels) from the peak to the ground truth;
            inf for a pair without a peak (or an empty mask).
        hits: ``(N,)`` bool.
        class_pairs: ``(C,)`` pairs per class.
        class_hit_rate: ``(C,)`` hits / pairs per class (NaN for a class without pairs).
        hit_rate: the mean of ``class_hit_rate`` over the classes that have pairs (the
            reported pointing-game score).
        pair_hit_rate: hits / pairs over all pairs.
        n_no_peak: pairs whose map had no peak (counted as misses).

    """

    tolerance: float
    classes: np.ndarray
    distance: np.ndarray
    hits: np.ndarray
    class_pairs: np.ndarray
    class_hit_rate: np.ndarray
    hit_rate: float
    pair_hit_rate: float
    n_no_peak: int


def _as_points(peaks_xy: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(peaks_xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"peaks_xy must be N x 2, got shape {xy.shape}")
    ok = np.all(np.isfinite(xy), axis=1)
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        if v.shape != (xy.shape[0],):
            raise ValueError(f"valid must have shape ({xy.shape[0]},), got {v.shape}")
        ok &= v
    return xy, ok


def _as_scale(scale: float | Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    if scale is None:
        return np.ones((n, 2))
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim == 0:
        s = np.full((n, 2), float(s))
    elif s.shape == (2,):
        s = np.broadcast_to(s, (n, 2))
    if s.shape != (n, 2) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale must be a positive number, (sx, sy), or N x 2; got shape {s.shape}")
    return s


def point_box_distances(xy: np.ndarray, boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Distance (scaled) from one point to each ``x, y, w, h`` box's closed rectangle."""
    dx = np.maximum.reduce([boxes[:, 0] - xy[0], np.zeros(len(boxes)), xy[0] - (boxes[:, 0] + boxes[:, 2])])
    dy = np.maximum.reduce([boxes[:, 1] - xy[1], np.zeros(len(boxes)), xy[1] - (boxes[:, 1] + boxes[:, 3])])
    return np.hypot(dx * scale[0], dy * scale[1])


def _mask_distance(xy: np.ndarray, mask: np.ndarray, scale: np.ndarray) -> float:
    if not mask.any():
        return float("inf")
    h, w = mask.shape
    cols = np.arange(w, dtype=np.float64)
    rows = np.arange(h, dtype=np.float64)
    dx = np.maximum(np.maximum(cols - xy[0], 0.0), xy[0] - (cols + 1)) * scale[0]
    dy = np.maximum(np.maximum(rows - xy[1], 0.0), xy[1] - (rows + 1)) * scale[1]
    # nearest mask pixel: per row the least |dx| over that row's mask pixels
    rows_any = mask.any(axis=1)
    best_dx = np.where(mask, dx[None, :], np.inf).min(axis=1)
    return float(np.sqrt((dy[rows_any] ** 2 + best_dx[rows_any] ** 2).min()))


def _summarize(distance, ok, classes, n_classes, tolerance) -> PointingResult:
    hits = ok & (distance <= tolerance)
    pairs = np.bincount(classes, minlength=n_classes)
    class_hits = np.bincount(classes, weights=hits.astype(np.float64), minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(pairs > 0, class_hits / np.maximum(pairs, 1), np.nan)
    return PointingResult(
        tolerance=float(tolerance),
        classes=classes,
        distance=distance,
        hits=hits,
        class_pairs=pairs,
        class_hit_rate=rate,
        hit_rate=float(nanmean(rate)) if n_classes else float("nan"),
        pair_hit_rate=float(hits.mean()) if hits.size else float("nan"),
        n_no_peak=int((~ok).sum()),
    )


def _check_tolerance(tolerance: float) -> float:
    t = float(tolerance)
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    return t


def pointing_game(
    peaks_xy: np.ndarray,
    true_boxes: Sequence[np.ndarray],
    classes: np.ndarray | Sequence[int],
    *,
    valid: np.ndarray | None = None,
    scale: float | Sequence[float] | np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    n_classes: int | None = None,
) -> PointingResult:
    """Pointing game against boxes.

    Args:
        peaks_xy: ``N x 2`` peaks ``(x, y)`` in map pixels (e.g. ``map_peaks(...).xy``);
            a NaN row has no peak.
        true_boxes: per pair a ``T_i x 4`` array of ``x, y, w, h`` true boxes in map pixels.
        classes: ``(N,)`` class index of each pair.
        valid: ``(N,)`` which peaks exist (``map_peaks(...).valid``); None: the finite rows.
        scale: original pixels per map pixel: a number, ``(sx, sy)``, or ``N x 2``; None: 1.
        tolerance: hit distance in original pixels.
        n_classes: number of classes (default: largest index + 1).

    Returns:
        Per-pair hits and the rates.

    """
    xy, ok = _as_points(peaks_xy, valid)
    n = xy.shape[0]
    boxes = as_box_lists(true_boxes, n, "true_boxes")
    cls, k = as_classes(classes, n, n_classes)
    s = _as_scale(scale, n)
    tol = _check_tolerance(tolerance)
    distance = np.full(n, np.inf)
    for i in np.flatnonzero(ok):
        if boxes[i].shape[0]:
            distance[i] = point_box_distances(xy[i], boxes[i], s[i]).min()
    return _summarize(distance, ok, cls, k, tol)


def pointing_game_masks(
    peaks_xy: np.ndarray,
    masks: np.ndarray,
    classes: np.ndarray | Sequence[int],
    *,
    valid: np.ndarray | None = None,
    scale: float | Sequence[float] | np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    n_classes: int | None = None,
) -> PointingResult:
    """Pointing game against masks (``N x H x W`` bool in map pixels; e.g. CheXlocalize).

    A pair hits when the peak is within ``tolerance`` (original pixels) of any mask pixel's
    square; an empty mask is never hit. Other arguments as ``pointing_game``.
    """
    xy, ok = _as_points(peaks_xy, valid)
    n = xy.shape[0]
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[0] != n:
        raise ValueError(f"masks must be N x H x W with N = {n}, got shape {m.shape}")
    m = m.astype(bool)
    cls, k = as_classes(classes, n, n_classes)
    s = _as_scale(scale, n)
    tol = _check_tolerance(tolerance)
    distance = np.full(n, np.inf)
    for i in np.flatnonzero(ok):
        distance[i] = _mask_distance(xy[i], m[i], s[i])
    return _summarize(distance, ok, cls, k, tol)
