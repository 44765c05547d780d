"""MaxBoxAcc / MaxBoxAccV2 (cxrbench.locmetrics.maxboxacc): the component-tree version equals the OpenCV loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.locmetrics import maxboxacc as mba
from cxrbench.locmetrics.maxboxacc import (
    best_iou_curves,
    best_iou_curves_reference,
    cam_thresholds,
    maxboxacc,
    maxboxacc_reference,
    maxboxacc_v2,
    wsol_levels,
    wsol_true_boxes,
)

MODES = [
    pytest.param(False, True, id="largest"),
    pytest.param(True, True, id="all-contours"),
    pytest.param(True, False, id="regions-only"),
]


def random_boxes(rng, n, h, w, most=3):
    out = []
    for k in rng.integers(1, most + 1, n):
        xy = np.column_stack([rng.uniform(0, w * 0.8, k), rng.uniform(0, h * 0.8, k)])
        wh = np.column_stack([rng.uniform(0.5, w * 0.6, k), rng.uniform(0.5, h * 0.6, k)])
        out.append(np.column_stack([xy, wh]))
    return out


def smooth_maps(rng, n, grid, size, noise):
    low = torch.from_numpy(rng.random((n, 1, grid, grid)))
    up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    return up + noise * rng.random(up.shape)


def map_sets():
    rng = np.random.default_rng(0)
    return {
        "noise": rng.random((12, 14, 15)),
        "smooth": smooth_maps(rng, 15, 4, 24, 0.05),
        "smooth-pure": smooth_maps(rng, 10, 3, 20, 0.0),
        "binary": (rng.random((12, 10, 12)) < 0.5) * rng.uniform(0.2, 1, (12, 1, 1)),
        "few-levels": rng.integers(0, 3, (12, 9, 11)) / 2.0,
    }


SETS = map_sets()


@pytest.mark.parametrize("name", list(SETS))
@pytest.mark.parametrize("n_thresholds", [100, 1000])
@pytest.mark.parametrize("multi,holes", MODES)
def test_fast_equals_reference(name, n_thresholds, multi, holes):
    maps = SETS[name]
    boxes = random_boxes(np.random.default_rng(len(name)), maps.shape[0], *maps.shape[1:])
    kw = {"n_thresholds": n_thresholds, "multi_contour": multi, "hole_boxes": holes}
    fast = best_iou_curves(maps, boxes, **kw)
    ref = best_iou_curves_reference(maps, boxes, **kw)
    np.testing.assert_array_equal(fast, ref)


def degenerate_maps():
    rng = np.random.default_rng(1)
    maps = np.zeros((7, 6, 7))
    maps[1] = 0.4  # constant
    maps[2, 3, 4] = 1.0  # one hot pixel
    maps[3] = rng.random((6, 7))
    maps[3, 0, 0] = np.nan  # NaN: zeros after normalisation
    maps[4, :, 2] = 1.0  # a vertical line (contourArea 0)
    maps[5, 0, :] = 1.0  # a line on the border
    maps[6] = rng.random((6, 7))
    return maps


@pytest.mark.parametrize("multi,holes", MODES)
def test_degenerate_maps(multi, holes):
    maps = degenerate_maps()
    boxes = [np.array([[0.0, 0.0, 2.0, 2.0], [3.0, 2.0, 2.0, 3.0]])] * maps.shape[0]
    for n in (100, 1000):
        kw = {"n_thresholds": n, "multi_contour": multi, "hole_boxes": holes}
        np.testing.assert_array_equal(best_iou_curves(maps, boxes, **kw), best_iou_curves_reference(maps, boxes, **kw))
    # no contour: the reference's fallback box [0, 0, 0, 0] (one pixel) against [0, 0, 2, 2] inclusive
    fallback = best_iou_curves(maps[:2], boxes[:2], n_thresholds=10, multi_contour=multi)
    np.testing.assert_allclose(fallback, 1 / 9)


@pytest.mark.parametrize("multi,holes", MODES)
def test_tiny_shapes(multi, holes):
    rng = np.random.default_rng(2)
    for shape in [(30, 1, 1), (30, 1, 9), (30, 9, 1), (60, 2, 3)]:
        maps = rng.random(shape)
        boxes = random_boxes(rng, shape[0], *shape[1:])
        kw = {"n_thresholds": 100, "multi_contour": multi, "hole_boxes": holes}
        np.testing.assert_array_equal(best_iou_curves(maps, boxes, **kw), best_iou_curves_reference(maps, boxes, **kw))


def test_hand_computed_block():
    maps = np.zeros((1, 10, 10))
    maps[0, 2:5, 3:7] = 1.0  # rows 2..4, cols 3..6
    # boundingRect x=3, y=2, w=4, h=3 -> wsolevaluation box [3, 2, 7, 5] (one pixel wider and taller)
    exact = [np.array([[3.0, 2.0, 4.0, 3.0]])]  # -> [3, 2, 7, 5] too
    np.testing.assert_array_equal(wsol_true_boxes(exact[0]), [[3, 2, 7, 5]])
    r = maxboxacc(maps, exact, [0])
    assert r.value == 1.0 and r.best_threshold[0] == 0.0
    # true box [3, 2, 6, 4] inclusive: IoU = 12 / 20
    tight = [np.array([[3.0, 2.0, 3.0, 2.0]])]
    np.testing.assert_allclose(best_iou_curves(maps, tight, n_thresholds=4), 12 / 20)


def test_hole_contours_give_boxes_in_v2():
    maps = np.zeros((1, 12, 12))
    maps[0, 1:11, 1:11] = 1.0
    maps[0, 3:9, 3:9] = 0.0  # a ring: outer box [1, 1, 11, 11], hole box [2, 2, 10, 10]
    hole_box = [np.array([[2.0, 2.0, 8.0, 8.0]])]
    with_holes = best_iou_curves(maps, hole_box, n_thresholds=5, multi_contour=True)
    regions = best_iou_curves(maps, hole_box, n_thresholds=5, multi_contour=True, hole_boxes=False)
    np.testing.assert_allclose(with_holes, 1.0)
    np.testing.assert_allclose(regions, 81 / 121)
    ref = maxboxacc_reference(maps, hole_box, [0], multi_contour=True)
    assert ref.max_accuracy.tolist() == [1.0, 1.0, 1.0]
    assert maxboxacc_v2(maps, hole_box, [0], hole_boxes=False).max_accuracy.tolist() == [1.0, 1.0, 0.0]


def test_largest_contour_ties_go_to_opencvs_first():
    maps = np.zeros((1, 10, 10))
    maps[0, 1:3, 1:3] = 1.0
    maps[0, 6:8, 5:7] = 1.0  # same area; OpenCV lists the later region first
    for target, expected in [((5.0, 6.0, 2.0, 2.0), 1.0), ((1.0, 1.0, 2.0, 2.0), 0.0)]:
        boxes = [np.array([target])]
        fast = best_iou_curves(maps, boxes, n_thresholds=3)
        np.testing.assert_array_equal(fast, best_iou_curves_reference(maps, boxes, n_thresholds=3))
        assert (fast == expected).all()


def test_results_and_aggregation_against_a_loop():
    rng = np.random.default_rng(3)
    n, k = 40, 3
    maps = smooth_maps(rng, n, 3, 16, 0.02)
    boxes = random_boxes(rng, n, 16, 16)
    classes = rng.integers(0, k, n)
    classes[classes == 2] = 0  # class 2 has no pairs
    fast = maxboxacc_v2(maps, boxes, classes, n_classes=k, n_thresholds=50)
    ref = maxboxacc_reference(maps, boxes, classes, multi_contour=True, n_classes=k, n_thresholds=50)
    for field in ("best_iou", "accuracy", "max_accuracy", "best_threshold", "class_max_accuracy", "class_value"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(ref, field))
    t = cam_thresholds(50)
    for d, delta in enumerate((0.3, 0.5, 0.7)):
        curve = np.array([np.mean([fast.best_iou[i, j] >= delta for i in range(n)]) for j in range(t.size)])
        np.testing.assert_allclose(fast.accuracy[d], curve)
        assert fast.best_threshold[d] == t[np.argmax(curve)]
        for c in range(2):
            sel = classes == c
            assert fast.class_max_accuracy[c, d] == (fast.best_iou[sel] >= delta).mean(axis=0).max()
    assert np.isnan(fast.class_value[2]) and np.isnan(fast.class_best_threshold[2]).all()
    assert fast.value == pytest.approx(fast.max_accuracy.mean())
    assert fast.mean_class_value == pytest.approx(np.nanmean(fast.class_value))
    assert fast.correct().shape == (n, 3, 50)
    v1 = maxboxacc(maps, boxes, classes, n_thresholds=50)
    assert v1.deltas == (0.5,) and v1.value == v1.max_accuracy[0]


def test_thresholds_match_wsolevaluation():
    np.testing.assert_array_equal(cam_thresholds(100), np.arange(0, 1, 0.01))
    np.testing.assert_array_equal(cam_thresholds(1000), np.arange(0, 1, 0.001))
    assert all(cam_thresholds(n).size == n for n in (1, 3, 7, 100, 333, 1000, 1001))
    levels = np.full((1, 2, 2), 255, np.uint8)
    np.testing.assert_array_equal(mba.threshold_levels(np.array([0.0, 0.3, 0.999]), levels), [[0, 76, 254]])


def normalize_scoremap_loop(cam):
    """inference.normalize_scoremap as written, then the uint8 quantisation of compute_bboxes_from_scoremaps."""
    cam = cam.astype(np.float64).copy()
    if np.isnan(cam).any() or cam.min() == cam.max():
        cam = np.zeros_like(cam)
    else:
        cam -= cam.min()
        cam /= cam.max()
    return (cam * 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantisation_bit_for_bit(dtype):
    from cxrbench.locmetrics import _tree

    maps = degenerate_maps().astype(dtype)
    maps = np.concatenate([maps, np.random.default_rng(4).normal(size=(50, 6, 7)).astype(dtype)])
    expected = np.stack([normalize_scoremap_loop(m) for m in maps])
    np.testing.assert_array_equal(wsol_levels(maps), expected)
    np.testing.assert_array_equal(mba._fast_levels(maps, True, _tree), expected)
    unit = np.random.default_rng(5).random((5, 4, 4)).astype(dtype)
    np.testing.assert_array_equal(
        mba._fast_levels(unit, False, _tree), (unit.astype(np.float64) * 255).astype(np.uint8)
    )


def test_bad_inputs():
    maps = np.zeros((1, 4, 4))
    with pytest.raises(ValueError, match="no true box"):
        best_iou_curves(maps, [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="thresholds"):
        maxboxacc(maps, [np.array([[0, 0, 1, 1.0]])], [0], thresholds=[1.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        best_iou_curves(maps + 2, [np.array([[0, 0, 1, 1.0]])], normalize=False)
    with pytest.raises(ValueError, match="n_thresholds"):
        cam_thresholds(0)
