"""DeLong's test for two correlated AUROCs, its clustered (patient-level) form, and Holm's correction.

**DeLong, DeLong & Clarke-Pearson (Biometrics 1988).** Two scores of the same images are
compared through the structural components (placement values) of each AUROC: for a
positive image ``i``, ``V10_i`` = the fraction of negatives it outscores (ties one half);
for a negative ``j``, ``V01_j`` = the fraction of positives that outscore it. The AUROC is the
mean of either. With ``m`` positives and ``n`` negatives, ``S10`` and ``S01`` are the sample
covariance matrices (over positives, over negatives) of the two models' components and the
covariance of the two AUROCs is ``S10 / m + S01 / n``. The placement values come from
midranks in O(N log N) (Sun & Xu, IEEE Signal Process. Lett. 2014): ``V10_i = (T_z - T_x) / n``
and ``V01_j = 1 - (T_z - T_y) / m``, with ``T_z`` the midrank among all images and ``T_x`` /
``T_y`` among the positives / negatives only.

**Clustered data (Obuchowski, Biometrics 1997).** When a patient (a cluster) has several
images, images of one patient are not independent. The components are summed per
cluster, ``V10_c`` over the cluster's ``m_c`` positives and ``V01_c`` over its ``n_c``
negatives (the AUROC itself is unchanged: every positive against every negative, within
and across patients), and with ``I10`` clusters holding a positive, ``I01`` holding a
negative and ``I`` clusters in all::

    S10 = I10 / ((I10 - 1) m) * sum_c (V10_c - m_c A) (V10_c - m_c A)'
    S01 = I01 / ((I01 - 1) n) * sum_c (V01_c - n_c A) (V01_c - n_c A)'
    S11 = I / (I - 1) * sum_c (V10_c - m_c A) (V01_c - n_c A)'
    cov(A) = S10 / m + S01 / n + (S11 + S11') / (m n)

(``A`` the vector of the two AUROCs, products over the two models). When every cluster holds
one image, ``I10 = m``, ``I01 = n`` and ``S11 = 0``: exactly DeLong's estimate, so one code
path serves both.

The test of ``A_1 = A_2``: ``z = (A_1 - A_2) / se``, ``se = sqrt(var_1 + var_2 - 2 cov_12)``,
two-sided normal p-value. Identical scores give ``se = 0``: then ``z = 0`` and ``p = 1``.

**Holm (Scand. J. Statist. 1979)** step-down adjustment of m p-values: sort ascending,
``p'_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``, back in the input order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["DeLongResult", "delong_test", "holm", "placement_values"]


@dataclasses.dataclass(frozen=True)
class DeLongResult:
    """DeLong's comparison of two correlated AUROCs.

    Attributes:
        auc1: AUROC of the first score.
        auc2: AUROC of the second score.
        diff: ``auc1 - auc2``.
        se: standard error of the difference.
        z: ``diff / se`` (0 when both scores are identical).
        p: two-sided p-value for "no difference" (NaN when the variance is undefined, e.g.
            a single cluster with positives).
        method: ``delong`` (images independent) or ``obuchowski`` (clustered by ``groups``).
        n_positive: positive images.
        n_negative: negative images.
        n_clusters: clusters (patients), or images for ``delong``.

    """

    auc1: float
    auc2: float
    diff: float
    se: float
    z: float
    p: float
    method: str
    n_positive: int = 0
    n_negative: int = 0
    n_clusters: int = 0


def placement_values(y_true: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and the structural components of one score (Sun & Xu's midrank algorithm).

    Args:
        y_true: ``(N,)`` labels 1 / 0 (no NaN: mask unknown labels first).
        score: ``(N,)`` scores, higher = more likely positive.

    Returns:
        ``(auc, v10, v01)``: ``v10`` per positive (in input order), ``v01`` per negative.

    """
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    t_z = rankdata(np.concatenate([pos, neg]), method="average")
    t_x, t_y = rankdata(pos, method="average"), rankdata(neg, method="average")
    v10 = (t_z[:m] - t_x) / n
    v01 = 1.0 - (t_z[m:] - t_y) / m
    auc = float((t_z[:m].sum() - m * (m + 1) / 2.0) / (m * n))
    return auc, v10, v01


