"""Classification metrics: AUROC with bootstrap confidence intervals, cut-offs, and their scores.

Pure numpy / scikit-learn functions over arrays; no torch.

Conventions used throughout:

* ``y_true`` is ``N x K`` float: 1 = present, 0 = absent, NaN = unknown. Unknown labels are
  masked out class by class (an image with an unknown label for one class still counts for
  the others).
* ``y_score`` is ``N x K`` float, higher = more likely present. A 1-D pair of arrays is
  taken as a single class.
* A class whose (masked) labels hold only one value has no AUROC: NaN, never an error.

The bootstrap resamples patients (``groups``) or images with replacement. Every replicate is
described by a vector of integer weights (how many times each image was drawn); the AUROC
of a replicate is the Mann-Whitney statistic with those weights, which equals
``sklearn.metrics.roc_auc_score`` on the dataset with every row repeated by its weight. Each
class is sorted once; its statistic is then a fixed sparse linear map of the weights (segment
sums of negative weight between the positives' scores) followed by a cumulative sum, so a
thousand replicates cost one sparse product with an ``N x R`` integer matrix per class
instead of a thousand sorts.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.metrics import roc_curve

__all__ = [
    "BootstrapResult",
    "auroc",
    "bootstrap_auroc",
    "bootstrap_counts",
    "classification_metrics",
    "paired_bootstrap_auroc_diff",
    "roc_curve_points",
    "seed_thresholds",
    "threshold_metrics",
    "youden_thresholds",
]

_DRAW_BLOCK = 64
"""Replicates drawn per call of the generator. Part of the resample definition: changing it
changes which resamples a seed gives, so it is fixed here and independent of memory limits."""

_CHUNK_BYTES = 1 << 28
"""Bound on the work arrays of one replicate chunk (about 256 MB), so peak memory stays well < 1 GB."""


# --------------------------------------------------------------------------- input checks


def _as_2d(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (labels, scores) as float64 ``N x K`` arrays."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true {np.shape(y_true)} and y_score {np.shape(y_score)} must both be N x K")
    known = y[~np.isnan(y)]
    if not np.all((known == 0) | (known == 1)):
        bad = np.unique(known[(known != 0) & (known != 1)])[:5]
        raise ValueError(f"y_true must hold 0, 1 or NaN; found {bad.tolist()}")
    if not np.all(np.isfinite(s)):
        raise ValueError("y_score holds NaN or infinite values")
    return y, s


def _group_index(groups_or_n: int | Sequence | np.ndarray) -> tuple[np.ndarray, int]:
    """(resampling unit of each image, number of units) for images or groups."""
    if np.isscalar(groups_or_n) and not isinstance(groups_or_n, str):
        n = int(groups_or_n)  # type: ignore[arg-type]
        if n < 0:
            raise ValueError(f"number of samples must be >= 0, got {n}")
        return np.arange(n), n
    groups = np.asarray(groups_or_n)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D (one id per image), got shape {groups.shape}")
    uniques, inverse = np.unique(groups, return_inverse=True)
    return inverse.ravel(), len(uniques)


# --------------------------------------------------------------------------- resampling


def _draw_counts(groups_or_n: int | Sequence | np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Resample weights as an ``N x R`` C-contiguous array (the layout the AUROC kernel wants).

    Each replicate draws as many units (groups or images) as there are, uniformly with
    replacement; an image's weight is the number of times its unit was drawn.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    unit_of_image, n_units = _group_index(groups_or_n)
    n_images = unit_of_image.shape[0]
    # uint8 keeps the matrix small (weights above 255 need ~255 hits on one unit, which
    # practically never happens); the array is widened if it ever does.
    out = np.zeros((n_images, n_boot), dtype=np.uint8)
    if n_units == 0 or n_boot == 0:
        return out
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _DRAW_BLOCK):
        stop = min(start + _DRAW_BLOCK, n_boot)
        b = stop - start
        draws = rng.integers(0, n_units, size=(b, n_units))
        # one bincount for the whole block: replicate j's draws are shifted by j * n_units
        draws += np.arange(b)[:, None] * n_units
        unit_counts = np.bincount(draws.ravel(), minlength=b * n_units).reshape(b, n_units)
        if unit_counts.max() > np.iinfo(out.dtype).max:
            out = out.astype(np.int32)
        out[:, start:stop] = unit_counts.T[unit_of_image]
    return out


def bootstrap_counts(groups_or_n: int | Sequence | np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """The bootstrap resamples as integer weights: how often each image is drawn.

    ``bootstrap_auroc`` and ``paired_bootstrap_auroc_diff`` use exactly these resamples for
    the same arguments, so a reference implementation can reproduce any replicate by
    repeating row ``i`` ``counts[r, i]`` times.

    Args:
        groups_or_n: the number of images (resample images), or one group id per image
            (resample groups, e.g. patients: every image of a drawn group comes in, as many
            times as the group was drawn).
        n_boot: number of replicates R.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``R x N`` array of unsigned integers (uint8 unless a weight exceeds 255).

    """
    return _draw_counts(groups_or_n, n_boot, seed).T


# --------------------------------------------------------------------------- AUROC kernel


@dataclasses.dataclass
class _ClassPlan:
    """One class's weighted Mann-Whitney statistic as a sparse linear map of the weights.

    Sort the class's negatives by score and cut them at every ``lo_p`` / ``hi_p`` (for each
    positive p, the number of negatives scoring strictly below / at most its score); the
    cut positions are ``B_0 < ... < B_{m-1}``. ``matrix @ weights`` gives, per replicate:

    * rows ``0..m``: the negative weight of each segment between cuts (row m: after the last);
    * rows ``m+1..2m``: per cut, the weight of the positives whose ``lo`` and/or ``hi`` is
      that cut (a positive adds its weight once for ``lo`` and once for ``hi``).

    The cumulative negative weight at cut ``B_i`` is the cumulative sum of the segment rows,
    so ``2 * U = sum_i cum_i * pos_i``, ties counting one half as in Mann-Whitney.
    """

    matrix: sparse.csr_matrix  # (2m + 1) x N, integer
    n_cuts: int


def _plan(y_col: np.ndarray, s_col: np.ndarray) -> _ClassPlan | None:
    """Build the class's sparse map; None when the class lacks positives or negatives."""
    pos = np.flatnonzero(y_col == 1)
    neg = np.flatnonzero(y_col == 0)  # NaN compares unequal to both: masked out here
    if pos.size == 0 or neg.size == 0:
        return None
    if pos.size > neg.size:
        # AUC(y, s) = AUC(1 - y, -s) exactly (ties included); cutting at the smaller side's
        # scores keeps the map small.
        pos, neg, s_col = neg, pos, -s_col
    neg_sorted = neg[np.argsort(s_col[neg], kind="stable")]
    neg_scores = s_col[neg_sorted]
    lo = np.searchsorted(neg_scores, s_col[pos], side="left")
    hi = np.searchsorted(neg_scores, s_col[pos], side="right")
    cuts = np.unique(np.concatenate([lo, hi]))
    m = cuts.size
    # segment of each sorted negative = number of cuts at or before its position
    segment = np.searchsorted(cuts, np.arange(neg_sorted.size), side="right")
    rows = np.concatenate([segment, m + 1 + np.searchsorted(cuts, lo), m + 1 + np.searchsorted(cuts, hi)])
    cols = np.concatenate([neg_sorted, pos, pos])
    data = np.ones(rows.size, dtype=np.int32)
    # duplicates (lo == hi) are summed by the conversion, giving the positive weight twice
    matrix = sparse.coo_matrix((data, (rows, cols)), shape=(2 * m + 1, y_col.size)).tocsr()
    return _ClassPlan(matrix=matrix, n_cuts=m)


