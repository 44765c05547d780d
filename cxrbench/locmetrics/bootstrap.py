"""Patient-level bootstrap intervals for localization metrics.

The resamples are ``cxrbench.metrics.bootstrap_counts``: replicate ``r`` draws the patients
(``groups``) with replacement and gives every pair the number of times its patient was
drawn, ``W[r, i]``. A mean statistic of replicate ``r`` is then ``W[r] @ x / W[r].sum()``,
which equals the statistic on the resampled dataset with every pair repeated ``W[r, i]``
times; all replicates are one matrix product. The same seed gives the same resamples as
the AUROC bootstrap of the same images.

* ``bootstrap_mean``: any per-pair statistic that is a mean (IoU, hit, correct at a
  threshold), optionally the mean over classes of its class means (the pointing game's
  reported score).
* ``bootstrap_max_accuracy``: MaxBoxAcc / MaxBoxAccV2 recomputed per replicate from the
  per-pair correctness ``pairs x thresholds`` (or ``pairs x deltas x thresholds``): the
  replicate's accuracy curve is ``W @ correct / W.sum()``, its maximum over thresholds is
  taken per delta, then the mean over deltas (the best threshold is re-chosen in every
  replicate, as the metric itself does).
* ``paired_bootstrap_diff``: the difference between two localizers on the same pairs, on
  the same replicates: point difference, percentile interval and the two-sided bootstrap
  p-value ``min(1, 2 * (min(#(d <= 0), #(d >= 0)) + 1) / (R + 1))`` (as
  ``cxrbench.metrics.paired_bootstrap_auroc_diff``).

Percentile intervals: ``np.percentile`` (linear interpolation) at ``(1 - ci) / 2`` and
``(1 + ci) / 2``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from cxrbench.metrics import bootstrap_counts

__all__ = ["BootstrapCI", "PairedDiff", "bootstrap_max_accuracy", "bootstrap_mean", "paired_bootstrap_diff"]

_BLOCK = 256
"""Replicates per matrix product (bounds the ``R x columns`` temporaries)."""

Statistic = Literal["mean", "class_mean", "max_accuracy"]


@dataclasses.dataclass(frozen=True)
class BootstrapCI:
    """A statistic, its bootstrap replicates and percentile interval.

    Attributes:
        estimate: the statistic on the full data.
        low: lower bound of the interval.
        high: upper bound.
        ci: coverage, e.g. 0.95.
        replicates: ``(R,)`` the statistic of every replicate (NaN where undefined).

    """

    estimate: float
    low: float
    high: float
    ci: float
    replicates: np.ndarray


@dataclasses.dataclass(frozen=True)
class PairedDiff:
    """Difference A - B of a statistic on the same pairs and replicates.

    Attributes:
        difference: A - B on the full data.
        low: lower bound of the interval of the replicate differences.
        high: upper bound.
        p_value: two-sided bootstrap p-value for "no difference".
        ci: coverage.
        replicates: ``(R,)`` replicate differences.

    """

    difference: float
    low: float
    high: float
    p_value: float
    ci: float
    replicates: np.ndarray


def _weights(n: int, groups: Sequence | np.ndarray | None, n_boot: int, seed: int) -> np.ndarray:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if groups is None:
        return bootstrap_counts(n, n_boot, seed)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must hold one id per pair ({n}), got shape {g.shape}")
    return bootstrap_counts(g, n_boot, seed)


def _check_ci(ci: float) -> float:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    return float(ci)


def _bounds(values: np.ndarray, ci: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - ci) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def _columns(x: np.ndarray, statistic: Statistic, classes: np.ndarray | None) -> np.ndarray:
    """The per-pair columns whose weighted means the statistic is built from (``N x columns``)."""
    if statistic == "max_accuracy":
        c = np.asarray(x)
        if c.ndim == 2:
            c = c[:, None, :]
        if c.ndim != 3:
            raise ValueError(f"correctness must be pairs x thresholds or pairs x deltas x thresholds, got {c.shape}")
        return c.reshape(c.shape[0], -1).astype(np.float64)
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D (one per pair), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    if statistic == "mean":
        return v[:, None]
    if classes is None:
        raise ValueError("statistic 'class_mean' needs classes")
    cls = np.asarray(classes)
    if cls.shape != v.shape:
        raise ValueError(f"classes must hold one class per pair ({v.size}), got shape {cls.shape}")
    _, inverse = np.unique(cls, return_inverse=True)
    onehot = np.zeros((v.size, int(inverse.max()) + 1 if v.size else 0))
    onehot[np.arange(v.size), inverse] = 1.0
    # per class: weighted sum of values and weighted count
    return np.concatenate([onehot * v[:, None], onehot], axis=1)


def _reduce(sums: np.ndarray, totals: np.ndarray, statistic: Statistic, shape: tuple[int, ...]) -> np.ndarray:
    """Statistic per replicate from column sums ``R x columns`` and total weights ``(R,)``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if statistic == "mean":
            return sums[:, 0] / totals
        if statistic == "class_mean":
            k = sums.shape[1] // 2
            means = sums[:, :k] / sums[:, k:]
            finite = np.isfinite(means)
            return np.where(finite, means, 0.0).sum(axis=1) / finite.sum(axis=1)
        curves = (sums / totals[:, None]).reshape(sums.shape[0], *shape)
        return curves.max(axis=2).mean(axis=1)