def _covariance(y: np.ndarray, scores: np.ndarray, cluster: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(AUROCs ``(k,)``, their covariance ``k x k``, clusters with a positive, with a negative).

    Obuchowski's estimate (module docstring); with one image per cluster it is DeLong's.
    """
    k = scores.shape[1]
    positive, negative = y == 1, y == 0
    m, n = int(positive.sum()), int(negative.sum())
    n_clusters = int(cluster.max()) + 1
    comps = [placement_values(y, scores[:, r]) for r in range(k)]
    aucs = np.array([c[0] for c in comps])
    # per cluster: the summed components of its positives / negatives, and how many it has
    m_c = np.bincount(cluster[positive], minlength=n_clusters).astype(np.float64)
    n_c = np.bincount(cluster[negative], minlength=n_clusters).astype(np.float64)
    v10 = np.stack([np.bincount(cluster[positive], weights=c[1], minlength=n_clusters) for c in comps], axis=1)
    v01 = np.stack([np.bincount(cluster[negative], weights=c[2], minlength=n_clusters) for c in comps], axis=1)
    r10 = v10 - m_c[:, None] * aucs[None, :]  # clusters without a positive give 0 rows
    r01 = v01 - n_c[:, None] * aucs[None, :]
    i10, i01 = int((m_c > 0).sum()), int((n_c > 0).sum())
    i_all = int(((m_c + n_c) > 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        s10 = i10 / ((i10 - 1) * m) * (r10.T @ r10) if i10 > 1 else np.full((k, k), np.nan)
        s01 = i01 / ((i01 - 1) * n) * (r01.T @ r01) if i01 > 1 else np.full((k, k), np.nan)
        s11 = i_all / (i_all - 1) * (r10.T @ r01) if i_all > 1 else np.full((k, k), np.nan)
    cov = s10 / m + s01 / n + (s11 + s11.T) / (m * n)
    return aucs, cov, i10, i01


def delong_test(y_true: np.ndarray, score1: np.ndarray, score2: np.ndarray,
                groups: Sequence | np.ndarray | None = None) -> DeLongResult:
    """Compare the AUROCs of two scores of the same images (DeLong 1988; clustered: Obuchowski 1997).

    Args:
        y_true: ``(N,)`` labels 1 / 0 / NaN (NaN images are left out).
        score1: ``(N,)`` first model's scores.
        score2: ``(N,)`` second model's scores (same images, same order).
        groups: one cluster id per image (e.g. the patient id) for the clustered test;
            None treats every image as independent (DeLong's test).

    Returns:
        The two AUROCs, their difference, its standard error, z and the two-sided p-value.

    Raises:
        ValueError: on mismatched shapes, labels other than 0 / 1 / NaN, non-finite scores,
            or a class without both a positive and a negative image.

    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.stack([np.asarray(score1, dtype=np.float64).ravel(), np.asarray(score2, dtype=np.float64).ravel()],
                 axis=1)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} images, the scores {np.shape(score1)} and {np.shape(score2)}")
    known = ~np.isnan(y)
    if not np.all((y[known] == 0) | (y[known] == 1)):
        raise ValueError("y_true must hold 0, 1 or NaN")
    if not np.all(np.isfinite(s[known])):
        raise ValueError("scores hold NaN or infinite values")
    if groups is None:
        cluster = np.arange(int(known.sum()))
        method = "delong"
    else:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups must hold one id per image ({y.shape[0]}), got shape {g.shape}")
        cluster = np.unique(g[known], return_inverse=True)[1].ravel()
        method = "obuchowski"
    y, s = y[known], s[known]
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or n == 0:
        raise ValueError(f"need both positive and negative images (got {m} positive, {n} negative)")
    aucs, cov, _, _ = _covariance(y, s, cluster)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(var) if var > 0 else (0.0 if var > -1e-15 else float("nan"))
    if math.isnan(var):
        z, p = float("nan"), float("nan")
    elif se == 0.0:
        # no variance of the difference: the scores rank the images identically (or nearly)
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2.0 * norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, float(se), float(z), p, method, m, n,
                        int(cluster.max()) + 1)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate).

    Args:
        pvalues: the family's p-values; NaN entries (no test) stay NaN and do not count
            towards the family size.

    Returns:
        The adjusted p-values, in the input order.

    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return out
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(stepped)
    return out
