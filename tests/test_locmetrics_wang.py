"""Wang et al. (2017) accuracy and cxr_afp (cxrbench.locmetrics.wang): hand cases and a per-box loop."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.locmetrics.wang import WANG_IOBB_THRESHOLDS, WANG_IOU_THRESHOLDS, iobb_matrix, iou_matrix, wang_accuracy


def b(*rows):
    return np.array(rows, dtype=float).reshape(-1, 4)


def test_iobb_is_over_the_predicted_box():
    pred, true = b([0, 0, 10, 10]), b([0, 0, 100, 100])
    assert iobb_matrix(pred, true)[0, 0] == pytest.approx(1.0)  # a small box inside the truth
    assert iou_matrix(pred, true)[0, 0] == pytest.approx(0.01)
    assert iobb_matrix(true, pred)[0, 0] == pytest.approx(0.01)
    assert iobb_matrix(b([5, 5, 0, 0]), true)[0, 0] == 0.0  # empty predicted box


def test_thresholds_are_strict():
    # pred [0, 10) x [0, 10), true [5, 15) x [0, 10): inter 50, IoBB 0.5, IoU 50 / 150
    r = wang_accuracy([b([0, 0, 10, 10])], [b([5, 0, 10, 10])], [0])
    assert r.best_iobb[0] == pytest.approx(0.5)
    assert r.iobb_correct[0].tolist() == [True, True, False, False, False]  # 0.5 is not > 0.5
    assert r.best_iou[0] == pytest.approx(1 / 3)
    assert r.iou_correct[0].tolist() == [True, True, True, False, False, False, False]
    assert r.iobb_thresholds == WANG_IOBB_THRESHOLDS and r.iou_thresholds == WANG_IOU_THRESHOLDS


def test_pairs_without_predictions_are_wrong_and_cxr_afp_counts_bad_boxes():
    pred = [b(), b([0, 0, 10, 10], [50, 50, 5, 5], [80, 80, 5, 5])]
    true = [b([0, 0, 10, 10]), b([0, 0, 10, 10])]
    r = wang_accuracy(pred, true, [0, 0])
    assert r.iobb_correct[0].sum() == 0 and r.iou_correct[0].sum() == 0
    assert r.iobb_correct[1].all() and r.iou_correct[1].all()
    np.testing.assert_allclose(r.cxr_afp_iobb, [1.0] * 5)  # (0 + 2) / 2 pairs
    np.testing.assert_allclose(r.iou_accuracy, [0.5] * 7)


def loop(pred, true, classes, t_iobb, t_iou, k):
    """Per pair, per predicted box, per true box."""
    n = len(pred)
    acc_b, acc_u = np.zeros((n, len(t_iobb))), np.zeros((n, len(t_iou)))
    afp_b, afp_u = np.zeros((n, len(t_iobb))), np.zeros((n, len(t_iou)))
    for i in range(n):
        for p in pred[i]:
            px0, py0, px1, py1 = p[0], p[1], p[0] + p[2], p[1] + p[3]
            best_b = best_u = 0.0
            for t in true[i]:
                tx0, ty0, tx1, ty1 = t[0], t[1], t[0] + t[2], t[1] + t[3]
                inter = max(0.0, min(px1, tx1) - max(px0, tx0)) * max(0.0, min(py1, ty1) - max(py0, ty0))
                area_p, area_t = p[2] * p[3], t[2] * t[3]
                best_b = max(best_b, inter / area_p if area_p > 0 else 0.0)
                union = area_p + area_t - inter
                best_u = max(best_u, inter / union if union > 0 else 0.0)
            for j, th in enumerate(t_iobb):
                acc_b[i, j] = max(acc_b[i, j], best_b > th)
                afp_b[i, j] += best_b <= th
            for j, th in enumerate(t_iou):
                acc_u[i, j] = max(acc_u[i, j], best_u > th)
                afp_u[i, j] += best_u <= th
    per_class = [[x[classes == c].mean(axis=0) for c in range(k)] for x in (acc_b, acc_u, afp_b, afp_u)]
    return acc_b, acc_u, afp_b, afp_u, per_class


def test_random_pairs_against_a_loop():
    rng = np.random.default_rng(0)
    n, k = 300, 4
    pred = [np.column_stack([rng.uniform(0, 80, (m, 2)), rng.uniform(0, 40, (m, 2))]) for m in rng.integers(0, 5, n)]
    true = [np.column_stack([rng.uniform(0, 80, (m, 2)), rng.uniform(1, 40, (m, 2))]) for m in rng.integers(1, 3, n)]
    classes = rng.integers(0, k, n)
    r = wang_accuracy(pred, true, classes, n_classes=k)
    acc_b, acc_u, afp_b, afp_u, per_class = loop(pred, true, classes, WANG_IOBB_THRESHOLDS, WANG_IOU_THRESHOLDS, k)
    np.testing.assert_array_equal(r.iobb_correct, acc_b.astype(bool))
    np.testing.assert_array_equal(r.iou_correct, acc_u.astype(bool))
    np.testing.assert_allclose(r.iobb_accuracy, acc_b.mean(axis=0))
    np.testing.assert_allclose(r.iou_accuracy, acc_u.mean(axis=0))
    np.testing.assert_allclose(r.cxr_afp_iobb, afp_b.mean(axis=0))
    np.testing.assert_allclose(r.cxr_afp_iou, afp_u.mean(axis=0))
    np.testing.assert_allclose(r.class_iobb_accuracy, per_class[0])
    np.testing.assert_allclose(r.class_iou_accuracy, per_class[1])
    np.testing.assert_allclose(r.class_cxr_afp_iobb, per_class[2])
    np.testing.assert_allclose(r.mean_class_iobb_accuracy, np.mean(per_class[0], axis=0))
    np.testing.assert_allclose(r.mean_class_iou_accuracy, np.mean(per_class[1], axis=0))


def test_class_without_pairs_is_nan_and_left_out_of_the_class_mean():
    r = wang_accuracy([b([0, 0, 10, 10])] * 2, [b([0, 0, 10, 10]), b([50, 50, 5, 5])], [0, 2], n_classes=3)
    assert np.isnan(r.class_iou_accuracy[1]).all()
    np.testing.assert_allclose(r.mean_class_iou_accuracy, [0.5] * 7)


def test_bad_boxes_are_refused():
    with pytest.raises(ValueError, match="pred_boxes"):
        wang_accuracy([b([0, 0, -1, 2])], [b([0, 0, 1, 1])], [0])
    with pytest.raises(ValueError, match="one box array per pair"):
        wang_accuracy([b([0, 0, 1, 1])], [], [0])
