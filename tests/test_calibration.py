"""Calibration: ECE, Brier score and reliability bins against hand-computed cases and reference code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from cxrbench.calibration import (
    bin_index,
    bootstrap_calibration,
    brier_scores,
    calibration_metrics,
    expected_calibration_error,
    reliability_bins,
)
from cxrbench.metrics import bootstrap_counts


def reference_ece(y, p, n_bins):
    """ECE written out bin by bin: bin 0 = [0, 1/B], bin b = (b/B, (b+1)/B], empty bins skipped."""
    y, p = [float(v) for v in y], [float(v) for v in p]
    total, n = 0.0, len(y)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(n) if (lo < p[i] <= hi) or (b == 0 and p[i] == 0.0)]
        if members:
            observed = sum(y[i] for i in members) / len(members)
            predicted = sum(p[i] for i in members) / len(members)
            total += len(members) / n * abs(observed - predicted)
    return total


def test_hand_computed_ece_and_brier():
    y = np.array([0, 1, 1, 1], dtype=float)
    p = np.array([0.2, 0.4, 0.6, 0.9])
    # bins [0, .5] and (.5, 1]: (2/4)|0.5 - 0.3| + (2/4)|1 - 0.75| = 0.1 + 0.125
    assert expected_calibration_error(y, p, n_bins=2)[0] == pytest.approx(0.225)
    assert brier_scores(y, p)[0] == pytest.approx((0.04 + 0.36 + 0.16 + 0.01) / 4)
    bins = reliability_bins(y, p, n_bins=2)
    np.testing.assert_allclose(bins.edges, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(bins.mean_predicted, [0.3, 0.75])
    np.testing.assert_allclose(bins.observed, [0.5, 1.0])
    assert bins.counts.tolist() == [2, 2]


def test_edges_belong_to_the_bin_below_and_zero_to_the_first():
    assert bin_index(np.array([0.0, 0.5, 0.5000001, 1.0, 0.25]), 2).tolist() == [0, 0, 1, 1, 0]
    assert bin_index(np.array([0.0, 1 / 15, 1.0]), 15).tolist() == [0, 0, 14]


def test_empty_bins_are_nan_and_weightless():
    bins = reliability_bins(np.array([1.0, 0.0]), np.array([0.95, 0.97]), n_bins=15)
    assert bins.counts.sum() == 2 and bins.counts[14] == 2
    assert np.isnan(bins.observed[:14]).all() and np.isnan(bins.mean_predicted[:14]).all()
    assert bins.ece == pytest.approx(abs(0.5 - 0.96))


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_and_reliability_against_references(n_bins):
    rng = np.random.default_rng(3)
    p = rng.random(400) ** 2
    y = (rng.random(400) < p * 0.8 + 0.1).astype(float)
    p[:5] = [0.0, 1.0, 0.2, 0.4, 1 / 3]  # values on edges
    assert expected_calibration_error(y, p, n_bins)[0] == pytest.approx(reference_ece(y, p, n_bins), abs=1e-12)
    bins = reliability_bins(y, p, n_bins)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    full = bins.counts > 0
    np.testing.assert_allclose(bins.observed[full], prob_true)
    np.testing.assert_allclose(bins.mean_predicted[full], prob_pred)


def test_unknown_labels_are_left_out_class_by_class():
    rng = np.random.default_rng(0)
    p = rng.random((60, 3))
    y = (rng.random((60, 3)) < p).astype(float)
    y[:20, 1] = np.nan
    y[:, 2] = np.nan  # no known label at all
    ece, brier = expected_calibration_error(y, p), brier_scores(y, p)
    assert ece[1] == pytest.approx(reference_ece(y[20:, 1], p[20:, 1], 15))
    assert brier[1] == pytest.approx(brier_score_loss(y[20:, 1], p[20:, 1]))
    assert math.isnan(ece[2]) and math.isnan(brier[2])
    result = bootstrap_calibration(y, p, n_boot=0)
    assert result.ece_mean == pytest.approx(np.mean(ece[:2])) and result.brier_mean == pytest.approx(np.mean(brier[:2]))


def test_a_class_with_only_negatives_still_has_a_brier_score():
    assert brier_scores(np.zeros(3), np.array([0.1, 0.2, 0.3]))[0] == pytest.approx((0.01 + 0.04 + 0.09) / 3)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0.0, 1.0]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(np.array([0.0]), np.array([0.5]), n_bins=0)
    with pytest.raises(ValueError, match="one class"):
        reliability_bins(np.zeros((2, 2)), np.zeros((2, 2)))


def test_patient_bootstrap_matches_the_resampled_data_sets():
    """Each replicate is the statistic on the data with rows repeated as bootstrap_counts draws them."""
    rng = np.random.default_rng(7)
    n, n_boot = 90, 40
    p = rng.random((n, 2))
    y = (rng.random((n, 2)) < p).astype(float)
    y[::7, 0] = np.nan
    patients = np.asarray([f"p{i // 3}" for i in range(n)])
    result = bootstrap_calibration(y, p, groups=patients, n_boot=n_boot, seed=5, ci=0.9)
    counts = bootstrap_counts(patients, n_boot, seed=5)
    ece_reps, brier_reps = np.full((n_boot, 2), np.nan), np.full((n_boot, 2), np.nan)
    for r in range(n_boot):
        rows = np.repeat(np.arange(n), counts[r])
        for j in range(2):
            known = rows[~np.isnan(y[rows, j])]
            ece_reps[r, j] = reference_ece(y[known, j], p[known, j], 15)
            brier_reps[r, j] = brier_score_loss(y[known, j], p[known, j])
    for reps, low, high, mean_low, mean_high in (
            (ece_reps, result.ece_low, result.ece_high, result.ece_mean_low, result.ece_mean_high),
            (brier_reps, result.brier_low, result.brier_high, result.brier_mean_low, result.brier_mean_high)):
        np.testing.assert_allclose(low, np.percentile(reps, 5, axis=0))
        np.testing.assert_allclose(high, np.percentile(reps, 95, axis=0))
        assert mean_low == pytest.approx(np.percentile(reps.mean(axis=1), 5))
        assert mean_high == pytest.approx(np.percentile(reps.mean(axis=1), 95))
    assert (result.ece_low <= result.ece).all() and (result.ece <= result.ece_high).all()


def test_image_bootstrap_without_groups():
    rng = np.random.default_rng(1)
    p = rng.random(50)
    y = (rng.random(50) < p).astype(float)
    result = bootstrap_calibration(y, p, n_boot=30, seed=2)
    counts = bootstrap_counts(50, 30, seed=2)
    reps = [brier_score_loss(y, p, sample_weight=counts[r]) for r in range(30)]
    assert result.brier_low[0] == pytest.approx(np.percentile(reps, 2.5))
    assert result.brier_high[0] == pytest.approx(np.percentile(reps, 97.5))


def test_calibration_metrics_keys():
    y = np.array([[0, 1], [1, 0], [1, 1], [0, 0]], dtype=float)
    p = np.array([[0.1, 0.8], [0.7, 0.3], [0.9, 0.6], [0.2, 0.1]])
    out = calibration_metrics(y, p, ["A", "B"], groups=["a", "a", "b", "c"], n_boot=20)
    assert out["ece"] == pytest.approx(np.mean(expected_calibration_error(y, p)))
    assert out["brier/B"] == pytest.approx(brier_score_loss(y[:, 1], p[:, 1]))
    assert {"ece_ci_low", "ece_ci_high", "brier_ci_low", "brier_ci_high", "ece_ci_low/A", "brier_ci_high/B"} <= set(out)
    assert "ece_ci_low" not in calibration_metrics(y, p, ["A", "B"], n_boot=0)
    with pytest.raises(ValueError, match="class names"):
        calibration_metrics(y, p, ["A"], n_boot=0)