def _prefix_sum_rows_(x: np.ndarray) -> None:
    """In-place inclusive prefix sum along axis 0 of a C-contiguous 2-D array.

    ``np.cumsum(axis=0)`` walks each column separately, several times slower than plain
    adds on this layout. Two levels of row-slice adds (within blocks of ~sqrt(n) rows, then
    block offsets) keep every step a contiguous vector add, in ~3 sqrt(n) Python steps.
    """
    n, r = x.shape
    b = max(1, math.isqrt(n))
    nb = n // b
    full = nb * b
    blocks = x[:full].reshape(nb, b, r)
    for k in range(1, b):
        np.add(blocks[:, k], blocks[:, k - 1], out=blocks[:, k])
    tail = x[full:]
    for k in range(1, tail.shape[0]):
        tail[k] += tail[k - 1]
    for j in range(1, nb):
        blocks[j] += blocks[j - 1, -1]
    if full and tail.shape[0]:
        tail += x[full - 1]


def _weighted_auc(plan: _ClassPlan, weights: np.ndarray) -> np.ndarray:
    """AUROC of one class for every column of ``weights`` (``N x r`` int32 weights).

    Everything stays integer (so exact) until the final division.
    """
    m = plan.n_cuts
    sums = plan.matrix @ weights
    # int32 is enough: every entry is at most twice a replicate's total weight (checked)
    cum_neg = sums[: m + 1]
    _prefix_sum_rows_(cum_neg)
    pos_at_cut = sums[m + 1 :]
    num2 = np.einsum("mr,mr->r", cum_neg[:m], pos_at_cut, dtype=np.int64)
    total_pos2 = pos_at_cut.sum(axis=0, dtype=np.int64)
    denom = total_pos2.astype(np.float64) * cum_neg[m].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = num2 / denom
    auc[denom == 0] = np.nan  # a replicate that drew no positive or no negative
    return auc


