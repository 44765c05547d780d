import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from cxrbench.metrics import (
    auroc,
    bootstrap_auroc,
    bootstrap_counts,
    classification_metrics,
    paired_bootstrap_auroc_diff,
    roc_curve_points,
    seed_thresholds,
    threshold_metrics,
    youden_thresholds,
)


def sklearn_auroc(y, s):
    """Reference: sklearn per class on the known labels, NaN without both labels."""
    y, s = np.atleast_2d(y.T).T, np.atleast_2d(s.T).T
    out = []
    for k in range(y.shape[1]):
        known = ~np.isnan(y[:, k])
        yk = y[known, k]
        out.append(roc_auc_score(yk, s[known, k]) if np.unique(yk).size == 2 else np.nan)
    return np.array(out)


def random_problem(rng, n=300, k=4, nan_frac=0.15, decimals=None):
    y = (rng.random((n, k)) < rng.uniform(0.1, 0.5, k)).astype(float)
    s = rng.random((n, k)) + 0.5 * y
    if decimals is not None:
        s = np.round(s, decimals)  # many ties, including across labels
    y[rng.random((n, k)) < nan_frac] = np.nan
    return y, s


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_auroc_matches_sklearn_with_ties_and_nan(decimals):
    y, s = random_problem(np.random.default_rng(0), decimals=decimals)
    np.testing.assert_allclose(auroc(y, s), sklearn_auroc(y, s), rtol=0, atol=1e-12)


def test_auroc_more_positives_than_negatives():
    y, s = random_problem(np.random.default_rng(1), decimals=1)
    y = np.where(np.isnan(y), np.nan, 1 - y)  # mostly positives now
    np.testing.assert_allclose(auroc(y, s), sklearn_auroc(y, s), rtol=0, atol=1e-12)


def test_auroc_single_label_classes_are_nan():
    y = np.array([[1, 0, np.nan, 1], [1, np.nan, np.nan, 0], [1, 0, np.nan, np.nan]], dtype=float)
    s = np.array([[0.2, 0.3, 0.1, 0.9], [0.4, 0.1, 0.5, 0.1], [0.6, 0.2, 0.3, 0.4]])
    got = auroc(y, s)
    assert np.isnan(got[:3]).all()
    assert got[3] == 1.0


