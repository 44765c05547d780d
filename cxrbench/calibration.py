"""Calibration of predicted probabilities: expected calibration error, Brier score, reliability bins.

Pure numpy / scipy / scikit-learn functions over arrays, following the conventions of
:mod:`cxrbench.metrics` (``y_true`` ``N x K`` with 1 / 0 / NaN, NaN = unknown and left out
class by class; a 1-D pair of arrays is one class). ``y_prob`` must be a probability in
[0, 1] (cxrbench's predictions are ``sigmoid(logit)``).

**Binning** (the definition of the ECE, and of the reliability diagram): ``n_bins``
equal-width bins on [0, 1] with edges ``numpy.linspace(0, 1, n_bins + 1)``; bin 0 is
``[0, e_1]`` and bin ``b >= 1`` is ``(e_b, e_{b+1}]``, so an edge belongs to the bin below it
and a probability of exactly 0 to the first bin. This is ``sklearn.calibration.calibration_curve``
with ``strategy="uniform"`` and Guo et al.'s reference code (``lower < p <= upper``), which
leaves out p = 0; the default ``n_bins = 15`` is Guo et al.'s.

**ECE** (Naeini, Cooper & Hauskrecht, AAAI 2015; Guo, Pleiss, Sun & Weinberger, ICML 2017)
of one class, over its images with a known label::

    ECE = sum_b (n_b / n) * |observed_b - mean_predicted_b|

where ``observed_b`` is the fraction of positives among the ``n_b`` images of bin b and
``mean_predicted_b`` their mean probability. Empty bins have weight 0 and are skipped. This
is the binary (positive-class) reliability of each finding, not the top-label confidence of
a multi-class classifier: a multi-label chest X-ray model gives one probability per finding.

**Brier score** (Brier 1950) of one class: the mean of ``(p - y)^2`` over its images with a
known label, as ``sklearn.metrics.brier_score_loss``.

The mean over classes is the mean over the classes where the value is defined (a class
without any known label has none). Intervals are the percentile bootstrap of
:mod:`cxrbench.metrics`: the same resamples (``bootstrap_counts``) for the same groups,
replicates and seed, so a cell's calibration and AUROC intervals come from one set of
patient resamples. A replicate's value is the statistic with every image weighted by how
often it was drawn, which equals the statistic on the resampled data set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.metrics import brier_score_loss

from .metrics import _as_2d, _check_groups, _draw_counts, _nanmean_rows, _percentile_bounds

__all__ = [
    "DEFAULT_BINS",
    "CalibrationResult",
    "ReliabilityBins",
    "bin_index",
    "bootstrap_calibration",
    "brier_scores",
    "calibration_metrics",
    "expected_calibration_error",
    "reliability_bins",
]

DEFAULT_BINS = 15
"""Bins of the ECE and of reliability diagrams (Guo et al. 2017)."""


# --------------------------------------------------------------------------- binning


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _check_probabilities(p: np.ndarray) -> None:
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"y_prob must be probabilities in [0, 1]; found values in [{p.min():g}, {p.max():g}]")


def bin_index(y_prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """The bin of each probability: 0 for ``[0, e_1]``, b for ``(e_b, e_{b+1}]`` (module docstring).

    Args:
        y_prob: probabilities in [0, 1], any shape.
        n_bins: number of equal-width bins.

    Returns:
        Integer bin indices in ``0 .. n_bins - 1``, the shape of ``y_prob``.

    """
    edges = np.linspace(0.0, 1.0, _check_bins(n_bins) + 1)
    # searchsorted(side="left") on the inner edges: a value equal to an edge goes to the bin below
    return np.searchsorted(edges[1:-1], np.asarray(y_prob, dtype=np.float64), side="left")


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    """One class's reliability diagram: per bin, how often the finding was present vs predicted.

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges on [0, 1].
        mean_predicted: ``(n_bins,)`` mean predicted probability of each bin; NaN when empty.
        observed: ``(n_bins,)`` fraction of positive labels in each bin; NaN when empty.
        counts: ``(n_bins,)`` images (with a known label) in each bin.

    """

    edges: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """The expected calibration error of these bins (NaN without any image)."""
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        full = self.counts > 0
        gaps = np.abs(self.observed[full] - self.mean_predicted[full])
        return float(np.sum(self.counts[full] * gaps) / total)


def reliability_bins(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """The reliability diagram of one class (images with an unknown, NaN, label left out).

    Args:
        y_true: ``(N,)`` labels, 1 / 0 / NaN.
        y_prob: ``(N,)`` predicted probabilities in [0, 1].
        n_bins: number of equal-width bins on [0, 1] (edges as in the module docstring).

    Returns:
        Edges, and per bin the mean predicted probability, the observed frequency and the count.

    Raises:
        ValueError: for arrays that are not one class, labels other than 0 / 1 / NaN, or
            probabilities outside [0, 1].

    """
    y_arr, p_arr = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    if y_arr.ndim != 1 or p_arr.ndim != 1:
        raise ValueError(f"reliability_bins takes one class: 1-D arrays, got {y_arr.shape} and {p_arr.shape}")
    y, p = (a[:, 0] for a in _as_2d(y_arr, p_arr))
    _check_probabilities(p)
    n_bins = _check_bins(n_bins)
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    b = bin_index(p, n_bins)
    counts = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(b, weights=p, minlength=n_bins) / counts
        observed = np.bincount(b, weights=y, minlength=n_bins) / counts
    return ReliabilityBins(edges=np.linspace(0.0, 1.0, n_bins + 1), mean_predicted=mean_predicted,
                           observed=observed, counts=counts.astype(np.int64))


# --------------------------------------------------------------------------- point values


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Per-class ECE (module docstring), unknown labels left out.

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        y_prob: ``N x K`` probabilities in [0, 1].
        n_bins: number of equal-width bins.

    Returns:
        ``(K,)`` ECE per class; NaN for a class without any known label.

    """
    y, p = _as_2d(y_true, y_prob)
    return np.array([reliability_bins(y[:, j], p[:, j], n_bins).ece for j in range(y.shape[1])])


