"""Bootstrap intervals (cxrbench.locmetrics.bootstrap) against a straightforward resampling loop."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.locmetrics.bootstrap import bootstrap_max_accuracy, bootstrap_mean, paired_bootstrap_diff
from cxrbench.metrics import bootstrap_counts


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 120
    patients = np.sort(rng.integers(0, 50, n))
    iou = rng.random(n)
    classes = rng.integers(0, 4, n)
    correct = rng.random((n, 3, 20)) < np.linspace(0.2, 0.8, 20)[None, None, :]
    return patients, iou, classes, correct


def resampled_rows(counts_row):
    """The explicit resample: row i repeated counts[i] times."""
    return np.repeat(np.arange(counts_row.size), counts_row)


def percentile_interval(values, ci):
    tail = (1 - ci) / 2 * 100
    return np.percentile(values, [tail, 100 - tail])


def test_mean_against_the_loop(data):
    patients, iou, _, _ = data
    r = bootstrap_mean(iou, patients, n_boot=200, seed=3, ci=0.9)
    counts = bootstrap_counts(patients, 200, seed=3)
    expected = np.array([iou[resampled_rows(c)].mean() for c in counts])
    np.testing.assert_allclose(r.replicates, expected, rtol=1e-12)
    assert r.estimate == pytest.approx(iou.mean())
    np.testing.assert_allclose([r.low, r.high], percentile_interval(expected, 0.9))
    assert r.ci == 0.9


def test_patients_move_together(data):
    patients, _, _, _ = data
    counts = bootstrap_counts(patients, 50, seed=0)
    for p in np.unique(patients):
        rows = counts[:, patients == p]
        assert (rows == rows[:, :1]).all()


def test_class_mean_against_the_loop(data):
    patients, iou, classes, _ = data
    hits = iou > 0.5
    r = bootstrap_mean(hits, patients, classes=classes, n_boot=150, seed=1)
    expected = []
    for c in bootstrap_counts(patients, 150, seed=1):
        rows = resampled_rows(c)
        expected.append(np.mean([hits[rows][classes[rows] == k].mean() for k in np.unique(classes[rows])]))
    np.testing.assert_allclose(r.replicates, expected, rtol=1e-12)
    assert r.estimate == pytest.approx(np.mean([hits[classes == k].mean() for k in range(4)]))


def test_max_accuracy_against_the_loop(data):
    patients, _, _, correct = data
    r = bootstrap_max_accuracy(correct, patients, n_boot=100, seed=2, ci=0.8)
    expected = []
    for c in bootstrap_counts(patients, 100, seed=2):
        acc = correct[resampled_rows(c)].mean(axis=0)  # deltas x thresholds, best threshold per replicate
        expected.append(acc.max(axis=1).mean())
    np.testing.assert_allclose(r.replicates, expected, rtol=1e-12)
    assert r.estimate == pytest.approx(correct.mean(axis=0).max(axis=1).mean())
    np.testing.assert_allclose([r.low, r.high], percentile_interval(expected, 0.8))
    single = bootstrap_max_accuracy(correct[:, 1], patients, n_boot=100, seed=2)
    assert single.estimate == pytest.approx(correct[:, 1].mean(axis=0).max())


def test_paired_difference_against_the_loop(data):
    patients, iou, _, correct = data
    other = np.clip(iou + np.random.default_rng(5).normal(0.05, 0.1, iou.size), 0, 1)
    d = paired_bootstrap_diff(other, iou, patients, n_boot=300, seed=4)
    counts = bootstrap_counts(patients, 300, seed=4)
    expected = np.array([other[resampled_rows(c)].mean() - iou[resampled_rows(c)].mean() for c in counts])
    np.testing.assert_allclose(d.replicates, expected, rtol=1e-9, atol=1e-15)
    assert d.difference == pytest.approx(other.mean() - iou.mean())
    np.testing.assert_allclose([d.low, d.high], percentile_interval(expected, 0.95))
    tail = min((expected <= 0).sum(), (expected >= 0).sum()) + 1
    assert d.p_value == pytest.approx(min(1.0, 2 * tail / 301))

    shifted = correct.copy()
    shifted[:, :, 5:] = True
    m = paired_bootstrap_diff(shifted, correct, patients, statistic="max_accuracy", n_boot=100, seed=4)
    expected = [
        shifted[resampled_rows(c)].mean(0).max(1).mean() - correct[resampled_rows(c)].mean(0).max(1).mean()
        for c in bootstrap_counts(patients, 100, seed=4)
    ]
    np.testing.assert_allclose(m.replicates, expected, rtol=1e-12)
    assert m.difference == pytest.approx(1.0 - correct.mean(0).max(1).mean())
    assert m.p_value == pytest.approx(2 / 101)


def test_same_localizer_has_no_difference(data):
    patients, iou, _, _ = data
    d = paired_bootstrap_diff(iou, iou, patients, n_boot=50)
    assert d.difference == 0 and d.low == 0 and d.high == 0 and d.p_value == 1.0


def test_deterministic_and_ci_levels(data):
    patients, iou, _, _ = data
    a = bootstrap_mean(iou, patients, n_boot=300, seed=7)
    b = bootstrap_mean(iou, patients, n_boot=300, seed=7)
    c = bootstrap_mean(iou, patients, n_boot=300, seed=8)
    np.testing.assert_array_equal(a.replicates, b.replicates)
    assert not np.array_equal(a.replicates, c.replicates)
    narrow = bootstrap_mean(iou, patients, n_boot=300, seed=7, ci=0.8)
    assert a.low <= narrow.low <= narrow.high <= a.high
    no_groups = bootstrap_mean(iou, None, n_boot=100, seed=0)
    expected = [iou[resampled_rows(c)].mean() for c in bootstrap_counts(iou.size, 100, seed=0)]
    np.testing.assert_allclose(no_groups.replicates, expected, rtol=1e-12)


def test_bad_inputs(data):
    patients, iou, _, _ = data
    with pytest.raises(ValueError, match="ci"):
        bootstrap_mean(iou, patients, ci=1.5)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_mean(iou, patients[:-1])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_diff(iou, iou[:-1])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_mean(iou, n_boot=0)