def _replicate_aurocs(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``R x K`` AUROCs for the ``N x R`` weight matrix, chunked over replicates."""
    n, k = y.shape
    n_rep = weights.shape[1]
    out = np.full((n_rep, k), np.nan)
    plans = [_plan(y[:, j], s[:, j]) for j in range(k)]
    if n_rep == 0 or all(p is None for p in plans):
        return out
    # int32 sums are exact while twice a replicate's total weight fits (see _weighted_auc)
    if n and 2 * int(weights.max(initial=0)) * n >= np.iinfo(np.int32).max:
        raise ValueError(f"bootstrap weights too large for {n} samples")
    rows = max(p.matrix.shape[0] for p in plans if p is not None)
    # per replicate: the int32 weight column and the int32 sums (plus temporaries) of the widest class
    chunk = int(max(1, min(n_rep, _CHUNK_BYTES // (4 * n + 16 * rows))))
    for start in range(0, n_rep, chunk):
        stop = min(start + chunk, n_rep)
        block = weights[:, start:stop].astype(np.int32)  # int32: sparse sums stay exact
        for j, plan in enumerate(plans):
            if plan is not None:
                out[start:stop, j] = _weighted_auc(plan, block)
    return out


def auroc(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Per-class area under the ROC curve, unknown labels masked out.

    Rank-based (Mann-Whitney with ties counted one half), which is what
    ``sklearn.metrics.roc_auc_score`` computes; the two agree to floating-point rounding.

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN (NaN = unknown, ignored for that class).
        y_score: ``N x K`` scores.

    Returns:
        ``(K,)`` AUROCs; NaN for a class whose known labels are all equal.

    """
    y, s = _as_2d(y_true, y_score)
    return _replicate_aurocs(y, s, np.ones((y.shape[0], 1), dtype=np.uint8))[0]


# --------------------------------------------------------------------------- bootstrap


@dataclasses.dataclass
class BootstrapResult:
    """Bootstrap distribution of per-class AUROCs and its percentile intervals.

    Attributes:
        replicates: ``R x K`` AUROC of every replicate and class; NaN where the replicate
            drew only one label value for that class.
        low: ``(K,)`` lower percentile bound per class (NaN-aware; NaN if no replicate had
            both labels).
        high: ``(K,)`` upper percentile bound per class.
        mean_low: lower bound of the mean AUROC over classes (the mean of a replicate is
            the nanmean over its classes).
        mean_high: upper bound of that mean.
        ci: the interval's coverage, e.g. 0.95.

    """

    replicates: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mean_low: float
    mean_high: float
    ci: float = 0.95

    @property
    def mean_replicates(self) -> np.ndarray:
        """``(R,)`` mean AUROC over classes of every replicate (nanmean)."""
        return _nanmean_rows(self.replicates)


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise nanmean without the all-NaN warning (all-NaN rows give NaN)."""
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=1)


def _percentile_bounds(values: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware percentile interval along axis 0 (all-NaN columns give NaN)."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    tail = (1.0 - ci) / 2.0 * 100.0
    if values.shape[0] == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
    return low, high


def bootstrap_auroc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> BootstrapResult:
    """Percentile bootstrap of per-class AUROCs (and of their mean over classes).

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        y_score: ``N x K`` scores.
        groups: one group id per image (e.g. patient id) to resample groups, keeping every
            image of a drawn group; None resamples images.
        n_boot: number of replicates.
        seed: seed of the resampling (see ``bootstrap_counts``).
        ci: coverage of the percentile interval.

    Returns:
        The replicates and their intervals.

    """
    y, s = _as_2d(y_true, y_score)
    weights = _draw_counts(y.shape[0] if groups is None else _check_groups(groups, y.shape[0]), n_boot, seed)
    reps = _replicate_aurocs(y, s, weights)
    low, high = _percentile_bounds(reps, ci)
    mean_low, mean_high = _percentile_bounds(_nanmean_rows(reps)[:, None], ci)
    return BootstrapResult(
        replicates=reps, low=low, high=high, mean_low=float(mean_low[0]), mean_high=float(mean_high[0]), ci=ci
    )


def _check_groups(groups: Sequence | np.ndarray, n: int) -> np.ndarray:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must hold one id per image ({n}), got shape {g.shape}")
    return g


def paired_bootstrap_auroc_diff(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float, float, float]:
    """Paired bootstrap of the difference in mean AUROC (over classes) of two models.

    Both models are scored on the same resamples, so the spread reflects the difference,
    not each model's own sampling noise.

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        score_a: ``N x K`` scores of model A.
        score_b: ``N x K`` scores of model B (same images, same order).
        groups: group id per image to resample groups, or None for images.
        n_boot: number of replicates (>= 1).
        seed: seed of the resampling.
        ci: coverage of the interval.

    Returns:
        ``(mean_diff, low, high, p_value)``: mean AUROC of A minus that of B on the full
        data, the percentile interval of the replicate differences, and the two-sided
        bootstrap p-value ``min(1, 2 * min(#(d <= 0) + 1, #(d >= 0) + 1) / (R + 1))`` for
        "no difference" (the +1 keeps a finite bootstrap from claiming p = 0). Replicates
        where every class lacked one label value are left out.

    """
    y, a = _as_2d(y_true, score_a)
    _, b = _as_2d(y_true, score_b)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 for a paired bootstrap, got {n_boot}")
    point = _nanmean_rows(auroc(y, a)[None, :])[0] - _nanmean_rows(auroc(y, b)[None, :])[0]
    weights = _draw_counts(y.shape[0] if groups is None else _check_groups(groups, y.shape[0]), n_boot, seed)
    diff = _nanmean_rows(_replicate_aurocs(y, a, weights)) - _nanmean_rows(_replicate_aurocs(y, b, weights))
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float(point), float("nan"), float("nan"), float("nan")
    low, high = _percentile_bounds(diff[:, None], ci)
    tail = min(np.count_nonzero(diff <= 0), np.count_nonzero(diff >= 0)) + 1
    p_value = min(1.0, 2.0 * tail / (diff.size + 1))
    return float(point), float(low[0]), float(high[0]), float(p_value)


# --------------------------------------------------------------------------- cut-offs


def roc_curve_points(y_true: np.ndarray, y_score: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Per-class ROC curve points for plots (``sklearn.metrics.roc_curve``, NaN labels masked).

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        y_score: ``N x K`` scores.

    Returns:
        One ``(fpr, tpr, thresholds)`` per class, or None for a class without both labels.
        A score ``>= thresholds[i]`` is called positive at point ``i``.

    """
    return [_roc(y, s) for y, s in zip(*(a.T for a in _as_2d(y_true, y_score)), strict=True)]


def _roc(
    y_col: np.ndarray, s_col: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    known = ~np.isnan(y_col)
    y_k = y_col[known]
    if y_k.size == 0 or np.all(y_k == y_k[0]):
        return None
    return roc_curve(y_k, s_col[known], drop_intermediate=drop_intermediate)


def _finite_threshold(thr: float, s_col: np.ndarray) -> float:
    """A finite stand-in for sklearn's +inf first threshold ("call nothing positive")."""
    return float(np.nextafter(np.max(s_col), np.inf)) if np.isinf(thr) else float(thr)


def youden_thresholds(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Per class the cut-off maximising Youden's J = TPR - FPR (choose it on validation data).

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        y_score: ``N x K`` scores.

    Returns:
        ``(K,)`` thresholds (a score ``>=`` the threshold is positive); NaN for a class
        without both labels. Ties go to the highest threshold. When no cut-off beats
        "nothing positive", the threshold sits just above the highest score.

    """
    y, s = _as_2d(y_true, y_score)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):  # one sklearn call per class; K is small
        curve = _roc(y[:, j], s[:, j], drop_intermediate=False)
        if curve is not None:
            fpr, tpr, thr = curve
            out[j] = _finite_threshold(thr[int(np.argmax(tpr - fpr))], s[:, j])
    return out


def seed_thresholds(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Per class the seed project's cut-off: where TPR - (1 - FPR) is closest to 0.

    That is the point where sensitivity and specificity are closest to equal. As in the seed,
    the candidate points are those of ``sklearn.metrics.roc_curve`` with its default
    ``drop_intermediate=True``; ties go to the highest threshold.

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        y_score: ``N x K`` scores.

    Returns:
        ``(K,)`` thresholds (a score ``>=`` the threshold is positive); NaN for a class
        without both labels.

    """
    y, s = _as_2d(y_true, y_score)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        curve = _roc(y[:, j], s[:, j])
        if curve is not None:
            fpr, tpr, thr = curve
            out[j] = _finite_threshold(thr[int(np.argmin(np.abs(tpr - (1.0 - fpr))))], s[:, j])
    return out


def threshold_metrics(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion-matrix scores at given per-class cut-offs (score ``>=`` threshold = positive).

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN (NaN entries are left out).
        y_score: ``N x K`` scores.
        thresholds: ``(K,)`` cut-offs; a NaN cut-off makes that class's scores NaN.

    Returns:
        ``sensitivity``, ``specificity``, ``precision``, ``f1``, ``accuracy``: ``(K,)`` arrays,
        NaN where undefined (e.g. precision when nothing is called positive, sensitivity
        without positives); ``hamming_loss``: 0-d array, the fraction of wrong calls over
        every known (image, class) entry of classes with a cut-off.

    """
    y, s = _as_2d(y_true, y_score)
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.shape != (y.shape[1],):
        raise ValueError(f"need one threshold per class ({y.shape[1]}), got {thr.shape[0]}")
    known = ~np.isnan(y) & ~np.isnan(thr)[None, :]
    called = s >= thr[None, :]
    truth = y == 1
    tp = np.sum(known & called & truth, axis=0).astype(np.float64)
    fp = np.sum(known & called & ~truth, axis=0).astype(np.float64)
    fn = np.sum(known & ~called & truth, axis=0).astype(np.float64)
    tn = np.sum(known & ~called & ~truth, axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = {
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        }
    n_known = known.sum()
    result["hamming_loss"] = np.asarray((fp.sum() + fn.sum()) / n_known if n_known else np.nan)
    return result


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


# --------------------------------------------------------------------------- the flat record


def classification_metrics(
    y_true_test: np.ndarray,
    y_score_test: np.ndarray,
    class_names: Sequence[str],
    *,
    y_true_val: np.ndarray | None = None,
    y_score_val: np.ndarray | None = None,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    cutoff: str = "youden",
) -> dict[str, float]:
    """Every classification number of one cell, as a flat ``{key: float}`` for the store.

    Keys: ``auroc_mean`` (mean over classes with an AUROC), ``auroc/<Class>``; with
    ``n_boot > 0`` also ``auroc_ci_low``, ``auroc_ci_high`` (interval of the mean) and
    ``auroc_ci_low/<Class>``, ``auroc_ci_high/<Class>``. With validation data, cut-offs are
    chosen on validation by the ``cutoff`` rule and applied to test: ``threshold/<Class>``,
    ``sensitivity/<Class>``, ``specificity/<Class>``, ``precision/<Class>``,
    ``f1/<Class>``, ``accuracy/<Class>``, their means over classes (``sensitivity_mean``,
    ``specificity_mean``, ``precision_mean``, ``f1_mean``, ``accuracy_mean``, NaN-skipping)
    and ``hamming_loss``. Undefined values are ``float('nan')``.

    Args:
        y_true_test: ``N x K`` test labels, 1 / 0 / NaN.
        y_score_test: ``N x K`` test scores.
        class_names: the K class names, used in the keys.
        y_true_val: validation labels, to choose cut-offs (never chosen on test).
        y_score_val: validation scores.
        groups: patient id per TEST image for a patient-level bootstrap; None for images.
        n_boot: bootstrap replicates; 0 disables the interval.
        seed: bootstrap seed.
        ci: interval coverage (e.g. 0.95 for 95% intervals).
        cutoff: the rule choosing each class's cut-off on validation: ``youden``
            (maximise TPR - FPR) or ``seed`` (the seed project's TPR closest to 1 - FPR).

    Returns:
        The flat metric dict.

    """
    y, s = _as_2d(y_true_test, y_score_test)
    names = list(class_names)
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} class names for {y.shape[1]} score columns")
    if (y_true_val is None) != (y_score_val is None):
        raise ValueError("give both y_true_val and y_score_val, or neither")

    per_class = auroc(y, s)
    out: dict[str, float] = {"auroc_mean": float(_nanmean_rows(per_class[None, :])[0])}
    out.update(_per_class("auroc", names, per_class))
    if n_boot > 0:
        boot = bootstrap_auroc(y, s, groups=groups, n_boot=n_boot, seed=seed, ci=ci)
        out["auroc_ci_low"] = boot.mean_low
        out["auroc_ci_high"] = boot.mean_high
        out.update(_per_class("auroc_ci_low", names, boot.low))
        out.update(_per_class("auroc_ci_high", names, boot.high))
    if y_true_val is not None:
        y_val, s_val = _as_2d(y_true_val, y_score_val)
        if y_val.shape[1] != y.shape[1]:
            raise ValueError(f"validation has {y_val.shape[1]} classes, test has {y.shape[1]}")
        if cutoff not in CUTOFF_RULES:
            raise ValueError(f"cutoff must be one of {sorted(CUTOFF_RULES)}, got {cutoff!r}")
        thresholds = CUTOFF_RULES[cutoff](y_val, s_val)
        scores = threshold_metrics(y, s, thresholds)
        out.update(_per_class("threshold", names, thresholds))
        for key in ("sensitivity", "specificity", "precision", "f1", "accuracy"):
            out.update(_per_class(key, names, scores[key]))
            out[f"{key}_mean"] = float(_nanmean_rows(scores[key][None, :])[0])
        out["hamming_loss"] = float(scores["hamming_loss"])
    return out


CUTOFF_RULES = {"youden": youden_thresholds, "seed": seed_thresholds}
"""Classification cut-off rules by name (``evaluation.cutoff``)."""


def _per_class(prefix: str, names: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {f"{prefix}/{name}": float(v) for name, v in zip(names, values, strict=True)}
