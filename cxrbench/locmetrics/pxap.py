"""PxAP: pixel-wise average precision (Choe et al., CVPR 2020; wsolevaluation's ``MaskEvaluator``).

Reference: Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right",
CVPR 2020; code ``clovaai/wsolevaluation`` (``evaluation.MaskEvaluator``).

The map values of all pixels of all pairs are pooled, split by the ground truth (mask
pixel = positive, else negative; ``ignore`` pixels left out), and histogrammed over the
bins ``[t_0, t_1), ..., [t_{T-1}, 1), [1, 2), [2, 3]`` where ``t`` are the score-map
thresholds (``np.arange(0, 1, cam_curve_interval)``). Cumulating from the top bin gives, at
the cut-offs ``c_0 = 2 > c_1 = 1 > c_2 = t_{T-1} > ... > c_{T+1} = t_0``, the counts
``TP_j = #(positive >= c_j)`` and ``FP_j`` likewise, then ``precision_j = TP_j / (TP_j + FP_j)``,
``recall_j = TP_j / #positive`` and

    PxAP = sum over j >= 1 with TP_j + FP_j > 0 of precision_j * (recall_j - recall_{j-1})

(the reference's ``(precision[1:] * np.diff(recall))[non_zero[1:]].sum()``; ``recall_0 = 0``
since no value reaches 2). Reported as a fraction (the reference prints percent).

Relation to ``sklearn.metrics.average_precision_score`` (``sum_n (R_n - R_{n-1}) P_n`` over
the distinct scores): the two coincide when every pixel value is one of the cut-offs
(e.g. maps quantised to ``k / T`` on the threshold grid), because then the binned cut-offs
are the distinct scores; otherwise PxAP treats all values inside one bin as tied at its
lower edge, which is the only difference.

Maps are min-max normalised first by default (wsolevaluation's ``normalize_scoremap``: a map
holding NaN, or a constant one, becomes zeros). Boxes become masks by pixel centres: pixel
``(col, row)`` is inside ``x, y, w, h`` when ``x <= col + 0.5 < x + w`` and likewise in y.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cxrbench.locmetrics._common import as_box_lists, as_classes, nanmean

__all__ = ["PxAPResult", "average_precision_from_histograms", "boxes_to_masks", "pxap"]

_CHUNK = 128


@dataclasses.dataclass(frozen=True)
class PxAPResult:
    """Pixel precision-recall curves and their average precision.

    Attributes:
        thresholds: ``(T,)`` score-map thresholds.
        cutoffs: ``(T + 2,)`` the cut-offs ``c_j`` of the curve, descending (2, 1, t_{T-1}, ..., t_0).
        precision: ``(T + 2,)`` over all pairs' pixels (NaN where nothing is predicted).
        recall: ``(T + 2,)``.
        ap: PxAP over all pairs' pixels pooled (NaN without positive pixels).
        class_precision: ``(C, T + 2)``.
        class_recall: ``(C, T + 2)``.
        class_ap: ``(C,)`` PxAP of each class's pixels (NaN for a class without positive pixels).
        mean_class_ap: mean of ``class_ap`` over the classes that have one.
        positive_hist: ``(C, T + 2)`` per-class histogram of positive pixels over the bins (ascending).
        negative_hist: ``(C, T + 2)`` likewise for negative pixels.

    """

    thresholds: np.ndarray
    cutoffs: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    ap: float
    class_precision: np.ndarray
    class_recall: np.ndarray
    class_ap: np.ndarray
    mean_class_ap: float
    positive_hist: np.ndarray
    negative_hist: np.ndarray


def boxes_to_masks(true_boxes: Sequence[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """``N x H x W`` bool masks: the union of each pair's ``x, y, w, h`` boxes, by pixel centres."""
    h, w = hw
    cx = np.arange(w) + 0.5
    cy = np.arange(h) + 0.5
    out = np.zeros((len(true_boxes), h, w), bool)
    for i, boxes in enumerate(true_boxes):
        for x, y, bw, bh in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            cols = (cx >= x) & (cx < x + bw)
            rows = (cy >= y) & (cy < y + bh)
            out[i] |= rows[:, None] & cols[None, :]
    return out


