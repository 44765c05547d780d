"""PxAP (cxrbench.locmetrics.pxap) against MaskEvaluator's per-map loop and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cxrbench.locmetrics.pxap import boxes_to_masks, pxap


def mask_evaluator_loop(maps, masks, thresholds, ignore=None):
    """wsolevaluation's MaskEvaluator as written: np.histogram per map, then compute()."""
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    pos_hist = np.zeros(len(thresholds) + 2)
    neg_hist = np.zeros(len(thresholds) + 2)
    for i, m in enumerate(maps):
        gt = masks[i].astype(np.uint8)
        if ignore is not None:
            gt = np.where(ignore[i], 255, gt)
        pos_hist += np.histogram(m[gt == 1], bins=edges)[0]
        neg_hist += np.histogram(m[gt == 0], bins=edges)[0]
    tp = pos_hist[::-1].cumsum()
    fn = pos_hist.sum() - tp
    fp = neg_hist[::-1].cumsum()
    non_zero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return (precision[1:] * np.diff(recall))[non_zero[1:]].sum()


def normalise_loop(m):
    """inference.normalize_scoremap as written (on a copy)."""
    m = m.astype(np.float64).copy()
    if np.isnan(m).any() or m.min() == m.max():
        return np.zeros_like(m)
    m -= m.min()
    m /= m.max()
    return m


@pytest.mark.parametrize("n_thresholds", [10, 100, 1000])
def test_matches_the_mask_evaluator_loop(n_thresholds):
    rng = np.random.default_rng(n_thresholds)
    n = 30
    maps = rng.random((n, 16, 20)) ** 2
    masks = rng.random((n, 16, 20)) < 0.2
    maps[masks] += 0.3
    maps[3] = 0.5  # constant map: zeros after normalisation
    classes = rng.integers(0, 3, n)
    ignore = rng.random((n, 16, 20)) < 0.1
    ignore &= ~masks
    t = np.arange(0, 1, 1 / n_thresholds)[:n_thresholds]
    normed = np.stack([normalise_loop(m) for m in maps])
    r = pxap(maps, classes, masks=masks, ignore=ignore, n_thresholds=n_thresholds)
    assert r.ap == pytest.approx(mask_evaluator_loop(normed, masks, t, ignore), rel=1e-12)
    for k in range(3):
        sel = classes == k
        assert r.class_ap[k] == pytest.approx(mask_evaluator_loop(normed[sel], masks[sel], t, ignore[sel]), rel=1e-12)
    assert r.mean_class_ap == pytest.approx(np.mean(r.class_ap))
    assert r.precision.shape == r.recall.shape == (n_thresholds + 2,)
    assert r.cutoffs[0] == 2.0 and r.cutoffs[1] == 1.0 and r.cutoffs[-1] == 0.0


def test_equals_sklearn_when_every_value_is_a_cutoff():
    rng = np.random.default_rng(0)
    n, t = 25, 50
    thresholds = np.arange(0, 1, 1 / t)
    values = np.append(thresholds, 1.0)
    maps = values[rng.integers(0, values.size, (n, 12, 12))]
    masks = rng.random((n, 12, 12)) < maps * 0.6
    classes = rng.integers(0, 2, n)
    r = pxap(maps, classes, masks=masks, thresholds=thresholds, normalize=False)
    assert r.ap == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), rel=1e-12)
    for k in range(2):
        sel = classes == k
        assert r.class_ap[k] == pytest.approx(average_precision_score(masks[sel].ravel(), maps[sel].ravel()), rel=1e-12)


def test_differs_from_sklearn_inside_a_bin_only():
    # two positives and one negative inside one bin: binned PxAP ties them, sklearn ranks them
    maps = np.array([[[0.51, 0.52, 0.53, 0.0]]])
    masks = np.array([[[False, True, True, False]]])
    r = pxap(maps, [0], masks=masks, thresholds=[0.0, 0.5], normalize=False)
    assert r.ap == pytest.approx(2 / 3)
    assert average_precision_score(masks.ravel(), maps.ravel()) == pytest.approx(1.0)


def test_boxes_are_rasterised_by_pixel_centres():
    masks = boxes_to_masks([np.array([[1.0, 2.0, 3.0, 1.0]]), np.array([[0.4, 0.0, 0.2, 1.0]])], (4, 6))
    expected = np.zeros((4, 6), bool)
    expected[2, 1:4] = True
    np.testing.assert_array_equal(masks[0], expected)
    expected = np.zeros((4, 6), bool)
    expected[0, 0] = True  # [0.4, 0.6) holds the centre 0.5
    np.testing.assert_array_equal(masks[1], expected)
    maps = np.random.default_rng(0).random((2, 4, 6))
    by_boxes = pxap(maps, [0, 0], true_boxes=[np.array([[1.0, 2.0, 3.0, 1.0]])] * 2)
    by_masks = pxap(maps, [0, 0], masks=np.stack([boxes_to_masks([np.array([[1.0, 2.0, 3.0, 1.0]])], (4, 6))[0]] * 2))
    assert by_boxes.ap == by_masks.ap


def test_perfect_map_and_classes_without_positives():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    maps = masks.astype(float) * 0.9 + 0.05
    r = pxap(maps, [0, 1], masks=masks)
    assert r.class_ap[0] == pytest.approx(1.0)
    assert np.isnan(r.class_ap[1])  # no positive pixel (the reference raises)
    assert r.mean_class_ap == pytest.approx(1.0)


def test_bad_inputs():
    maps = np.zeros((1, 4, 4))
    with pytest.raises(ValueError, match="exactly one"):
        pxap(maps, [0])
    with pytest.raises(ValueError, match="increasing"):
        pxap(maps, [0], masks=np.zeros((1, 4, 4), bool), thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pxap(maps + 2, [0], masks=np.zeros((1, 4, 4), bool), normalize=False)
