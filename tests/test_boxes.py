import math

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from cxrbench.boxes import (
    LocalizationPair,
    ThresholdPolicy,
    build_pairs,
    heatmap_peaks,
    heatmap_thresholds,
    heatmap_to_boxes,
    heatmaps_to_boxes,
    iobb_matrix,
    iou_matrix,
    localization_metrics,
    tune_policy,
)

# --------------------------------------------------------------------------- overlaps


def test_iou_iobb_hand_values():
    pred = np.array([[0, 0, 10, 10], [2, 2, 2, 2], [50, 50, 5, 5]], dtype=float)
    true = np.array([[5, 5, 10, 10], [0, 0, 10, 10]], dtype=float)
    iou, iobb = iou_matrix(pred, true), iobb_matrix(pred, true)
    assert iou.shape == (3, 2)
    # inter 25, union 175; IoBB divides by the PREDICTED box's area (100)
    assert iou[0, 0] == pytest.approx(1 / 7) and iobb[0, 0] == 0.25
    assert iou[0, 1] == 1.0 and iobb[0, 1] == 1.0
    assert iou[1, 1] == pytest.approx(4 / 100) and iobb[1, 1] == 1.0  # small box inside
    assert iou[2].tolist() == [0.0, 0.0] and iobb[2].tolist() == [0.0, 0.0]
    assert iou_matrix(np.zeros((0, 4)), true).shape == (0, 2)


def test_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    pred = np.column_stack([rng.uniform(0, 50, (40, 2)), rng.uniform(1, 30, (40, 2))])
    true = np.column_stack([rng.uniform(0, 50, (7, 2)), rng.uniform(1, 30, (7, 2))])

    def xyxy(b):
        return torch.from_numpy(np.column_stack([b[:, :2], b[:, :2] + b[:, 2:]]))

    np.testing.assert_allclose(iou_matrix(pred, true), box_iou(xyxy(pred), xyxy(true)).numpy(), atol=1e-12)


# --------------------------------------------------------------------------- heatmaps -> boxes


def two_blob_map():
    m = np.zeros((20, 30))
    m[2:5, 3:8] = 0.9  # x 3, y 2, w 5, h 3
    m[10:18, 20:25] = 0.8  # x 20, y 10, w 5, h 8
    return m


def test_two_blobs_give_two_exact_boxes():
    boxes = heatmap_to_boxes(two_blob_map(), ThresholdPolicy())
    np.testing.assert_array_equal(boxes, [[3, 2, 5, 3], [20, 10, 5, 8]])
    assert boxes.dtype == np.float64


def test_largest_and_topk():
    m = two_blob_map()
    m[0:2, 27:30] = 0.7  # a third, smallest blob (6 px), top-right
    largest = heatmap_to_boxes(m, ThresholdPolicy(components="largest"))
    np.testing.assert_array_equal(largest, [[20, 10, 5, 8]])
    top2 = heatmap_to_boxes(m, ThresholdPolicy(components="topk", top_k=2))
    np.testing.assert_array_equal(top2, [[20, 10, 5, 8], [3, 2, 5, 3]])  # largest first
    assert len(heatmap_to_boxes(m, ThresholdPolicy(components="all"))) == 3


def test_diagonal_pixels_are_one_region():
    m = np.zeros((6, 6))
    m[1, 1] = m[2, 2] = m[3, 3] = 1.0
    np.testing.assert_array_equal(heatmap_to_boxes(m, ThresholdPolicy(policy="fraction")), [[1, 1, 3, 3]])


def test_seed_threshold_rule_hand_map():
    m = np.zeros((10, 10))
    m[0:2, 0:2] = 1.0
    m[5:8, 5:8] = 0.5
    mean = (4 * 1.0 + 9 * 0.5) / 100  # 0.085
    default = ThresholdPolicy()
    assert heatmap_thresholds(m[None], default)[0] == pytest.approx(mean * 1.7666)  # below the cap
    assert len(heatmap_to_boxes(m, default)) == 2
    capped = ThresholdPolicy(factor=10.0)  # 0.85 is capped at high = 0.7666
    assert heatmap_thresholds(m[None], capped)[0] == 0.7666
    np.testing.assert_array_equal(heatmap_to_boxes(m, capped), [[0, 0, 2, 2]])
    low_cap = ThresholdPolicy(factor=10.0, high=0.4)
    assert len(heatmap_to_boxes(m, low_cap)) == 2
    # the threshold itself is not foreground (strictly above)
    assert len(heatmap_to_boxes(m, ThresholdPolicy(factor=10.0, high=0.5))) == 1