def average_precision_from_histograms(
    positive_hist: np.ndarray, negative_hist: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, AP) from ascending bin histograms ``... x (T + 2)``, as ``MaskEvaluator.compute``."""
    pos = np.asarray(positive_hist, dtype=np.float64)
    neg = np.asarray(negative_hist, dtype=np.float64)
    tp = np.cumsum(pos[..., ::-1], axis=-1)
    fp = np.cumsum(neg[..., ::-1], axis=-1)
    n_pos = pos.sum(axis=-1, keepdims=True)
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = tp / n_pos
    steps = np.where(predicted[..., 1:] > 0, np.nan_to_num(precision[..., 1:]) * np.diff(recall, axis=-1), 0.0)
    ap = steps.sum(axis=-1)
    ap = np.where((n_pos[..., 0] > 0) & (predicted[..., -1] > 0), ap, np.nan)
    return precision, recall, ap


def _normalised(maps: np.ndarray, normalize: bool) -> np.ndarray:
    m = np.array(maps, dtype=np.float64)
    flat = m.reshape(m.shape[0], -1)
    if not normalize:
        if m.size and (np.isnan(m).any() or m.min() < 0 or m.max() > 1):
            raise ValueError("without normalize, maps must lie in [0, 1] with no NaN")
        return m
    bad = np.isnan(flat).any(axis=1)
    with np.errstate(invalid="ignore"):
        flat -= np.nanmin(flat, axis=1, keepdims=True)
        top = flat.max(axis=1, keepdims=True)
    bad |= ~(top[:, 0] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        flat /= np.where(bad[:, None], 1.0, top)
    flat[bad] = 0.0
    return m


def pxap(
    maps: np.ndarray,
    classes: np.ndarray | Sequence[int],
    *,
    masks: np.ndarray | None = None,
    true_boxes: Sequence[np.ndarray] | None = None,
    ignore: np.ndarray | None = None,
    thresholds: np.ndarray | Sequence[float] | None = None,
    n_thresholds: int = 100,
    normalize: bool = True,
    n_classes: int | None = None,
) -> PxAPResult:
    """PxAP per class and over all pairs' pixels.

    Args:
        maps: ``N x H x W`` maps.
        classes: ``(N,)`` class index of each pair.
        masks: ``N x H x W`` bool ground truth; or give ``true_boxes`` instead.
        true_boxes: per pair ``T_i x 4`` ``x, y, w, h`` boxes, rasterised with ``boxes_to_masks``.
        ignore: optional ``N x H x W`` bool pixels to leave out (wsolevaluation's ignore regions).
        thresholds: ascending score-map thresholds in [0, 1); None: ``np.arange(0, 1, 1 / n_thresholds)``.
        n_thresholds: number of thresholds when ``thresholds`` is None.
        normalize: min-max normalise each map first.
        n_classes: number of classes (default: largest index + 1).

    Returns:
        The curves and APs.

    """
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"maps must be N x H x W, got shape {arr.shape}")
    n, h, w = arr.shape
    cls, k = as_classes(classes, n, n_classes)
    if (masks is None) == (true_boxes is None):
        raise ValueError("give exactly one of masks and true_boxes")
    if masks is None:
        gt = boxes_to_masks(as_box_lists(true_boxes, n, "true_boxes"), (h, w))
    else:
        gt = np.asarray(masks).astype(bool)
        if gt.shape != arr.shape:
            raise ValueError(f"masks must have the maps' shape {arr.shape}, got {gt.shape}")
    if ignore is not None:
        ignore = np.asarray(ignore).astype(bool)
        if ignore.shape != arr.shape:
            raise ValueError(f"ignore must have the maps' shape {arr.shape}, got {ignore.shape}")
    if thresholds is None:
        t = np.arange(0.0, 1.0, 1.0 / n_thresholds)[:n_thresholds]
    else:
        t = np.asarray(thresholds, dtype=np.float64).ravel()
    if t.size == 0 or np.any(np.diff(t) <= 0) or t[0] < 0 or t[-1] >= 1:
        raise ValueError("thresholds must be strictly increasing values in [0, 1)")
    edges = np.concatenate([t, [1.0, 2.0, 3.0]])
    n_bins = t.size + 2
    counts = np.zeros(k * 2 * n_bins, np.int64)
    for s in range(0, n, _CHUNK):
        m = _normalised(arr[s : s + _CHUNK], normalize)
        # np.histogram's bins: [e_i, e_{i+1}), the last one closed; values below e_0 are dropped
        b = np.searchsorted(edges, m, side="right") - 1
        b[m == edges[-1]] = n_bins - 1
        keep = (b >= 0) & (b < n_bins)
        if ignore is not None:
            keep &= ~ignore[s : s + _CHUNK]
        label = gt[s : s + _CHUNK].astype(np.int64)
        combined = (cls[s : s + _CHUNK, None, None] * 2 + label) * n_bins + b
        counts += np.bincount(combined[keep], minlength=counts.size)
    hist = counts.reshape(k, 2, n_bins)
    neg, pos = hist[:, 0], hist[:, 1]
    c_prec, c_rec, c_ap = average_precision_from_histograms(pos, neg)
    prec, rec, ap = average_precision_from_histograms(pos.sum(axis=0), neg.sum(axis=0))
    return PxAPResult(
        thresholds=t,
        cutoffs=edges[::-1][1:],
        precision=prec,
        recall=rec,
        ap=float(ap),
        class_precision=c_prec,
        class_recall=c_rec,
        class_ap=np.asarray(c_ap, dtype=np.float64).reshape(k),
        mean_class_ap=float(nanmean(c_ap)) if k else float("nan"),
        positive_hist=pos,
        negative_hist=neg,
    )
