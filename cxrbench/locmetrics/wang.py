"""Localization accuracy of ChestX-ray8 (Wang et al., CVPR 2017), and cxrbench's own ``cxr_afp``.

Reference: X. Wang, Y. Peng, L. Lu, Z. Lu, M. Bagheri, R. M. Summers, "ChestX-ray8:
Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and
Localization of Common Thorax Diseases", CVPR 2017, disease-localization evaluation (Table 4
and the supplementary T(IoU) table).

As the paper defines it, a detected box is correct when its overlap with a ground-truth
box is LARGER than a threshold: ``IoBB > T(IoBB)`` with ``IoBB = area(pred & true) /
area(pred)`` ("intersection over the detected B-Box area ratio", akin to precision or
purity), or ``IoU > T(IoU)``. A pair (image, class) is correctly localized when SOME
predicted box is correct against SOME true box; a pair without predicted boxes is not.
Accuracy = correct pairs / pairs, per class (the paper's per-disease columns) and over
pairs and over classes.

Boxes are ``x, y, w, h`` in continuous pixel coordinates (a box covers ``[x, x + w) x
[y, y + h)``, area ``w * h``); a predicted box of area 0 has IoBB 0, a pair of boxes with
union 0 has IoU 0.

``cxr_afp`` (NOT the paper's AFP): the mean over pairs of the number of predicted boxes
whose best overlap with the pair's true boxes is ``<= T`` (the boxes that are not correct
at T). The paper reports an "average false positive number" per disease without a formula
we can reproduce, so this is our own definition, named apart so the two are not confused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cxrbench.locmetrics._common import as_box_lists, as_classes, class_means, nanmean

__all__ = [
    "WANG_IOBB_THRESHOLDS",
    "WANG_IOU_THRESHOLDS",
    "WangResult",
    "iobb_matrix",
    "iou_matrix",
    "wang_accuracy",
]

WANG_IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
WANG_IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a_end = a[:, None, :2] + a[:, None, 2:]
    b_end = b[None, :, :2] + b[None, :, 2:]
    side = np.minimum(a_end, b_end) - np.maximum(a[:, None, :2], b[None, :, :2])
    iw, ih = side[..., 0], side[..., 1]
    return np.maximum(iw, 0.0) * np.maximum(ih, 0.0)


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``P x T`` IoU of ``x, y, w, h`` boxes (0 where the union is empty)."""
    inter = _intersection(pred, true)
    union = (pred[:, 2] * pred[:, 3])[:, None] + (true[:, 2] * true[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iobb_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``P x T`` IoBB = intersection / area of the PREDICTED box (0 for an empty predicted box)."""
    inter = _intersection(pred, true)
    area = np.broadcast_to((pred[:, 2] * pred[:, 3])[:, None], inter.shape)
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


@dataclasses.dataclass(frozen=True)
class WangResult:
    """Wang et al. accuracies at each T(IoBB) and T(IoU), with ``cxr_afp``.

    Attributes:
        iobb_thresholds: the T(IoBB) values.
        iou_thresholds: the T(IoU) values.
        classes: ``(N,)`` class of every pair.
        best_iobb: ``(N,)`` best IoBB over predicted x true boxes (0 without predicted boxes).
        best_iou: ``(N,)`` best IoU likewise.
        iobb_correct: ``(N, len(iobb_thresholds))`` ``best_iobb > T``.
        iou_correct: ``(N, len(iou_thresholds))`` ``best_iou > T``.
        iobb_accuracy: accuracy over all pairs at each T(IoBB).
        iou_accuracy: accuracy over all pairs at each T(IoU).
        class_iobb_accuracy: ``(C, len(iobb_thresholds))`` per class (NaN for a class without pairs).
        class_iou_accuracy: ``(C, len(iou_thresholds))`` per class.
        mean_class_iobb_accuracy: mean over the classes that have pairs.
        mean_class_iou_accuracy: likewise for IoU.
        cxr_afp_iobb: mean over pairs of the number of predicted boxes with best IoBB <= T.
        cxr_afp_iou: likewise with IoU.
        class_cxr_afp_iobb: ``(C, ...)`` per class.
        class_cxr_afp_iou: ``(C, ...)`` per class.

    """

    iobb_thresholds: tuple[float, ...]
    iou_thresholds: tuple[float, ...]
    classes: np.ndarray
    best_iobb: np.ndarray
    best_iou: np.ndarray
    iobb_correct: np.ndarray
    iou_correct: np.ndarray
    iobb_accuracy: np.ndarray
    iou_accuracy: np.ndarray
    class_iobb_accuracy: np.ndarray
    class_iou_accuracy: np.ndarray
    mean_class_iobb_accuracy: np.ndarray
    mean_class_iou_accuracy: np.ndarray
    cxr_afp_iobb: np.ndarray
    cxr_afp_iou: np.ndarray
    class_cxr_afp_iobb: np.ndarray
    class_cxr_afp_iou: np.ndarray


def wang_accuracy(
    pred_boxes: Sequence[np.ndarray],
    true_boxes: Sequence[np.ndarray],
    classes: np.ndarray | Sequence[int],
    *,
    iobb_thresholds: Sequence[float] = WANG_IOBB_THRESHOLDS,
    iou_thresholds: Sequence[float] = WANG_IOU_THRESHOLDS,
    n_classes: int | None = None,
) -> WangResult:
    """Wang et al. (2017) localization accuracy at each T(IoBB) and T(IoU).

    Args:
        pred_boxes: per pair a ``B_i x 4`` array of predicted ``x, y, w, h`` boxes (may be empty).
        true_boxes: per pair a ``T_i x 4`` array of true boxes, same pixel space.
        classes: ``(N,)`` class index of each pair.
        iobb_thresholds: T(IoBB) values.
        iou_thresholds: T(IoU) values.
        n_classes: number of classes (default: largest index + 1).

    Returns:
        The accuracies and ``cxr_afp``.

    """
    n = len(pred_boxes)
    pred = as_box_lists(pred_boxes, n, "pred_boxes")
    true = as_box_lists(true_boxes, n, "true_boxes")
    cls, k = as_classes(classes, n, n_classes)
    t_iobb = np.asarray(tuple(iobb_thresholds), dtype=np.float64)
    t_iou = np.asarray(tuple(iou_thresholds), dtype=np.float64)
    best_iobb = np.zeros(n)
    best_iou = np.zeros(n)
    fp_iobb = np.zeros((n, t_iobb.size))
    fp_iou = np.zeros((n, t_iou.size))
    for i in range(n):
        p, t = pred[i], true[i]
        if p.shape[0] == 0:
            continue
        if t.shape[0] == 0:  # every predicted box is a false positive
            fp_iobb[i] = fp_iou[i] = p.shape[0]
            continue
        per_pred_iobb = iobb_matrix(p, t).max(axis=1)
        per_pred_iou = iou_matrix(p, t).max(axis=1)
        best_iobb[i] = per_pred_iobb.max()
        best_iou[i] = per_pred_iou.max()
        fp_iobb[i] = (per_pred_iobb[:, None] <= t_iobb[None, :]).sum(axis=0)
        fp_iou[i] = (per_pred_iou[:, None] <= t_iou[None, :]).sum(axis=0)
    iobb_correct = best_iobb[:, None] > t_iobb[None, :]
    iou_correct = best_iou[:, None] > t_iou[None, :]

    def over_pairs(x: np.ndarray) -> np.ndarray:
        return x.mean(axis=0) if n else np.full(x.shape[1], np.nan)

    class_iobb = class_means(iobb_correct, cls, k)
    class_iou = class_means(iou_correct, cls, k)
    return WangResult(
        iobb_thresholds=tuple(float(x) for x in t_iobb),
        iou_thresholds=tuple(float(x) for x in t_iou),
        classes=cls,
        best_iobb=best_iobb,
        best_iou=best_iou,
        iobb_correct=iobb_correct,
        iou_correct=iou_correct,
        iobb_accuracy=over_pairs(iobb_correct.astype(float)),
        iou_accuracy=over_pairs(iou_correct.astype(float)),
        class_iobb_accuracy=class_iobb,
        class_iou_accuracy=class_iou,
        mean_class_iobb_accuracy=np.atleast_1d(nanmean(class_iobb, axis=0)),
        mean_class_iou_accuracy=np.atleast_1d(nanmean(class_iou, axis=0)),
        cxr_afp_iobb=over_pairs(fp_iobb),
        cxr_afp_iou=over_pairs(fp_iou),
        class_cxr_afp_iobb=class_means(fp_iobb, cls, k),
        class_cxr_afp_iou=class_means(fp_iou, cls, k),
    )
