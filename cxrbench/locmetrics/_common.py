"""Input checks and small conversions shared by the localization metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_maps(maps: np.ndarray) -> np.ndarray:
    """``N x H x W`` float64 view of ``maps`` (ValueError naming the shape otherwise)."""
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"maps must be N x H x W, got shape {np.shape(maps)}")
    return arr


def as_boxes(boxes: np.ndarray | Sequence, what: str = "boxes") -> np.ndarray:
    """``B x 4`` float64 ``x, y, w, h`` boxes with finite values and ``w, h >= 0``."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must be B x 4 (x, y, w, h), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 2:] < 0):
        raise ValueError(f"{what} must be finite with w, h >= 0")
    return arr


def as_box_lists(boxes: Sequence, n: int, what: str) -> list[np.ndarray]:
    """One ``B_i x 4`` array per pair, ``n`` of them."""
    if len(boxes) != n:
        raise ValueError(f"{what} must hold one box array per pair ({n}), got {len(boxes)}")
    return [as_boxes(b, what) for b in boxes]


def as_classes(classes: np.ndarray | Sequence[int], n: int, n_classes: int | None) -> tuple[np.ndarray, int]:
    """(int64 class index per pair, number of classes)."""
    cls = np.asarray(classes)
    if cls.shape != (n,):
        raise ValueError(f"classes must hold one class index per pair ({n}), got shape {cls.shape}")
    if n and not np.issubdtype(cls.dtype, np.integer):
        raise ValueError(f"classes must be integers, got dtype {cls.dtype}")
    cls = cls.astype(np.int64)
    if n and cls.min() < 0:
        raise ValueError("classes must be >= 0")
    k = int(cls.max()) + 1 if n else 0
    if n_classes is None:
        n_classes = k
    elif n_classes < k:
        raise ValueError(f"n_classes={n_classes} but a class index {k - 1} appears")
    return cls, int(n_classes)


def class_means(values: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean of ``values`` (``N`` or ``N x ...``) over each class's pairs; NaN for a class without pairs."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.bincount(classes, minlength=n_classes).astype(np.float64)
    flat = values.reshape(values.shape[0], -1)
    sums = np.zeros((n_classes, flat.shape[1]))
    np.add.at(sums, classes, flat)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    means[counts == 0] = np.nan
    return means.reshape((n_classes, *values.shape[1:]))


def nanmean(values: np.ndarray, axis: int = 0) -> np.ndarray | float:
    """``np.nanmean`` that gives NaN for all-NaN slices without a warning."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    return float(out) if np.ndim(out) == 0 else out
