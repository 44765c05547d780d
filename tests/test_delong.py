"""DeLong's test (and Obuchowski's clustered form) against an O(n^2) reference and hand-computed cases; Holm."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxrbench.delong import delong_test, holm, placement_values


def reference_test(y, s1, s2, groups=None):
    """Obuchowski (1997) written out with an explicit placement matrix; no clusters = one image each."""
    y = np.asarray(y)
    groups = list(range(len(y))) if groups is None else list(groups)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    comps = []
    for s in (np.asarray(s1, float), np.asarray(s2, float)):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    clusters = sorted(set(groups))
    v10 = [defaultdict(float), defaultdict(float)]
    v01 = [defaultdict(float), defaultdict(float)]
    m_c, n_c = defaultdict(int), defaultdict(int)
    for r, (_, c10, c01) in enumerate(comps):
        for a, i in enumerate(pos):
            v10[r][groups[i]] += c10[a]
        for b, j in enumerate(neg):
            v01[r][groups[j]] += c01[b]
    for i in pos:
        m_c[groups[i]] += 1
    for j in neg:
        n_c[groups[j]] += 1
    i10 = sum(1 for c in clusters if m_c[c] > 0)
    i01 = sum(1 for c in clusters if n_c[c] > 0)
    big_i = len(clusters)

    def cov(r, t):
        auc_r, auc_t = comps[r][0], comps[t][0]
        s10 = sum((v10[r][c] - m_c[c] * auc_r) * (v10[t][c] - m_c[c] * auc_t) for c in clusters)
        s01 = sum((v01[r][c] - n_c[c] * auc_r) * (v01[t][c] - n_c[c] * auc_t) for c in clusters)
        s11_rt = sum((v10[r][c] - m_c[c] * auc_r) * (v01[t][c] - n_c[c] * auc_t) for c in clusters)
        s11_tr = sum((v10[t][c] - m_c[c] * auc_t) * (v01[r][c] - n_c[c] * auc_r) for c in clusters)
        s10 *= i10 / ((i10 - 1) * m)
        s01 *= i01 / ((i01 - 1) * n)
        s11 = (s11_rt + s11_tr) * big_i / (big_i - 1)
        return s10 / m + s01 / n + s11 / (m * n)

    var = cov(0, 0) + cov(1, 1) - 2 * cov(0, 1)
    diff = comps[0][0] - comps[1][0]
    z = diff / math.sqrt(var)
    return comps[0][0], comps[1][0], math.sqrt(var), z, 2 * norm.sf(abs(z))


def _data(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(float)
    s1 = y * 0.8 + rng.normal(size=n)
    s2 = y * 0.5 + 0.6 * s1 + rng.normal(size=n)
    if ties:
        s1, s2 = np.round(s1, 1), np.round(s2, 1)
    return y, s1, s2


def test_hand_computed_unclustered_case():
    # A: positives 0.8, 0.4; negatives 0.6, 0.2 -> AUROC 3/4, V10 = (1, 1/2), V01 = (1/2, 1),
    # S10 = S01 = 1/8, var = 1/8 / 2 + 1/8 / 2 = 1/8. B separates perfectly: AUROC 1, var 0, cov 0.
    y = np.array([1, 1, 0, 0], float)
    a = np.array([0.8, 0.4, 0.6, 0.2])
    b = np.array([0.9, 0.7, 0.1, 0.3])
    result = delong_test(y, a, b)
    assert (result.auc1, result.auc2, result.diff) == pytest.approx((0.75, 1.0, -0.25))
    assert result.se == pytest.approx(math.sqrt(1 / 8))
    assert result.z == pytest.approx(-0.25 / math.sqrt(1 / 8))
    assert result.p == pytest.approx(math.erfc(0.5))  # 2 * (1 - Phi(1 / sqrt 2))
    assert result.method == "delong" and (result.n_positive, result.n_negative) == (2, 2)


def test_hand_computed_clustered_case():
    # patients {0.8 pos, 0.2 neg} and {0.4 pos, 0.6 neg}: V10_c = (1, 1/2), V01_c = (1, 1/2), theta = 3/4;
    # S10 = S01 = 2 / (1 * 2) * (1/16 + 1/16) = 1/8, S11 = 2 * (1/16 + 1/16) = 1/4,
    # var(A) = 1/8 / 2 + 1/8 / 2 + 2 * (1/4) / 4 = 1/4 (the unclustered variance was 1/8).
    y = np.array([1, 1, 0, 0], float)
    a = np.array([0.8, 0.4, 0.6, 0.2])
    b = np.array([0.9, 0.7, 0.1, 0.3])
    result = delong_test(y, a, b, groups=["p1", "p2", "p2", "p1"])
    assert result.method == "obuchowski" and result.n_clusters == 2
    assert result.se == pytest.approx(0.5)
    assert result.p == pytest.approx(2 * norm.sf(0.5))


@pytest.mark.parametrize("ties", [False, True])
def test_unclustered_matches_the_quadratic_reference(ties):
    y, s1, s2 = _data(300, seed=1, ties=ties)
    result = delong_test(y, s1, s2)
    auc1, auc2, se, z, p = reference_test(y, s1, s2)
    assert result.auc1 == pytest.approx(roc_auc_score(y, s1)) and result.auc1 == pytest.approx(auc1)
    assert result.auc2 == pytest.approx(auc2)
    assert (result.se, result.z, result.p) == pytest.approx((se, z, p), rel=1e-10)


@pytest.mark.parametrize("ties", [False, True])
def test_clustered_matches_the_quadratic_reference(ties):
    y, s1, s2 = _data(240, seed=2, ties=ties)
    rng = np.random.default_rng(5)
    patients = rng.integers(0, 70, size=240)  # 1 to ~8 images per patient, mixed labels
    result = delong_test(y, s1, s2, groups=patients)
    auc1, auc2, se, z, p = reference_test(y, s1, s2, patients)
    assert (result.auc1, result.auc2) == pytest.approx((auc1, auc2))
    assert (result.se, result.z, result.p) == pytest.approx((se, z, p), rel=1e-10)
    assert result.n_clusters == len(np.unique(patients))


def test_one_image_per_patient_is_exactly_delong():
    y, s1, s2 = _data(200, seed=3)
    plain = delong_test(y, s1, s2)
    clustered = delong_test(y, s1, s2, groups=[f"patient{i}" for i in range(200)])
    assert clustered.method == "obuchowski" and plain.method == "delong"
    assert (clustered.se, clustered.z, clustered.p) == pytest.approx((plain.se, plain.z, plain.p), rel=1e-12)


def test_correlated_images_widen_the_clustered_interval():
    """Duplicating every image (two identical images per patient) leaves DeLong overconfident."""
    y, s1, s2 = _data(150, seed=4)
    twice = [np.concatenate([a, a]) for a in (y, s1, s2)]
    patients = np.concatenate([np.arange(150), np.arange(150)])
    naive, clustered = delong_test(*twice), delong_test(*twice, groups=patients)
    single = delong_test(y, s1, s2)
    assert naive.se < clustered.se
    assert clustered.se == pytest.approx(single.se, rel=0.02)  # the clusters carry the original information


def test_nan_labels_are_left_out_and_identical_scores_give_p_one():
    y, s1, s2 = _data(120, seed=6)
    y_nan = y.copy()
    y_nan[:20] = np.nan
    assert delong_test(y_nan, s1, s2).p == pytest.approx(delong_test(y[20:], s1[20:], s2[20:]).p)
    same = delong_test(y, s1, s1.copy())
    assert (same.diff, same.z, same.p) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="positive and negative"):
        delong_test(np.ones(5), np.arange(5.0), np.arange(5.0))


def test_a_single_positive_cluster_has_no_variance():
    result = delong_test(np.array([1, 1, 0, 0, 0], float), np.arange(5.0)[::-1], np.arange(5.0),
                         groups=["a", "a", "b", "c", "d"])
    assert math.isnan(result.p) and math.isnan(result.se)


def test_placement_values_are_fractions_of_the_other_class():
    auc, v10, v01 = placement_values(np.array([1, 0, 1, 0]), np.array([0.9, 0.5, 0.5, 0.1]))
    np.testing.assert_allclose(v10, [1.0, 0.75])  # 0.5 beats 0.1 and ties 0.5
    np.testing.assert_allclose(v01, [0.75, 1.0])  # 0.9 beats 0.5, the other 0.5 ties it
    assert auc == pytest.approx(0.875)


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.02]), [0.02])
    out = holm([0.01, np.nan, 0.04])  # NaN: not a test, not counted
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])
    assert math.isnan(out[1])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([1.5])
