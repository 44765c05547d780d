"""Localization metrics: heatmaps to boxes, box overlaps, and the scores built on them.

Pure numpy / OpenCV functions; no torch.

Boxes are ``x, y, w, h`` float arrays (``M x 4``) in pixels, in continuous coordinates: a
box covers ``[x, x + w) x [y, y + h)`` and its area is ``w * h``. A connected region of
pixels with columns ``c0..c1`` gives ``x = c0, w = c1 - c0 + 1`` (OpenCV's bounding
rectangle). Heatmap peaks are pixel centres, ``(col + 0.5, row + 0.5)`` (the centroid of a plateau).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "LocalizationPair",
    "ThresholdPolicy",
    "build_pairs",
    "heatmap_peaks",
    "heatmap_thresholds",
    "heatmap_to_boxes",
    "heatmaps_to_boxes",
    "iobb_matrix",
    "iou_matrix",
    "localization_metrics",
    "tune_policy",
]

DEFAULT_IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""T(IoU) values of the ChestX-ray8 localization table (Wang et al., CVPR 2017)."""

DEFAULT_IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
"""T(IoBB) values of the ChestX-ray8 localization table."""

SEED_IOU_FRACTIONS = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5)
"""The seed project's "fraction of pairs with best IoU above t" columns."""

_CC_PIXELS = 1 << 22
"""Pixels per OpenCV call (4 M: the mask and int32 labels stay small and cache-friendly)."""


# --------------------------------------------------------------------------- threshold policy


@dataclasses.dataclass(frozen=True)
class ThresholdPolicy:
    """How a heatmap in [0, 1] becomes boxes: a threshold, then connected regions.

    Attributes:
        policy: ``seed``: threshold ``min(mean(map) * factor, high)`` (the seed project's
            rule); ``fraction``: ``fraction * max(map)``; ``otsu``: Otsu's threshold on the
            map quantised to 256 levels. A pixel is foreground when it is ABOVE the threshold.
        factor: multiplier of the map mean (``seed``). The seed used 1.7666 for CAM-style
            maps and 1.95 for PCAM maps.
        high: cap of the ``seed`` threshold (0.7666 for CAM-style maps, 0.6 for PCAM).
        fraction: fraction of the map maximum (``fraction``).
        components: which connected regions give boxes: ``all``, the ``largest`` (most
            pixels), or the ``topk`` largest.
        top_k: how many regions ``topk`` keeps.

    """

    policy: Literal["seed", "fraction", "otsu"] = "seed"
    factor: float = 1.7666
    high: float = 0.7666
    fraction: float = 0.5
    components: Literal["all", "largest", "topk"] = "all"
    top_k: int = 3

    def validate(self) -> None:
        """Raise ValueError naming the option when a value makes no sense."""
        if self.policy not in ("seed", "fraction", "otsu"):
            raise ValueError(f"policy must be 'seed', 'fraction' or 'otsu', got {self.policy!r}")
        if self.components not in ("all", "largest", "topk"):
            raise ValueError(f"components must be 'all', 'largest' or 'topk', got {self.components!r}")
        if not (np.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"factor must be a positive number, got {self.factor}")
        if not self.high > 0:
            raise ValueError(f"high must be > 0, got {self.high}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")


# --------------------------------------------------------------------------- heatmaps -> boxes


def _as_maps(maps: np.ndarray) -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"heatmaps must be N x H x W, got shape {arr.shape}")
    return arr


def _quantise(maps: np.ndarray) -> np.ndarray:
    """Maps in [0, 1] to 8-bit levels (values outside are clipped)."""
    return np.clip(np.rint(maps * 255.0), 0, 255).astype(np.uint8)