def brier_scores(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Per-class Brier score (``sklearn.metrics.brier_score_loss``), unknown labels left out.

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        y_prob: ``N x K`` probabilities in [0, 1].

    Returns:
        ``(K,)`` Brier scores; NaN for a class without any known label.

    """
    y, p = _as_2d(y_true, y_prob)
    _check_probabilities(p)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        if known.any():
            # pos_label: a class with only negatives is still scored (sklearn would guess the label)
            out[j] = brier_score_loss(y[known, j], p[known, j], pos_label=1)
    return out


# --------------------------------------------------------------------------- bootstrap


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """ECE and Brier score per class and over classes, with percentile bootstrap intervals.

    Attributes:
        ece: ``(K,)`` ECE per class (NaN without a known label).
        brier: ``(K,)`` Brier score per class.
        ece_mean: mean ECE over the classes where it is defined.
        brier_mean: mean Brier score over those classes.
        ece_low: ``(K,)`` lower interval bound per class (NaN without replicates).
        ece_high: ``(K,)`` upper bound per class.
        brier_low: ``(K,)`` lower bound of the Brier score per class.
        brier_high: ``(K,)`` upper bound.
        ece_mean_low: bounds of the mean over classes (the percentile interval of each
            replicate's mean, not a mean of the per-class intervals).
        ece_mean_high: upper bound of the mean ECE.
        brier_mean_low: lower bound of the mean Brier score.
        brier_mean_high: upper bound.
        n_bins: the ECE's bins.
        ci: the intervals' coverage.
        n_boot: replicates (0: no intervals, every bound NaN).

    """

    ece: np.ndarray
    brier: np.ndarray
    ece_mean: float
    brier_mean: float
    ece_low: np.ndarray
    ece_high: np.ndarray
    brier_low: np.ndarray
    brier_high: np.ndarray
    ece_mean_low: float
    ece_mean_high: float
    brier_mean_low: float
    brier_mean_high: float
    n_bins: int = DEFAULT_BINS
    ci: float = 0.95
    n_boot: int = 0


def _replicates(y: np.ndarray, p: np.ndarray, unit_of_image: np.ndarray, unit_weights: np.ndarray,
                n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``R x K`` ECE and Brier score of every replicate, from the units' draw counts.

    Every replicate's statistic is a ratio of weighted sums over images, and each image's
    weight is its unit's count, so the per-image terms are first summed per unit (one sparse
    matrix; per class the rows are: positives per bin, probability mass per bin, squared
    error, count) and then multiplied by the ``units x R`` count matrix once.
    """
    k = y.shape[1]
    n_units, n_rep = unit_weights.shape
    rows_per_class = 2 * n_bins + 2
    blocks = []
    for j in range(k):
        known = np.flatnonzero(~np.isnan(y[:, j]))
        yj, pj = y[known, j], p[known, j]
        b = bin_index(pj, n_bins)
        rows = np.concatenate([b, n_bins + b, np.full(known.size, 2 * n_bins), np.full(known.size, 2 * n_bins + 1)])
        data = np.concatenate([yj, pj, (pj - yj) ** 2, np.ones(known.size)])
        blocks.append(sparse.coo_matrix((data, (rows, np.tile(unit_of_image[known], 4))),
                                        shape=(rows_per_class, n_units)).tocsr())
    sums = (sparse.vstack(blocks).tocsr() @ unit_weights.astype(np.float64)).reshape(k, rows_per_class, n_rep)
    positives, mass = sums[:, :n_bins], sums[:, n_bins:2 * n_bins]
    total = sums[:, 2 * n_bins + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        # n_b * |observed_b - predicted_b| = |positives_b - mass_b|: no division per bin
        ece = np.abs(positives - mass).sum(axis=1) / total
        brier = sums[:, 2 * n_bins] / total
    ece[total == 0] = np.nan
    brier[total == 0] = np.nan
    return ece.T, brier.T


def bootstrap_calibration(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> CalibrationResult:
    """ECE and Brier score per class and their mean, with percentile bootstrap intervals.

    Args:
        y_true: ``N x K`` labels, 1 / 0 / NaN.
        y_prob: ``N x K`` probabilities in [0, 1].
        groups: one group id per image (e.g. patient id) to resample groups; None resamples
            images. The resamples are those of ``cxrbench.metrics.bootstrap_counts``.
        n_boot: replicates; 0 gives point values only (bounds NaN).
        seed: seed of the resampling.
        ci: coverage of the percentile interval.
        n_bins: the ECE's equal-width bins.

    Returns:
        The point values and their intervals.

    """
    y, p = _as_2d(y_true, y_prob)
    _check_probabilities(p)
    n_bins = _check_bins(n_bins)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    ece, brier = expected_calibration_error(y, p, n_bins), brier_scores(y, p)
    point_ece, point_brier = (float(_nanmean_rows(v[None, :])[0]) for v in (ece, brier))
    k = y.shape[1]
    nan_k = np.full(k, np.nan)
    if n_boot == 0:
        return CalibrationResult(ece, brier, point_ece, point_brier, nan_k, nan_k.copy(), nan_k.copy(),
                                 nan_k.copy(), np.nan, np.nan, np.nan, np.nan, n_bins, ci, 0)
    if groups is None:
        unit_of_image = np.arange(y.shape[0])
        unit_weights = _draw_counts(y.shape[0], n_boot, seed)
    else:
        # drawing the sorted unique units draws exactly the unit counts that bootstrap_counts
        # expands to images (same units, same order, same generator calls)
        units, unit_of_image = np.unique(_check_groups(groups, y.shape[0]), return_inverse=True)
        unit_of_image = unit_of_image.ravel()
        unit_weights = _draw_counts(units, n_boot, seed)
    rep_ece, rep_brier = _replicates(y, p, unit_of_image, unit_weights, n_bins)
    ece_low, ece_high = _percentile_bounds(rep_ece, ci)
    brier_low, brier_high = _percentile_bounds(rep_brier, ci)
    (em_low,), (em_high,) = _percentile_bounds(_nanmean_rows(rep_ece)[:, None], ci)
    (bm_low,), (bm_high,) = _percentile_bounds(_nanmean_rows(rep_brier)[:, None], ci)
    return CalibrationResult(ece, brier, point_ece, point_brier, ece_low, ece_high, brier_low, brier_high,
                             float(em_low), float(em_high), float(bm_low), float(bm_high), n_bins, ci, n_boot)


def calibration_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, float]:
    """A cell's calibration numbers as flat catalogue keys.

    Keys: ``ece`` and ``brier`` (means over classes), ``ece/<Class>``, ``brier/<Class>``;
    with ``n_boot > 0`` also ``ece_ci_low``, ``ece_ci_high``, ``brier_ci_low``,
    ``brier_ci_high`` and their ``/<Class>`` versions. Undefined values are NaN.

    Args:
        y_true: ``N x K`` test labels, 1 / 0 / NaN.
        y_prob: ``N x K`` test probabilities.
        class_names: the K class names.
        groups: patient id per image for a patient-level bootstrap; None for images.
        n_boot: bootstrap replicates (0: no intervals).
        seed: bootstrap seed.
        ci: interval coverage.
        n_bins: the ECE's bins.

    Returns:
        The flat metric dict.

    """
    names = list(class_names)
    result = bootstrap_calibration(y_true, y_prob, groups=groups, n_boot=n_boot, seed=seed, ci=ci, n_bins=n_bins)
    if len(names) != result.ece.shape[0]:
        raise ValueError(f"{len(names)} class names for {result.ece.shape[0]} probability columns")
    out: dict[str, float] = {"ece": result.ece_mean, "brier": result.brier_mean}
    per_class = {"ece": result.ece, "brier": result.brier}
    if n_boot > 0:
        out.update(ece_ci_low=result.ece_mean_low, ece_ci_high=result.ece_mean_high,
                   brier_ci_low=result.brier_mean_low, brier_ci_high=result.brier_mean_high)
        per_class.update(ece_ci_low=result.ece_low, ece_ci_high=result.ece_high, brier_ci_low=result.brier_low,
                         brier_ci_high=result.brier_high)
    for prefix, values in per_class.items():
        out.update({f"{prefix}/{name}": float(v) for name, v in zip(names, values, strict=True)})
    return out