def test_auroc_1d_and_bad_input():
    assert auroc(np.array([0, 1, 0, 1.0]), np.array([0.1, 0.9, 0.2, 0.3])).tolist() == [1.0]
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        auroc(np.array([[2.0], [0.0]]), np.array([[0.1], [0.2]]))
    with pytest.raises(ValueError, match="N x K"):
        auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        auroc(np.array([0.0, 1.0]), np.array([np.nan, 0.3]))


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.sampled_from([0.0, 1.0, math.nan]), min_size=2, max_size=40),
    data=st.data(),
)
def test_auroc_property_matches_sklearn(labels, data):
    y = np.array(labels)
    s = np.array(data.draw(st.lists(st.integers(0, 5), min_size=y.size, max_size=y.size)), dtype=float)
    np.testing.assert_allclose(auroc(y, s), sklearn_auroc(y, s), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- resampling


def test_bootstrap_counts_images_and_groups():
    counts = bootstrap_counts(50, n_boot=20, seed=3)
    assert counts.shape == (20, 50)
    assert (counts.sum(axis=1) == 50).all()  # each replicate draws N images
    np.testing.assert_array_equal(counts, bootstrap_counts(50, n_boot=20, seed=3))
    assert not np.array_equal(counts, bootstrap_counts(50, n_boot=20, seed=4))

    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3", "p4"])
    gc = bootstrap_counts(groups, n_boot=200, seed=0).astype(int)
    # every image of a patient comes in as often as the patient was drawn
    assert (gc[:, 0] == gc[:, 1]).all()
    assert (gc[:, 3] == gc[:, 4]).all() and (gc[:, 4] == gc[:, 5]).all()
    # 4 patients drawn per replicate: per-patient counts (first image of each) sum to 4
    assert (gc[:, [0, 2, 3, 6]].sum(axis=1) == 4).all()
    assert gc[:, 3].max() >= 2  # multiplicity is kept


def test_bootstrap_matches_sklearn_on_the_same_resamples():
    rng = np.random.default_rng(5)
    y, s = random_problem(rng, n=120, k=3, decimals=1)
    groups = rng.integers(0, 60, size=120)
    res = bootstrap_auroc(y, s, groups=groups, n_boot=6, seed=11)
    counts = bootstrap_counts(groups, n_boot=6, seed=11)
    for r in range(6):
        rows = np.repeat(np.arange(120), counts[r])
        np.testing.assert_allclose(res.replicates[r], sklearn_auroc(y[rows], s[rows]), rtol=0, atol=1e-12)


def test_bootstrap_replicates_without_both_labels_are_nan():
    y = np.zeros(40)
    y[7] = 1.0  # a single positive: replicates that miss it have no AUROC
    s = np.linspace(0, 1, 40)
    res = bootstrap_auroc(y, s, n_boot=200, seed=1)
    missed = bootstrap_counts(40, n_boot=200, seed=1)[:, 7] == 0
    assert missed.any() and (~missed).any()
    np.testing.assert_array_equal(np.isnan(res.replicates[:, 0]), missed)
    assert np.isfinite(res.low[0]) and np.isfinite(res.high[0])


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(2)
    y, s = random_problem(rng, n=2000, k=3, nan_frac=0.05)
    point = auroc(y, s)
    res = bootstrap_auroc(y, s, groups=np.arange(2000) // 2, n_boot=300, seed=0)
    assert res.replicates.shape == (300, 3)
    assert (res.low < point).all() and (point < res.high).all()
    assert (res.high - res.low < 0.1).all()
    mean = point.mean()
    assert res.mean_low < mean < res.mean_high
    np.testing.assert_allclose(res.mean_replicates, res.replicates.mean(axis=1))


def test_paired_bootstrap():
    rng = np.random.default_rng(4)
    y = (rng.random((400, 2)) < 0.3).astype(float)
    good = rng.random((400, 2)) + 1.0 * y
    bad = rng.random((400, 2)) + 0.2 * y
    diff, low, high, p = paired_bootstrap_auroc_diff(y, good, bad, n_boot=200, seed=0)
    assert diff == pytest.approx(auroc(y, good).mean() - auroc(y, bad).mean())
    assert 0 < low < diff < high
    assert p == pytest.approx(2 / 201)  # no replicate favours the worse model
    same = paired_bootstrap_auroc_diff(y, good, good, n_boot=50, seed=0)
    assert same == (0.0, 0.0, 0.0, 1.0)
    # the same resamples for both models: the replicate differences are exact
    a = bootstrap_auroc(y, good, n_boot=200, seed=0).mean_replicates
    b = bootstrap_auroc(y, bad, n_boot=200, seed=0).mean_replicates
    lo, hi = np.percentile(a - b, [2.5, 97.5])
    assert (low, high) == pytest.approx((lo, hi))


# --------------------------------------------------------------------------- cut-offs


# 4 negatives, 3 positives; ROC points by threshold: 0.9 (0, 1/3), 0.8 (0, 2/3),
# 0.6 (1/4, 2/3), 0.4 (1/4, 1), 0.3 (1/2, 1), ...
HAND_Y = np.array([1, 1, 0, 1, 0, 0, 0], dtype=float)
HAND_S = np.array([0.9, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1])


def test_youden_and_seed_thresholds_hand_example():
    # Youden J: 0.8 -> 2/3, 0.4 -> 3/4 (best); seed |TPR - (1 - FPR)|: 0.6 -> 1/12 (best)
    assert youden_thresholds(HAND_Y, HAND_S).tolist() == [0.4]
    assert seed_thresholds(HAND_Y, HAND_S).tolist() == [0.6]
    y2 = np.column_stack([HAND_Y, np.ones(7)])
    s2 = np.column_stack([HAND_S, HAND_S])
    assert np.isnan(youden_thresholds(y2, s2)[1]) and np.isnan(seed_thresholds(y2, s2)[1])


def test_youden_useless_scores_give_finite_threshold():
    thr = youden_thresholds(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.1, 0.9, 0.2, 0.8]))
    assert np.isfinite(thr[0]) and thr[0] > 0.9