def _otsu_levels(levels: np.ndarray) -> np.ndarray:
    """Otsu's threshold level (0..255) of every 8-bit map; foreground is ``level > t``.

    The same criterion and tie rule as OpenCV's ``THRESH_OTSU`` (the first level maximising
    the between-class variance, skipping levels that leave a class (almost) empty), computed
    for all maps at once from their histograms.
    """
    n = levels.shape[0]
    hist = np.bincount((np.arange(n)[:, None] * 256 + levels.reshape(n, -1)).ravel(), minlength=n * 256).reshape(n, 256)
    p = hist / hist.sum(axis=1, keepdims=True)
    i = np.arange(256, dtype=np.float64)
    q1 = np.cumsum(p, axis=1)
    m1 = np.cumsum(p * i, axis=1)
    mu = m1[:, -1:]
    q2 = 1.0 - q1
    eps = np.finfo(np.float32).eps
    valid = (np.minimum(q1, q2) >= eps) & (np.maximum(q1, q2) <= 1.0 - eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu1 = m1 / q1
        mu2 = (mu - m1) / q2
        sigma = q1 * q2 * (mu1 - mu2) ** 2
    sigma = np.where(valid, sigma, 0.0)
    best = np.argmax(sigma, axis=1)
    # OpenCV keeps 0 unless some level beats a between-class variance of 0
    return np.where(sigma[np.arange(n), best] > 0, best, 0)


def heatmap_thresholds(maps: np.ndarray, policy: ThresholdPolicy) -> np.ndarray:
    """The threshold of every map under ``policy``.

    Args:
        maps: ``N x H x W`` heatmaps in [0, 1].
        policy: the rule.

    Returns:
        ``(N,)`` thresholds; a pixel is foreground when its value is above its map's
        threshold (for ``otsu``, its value quantised to 8 bits, ``round(v * 255) / 255``).

    """
    maps = _as_maps(maps)
    n = maps.shape[0]
    if n == 0:
        return np.zeros(0)
    flat = maps.reshape(n, -1)
    if policy.policy == "seed":
        return np.minimum(flat.mean(axis=1, dtype=np.float64) * policy.factor, policy.high)
    if policy.policy == "fraction":
        return flat.max(axis=1).astype(np.float64) * policy.fraction
    if policy.policy == "otsu":
        return _otsu_levels(_quantise(flat)) / 255.0
    raise ValueError(f"unknown threshold policy {policy.policy!r}")


def _tall_masks(maps: np.ndarray, policy: ThresholdPolicy) -> Iterator[tuple[int, np.ndarray]]:
    """Foreground masks of chunks of maps, each chunk stacked into one tall 8-bit image.

    Every mask is followed by an empty row, so one OpenCV call handles a whole chunk and no
    region can cross from one map into the next (not even diagonally).

    Yields:
        (index of the chunk's first map, ``(c * (H + 1)) x W`` uint8 image, 1 = foreground).

    """
    n, h, w = maps.shape
    per_call = max(1, _CC_PIXELS // ((h + 1) * max(w, 1)))
    thr = heatmap_thresholds(maps, policy) if policy.policy != "otsu" else None
    for start in range(0, n, per_call):
        chunk = maps[start : start + per_call]
        c = chunk.shape[0]
        tall = np.zeros((c, h + 1, w), dtype=np.uint8)
        foreground = tall[:, :h].view(np.bool_)  # written in place: no N x H x W temporary
        if thr is None:
            levels = _quantise(chunk)
            t = _otsu_levels(levels.reshape(c, -1)).astype(np.uint8)
            np.greater(levels, t[:, None, None], out=foreground)
        else:
            np.greater(chunk, thr[start : start + c, None, None], out=foreground)
        yield start, tall.reshape(-1, w)


def _region_boxes_contours(tall: np.ndarray) -> np.ndarray:
    """``R x 4`` bounding boxes (x, y, w, h) of the 8-connected regions of a binary image.

    Each region has exactly one outer border; with ``RETR_CCOMP`` the outer borders are the
    contours without a parent (holes are their children, and a region inside a hole is
    again top-level). The box of a region is the extent of its outer border's points. This
    is several times faster than ``connectedComponentsWithStats`` and gives the same boxes.
    """
    contours, hierarchy = cv2.findContours(tall, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 4), np.int64)
    lengths = np.fromiter(map(len, contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    lo = np.minimum.reduceat(points, starts, axis=0)
    hi = np.maximum.reduceat(points, starts, axis=0)
    outer = hierarchy.reshape(-1, 4)[:, 3] < 0
    return np.concatenate([lo, hi - lo + 1], axis=1)[outer]


def _region_boxes_stats(tall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes and pixel counts of the 8-connected regions of a binary image."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(tall, connectivity=8, ltype=cv2.CV_32S)
    stats = stats[1:].astype(np.int64)  # label 0 is the background
    return stats[:, :4], stats[:, cv2.CC_STAT_AREA]


def _components(
    maps: np.ndarray, policy: ThresholdPolicy, with_area: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Regions above threshold of every map.

    Returns:
        (map index per region, ``R x 4`` float boxes in the map's pixels, pixel count per
        region or None when ``with_area`` is False).

    """
    h = maps.shape[1]
    map_ids, boxes, areas = [], [], []
    for start, tall in _tall_masks(maps, policy):
        if with_area:
            b, a = _region_boxes_stats(tall)
            areas.append(a)
        else:
            b = _region_boxes_contours(tall)
        local_map = b[:, 1] // (h + 1)
        b[:, 1] -= local_map * (h + 1)
        map_ids.append(local_map + start)
        boxes.append(b)
    if not map_ids:
        return np.zeros(0, np.int64), np.zeros((0, 4)), (np.zeros(0, np.int64) if with_area else None)
    return (
        np.concatenate(map_ids),
        np.concatenate(boxes).astype(np.float64),
        np.concatenate(areas) if with_area else None,
    )


def heatmaps_to_boxes(maps: np.ndarray, policy: ThresholdPolicy | None = None) -> list[np.ndarray]:
    """Boxes of the connected above-threshold regions of every heatmap.

    Args:
        maps: ``N x H x W`` heatmaps in [0, 1] (float).
        policy: threshold and region rule; the seed's rule when None.

    Returns:
        One ``M x 4`` float array (x, y, w, h) per map, ``0 x 4`` when nothing is above
        threshold. ``components="all"`` lists boxes by top-left corner (row, then column);
        ``largest`` / ``topk`` by pixel count, largest first (ties by top-left corner).

    """
    policy = policy or ThresholdPolicy()
    policy.validate()
    maps = _as_maps(maps)
    n = maps.shape[0]
    if n == 0:
        return []
    map_id, boxes, area = _components(maps, policy, with_area=policy.components != "all")
    if area is None:
        keep = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 0], boxes[:, 1], map_id))
    else:
        k = 1 if policy.components == "largest" else policy.top_k
        order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 0], boxes[:, 1], -area, map_id))
        sorted_maps = map_id[order]
        rank = np.arange(order.size) - np.searchsorted(sorted_maps, sorted_maps, side="left")
        keep = order[rank < k]
    counts = np.bincount(map_id[keep], minlength=n)
    return np.split(boxes[keep], np.cumsum(counts)[:-1])


def heatmap_to_boxes(heatmap: np.ndarray, policy: ThresholdPolicy | None = None) -> np.ndarray:
    """Boxes of one ``H x W`` heatmap; see ``heatmaps_to_boxes``."""
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be H x W, got shape {heatmap.shape}")
    return heatmaps_to_boxes(heatmap[None], policy)[0]


def heatmap_peaks(maps: np.ndarray) -> np.ndarray:
    """``N x 2`` (x, y) peak of each map: the centroid of the pixel centres at its maximum.

    A CAM upsampled from a coarse feature map (3 x 3 at 96 px) has flat plateaus, and those
    of border cells reach the image edge; taking the first maximal pixel would put the peak
    in a corner and fail the pointing game for a map that points at the right cell.
    """
    maps = _as_maps(maps)
    n, h, w = maps.shape
    if not (n and h * w):
        return np.zeros((n, 2), np.float64)
    flat = maps.reshape(n, -1).astype(np.float64)
    top = flat.max(axis=1, keepdims=True)
    at_max = flat >= top - PEAK_TOLERANCE * np.maximum(np.abs(top), 1.0)
    count = at_max.sum(axis=1)
    cols = np.arange(h * w) % w + 0.5
    rows = np.arange(h * w) // w + 0.5
    return np.stack([(at_max * cols).sum(axis=1) / count, (at_max * rows).sum(axis=1) / count], axis=1)


PEAK_TOLERANCE = 1e-6  # relative: float32 interpolation may differ in the last bits across a plateau


# --------------------------------------------------------------------------- overlaps


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must be M x 4 (x, y, w, h), got shape {arr.shape}")
    return arr


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection area of boxes ``a`` and ``b`` (broadcasting over leading axes)."""
    iw = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def _iou_iobb(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and IoBB of box pairs (broadcasting); 0 where the denominator is 0."""
    inter = _overlap(pred, true)
    area_pred = pred[..., 2] * pred[..., 3]
    union = area_pred + true[..., 2] * true[..., 3] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    iobb = np.divide(inter, area_pred, out=np.zeros_like(inter), where=area_pred > 0)
    return iou, iobb


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``M x T`` intersection over union of every predicted box with every true box."""
    p, t = _as_boxes(pred, "pred"), _as_boxes(true, "true")
    return _iou_iobb(p[:, None, :], t[None, :, :])[0]


def iobb_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``M x T`` intersection over the PREDICTED box's area (ChestX-ray8's IoBB)."""
    p, t = _as_boxes(pred, "pred"), _as_boxes(true, "true")
    return _iou_iobb(p[:, None, :], t[None, :, :])[1]


# --------------------------------------------------------------------------- pairs and metrics


@dataclasses.dataclass
class LocalizationPair:
    """One (image, class) with ground-truth boxes, and what a localizer predicted for it.

    Attributes:
        class_index: the class.
        true_boxes: ``T x 4`` ground-truth boxes (T >= 1).
        pred_boxes: ``M x 4`` predicted boxes (M may be 0).
        peak_xy: (x, y) of the heatmap maximum, in pixels.
        heatmap_value_in_box: optional extra score of the map inside the true box(es).

    """

    class_index: int
    true_boxes: np.ndarray
    pred_boxes: np.ndarray
    peak_xy: tuple[float, float]
    heatmap_value_in_box: float | None = None

    def __post_init__(self) -> None:
        self.true_boxes = _as_boxes(self.true_boxes, "true_boxes")
        self.pred_boxes = _as_boxes(self.pred_boxes, "pred_boxes")
        if self.true_boxes.shape[0] == 0:
            raise ValueError("a localization pair needs at least one true box")


@dataclasses.dataclass
class _PairScores:
    """Per-pair and per-predicted-box scores of a list of pairs (all numpy)."""

    class_index: np.ndarray  # (P,)
    best_iou: np.ndarray  # (P,) best IoU over predicted x true boxes, 0 without predictions
    best_iobb: np.ndarray  # (P,)
    cum_iou: np.ndarray  # (P,) sum over predicted boxes of their best IoU
    hit: np.ndarray  # (P,) bool
    pred_pair: np.ndarray  # (Mtot,) pair of each predicted box
    pred_iou: np.ndarray  # (Mtot,) best IoU of each predicted box over its pair's true boxes
    pred_iobb: np.ndarray  # (Mtot,)


def _segment_starts(lengths: np.ndarray) -> np.ndarray:
    return (np.cumsum(lengths) - lengths).astype(np.int64)


def _score_pairs(pairs: Sequence[LocalizationPair], hit_tolerance: float) -> _PairScores:
    """Every (predicted, true) box combination of every pair in one numpy pass."""
    n_pairs = len(pairs)
    cls = np.fromiter((p.class_index for p in pairs), dtype=np.int64, count=n_pairs)
    n_pred = np.fromiter((p.pred_boxes.shape[0] for p in pairs), dtype=np.int64, count=n_pairs)
    n_true = np.fromiter((p.true_boxes.shape[0] for p in pairs), dtype=np.int64, count=n_pairs)
    pred = np.concatenate([p.pred_boxes for p in pairs]) if n_pairs else np.zeros((0, 4))
    true = np.concatenate([p.true_boxes for p in pairs]) if n_pairs else np.zeros((0, 4))
    peaks = np.array([p.peak_xy for p in pairs], dtype=np.float64).reshape(n_pairs, 2)

    pred_pair = np.repeat(np.arange(n_pairs), n_pred)
    true_pair = np.repeat(np.arange(n_pairs), n_true)
    pred_start, true_start = _segment_starts(n_pred), _segment_starts(n_true)

    # combos ordered by (pair, predicted box, true box): each predicted box owns T_p rows
    per_pred = n_true[pred_pair]
    combo_pred = np.repeat(np.arange(pred.shape[0]), per_pred)
    combo_true = (
        true_start[pred_pair[combo_pred]] + np.arange(combo_pred.size) - np.repeat(_segment_starts(per_pred), per_pred)
    )
    iou, iobb = _iou_iobb(pred[combo_pred], true[combo_true])
    if pred.shape[0]:
        starts = _segment_starts(per_pred)
        pred_iou = np.maximum.reduceat(iou, starts)
        pred_iobb = np.maximum.reduceat(iobb, starts)
    else:
        pred_iou = pred_iobb = np.zeros(0)

    best_iou, best_iobb = np.zeros(n_pairs), np.zeros(n_pairs)
    has_pred = n_pred > 0
    if has_pred.any():
        best_iou[has_pred] = np.maximum.reduceat(pred_iou, pred_start[has_pred])
        best_iobb[has_pred] = np.maximum.reduceat(pred_iobb, pred_start[has_pred])
    cum_iou = np.bincount(pred_pair, weights=pred_iou, minlength=n_pairs)

    px, py = peaks[true_pair, 0], peaks[true_pair, 1]
    tol = hit_tolerance
    inside = (
        (px >= true[:, 0] - tol)
        & (px <= true[:, 0] + true[:, 2] + tol)
        & (py >= true[:, 1] - tol)
        & (py <= true[:, 1] + true[:, 3] + tol)
    )
    hit = np.logical_or.reduceat(inside, true_start) if n_pairs else np.zeros(0, bool)
    return _PairScores(cls, best_iou, best_iobb, cum_iou, hit, pred_pair, pred_iou, pred_iobb)


def _key(t: float) -> str:
    return f"{t:g}"


def _class_means(values: np.ndarray, cls: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class mean of per-pair ``values`` (``P x J``); NaN for classes without pairs."""
    vals = values.astype(np.float64)
    onehot = np.zeros((n_classes, cls.size))
    onehot[cls, np.arange(cls.size)] = 1.0
    counts = onehot.sum(axis=1)
    sums = onehot @ vals
    out = np.full_like(sums, np.nan)
    np.divide(sums, counts[:, None], out=out, where=counts[:, None] > 0)
    return out


def localization_metrics(
    pairs: Sequence[LocalizationPair],
    class_names: Sequence[str],
    *,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    iobb_thresholds: Sequence[float] = DEFAULT_IOBB_THRESHOLDS,
    hit_tolerance: float = 0.0,
) -> dict[str, float]:
    """Localization scores of a set of (image, class) pairs, as a flat ``{key: float}``.

    Per pair: the best IoU over predicted x true boxes; the IoBB of the best-matching
    predicted box (the maximum IoBB); the cumulative IoU (sum over predicted boxes of each
    box's best IoU over the true boxes, as the seed reported). A pair without predicted boxes
    scores 0 on all three.

    Keys (overall values are means over PAIRS, not over classes; per-class values are means
    over that class's pairs, NaN for a class without pairs):

    * ``n_pairs``, ``n_pairs/<Class>``;
    * ``iou_mean``, ``iobb_mean``, ``cum_iou_mean``, ``iou/<Class>``, ``iobb/<Class>``,
      ``cum_iou/<Class>``;
    * ChestX-ray8 accuracy ``acc_iou@t`` (a pair is correct when ANY predicted box has
      IoU strictly above t with a true box, as Wang et al. 2017 count it),
      ``acc_iou@t/<Class>``, and cxrbench's (not Wang's) average false positives
      ``afp_iou@t`` (mean over pairs of the number of predicted boxes whose best IoU is
      <= t); the same for IoBB: ``acc_iobb@t``, ``acc_iobb@t/<Class>``, ``afp_iobb@t``;
    * the seed's fractions ``iou>t`` for t in 0.1, 0.2, 0.25, 0.3, 0.4, 0.5 (best IoU
      strictly above t);
    * pointing game ``hit_rate``, ``hit_rate/<Class>``: the heatmap peak lies inside a true
      box grown by ``hit_tolerance`` pixels on every side (edges included);
    * ``heatmap_value_in_box_mean``, only when some pair carries that value (mean over those).

    Args:
        pairs: the pairs to score.
        class_names: names of the class indices, used in the keys.
        iou_thresholds: T(IoU) values for accuracy / AFP.
        iobb_thresholds: T(IoBB) values for accuracy / AFP.
        hit_tolerance: margin in pixels for the pointing game.

    Returns:
        The flat metric dict (plain floats, NaN where undefined).

    """
    names = list(class_names)
    k = len(names)
    bad = [p.class_index for p in pairs if not 0 <= p.class_index < k]
    if bad:
        raise ValueError(f"class_index {bad[0]} out of range for {k} class names")
    if hit_tolerance < 0:
        raise ValueError(f"hit_tolerance must be >= 0, got {hit_tolerance}")
    sc = _score_pairs(pairs, hit_tolerance)
    n = sc.class_index.size
    t_iou = np.asarray(iou_thresholds, dtype=np.float64)
    t_iobb = np.asarray(iobb_thresholds, dtype=np.float64)

    def mean(v: np.ndarray) -> np.ndarray:
        return v.mean(axis=0) if n else np.full(v.shape[1:], np.nan)

    # Wang et al. 2017 (ChestX-ray8, section 4.2): correct when the overlap is STRICTLY above T
    acc_iou = sc.best_iou[:, None] > t_iou[None, :]
    acc_iobb = sc.best_iobb[:, None] > t_iobb[None, :]
    # false positives per pair and threshold: predicted boxes whose best overlap is below t
    fp_iou = np.zeros((n, t_iou.size))
    fp_iobb = np.zeros((n, t_iobb.size))
    # cxrbench's AFP: predicted boxes that would not make the pair correct (overlap <= T)
    np.add.at(fp_iou, sc.pred_pair, sc.pred_iou[:, None] <= t_iou[None, :])
    np.add.at(fp_iobb, sc.pred_pair, sc.pred_iobb[:, None] <= t_iobb[None, :])

    out: dict[str, float] = {"n_pairs": float(n)}
    out["iou_mean"] = float(mean(sc.best_iou))
    out["iobb_mean"] = float(mean(sc.best_iobb))
    out["cum_iou_mean"] = float(mean(sc.cum_iou))
    out["hit_rate"] = float(mean(sc.hit.astype(np.float64)))
    for t, a, f in zip(t_iou, mean(acc_iou.astype(np.float64)), mean(fp_iou), strict=True):
        out[f"acc_iou@{_key(t)}"] = float(a)
        out[f"afp_iou@{_key(t)}"] = float(f)
    for t, a, f in zip(t_iobb, mean(acc_iobb.astype(np.float64)), mean(fp_iobb), strict=True):
        out[f"acc_iobb@{_key(t)}"] = float(a)
        out[f"afp_iobb@{_key(t)}"] = float(f)
    for t in SEED_IOU_FRACTIONS:
        out[f"iou>{_key(t)}"] = float(mean((sc.best_iou > t).astype(np.float64)))
    values = [p.heatmap_value_in_box for p in pairs if p.heatmap_value_in_box is not None]
    if values:
        out["heatmap_value_in_box_mean"] = float(np.mean(values))

    per_pair = np.column_stack([np.ones(n), sc.best_iou, sc.best_iobb, sc.cum_iou, sc.hit, acc_iou, acc_iobb])
    by_class = _class_means(per_pair, sc.class_index, k)
    counts = np.bincount(sc.class_index, minlength=k)
    columns = ["iou", "iobb", "cum_iou", "hit_rate"]
    columns += [f"acc_iou@{_key(t)}" for t in t_iou] + [f"acc_iobb@{_key(t)}" for t in t_iobb]
    for c, name in enumerate(names):
        out[f"n_pairs/{name}"] = float(counts[c])
        for j, col in enumerate(columns, start=1):
            out[f"{col}/{name}"] = float(by_class[c, j])
    return out


# --------------------------------------------------------------------------- tuning


def build_pairs(
    heatmaps: np.ndarray,
    true_boxes_per_map: Sequence[np.ndarray],
    class_index_per_map: Sequence[int] | np.ndarray,
    policy: ThresholdPolicy | None = None,
) -> list[LocalizationPair]:
    """Localization pairs from heatmaps and their ground truth.

    Args:
        heatmaps: ``N x H x W`` maps in [0, 1], one per (image, class) with boxes.
        true_boxes_per_map: N arrays ``T x 4`` of true boxes in the maps' pixel space.
        class_index_per_map: the class of each map.
        policy: threshold and region rule (the seed's when None).

    Returns:
        N pairs with predicted boxes and heatmap peaks filled in.

    """
    maps = _as_maps(heatmaps)
    classes = np.asarray(class_index_per_map, dtype=np.int64).reshape(-1)
    if not len(true_boxes_per_map) == classes.size == maps.shape[0]:
        raise ValueError(
            f"{maps.shape[0]} heatmaps, {len(true_boxes_per_map)} true box sets, {classes.size} class indices"
        )
    preds = heatmaps_to_boxes(maps, policy)
    peaks = heatmap_peaks(maps)
    return [
        LocalizationPair(int(c), t, p, (float(xy[0]), float(xy[1])))
        for c, t, p, xy in zip(classes, true_boxes_per_map, preds, peaks, strict=True)
    ]


_TUNED_FIELD = {"seed": "factor", "fraction": "fraction"}

DEFAULT_TUNING_GRIDS: dict[str, dict[str, tuple]] = {
    "seed": {"factor": (1.0, 1.25, 1.5, 1.7666, 2.0, 2.5, 3.0)},
    "fraction": {"fraction": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)},
    "otsu": {"components": ("all", "largest")},
}
"""What ``tune_policy`` tries when given no grid, per policy."""


def tune_policy(
    heatmaps: np.ndarray,
    true_boxes_per_map: Sequence[np.ndarray],
    class_index_per_map: Sequence[int] | np.ndarray,
    base_policy: ThresholdPolicy,
    grid_of_values: Sequence[float] | Mapping[str, Sequence[object]] | None = None,
    metric: str = "iou_mean",
    *,
    maximize: bool = True,
) -> tuple[ThresholdPolicy, list[dict[str, object]]]:
    """Pick the threshold policy's parameter(s) that score best on VALIDATION boxes.

    Only ever call this with validation maps and boxes: tuning on the test boxes would make
    the reported localization scores optimistic. (The host does so; test boxes never reach
    this function.)

    Args:
        heatmaps: ``N x H x W`` validation maps in [0, 1].
        true_boxes_per_map: N ``T x 4`` arrays of true boxes.
        class_index_per_map: the class of each map.
        base_policy: the policy whose other fields stay fixed.
        grid_of_values: candidate values of the policy's own parameter (``factor`` for
            ``seed``, ``fraction`` for ``fraction``), or a mapping ``{field: values}`` whose
            cartesian product is tried (e.g. ``{"factor": [...], "high": [...]}``). None tries
            ``DEFAULT_TUNING_GRIDS[base_policy.policy]``.
        metric: a key of ``localization_metrics`` to optimise.
        maximize: whether larger is better (False for e.g. ``afp_iou@0.5``).

    Returns:
        (best policy, table): one row per candidate with the tried values and the metric;
        ties go to the earlier candidate.

    """
    if grid_of_values is None:
        grid_of_values = DEFAULT_TUNING_GRIDS[base_policy.policy]
    if isinstance(grid_of_values, Mapping):
        grid = {str(k): list(v) for k, v in grid_of_values.items()}
    else:
        field = _TUNED_FIELD.get(base_policy.policy)
        if field is None:
            raise ValueError(
                f"policy {base_policy.policy!r} has no threshold parameter; pass {{field: values}} to tune other fields"
            )
        grid = {field: list(grid_of_values)}
    known = {f.name for f in dataclasses.fields(ThresholdPolicy)}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ValueError(f"unknown ThresholdPolicy field(s) {unknown}; valid: {sorted(known)}")
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError("grid_of_values is empty")
    candidates = [
        dataclasses.replace(base_policy, **dict(zip(grid, combo, strict=True)))
        for combo in itertools.product(*grid.values())
    ]
    for cand in candidates:
        cand.validate()

    maps = _as_maps(heatmaps)
    classes = np.asarray(class_index_per_map, dtype=np.int64).reshape(-1)
    n_classes = int(classes.max()) + 1 if classes.size else 1
    names = [str(i) for i in range(n_classes)]
    table: list[dict[str, object]] = []
    values = []
    for cand in candidates:
        pairs = build_pairs(maps, true_boxes_per_map, classes, cand)
        scores = localization_metrics(pairs, names)
        if metric not in scores:
            raise ValueError(f"unknown metric {metric!r}; valid: {sorted(k for k in scores if '/' not in k)}")
        values.append(scores[metric])
        table.append({**{f: getattr(cand, f) for f in grid}, metric: scores[metric]})
    signed = np.asarray(values) * (1.0 if maximize else -1.0)
    # NaN (e.g. no pairs) never wins; np.argmax takes the first of equal values
    best = int(np.argmax(np.where(np.isnan(signed), -np.inf, signed)))
    return candidates[best], table