def _replicates(columns: np.ndarray, weights: np.ndarray, statistic: Statistic, shape) -> np.ndarray:
    out = np.empty(weights.shape[0])
    for s in range(0, weights.shape[0], _BLOCK):
        w = weights[s : s + _BLOCK].astype(np.float64)
        out[s : s + _BLOCK] = _reduce(w @ columns, w.sum(axis=1), statistic, shape)
    return out


def _point(columns: np.ndarray, statistic: Statistic, shape) -> float:
    ones = np.ones((1, columns.shape[0]))
    return float(_reduce(ones @ columns, ones.sum(axis=1), statistic, shape)[0])


def _shape(x: np.ndarray, statistic: Statistic) -> tuple[int, ...]:
    if statistic != "max_accuracy":
        return ()
    c = np.asarray(x)
    return (1, c.shape[1]) if c.ndim == 2 else (c.shape[1], c.shape[2])


def _bootstrap(x, statistic: Statistic, classes, groups, n_boot, seed, ci) -> BootstrapCI:
    ci = _check_ci(ci)
    columns = _columns(x, statistic, classes)
    shape = _shape(x, statistic)
    n = columns.shape[0]
    if n == 0:
        raise ValueError("no pairs")
    reps = _replicates(columns, _weights(n, groups, n_boot, seed), statistic, shape)
    low, high = _bounds(reps, ci)
    return BootstrapCI(estimate=_point(columns, statistic, shape), low=low, high=high, ci=ci, replicates=reps)


def bootstrap_mean(
    values: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    *,
    classes: np.ndarray | Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> BootstrapCI:
    """Bootstrap interval of a per-pair mean (e.g. IoU, hits).

    Args:
        values: ``(N,)`` finite per-pair values (bool is fine).
        groups: one patient id per pair (resample patients); None resamples pairs.
        classes: with it, the statistic is the mean over classes of the class means (a class
            that a replicate did not draw is left out of that replicate's mean).
        n_boot: number of replicates.
        seed: seed of ``bootstrap_counts``.
        ci: coverage of the percentile interval.

    Returns:
        The estimate, interval and replicates.

    """
    return _bootstrap(values, "mean" if classes is None else "class_mean", classes, groups, n_boot, seed, ci)


def bootstrap_max_accuracy(
    correct: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> BootstrapCI:
    """Bootstrap interval of MaxBoxAcc / MaxBoxAccV2 from per-pair correctness.

    Args:
        correct: ``pairs x thresholds`` or ``pairs x deltas x thresholds`` bool
            (``MaxBoxAccResult.correct()``).
        groups: one patient id per pair; None resamples pairs.
        n_boot: number of replicates.
        seed: seed of ``bootstrap_counts``.
        ci: coverage.

    Returns:
        The estimate (mean over deltas of the max over thresholds), interval and replicates.

    """
    return _bootstrap(correct, "max_accuracy", None, groups, n_boot, seed, ci)


def paired_bootstrap_diff(
    a: np.ndarray,
    b: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    *,
    statistic: Literal["mean", "max_accuracy"] = "mean",
    classes: np.ndarray | Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> PairedDiff:
    """Paired bootstrap of statistic(A) - statistic(B) on the same pairs and replicates.

    Args:
        a: localizer A's per-pair values ``(N,)`` (``statistic="mean"``) or correctness
            (``"max_accuracy"``, as ``bootstrap_max_accuracy``).
        b: localizer B's, same pairs in the same order.
        groups: one patient id per pair; None resamples pairs.
        statistic: ``mean`` (with ``classes``: mean over classes) or ``max_accuracy``.
        classes: per-pair classes for the mean over classes (``statistic="mean"`` only).
        n_boot: number of replicates.
        seed: seed of ``bootstrap_counts``.
        ci: coverage.

    Returns:
        The difference, its interval and p-value.

    """
    ci = _check_ci(ci)
    if statistic == "mean":
        stat: Statistic = "mean" if classes is None else "class_mean"
    elif statistic == "max_accuracy":
        if classes is not None:
            raise ValueError("classes only apply to statistic='mean'")
        stat = "max_accuracy"
    else:
        raise ValueError(f"statistic must be 'mean' or 'max_accuracy', got {statistic!r}")
    if np.shape(a) != np.shape(b):
        raise ValueError(f"a and b must have the same shape, got {np.shape(a)} and {np.shape(b)}")
    col_a, col_b = _columns(a, stat, classes), _columns(b, stat, classes)
    shape = _shape(a, stat)
    n = col_a.shape[0]
    if n == 0:
        raise ValueError("no pairs")
    weights = _weights(n, groups, n_boot, seed)
    diff = _replicates(col_a, weights, stat, shape) - _replicates(col_b, weights, stat, shape)
    point = _point(col_a, stat, shape) - _point(col_b, stat, shape)
    finite = diff[np.isfinite(diff)]
    low, high = _bounds(diff, ci)
    if finite.size == 0:
        p = float("nan")
    else:
        tail = min(np.count_nonzero(finite <= 0), np.count_nonzero(finite >= 0)) + 1
        p = min(1.0, 2.0 * tail / (finite.size + 1))
    return PairedDiff(difference=point, low=low, high=high, p_value=float(p), ci=ci, replicates=diff)