def test_threshold_metrics_hand_example():
    y = np.column_stack([HAND_Y, [1, np.nan, 0, 0, np.nan, 1, 0]])
    s = np.column_stack([HAND_S, [0.9, 0.5, 0.7, 0.1, 0.2, 0.3, 0.2]])
    m = threshold_metrics(y, s, np.array([0.4, 0.5]))
    # class 0 at 0.4: TP 3, FP 1, FN 0, TN 3
    assert m["sensitivity"][0] == 1.0 and m["specificity"][0] == 0.75
    assert m["precision"][0] == 0.75
    assert m["f1"][0] == pytest.approx(6 / 7) and m["accuracy"][0] == pytest.approx(6 / 7)
    # class 1 (2 NaN left out) at 0.5: called 0.9 (pos), 0.7 (neg) -> TP 1, FP 1, FN 1, TN 2
    assert m["sensitivity"][1] == 0.5 and m["specificity"][1] == pytest.approx(2 / 3)
    assert m["precision"][1] == 0.5 and m["accuracy"][1] == 0.6
    assert float(m["hamming_loss"]) == pytest.approx(3 / 12)  # 1 + 2 errors over 12 known entries


def test_threshold_metrics_undefined_values_are_nan():
    m = threshold_metrics(np.array([0.0, 0.0, 1.0]), np.array([0.1, 0.2, 0.3]), np.array([0.9]))
    assert np.isnan(m["precision"][0])  # nothing called positive
    assert m["sensitivity"][0] == 0.0 and m["specificity"][0] == 1.0


def test_roc_curve_points():
    curves = roc_curve_points(np.column_stack([HAND_Y, np.zeros(7)]), np.column_stack([HAND_S, HAND_S]))
    fpr, tpr, thr = curves[0]
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0 and thr[1] == 0.9
    assert curves[1] is None


# --------------------------------------------------------------------------- flat record


def test_classification_metrics_keys_and_values():
    rng = np.random.default_rng(7)
    y, s = random_problem(rng, n=200, k=2)
    y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)  # class B has no positives on test
    yv, sv = random_problem(rng, n=100, k=2)
    names = ["A", "B"]
    out = classification_metrics(y, s, names, y_true_val=yv, y_score_val=sv, n_boot=20, seed=1)
    expected = {"auroc_mean", "auroc_ci_low", "auroc_ci_high", "hamming_loss"}
    expected |= {f"{m}_mean" for m in ("sensitivity", "specificity", "precision", "f1", "accuracy")}
    for prefix in (
        "auroc",
        "auroc_ci_low",
        "auroc_ci_high",
        "threshold",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "accuracy",
    ):
        expected |= {f"{prefix}/{n}" for n in names}
    assert set(out) == expected
    assert all(type(v) is float for v in out.values())
    assert out["auroc/A"] == pytest.approx(sklearn_auroc(y, s)[0], abs=1e-12)
    assert math.isnan(out["auroc/B"]) and math.isnan(out["sensitivity/B"])
    assert out["auroc_mean"] == out["auroc/A"]  # NaN classes are skipped
    assert out["threshold/A"] == youden_thresholds(yv, sv)[0]  # chosen on validation
    assert out["auroc_ci_low/A"] <= out["auroc/A"] <= out["auroc_ci_high/A"]

    plain = classification_metrics(y, s, names, n_boot=0)
    assert set(plain) == {"auroc_mean", "auroc/A", "auroc/B"}


def test_classification_metrics_rejects_mismatches():
    y, s = random_problem(np.random.default_rng(0), n=20, k=2)
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(y, s, ["A"], n_boot=0)
    with pytest.raises(ValueError, match="both"):
        classification_metrics(y, s, ["A", "B"], y_true_val=y, n_boot=0)
    with pytest.raises(ValueError, match="groups"):
        classification_metrics(y, s, ["A", "B"], groups=np.arange(3), n_boot=5)