def test_fraction_policy():
    m = np.zeros((10, 10))
    m[0:2, 0:2] = 1.0
    m[5:8, 5:8] = 0.5
    assert len(heatmap_to_boxes(m, ThresholdPolicy(policy="fraction", fraction=0.6))) == 1
    assert len(heatmap_to_boxes(m, ThresholdPolicy(policy="fraction", fraction=0.4))) == 2


def smooth_maps(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    low = rng.random((n, 6, 6)).astype(np.float32)
    maps = np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_CUBIC) for x in low])
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def test_otsu_matches_opencv():
    maps = smooth_maps(12)
    levels = np.clip(np.rint(maps * 255), 0, 255).astype(np.uint8)
    policy = ThresholdPolicy(policy="otsu")
    for m, lv, boxes in zip(maps, levels, heatmaps_to_boxes(maps, policy), strict=True):
        t, mask = cv2.threshold(lv, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert heatmap_thresholds(m[None], policy)[0] == t / 255
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        assert sorted(map(tuple, stats[1:, :4].tolist())) == sorted(map(tuple, boxes.astype(int).tolist()))


def test_batched_boxes_equal_per_map_opencv():
    maps = smooth_maps(30)
    maps[0, -1, :] = 1.0  # touches the bottom edge ...
    maps[1, 0, :] = 1.0  # ... and the next map's top edge: must stay separate regions
    policy = ThresholdPolicy(policy="fraction", fraction=0.6)
    batched = heatmaps_to_boxes(maps, policy)
    assert len(batched) == 30
    for m, boxes in zip(maps, batched, strict=True):
        mask = (m > 0.6 * m.max()).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        ref = stats[1:, :4]
        ref = ref[np.lexsort((ref[:, 0], ref[:, 1]))]  # by top-left corner, row first
        np.testing.assert_array_equal(boxes, ref)


def test_region_inside_a_hole_gets_its_own_box():
    m = np.zeros((12, 12))
    m[1:10, 1:10] = 1.0
    m[3:8, 3:8] = 0.0  # a hole ...
    m[5, 5] = 1.0  # ... with a region inside
    boxes = heatmap_to_boxes(m, ThresholdPolicy(policy="fraction"))
    np.testing.assert_array_equal(boxes, [[1, 1, 9, 9], [5, 5, 1, 1]])


@pytest.mark.parametrize("components", ["all", "topk"])
def test_noisy_masks_match_opencv_components(components):
    rng = np.random.default_rng(5)
    maps = rng.random((20, 40, 33))  # salt and pepper: many regions, holes, nesting, edges
    policy = ThresholdPolicy(policy="fraction", fraction=0.55, components=components, top_k=5)
    for m, boxes in zip(maps, heatmaps_to_boxes(maps, policy), strict=True):
        mask = (m > 0.55 * m.max()).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        ref = stats[1:]
        if components == "all":
            ref = ref[np.lexsort((ref[:, 3], ref[:, 2], ref[:, 0], ref[:, 1]))]
        else:
            ref = ref[np.lexsort((ref[:, 3], ref[:, 2], ref[:, 0], ref[:, 1], -ref[:, 4]))][:5]
        np.testing.assert_array_equal(boxes, ref[:, :4])


def test_empty_and_bad_maps():
    assert heatmap_to_boxes(np.zeros((8, 8)), ThresholdPolicy()).shape == (0, 4)
    assert heatmaps_to_boxes(np.zeros((0, 8, 8))) == []
    with pytest.raises(ValueError, match="N x H x W"):
        heatmaps_to_boxes(np.zeros((8, 8)))


def test_heatmap_peaks_are_pixel_centres():
    maps = np.zeros((2, 5, 7))
    maps[0, 3, 6] = 1.0
    maps[1, 0, 2] = 1.0
    np.testing.assert_array_equal(heatmap_peaks(maps), [[6.5, 3.5], [2.5, 0.5]])


def test_heatmap_peak_of_an_upsampled_coarse_map_is_its_plateau_centroid():
    import torch

    coarse = torch.zeros(1, 1, 3, 3)
    coarse[0, 0, 0, 0] = 1.0  # the top-left cell of a 3 x 3 CAM
    fine = torch.nn.functional.interpolate(coarse, size=(96, 96), mode="bilinear", align_corners=False)
    (x, y), = heatmap_peaks(fine[0].numpy())
    # the plateau spans pixels 0..15 (clamped interpolation): its centroid, not the corner pixel
    assert x == y == pytest.approx(8.0)
    assert heatmap_peaks(np.zeros((1, 4, 6))).tolist() == [[3.0, 2.0]]  # flat map: its centre


@pytest.mark.parametrize(
    "kwargs",
    [
        {"policy": "mean"},
        {"components": "some"},
        {"factor": 0.0},
        {"factor": math.inf},
        {"high": 0.0},
        {"fraction": 1.5},
        {"top_k": 0},
    ],
)
def test_policy_validate(kwargs):
    with pytest.raises(ValueError):
        ThresholdPolicy(**kwargs).validate()


# --------------------------------------------------------------------------- metrics


BOX = np.array([[0, 0, 10, 10]], dtype=float)


def hand_pairs():
    return [
        # class 0: one perfect box and one far away; peak inside
        LocalizationPair(0, BOX, np.array([[0, 0, 10, 10], [20, 20, 5, 5]], float), (5.0, 5.0)),
        # class 0: IoU 1/7, IoBB 0.25; peak 2 px right of the box
        LocalizationPair(0, BOX, np.array([[5, 5, 10, 10]], float), (12.0, 5.0)),
        # class 1: nothing predicted; peak on the box corner (edges count)
        LocalizationPair(1, BOX, np.zeros((0, 4)), (0.0, 0.0)),
    ]


def test_localization_metrics_hand_pairs():
    out = localization_metrics(hand_pairs(), ["A", "B", "C"])
    assert out["n_pairs"] == 3.0
    assert out["iou_mean"] == pytest.approx((1 + 1 / 7 + 0) / 3)
    assert out["iobb_mean"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert out["cum_iou_mean"] == pytest.approx((1 + 0 + 1 / 7 + 0) / 3)
    assert out["acc_iou@0.1"] == pytest.approx(2 / 3)  # 1/7 >= 0.1
    assert out["acc_iou@0.2"] == pytest.approx(1 / 3)
    assert out["afp_iou@0.1"] == pytest.approx(1 / 3)  # the far box of pair 1
    assert out["afp_iou@0.5"] == pytest.approx(2 / 3)  # ... and pair 2's box
    assert out["acc_iobb@0.25"] == pytest.approx(1 / 3)  # IoBB 0.25 does not count at T = 0.25 (strict, Wang)
    assert out["acc_iobb@0.1"] == pytest.approx(2 / 3)
    assert out["acc_iobb@0.5"] == pytest.approx(1 / 3)
    assert out["afp_iobb@0.5"] == pytest.approx(2 / 3)
    assert out["iou>0.1"] == pytest.approx(2 / 3) and out["iou>0.2"] == pytest.approx(1 / 3)
    assert out["hit_rate"] == pytest.approx(2 / 3)
    assert out["iou/A"] == pytest.approx((1 + 1 / 7) / 2) and out["iou/B"] == 0.0
    assert out["acc_iou@0.3/A"] == 0.5 and out["hit_rate/B"] == 1.0
    assert out["n_pairs/A"] == 2.0 and out["n_pairs/C"] == 0.0
    assert math.isnan(out["iou/C"]) and math.isnan(out["hit_rate/C"])
    assert "heatmap_value_in_box_mean" not in out
    assert all(type(v) is float for v in out.values())

    tolerant = localization_metrics(hand_pairs(), ["A", "B", "C"], hit_tolerance=2.0)
    assert tolerant["hit_rate"] == 1.0
    assert localization_metrics(hand_pairs(), ["A", "B", "C"], hit_tolerance=1.9)["hit_rate"] < 1.0


def test_localization_several_true_boxes_and_extra_value():
    true = np.array([[0, 0, 10, 10], [30, 30, 4, 4]], float)
    pair = LocalizationPair(2, true, np.array([[30, 30, 4, 4]], float), (31.0, 31.0), heatmap_value_in_box=0.4)
    out = localization_metrics([pair], ["A", "B", "C"])
    assert out["iou_mean"] == 1.0 and out["hit_rate"] == 1.0 and out["afp_iou@0.7"] == 0.0
    assert out["heatmap_value_in_box_mean"] == 0.4


def test_localization_matches_per_pair_reference():
    rng = np.random.default_rng(3)
    pairs = []
    for i in range(60):
        true = np.column_stack([rng.uniform(0, 40, (1 + i % 2, 2)), rng.uniform(2, 20, (1 + i % 2, 2))])
        pred = np.column_stack([rng.uniform(0, 40, (i % 4, 2)), rng.uniform(2, 20, (i % 4, 2))])
        pairs.append(LocalizationPair(i % 3, true, pred, tuple(rng.uniform(0, 50, 2))))
    out = localization_metrics(pairs, ["A", "B", "C"], iou_thresholds=(0.1, 0.3), hit_tolerance=1.0)
    best, iobb, cum, fp, hits = [], [], [], [], []
    for p in pairs:
        iou = iou_matrix(p.pred_boxes, p.true_boxes)
        ib = iobb_matrix(p.pred_boxes, p.true_boxes)
        best.append(iou.max() if iou.size else 0.0)
        iobb.append(ib.max() if ib.size else 0.0)
        cum.append(iou.max(axis=1).sum() if iou.size else 0.0)
        fp.append((iou.max(axis=1) <= 0.3).sum() if iou.size else 0)
        x, y = p.peak_xy
        t = p.true_boxes
        hits.append(
            bool(
                np.any(
                    (x >= t[:, 0] - 1)
                    & (x <= t[:, 0] + t[:, 2] + 1)
                    & (y >= t[:, 1] - 1)
                    & (y <= t[:, 1] + t[:, 3] + 1)
                )
            )
        )
    assert out["iou_mean"] == pytest.approx(np.mean(best))
    assert out["iobb_mean"] == pytest.approx(np.mean(iobb))
    assert out["cum_iou_mean"] == pytest.approx(np.mean(cum))
    assert out["afp_iou@0.3"] == pytest.approx(np.mean(fp))
    assert out["acc_iou@0.3"] == pytest.approx(np.mean(np.array(best) > 0.3))
    assert out["hit_rate"] == pytest.approx(np.mean(hits))
    assert out["iou/B"] == pytest.approx(np.mean(best[1::3]))


def test_localization_empty_and_bad_input():
    out = localization_metrics([], ["A"])
    assert out["n_pairs"] == 0.0 and math.isnan(out["iou_mean"]) and math.isnan(out["iou/A"])
    with pytest.raises(ValueError, match="out of range"):
        localization_metrics(hand_pairs(), ["A"])
    with pytest.raises(ValueError, match="at least one true box"):
        LocalizationPair(0, np.zeros((0, 4)), BOX, (0.0, 0.0))


# --------------------------------------------------------------------------- tuning


def halo_maps():
    """A 10 x 10 core at 1.0 (the true box) in a 20 x 20 halo at 0.3; mean ~0.046."""
    m = np.zeros((2, 64, 64))
    m[:, 10:30, 10:30] = 0.3
    m[:, 15:25, 15:25] = 1.0
    return m, [np.array([[15, 15, 10, 10]], float)] * 2, [0, 1]


def test_tune_policy_picks_the_better_factor():
    maps, true, cls = halo_maps()
    # factor 2 -> threshold ~0.09: the halo box (IoU 0.25); factor 10 -> ~0.46: the core (IoU 1)
    best, table = tune_policy(maps, true, cls, ThresholdPolicy(), [2.0, 10.0])
    assert best == ThresholdPolicy(factor=10.0)
    assert [row["factor"] for row in table] == [2.0, 10.0]
    assert table[0]["iou_mean"] == pytest.approx(0.25) and table[1]["iou_mean"] == 1.0
    best, _ = tune_policy(maps, true, cls, ThresholdPolicy(), [10.0, 2.0], metric="iou_mean", maximize=False)
    assert best.factor == 2.0


def test_tune_policy_default_grids():
    maps, true, cls = halo_maps()
    best, table = tune_policy(list(maps), true, cls, ThresholdPolicy())
    assert [row["factor"] for row in table] == [1.0, 1.25, 1.5, 1.7666, 2.0, 2.5, 3.0]
    assert table[-1]["iou_mean"] == 0.25  # every factor here still keeps the halo
    assert best.factor == 1.0  # ties go to the first candidate
    best, table = tune_policy(maps, true, cls, ThresholdPolicy(policy="otsu"))
    assert [row["components"] for row in table] == ["all", "largest"]


def test_tune_policy_grid_mapping_and_errors():
    maps, true, cls = halo_maps()
    base = ThresholdPolicy(policy="fraction")
    best, table = tune_policy(maps, true, cls, base, {"fraction": [0.2, 0.5], "components": ["all", "largest"]})
    assert len(table) == 4 and best.fraction == 0.5
    with pytest.raises(ValueError, match="no threshold parameter"):
        tune_policy(maps, true, cls, ThresholdPolicy(policy="otsu"), [0.5])
    with pytest.raises(ValueError, match="unknown metric"):
        tune_policy(maps, true, cls, ThresholdPolicy(), [2.0], metric="iuo_mean")
    with pytest.raises(ValueError, match="factor"):
        tune_policy(maps, true, cls, ThresholdPolicy(), [-1.0])
    with pytest.raises(ValueError, match="unknown ThresholdPolicy field"):
        tune_policy(maps, true, cls, ThresholdPolicy(), {"factr": [1.0]})


def test_build_pairs():
    maps, true, cls = halo_maps()
    pairs = build_pairs(maps, true, cls, ThresholdPolicy(factor=10.0))
    assert [p.class_index for p in pairs] == [0, 1]
    np.testing.assert_array_equal(pairs[0].pred_boxes, [[15, 15, 10, 10]])
    assert pairs[0].peak_xy == (20.0, 20.0)  # the centre of the 10 x 10 plateau at the maximum
    with pytest.raises(ValueError, match="heatmaps"):
        build_pairs(maps, true[:1], cls)
