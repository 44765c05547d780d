"""MaxBoxAcc and MaxBoxAccV2 (Choe et al., CVPR 2020), exactly as wsolevaluation computes them.

Reference: J. Choe, S. J. Oh, S. Lee, S. Chun, Z. Akata, H. Shim, "Evaluating Weakly
Supervised Object Localization Methods Right", CVPR 2020; code ``clovaai/wsolevaluation``
(``inference.normalize_scoremap``, ``evaluation.compute_bboxes_from_scoremaps``,
``evaluation.calculate_multiple_iou``, ``evaluation.BoxEvaluator``).

Protocol, per (image, class) pair:

1. Normalise the map to [0, 1] by min-max (a map holding NaN, or a constant map, becomes
   all zeros), then quantise it: ``v = (map * 255).astype(uint8)`` (truncation).
2. For every score-map threshold ``t`` (``np.arange(0, 1, cam_curve_interval)``):
   foreground is ``v > int(t * max(v))`` (``cv2.THRESH_BINARY``); contours come from
   ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``; each contour gives the box
   ``x0 = x, y0 = y, x1 = min(x + w, W - 1), y1 = min(y + h, H - 1)`` from its
   ``cv2.boundingRect`` (inclusive ends, so one pixel wider than the region unless
   clipped); no contour gives the box ``[0, 0, 0, 0]``.
   MaxBoxAcc keeps the contour of largest ``cv2.contourArea`` (the first one listed on
   ties); MaxBoxAccV2 keeps every contour, holes included.
3. The pair is correct at ``t`` when some box has IoU ``>= delta`` with some true box,
   ``IoU = inter / (area_a + area_b - inter)`` with inclusive areas
   ``(x1 - x0 + 1) * (y1 - y0 + 1)``.
4. Box accuracy at ``t`` = fraction of pairs correct; MaxBoxAcc = its maximum over ``t``
   at ``delta = 0.5``; MaxBoxAccV2 = the mean over ``delta`` in {0.3, 0.5, 0.7} of the
   maximum over ``t`` (each delta picks its own best threshold).

True boxes come as ``x, y, w, h`` in map pixels and become wsolevaluation's integer
``x0, y0, x1, y1`` the way its ``resize_bbox`` truncates them: ``int(x), int(y),
int(x + w), int(y + h)``.

Accuracies are fractions in [0, 1] (wsolevaluation prints percentages).

``maxboxacc_reference`` is that protocol written as the reference writes it (one OpenCV
threshold and contour search per map and threshold); ``maxboxacc`` and ``maxboxacc_v2``
give the same numbers from one component-tree sweep per map (see ``_tree``): only 256
binary images exist per map, and each sweep reads all of them at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from cxrbench.locmetrics._common import as_box_lists, as_classes, class_means, nanmean

__all__ = [
    "DEFAULT_N_THRESHOLDS",
    "V2_DELTAS",
    "MaxBoxAccResult",
    "best_iou_curves",
    "best_iou_curves_reference",
    "cam_thresholds",
    "maxboxacc",
    "maxboxacc_reference",
    "maxboxacc_v2",
    "threshold_levels",
    "wsol_levels",
    "wsol_true_boxes",
]

DEFAULT_N_THRESHOLDS = 100
"""Score-map thresholds by default (wsolevaluation's command-line default ``cam_curve_interval=0.01``)."""

V1_DELTA = 0.5
V2_DELTAS = (0.3, 0.5, 0.7)
"""IoU cut-offs of MaxBoxAccV2 (wsolevaluation's ``iou_threshold_list`` 30, 50, 70, divided by 100)."""

_CHUNK = 256
"""Maps normalised at a time (bounds the float64 temporaries)."""

_MIN_MAPS_PER_THREAD = 16
"""Below this many maps per thread, threads cost more than they save."""


@dataclasses.dataclass(frozen=True)
class MaxBoxAccResult:
    """Box accuracy curves over score-map thresholds, overall and per class.

    Attributes:
        thresholds: ``(T,)`` score-map thresholds.
        deltas: the IoU cut-offs ``D``.
        multi_contour: False for MaxBoxAcc (largest contour), True for MaxBoxAccV2 (every contour).
        classes: ``(N,)`` class index of every pair.
        best_iou: ``(N, T)`` best IoU of each pair's boxes at each threshold.
        accuracy: ``(D, T)`` fraction of all pairs correct.
        max_accuracy: ``(D,)`` maximum of each curve.
        best_threshold: ``(D,)`` first threshold reaching it.
        class_accuracy: ``(C, D, T)`` the curves over each class's pairs (NaN for a class without pairs).
        class_max_accuracy: ``(C, D)``.
        class_best_threshold: ``(C, D)`` (NaN for a class without pairs).
        value: the metric over all pairs: mean of ``max_accuracy`` over the deltas
            (MaxBoxAcc has one delta, 0.5).
        class_value: ``(C,)`` the same per class.

    """

    thresholds: np.ndarray
    deltas: tuple[float, ...]
    multi_contour: bool
    classes: np.ndarray
    best_iou: np.ndarray
    accuracy: np.ndarray
    max_accuracy: np.ndarray
    best_threshold: np.ndarray
    class_accuracy: np.ndarray
    class_max_accuracy: np.ndarray
    class_best_threshold: np.ndarray
    value: float
    class_value: np.ndarray

    @property
    def mean_class_value(self) -> float:
        """Mean of ``class_value`` over the classes that have pairs."""
        return float(nanmean(self.class_value))

    def correct(self) -> np.ndarray:
        """``(N, D, T)`` bool: pair correct at each delta and threshold (the input of the bootstrap)."""
        return self.best_iou[:, None, :] >= np.asarray(self.deltas)[None, :, None]


# --------------------------------------------------------------------------- protocol pieces


def cam_thresholds(n_thresholds: int = DEFAULT_N_THRESHOLDS) -> np.ndarray:
    """The wsolevaluation threshold list ``np.arange(0, 1, cam_curve_interval)`` with interval ``1 / n``."""
    if isinstance(n_thresholds, bool) or not isinstance(n_thresholds, int | np.integer) or n_thresholds < 1:
        raise ValueError(f"n_thresholds must be an integer >= 1, got {n_thresholds!r}")
    return np.arange(0.0, 1.0, 1.0 / n_thresholds)[:n_thresholds]


def _thresholds(thresholds: np.ndarray | Sequence[float] | None, n_thresholds: int) -> np.ndarray:
    if thresholds is None:
        return cam_thresholds(n_thresholds)
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if t.size == 0 or not np.all((t >= 0) & (t <= 1)):
        raise ValueError("thresholds must be a non-empty list of values in [0, 1]")
    return t


def wsol_levels(maps: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Maps as wsolevaluation's 8-bit score maps: min-max normalised, then ``(m * 255).astype(uint8)``.

    Args:
        maps: ``N x H x W`` maps.
        normalize: min-max normalise each map first (``normalize_scoremap``: a map holding
            NaN, or a constant map, becomes zeros). Without it the maps must already lie
            in [0, 1] with no NaN.

    Returns:
        ``N x H x W`` uint8.

    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be N x H x W, got shape {maps.shape}")
    out = np.empty(maps.shape, np.uint8)
    for s in range(0, maps.shape[0], _CHUNK):
        m = np.array(maps[s : s + _CHUNK], dtype=np.float64)
        if normalize:
            flat = m.reshape(m.shape[0], -1)
            bad = np.isnan(flat).any(axis=1)
            with np.errstate(invalid="ignore"):
                flat -= np.nanmin(flat, axis=1, keepdims=True) if flat.size else 0.0
                top = flat.max(axis=1, keepdims=True) if flat.size else np.zeros((m.shape[0], 1))
            bad |= ~(top[:, 0] > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                flat /= np.where(bad[:, None], 1.0, top)
            flat[bad] = 0.0
        elif m.size and (np.isnan(m).any() or m.min() < 0 or m.max() > 1):
            raise ValueError("without normalize, maps must lie in [0, 1] with no NaN")
        out[s : s + _CHUNK] = (m * 255).astype(np.uint8)
    return out


def _fast_levels(maps: np.ndarray, normalize: bool, tree) -> np.ndarray:
    """``wsol_levels`` in one compiled pass per map (the tests check that both agree bit for bit)."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be N x H x W, got shape {maps.shape}")
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float64)
    if not normalize and maps.size and (np.isnan(maps).any() or maps.min() < 0 or maps.max() > 1):
        raise ValueError("without normalize, maps must lie in [0, 1] with no NaN")
    return tree.quantise(np.ascontiguousarray(maps), normalize)


def wsol_true_boxes(boxes: np.ndarray) -> np.ndarray:
    """``x, y, w, h`` boxes (map pixels) -> inclusive ``x0, y0, x1, y1`` ints, truncated as wsolevaluation does."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.column_stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]]).astype(np.int64)


def threshold_levels(thresholds: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``(N, T)`` OpenCV threshold ``int(t * max(v))`` of every map and threshold."""
    top = levels.reshape(levels.shape[0], -1).max(axis=1, initial=0).astype(np.float64)
    return np.trunc(np.asarray(thresholds, np.float64)[None, :] * top[:, None]).astype(np.int64)


def _gt_arrays(true_boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    for i, b in enumerate(true_boxes):
        if b.shape[0] == 0:
            raise ValueError(f"pair {i} has no true box")
    gt = np.concatenate([wsol_true_boxes(b) for b in true_boxes]) if true_boxes else np.zeros((0, 4), np.int64)
    start = np.concatenate([[0], np.cumsum([b.shape[0] for b in true_boxes])]).astype(np.int64)
    return np.ascontiguousarray(gt, np.int64), start


# --------------------------------------------------------------------------- per-pair curves


def best_iou_curves(
    maps: np.ndarray,
    true_boxes: Sequence[np.ndarray],
    thresholds: np.ndarray | Sequence[float] | None = None,
    *,
    n_thresholds: int = DEFAULT_N_THRESHOLDS,
    multi_contour: bool = False,
    hole_boxes: bool = True,
    normalize: bool = True,
) -> np.ndarray:
    """Best IoU of every pair's boxes at every threshold (fast: one component-tree sweep per map).

    Args:
        maps: ``N x H x W`` maps.
        true_boxes: per pair a ``T_i x 4`` array of ``x, y, w, h`` true boxes (at least one).
        thresholds: score-map thresholds in [0, 1]; None: ``cam_thresholds(n_thresholds)``.
        n_thresholds: how many thresholds when ``thresholds`` is None.
        multi_contour: every contour (MaxBoxAccV2) instead of the largest (MaxBoxAcc).
        hole_boxes: with ``multi_contour``, include the boxes of hole contours, as
            ``cv2.RETR_TREE`` in wsolevaluation does (False: regions only).
        normalize: min-max normalise the maps first (see ``wsol_levels``).

    Returns:
        ``(N, T)`` float64.

    """
    from cxrbench.locmetrics import _tree  # numba compiles (or loads its cache) on first use

    levels = _fast_levels(maps, normalize, _tree)
    boxes = as_box_lists(true_boxes, levels.shape[0], "true_boxes")
    t = _thresholds(thresholds, n_thresholds)
    gt, start = _gt_arrays(boxes)
    if levels.shape[0] == 0:
        return np.zeros((0, t.size))
    per_level = _per_level(_tree, np.ascontiguousarray(levels), gt, start, not multi_contour, hole_boxes)
    return np.take_along_axis(per_level, threshold_levels(t, levels), axis=1)


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _per_level(tree, levels: np.ndarray, gt: np.ndarray, start: np.ndarray, largest: bool, holes: bool) -> np.ndarray:
    """``tree.best_iou_levels`` over contiguous slices of the maps, one thread per core (the kernel drops the GIL)."""
    n = levels.shape[0]
    out = np.zeros((n, tree.LEVELS), np.float64)
    workers = min(_workers(), max(1, n // _MIN_MAPS_PER_THREAD))
    if workers == 1:
        tree.best_iou_levels(levels, gt, start, largest, holes, out)
        return out
    bounds = np.linspace(0, n, workers + 1).astype(int)

    def run(a: int, b: int) -> None:
        # gt stays whole; the slice's offsets are shifted so they index into it
        tree.best_iou_levels(levels[a:b], gt, start[a : b + 1], largest, holes, out[a:b])

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(run, a, b) for a, b in itertools.pairwise(bounds)]:
            f.result()
    return out


def _contour_depths(hierarchy: np.ndarray) -> np.ndarray:
    parents = hierarchy[0, :, 3]
    depth = np.zeros(parents.shape[0], np.int64)
    for i in range(parents.shape[0]):
        p = parents[i]
        while p >= 0:
            depth[i] += 1
            p = parents[p]
    return depth


def best_iou_curves_reference(
    maps: np.ndarray,
    true_boxes: Sequence[np.ndarray],
    thresholds: np.ndarray | Sequence[float] | None = None,
    *,
    n_thresholds: int = DEFAULT_N_THRESHOLDS,
    multi_contour: bool = False,
    hole_boxes: bool = True,
    normalize: bool = True,
) -> np.ndarray:
    """``best_iou_curves`` the straightforward way: OpenCV threshold + findContours per map and threshold."""
    levels = wsol_levels(maps, normalize)
    boxes = as_box_lists(true_boxes, levels.shape[0], "true_boxes")
    t = _thresholds(thresholds, n_thresholds)
    out = np.zeros((levels.shape[0], t.size))
    for i in range(levels.shape[0]):
        image = levels[i]
        height, width = image.shape
        gt = wsol_true_boxes(boxes[i])
        if gt.shape[0] == 0:
            raise ValueError(f"pair {i} has no true box")
        top = np.max(image)
        for j, threshold in enumerate(t):
            _, binary = cv2.threshold(image, int(threshold * top), 255, cv2.THRESH_BINARY)
            contours, hierarchy = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
            if len(contours) == 0:
                pred = np.zeros((1, 4), np.int64)
            else:
                if not multi_contour:
                    contours = [max(contours, key=cv2.contourArea)]
                elif not hole_boxes:
                    depth = _contour_depths(hierarchy)
                    contours = [c for c, d in zip(contours, depth, strict=True) if d % 2 == 0]
                pred = []
                for contour in contours:
                    x, y, w, h = cv2.boundingRect(contour)
                    pred.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
                pred = np.asarray(pred, np.int64)
            out[i, j] = _iou_matrix_inclusive(pred, gt).max()
    return out


def _iou_matrix_inclusive(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The IoU of wsolevaluation's ``calculate_multiple_iou``: inclusive integer boxes, ``+ 1`` in every length."""
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.maximum(0, ix) * np.maximum(0, iy)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    den = area_a[:, None] + area_b[None, :] - inter
    bad = den <= 0
    return np.where(bad, 0.0, inter / np.where(bad, 1, den))


# --------------------------------------------------------------------------- aggregation


def _first_argmax(curves: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max over the last axis, threshold of its first occurrence); NaN where the curve is NaN."""
    nan = np.isnan(curves).all(axis=-1)
    filled = np.where(np.isnan(curves), -np.inf, curves)
    idx = np.argmax(filled, axis=-1)
    best = np.take_along_axis(filled, idx[..., None], axis=-1)[..., 0]
    return np.where(nan, np.nan, best), np.where(nan, np.nan, thresholds[idx])


def summarize(
    best_iou: np.ndarray,
    thresholds: np.ndarray,
    classes: np.ndarray,
    n_classes: int,
    deltas: Sequence[float],
    multi_contour: bool,
) -> MaxBoxAccResult:
    """Accuracy curves, maxima and best thresholds from the ``(N, T)`` best-IoU matrix."""
    deltas = tuple(float(d) for d in deltas)
    correct = best_iou[:, None, :] >= np.asarray(deltas)[None, :, None]  # N x D x T
    n = best_iou.shape[0]
    accuracy = correct.mean(axis=0) if n else np.full((len(deltas), thresholds.size), np.nan)
    max_acc, best_t = _first_argmax(accuracy, thresholds)
    class_acc = class_means(correct, classes, n_classes)
    class_max, class_t = _first_argmax(class_acc, thresholds)
    return MaxBoxAccResult(
        thresholds=thresholds,
        deltas=deltas,
        multi_contour=multi_contour,
        classes=classes,
        best_iou=best_iou,
        accuracy=accuracy,
        max_accuracy=max_acc,
        best_threshold=best_t,
        class_accuracy=class_acc,
        class_max_accuracy=class_max,
        class_best_threshold=class_t,
        value=float(np.mean(max_acc)) if n else float("nan"),
        class_value=class_max.mean(axis=1) if n_classes else np.zeros(0),
    )


def _run(fn, maps, true_boxes, classes, thresholds, n_thresholds, n_classes, normalize, deltas, multi, holes):
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"maps must be N x H x W, got shape {arr.shape}")
    cls, k = as_classes(classes, arr.shape[0], n_classes)
    t = _thresholds(thresholds, n_thresholds)
    if not deltas or not all(0 <= d <= 1 for d in deltas):
        raise ValueError(f"deltas must be IoU cut-offs in [0, 1], got {deltas}")
    best = fn(arr, true_boxes, t, multi_contour=multi, hole_boxes=holes, normalize=normalize)
    return summarize(best, t, cls, k, deltas, multi)


def maxboxacc(
    maps: np.ndarray,
    true_boxes: Sequence[np.ndarray],
    classes: np.ndarray | Sequence[int],
    *,
    thresholds: np.ndarray | Sequence[float] | None = None,
    n_thresholds: int = DEFAULT_N_THRESHOLDS,
    n_classes: int | None = None,
    normalize: bool = True,
    iou_threshold: float = V1_DELTA,
) -> MaxBoxAccResult:
    """MaxBoxAcc: the largest contour's box, IoU >= 0.5, best threshold.

    Args:
        maps: ``N x H x W`` maps, one per (image, class) pair, in map pixels.
        true_boxes: per pair a ``T_i x 4`` array of ``x, y, w, h`` true boxes in map pixels.
        classes: ``(N,)`` class index of each pair.
        thresholds: score-map thresholds in [0, 1]; None: ``cam_thresholds(n_thresholds)``.
        n_thresholds: number of thresholds when ``thresholds`` is None (1,000 is wsolevaluation's ``.001``).
        n_classes: number of classes (default: largest index + 1).
        normalize: min-max normalise each map first (wsolevaluation's inference does).
        iou_threshold: the IoU cut-off (0.5 in the paper).

    Returns:
        The curves; ``value`` is MaxBoxAcc over all pairs, ``class_value`` per class.

    """
    return _run(
        best_iou_curves, maps, true_boxes, classes, thresholds, n_thresholds, n_classes, normalize,
        (iou_threshold,), False, True,
    )  # fmt: skip


def maxboxacc_v2(
    maps: np.ndarray,
    true_boxes: Sequence[np.ndarray],
    classes: np.ndarray | Sequence[int],
    *,
    thresholds: np.ndarray | Sequence[float] | None = None,
    n_thresholds: int = DEFAULT_N_THRESHOLDS,
    n_classes: int | None = None,
    normalize: bool = True,
    deltas: Sequence[float] = V2_DELTAS,
    hole_boxes: bool = True,
) -> MaxBoxAccResult:
    """MaxBoxAccV2: boxes of all contours, best threshold per IoU cut-off, mean over the cut-offs.

    Args:
        maps: ``N x H x W`` maps (see ``maxboxacc``).
        true_boxes: per pair a ``T_i x 4`` array of ``x, y, w, h`` true boxes.
        classes: ``(N,)`` class index of each pair.
        thresholds: score-map thresholds; None: ``cam_thresholds(n_thresholds)``.
        n_thresholds: number of thresholds when ``thresholds`` is None.
        n_classes: number of classes (default: largest index + 1).
        normalize: min-max normalise each map first.
        deltas: IoU cut-offs (0.3, 0.5, 0.7 in the paper).
        hole_boxes: include the boxes of hole contours (wsolevaluation does, through ``RETR_TREE``).

    Returns:
        The curves; ``value`` is MaxBoxAccV2 over all pairs, ``class_value`` per class.

    """
    return _run(
        best_iou_curves, maps, true_boxes, classes, thresholds, n_thresholds, n_classes, normalize,
        tuple(deltas), True, hole_boxes,
    )  # fmt: skip


def maxboxacc_reference(
    maps: np.ndarray,
    true_boxes: Sequence[np.ndarray],
    classes: np.ndarray | Sequence[int],
    *,
    multi_contour: bool = False,
    deltas: Sequence[float] | None = None,
    thresholds: np.ndarray | Sequence[float] | None = None,
    n_thresholds: int = DEFAULT_N_THRESHOLDS,
    n_classes: int | None = None,
    normalize: bool = True,
    hole_boxes: bool = True,
) -> MaxBoxAccResult:
    """MaxBoxAcc (``multi_contour=False``) or MaxBoxAccV2 (True) by the per-map, per-threshold OpenCV loop.

    Slow (about 0.1 ms per map and threshold at 224 px); the tests and the benchmark's baseline.
    ``deltas`` defaults to (0.5,) for MaxBoxAcc and (0.3, 0.5, 0.7) for MaxBoxAccV2.
    """
    if deltas is None:
        deltas = V2_DELTAS if multi_contour else (V1_DELTA,)
    return _run(
        best_iou_curves_reference, maps, true_boxes, classes, thresholds, n_thresholds, n_classes, normalize,
        tuple(deltas), multi_contour, hole_boxes,
    )  # fmt: skip
