"""Mask metrics (cxrbench.locmetrics.maskmetrics) against a literal per-pair implementation of cheXlocalize.

The reference below is written the way the cheXlocalize scripts define the numbers: torch's
``F.interpolate`` to the mask's size, min-max normalisation in float32, ``np.uint8(255 * m)``
and ``cv2.threshold(..., THRESH_OTSU)`` (or ``m > fraction``), full boolean masks decoded with
pycocotools, ``np.logical_and`` / ``np.logical_or`` sums, ``np.argmax`` for the peak. It adds
only what the module documents as its own definitions (invalid maps, the seed rule, hit
tolerance, gating by ``prob > cut-off``). The module must agree with it exactly: its resize
reproduces torch's CPU kernel bit for bit, so no pixel is allowed to differ.
"""

from __future__ import annotations

import json
import math
import pickle
import platform
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask
from sklearn.metrics import average_precision_score

from cxrbench.boxes import ThresholdPolicy
from cxrbench.locmetrics import maskmetrics as mm
from cxrbench.masks import MaskDecodeError, MaskRef, encode_coco_rle

REAL_MASKS = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chexlocalize" / "CheXlocalize"
              / "gt_segmentations_val.json")
X86 = platform.machine().lower() in ("x86_64", "amd64")

OTSU = ThresholdPolicy(policy="otsu")
FRACTIONS = [ThresholdPolicy(policy="fraction", fraction=f) for f in mm.FRACTION_GRID]
SEED = ThresholdPolicy(policy="seed", factor=1.7666, high=0.7666)
SEED_HIGH = ThresholdPolicy(policy="seed", factor=1.2, high=2.0)  # may predict nothing: needs the mean
EMPTY_FRACTION = ThresholdPolicy(policy="fraction", fraction=1.0)
COLUMNS = [OTSU, *FRACTIONS, SEED, SEED_HIGH, EMPTY_FRACTION]


# --------------------------------------------------------------------------- the literal reference


def torch_resize(map2d: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(map2d, dtype=np.float32))[None, None]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()


def reference_masks(map2d: np.ndarray, hw: tuple[int, int], columns) -> tuple[list[np.ndarray], np.ndarray, bool]:
    """Predicted masks of every column, the resized map, and whether the map is valid."""
    v = torch_resize(map2d, hw)
    valid = bool(np.isfinite(map2d).all() and map2d.max() > map2d.min() and v.max() > v.min())
    if not valid:
        return [np.zeros(hw, bool) for _ in columns], v, False
    shifted = torch.from_numpy(v) - torch.from_numpy(v).min()
    m = shifted.div(shifted.max()).numpy()
    mean_m = (np.mean(v, dtype=np.float64) - float(v.min())) / (float(v.max()) - float(v.min()))
    preds = []
    for col in columns:
        if col.policy == "otsu":
            q = np.uint8(255 * m)
            binary = cv2.threshold(q, 0, int(q.max()), cv2.THRESH_OTSU)[1]
            preds.append(binary > 0)
        elif col.policy == "fraction":
            preds.append(m > np.float64(col.fraction))
        else:
            preds.append(m > np.float64(min(mean_m * col.factor, col.high)))
    return preds, v, True


def reference_iou(pred: np.ndarray, gt: np.ndarray, true_pos_only: bool) -> float:
    n_pred, n_gt = int(np.sum(pred)), int(np.sum(gt))
    both = int(np.sum(np.logical_and(pred, gt)))
    either = int(np.sum(np.logical_or(pred, gt)))
    if true_pos_only and (n_pred == 0 or n_gt == 0):
        return math.nan
    if either == 0:
        return math.nan
    return both / either


def reference_distance(v: np.ndarray, gt: np.ndarray, valid: bool) -> float:
    """Euclidean distance from the first argmax of the resized map to the nearest mask pixel."""
    if not valid or not gt.any():
        return math.inf
    pr, pc = np.unravel_index(np.argmax(v), v.shape)
    rows, cols = np.nonzero(gt)
    return float(np.sqrt(np.min((rows - pr) ** 2 + (cols - pc) ** 2)))


class Pair:
    """One (image, class) pair and the reference's numbers for every column."""

    def __init__(self, row, klass, map2d, gt, prob, columns):
        self.row, self.klass, self.map2d, self.gt, self.prob = row, klass, map2d, gt, prob
        self.preds, self.v, self.valid = reference_masks(map2d, gt.shape, columns)
        self.distance = reference_distance(self.v, gt, self.valid)
        self.q = np.zeros(gt.shape, np.uint8)
        if self.valid:
            shifted = torch.from_numpy(self.v) - torch.from_numpy(self.v).min()
            self.q = np.uint8(255 * shifted.div(shifted.max()).numpy())

    def iou(self, column: int, true_pos_only: bool, cutoff: float | None = None) -> float:
        pred = self.preds[column]
        if cutoff is not None and not self.prob > cutoff:
            pred = np.zeros_like(pred)
        return reference_iou(pred, self.gt, true_pos_only)


# --------------------------------------------------------------------------- synthetic data


def smooth_map(rng: np.random.Generator, size: int, noise: float = 0.02) -> np.ndarray:
    """A random 7 x 7 grid upsampled bilinearly to ``size`` plus a little noise (CAM-like)."""
    grid = rng.random((7, 7)).astype(np.float32)
    up = torch_resize(grid, (size, size)) if size != 7 else grid
    return (up + noise * rng.random(up.shape, dtype=np.float32)).astype(np.float32)


def random_mask(rng: np.random.Generator, hw: tuple[int, int], kind: str) -> np.ndarray:
    h, w = hw
    img = np.zeros(hw, np.uint8)
    if kind == "ellipse":
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, w // 3)), int(rng.integers(3, h // 3)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == "polygon":
        pts = np.stack([rng.integers(0, w, 6), rng.integers(0, h, 6)], axis=1).astype(np.int32)
        cv2.fillPoly(img, [pts], 1)
    elif kind == "ring":  # a hole, which Otsu masks may also have
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, 1, -1)
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 6, 0, -1)
    elif kind == "pixel":
        img[int(rng.integers(0, h)), int(rng.integers(0, w))] = 1
    elif kind == "border":
        img[:, : max(1, w // 10)] = 1
        img[-1, :] = 1
    return img.astype(bool)


KINDS = ["ellipse", "polygon", "ring", "pixel", "border", "empty", "empty", "empty"]


def make_pairs(rng, n_images, n_classes, map_size, hw, columns, *, bad_maps=False):
    pairs = []
    for row in range(n_images):
        for klass in range(n_classes):
            kind = KINDS[int(rng.integers(0, len(KINDS)))]
            map2d = smooth_map(rng, map_size)
            if bad_maps and (row * n_classes + klass) % 7 == 3:
                map2d = np.full_like(map2d, 0.25)
            if bad_maps and (row * n_classes + klass) % 11 == 5:
                map2d[0, 0] = np.nan
            if (row * n_classes + klass) % 5 == 1:  # plateaus: ties at the maximum and at the minimum
                map2d = np.clip(map2d, np.quantile(map2d, 0.3), np.quantile(map2d, 0.8)).astype(np.float32)
            prob = float(np.round(rng.random(), 2))
            pairs.append(Pair(row, klass, map2d, random_mask(rng, hw, kind), prob, columns))
    return pairs


def count(pairs, n_classes, columns, *, as_rle=True, **kwargs) -> mm.MaskCounts:
    counter = mm.MaskCounter(n_classes, columns, **kwargs)
    for p in pairs:
        mask = MaskRef.from_coco_rle(str(p.row), str(p.klass), encode_coco_rle(p.gt)) if as_rle else p.gt
        counter.add(p.row, p.klass, p.map2d, mask, p.prob)
    return counter.result()


@pytest.fixture(scope="module")
def upsampled():
    rng = np.random.default_rng(0)
    pairs = make_pairs(rng, 6, 3, 7, (300, 400), COLUMNS, bad_maps=True)
    pairs += make_pairs(rng, 6, 3, 56, (301, 399), COLUMNS)
    return pairs, count(pairs, 3, COLUMNS)


@pytest.fixture(scope="module")
def downsampled():
    rng = np.random.default_rng(1)
    pairs = make_pairs(rng, 5, 2, 224, (100, 90), COLUMNS)
    return pairs, count(pairs, 2, COLUMNS, as_rle=False)


# --------------------------------------------------------------------------- resize and Otsu


SIZES = [((7, 7), (300, 400)), ((56, 56), (301, 399)), ((224, 224), (2320, 2828)), ((224, 224), (100, 90)),
         ((224, 224), (223, 225)), ((3, 300), (17, 300)), ((7, 7), (40, 89)),
         # height + width <= 128: torch's channels-last kernel
         ((7, 7), (40, 88)), ((7, 7), (64, 64)), ((13, 5), (13, 5)), ((1, 4), (5, 9)), ((3, 300), (17, 31)),
         ((224, 224), (1, 20))]


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_resize_matches_torch(src, dst):
    x = np.random.default_rng(2).standard_normal(src).astype(np.float32)
    ours, theirs = mm.resize_bilinear(x, *dst), torch_resize(x, dst)
    cv2_diff = float(np.abs(cv2.resize(x, dst[::-1], interpolation=cv2.INTER_LINEAR) - theirs).max())
    if X86:  # torch's x86-64 kernels fuse the multiply-adds as the module does
        assert np.array_equal(ours, theirs), f"max |ours - torch| = {np.abs(ours - theirs).max()}"
    else:
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * float(np.abs(x).max()))
    # cv2's INTER_LINEAR is not torch's: the reason the module does not use it
    print(f"{src} -> {dst}: max |cv2 - torch| = {cv2_diff:.3g}")


def test_resize_normalised_is_the_reference_map():
    x = smooth_map(np.random.default_rng(3), 56)
    m, valid = mm.resize_normalised(x, 301, 399)
    v = torch_resize(x, (301, 399))
    assert valid and np.array_equal(m, (v - v.min()) / (v.max() - v.min()))
    flat, ok = mm.resize_normalised(np.ones((4, 4)), 8, 8)
    assert not ok and not flat.any()


def otsu_images(rng):
    """8-bit images of many shapes of histogram, including OpenCV's corner cases."""
    yield rng.integers(0, 256, (64, 80), dtype=np.uint8)
    yield np.where(rng.random((50, 50)) < 0.3, 255, 0).astype(np.uint8)  # two levels
    yield np.where(rng.random((50, 50)) < 0.5, 7, 200).astype(np.uint8)
    sparse = np.zeros((120, 100), np.uint8)  # almost all zeros
    sparse.flat[rng.choice(sparse.size, 40, replace=False)] = rng.integers(1, 256, 40)
    yield sparse
    yield np.full((10, 10), 77, np.uint8)  # one level
    for _ in range(150):
        n = int(rng.integers(2, 40))
        levels = rng.choice(256, n, replace=False)
        weights = rng.dirichlet(np.full(n, float(rng.choice([0.05, 0.5, 5.0]))))
        yield rng.choice(levels, size=(int(rng.integers(5, 90)), int(rng.integers(5, 90))), p=weights).astype(np.uint8)
    smooth = smooth_map(rng, 224)
    yield np.uint8(255 * (smooth - smooth.min()) / (smooth.max() - smooth.min()))
    # more pixels than 1 / FLT_EPSILON: one pixel is a share OpenCV skips (its mu1 quirk)
    big = np.full(3000 * 3000, 128, np.uint8)
    big[:1], big[1:5000], big[5000:2_000_000] = 0, 3, 250
    yield big.reshape(3000, 3000)


def test_otsu_threshold_equals_opencv():
    for q in otsu_images(np.random.default_rng(4)):
        expected = int(cv2.threshold(q, 0, 255, cv2.THRESH_OTSU)[0])
        assert mm.otsu_threshold(np.bincount(q.ravel(), minlength=256)) == expected


# --------------------------------------------------------------------------- per pair against the reference


def check_pairs(pairs, counts, columns):
    assert counts.rows.tolist() == [p.row for p in pairs]
    assert counts.classes.tolist() == [p.klass for p in pairs]
    for i, p in enumerate(pairs):
        assert counts.gt_area[i] == p.gt.sum()
        assert counts.valid[i] == p.valid, i
        for j in range(len(columns)):
            pred = p.preds[j]
            assert counts.pred_any[i, j] == pred.any(), (i, j)
            if p.gt.any():
                assert counts.pred_area[i, j] == pred.sum(), (i, j)
                assert counts.inter[i, j] == (pred & p.gt).sum(), (i, j)
            else:
                assert counts.pred_area[i, j] in (-1, pred.sum())
        if math.isinf(p.distance):
            assert counts.peak_distance[i] == math.inf, i
        else:
            assert counts.peak_distance[i] == pytest.approx(p.distance, rel=1e-12), i


def test_counts_match_the_reference_upsampled(upsampled):
    pairs, counts = upsampled
    assert not counts.valid.all() and (counts.gt_area == 0).any()  # both kinds are exercised
    check_pairs(pairs, counts, COLUMNS)


def test_counts_match_the_reference_downsampled(downsampled):
    pairs, counts = downsampled
    check_pairs(pairs, counts, COLUMNS)


@pytest.mark.parametrize("true_pos_only", [True, False])
@pytest.mark.parametrize("column", [0, 4, len(COLUMNS) - 3, len(COLUMNS) - 2, len(COLUMNS) - 1])
def test_ious_and_miou_match(upsampled, true_pos_only, column):
    pairs, counts = upsampled
    ious = mm.pair_ious(counts, column, true_pos_only=true_pos_only)
    expected = np.array([p.iou(column, true_pos_only) for p in pairs])
    np.testing.assert_array_equal(np.isnan(ious), np.isnan(expected))
    np.testing.assert_allclose(ious[~np.isnan(ious)], expected[~np.isnan(expected)], rtol=0, atol=1e-12)
    overall, per_class = mm.mean_iou(ious, counts.classes, 3)
    classes = np.array([p.klass for p in pairs])
    want = np.array([np.nanmean(expected[classes == k]) if np.isfinite(expected[classes == k]).any() else np.nan
                     for k in range(3)])
    np.testing.assert_allclose(per_class, want, rtol=0, atol=1e-12)
    if np.isfinite(want).any():  # the mean over the classes that have a defined pair
        assert overall == pytest.approx(np.nanmean(want))
    else:
        assert np.isnan(overall)


def test_per_class_columns_and_gating(upsampled):
    pairs, counts = upsampled
    chosen = np.array([1, 3, 0])
    cutoffs = np.array([0.3, 0.0, 0.6])
    ious = mm.pair_ious(counts, chosen, true_pos_only=False, cutoffs=cutoffs)
    expected = np.array([p.iou(chosen[p.klass], False, cutoffs[p.klass]) for p in pairs])
    np.testing.assert_allclose(ious, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tolerance", [0.0, 1.5, 15.0])
def test_hit_rates_match(upsampled, tolerance):
    pairs, counts = upsampled
    overall, per_class, hits = mm.hit_rates(counts, tolerance)
    positive = np.array([p.gt.any() for p in pairs])
    expected = np.array([p.distance <= tolerance for p in pairs]) & positive
    np.testing.assert_array_equal(hits, expected)
    if tolerance == 0:  # cheXlocalize's own rule: the mask at the first argmax of the resized map
        for p, h in zip(pairs, hits, strict=True):
            if p.gt.any() and p.valid:
                assert h == p.gt[np.unravel_index(np.argmax(p.v), p.v.shape)]
    classes = np.array([p.klass for p in pairs])
    want = np.array([expected[(classes == k) & positive].mean() for k in range(3)])
    np.testing.assert_allclose(per_class, want)
    assert overall == pytest.approx(want.mean())


def test_pxap_matches_sklearn(upsampled):
    pairs, counts = upsampled
    mean, per_class = mm.mask_pxap(counts)
    want = []
    for k in range(3):
        chosen = [p for p in pairs if p.klass == k and p.gt.any()]
        labels = np.concatenate([p.gt.ravel() for p in chosen])
        scores = np.concatenate([p.q.ravel() for p in chosen]).astype(np.float64)
        want.append(average_precision_score(labels, scores))
    np.testing.assert_allclose(per_class, want, rtol=1e-12)
    assert mean == pytest.approx(np.mean(want))


def test_tuning_matches_the_reference_scripts(upsampled):
    pairs, counts = upsampled
    fraction_columns = list(range(1, 1 + len(FRACTIONS)))
    classes = np.array([p.klass for p in pairs])
    # tune_heatmap_threshold.py: per class, the first fraction with the largest nanmean IoU (true positives)
    picked = mm.tune_fractions(counts, fraction_columns, default=0)
    for k in range(3):
        scores = [np.nanmean([p.iou(c, True) for p in pairs if p.klass == k]) for c in fraction_columns]
        assert picked[k] == fraction_columns[scores.index(max(scores))]
    # tune_probability_threshold.py: cut-offs on every pair, mIoU rounded to 3 decimals, first max
    cutoffs = mm.tune_cutoffs(counts, picked)
    for k in range(3):
        scores = [round(np.nanmean([p.iou(picked[k], False, c) for p in pairs if p.klass == k]), 3)
                  for c in mm.CUTOFF_GRID]
        assert cutoffs[k] == mm.CUTOFF_GRID[scores.index(max(scores))]
    assert classes.size == counts.rows.size


# --------------------------------------------------------------------------- hand-computed cases


def ramp() -> np.ndarray:
    """4 x 4 map with values 0 .. 15 row by row (its own size: the resize is the identity)."""
    return np.arange(16, dtype=np.float32).reshape(4, 4)


def hand_counts(mask: np.ndarray, columns, map2d=None, prob=None) -> mm.MaskCounts:
    counter = mm.MaskCounter(1, columns, max_distance=10)
    counter.add(0, 0, ramp() if map2d is None else map2d, mask, prob)
    return counter.result()


def test_hand_iou():
    left = np.zeros((4, 4), bool)
    left[:, :2] = True  # pixels 0, 1, 4, 5, 8, 9, 12, 13
    counts = hand_counts(left, [ThresholdPolicy(policy="fraction", fraction=0.5)])
    # m = k / 15 > 0.5 for k >= 8: 8 pixels, of which 8, 9, 12, 13 are in the mask: IoU 4 / 12
    assert counts.pred_area[0, 0] == 8 and counts.inter[0, 0] == 4 and counts.gt_area[0] == 8
    assert mm.pair_ious(counts)[0] == pytest.approx(1 / 3)


def test_hand_otsu_on_two_levels():
    two = np.zeros((4, 4), np.float32)
    two[1:3, 1:3] = 1.0  # q in {0, 255}: Otsu's level is 0, so the 4 hot pixels are foreground
    counts = hand_counts(two > 0, [OTSU], map2d=two)
    assert counts.pred_area[0, 0] == 4 and mm.pair_ious(counts)[0] == 1.0


@pytest.mark.parametrize(("cells", "distance"), [([(3, 3)], 0.0), ([(3, 2)], 1.0), ([(2, 2)], math.sqrt(2)),
                                                 ([(0, 0), (3, 1)], 2.0)])
def test_hand_hit_with_tolerance(cells, distance):
    mask = np.zeros((4, 4), bool)
    for r, c in cells:
        mask[r, c] = True
    counts = hand_counts(mask, [OTSU])  # the peak of the ramp is pixel (3, 3)
    assert counts.peak_distance[0] == pytest.approx(distance)
    for tolerance, hit in ((0.0, distance == 0), (1.5, distance <= 1.5)):
        assert mm.hit_rates(counts, tolerance)[2][0] == hit


def test_hand_gating():
    mask = np.zeros((4, 4), bool)
    mask[2:, 2:] = True
    kept = hand_counts(mask, [OTSU], prob=0.6)
    dropped = hand_counts(mask, [OTSU], prob=0.5)
    cut = np.array([0.5])
    assert mm.pair_ious(kept, cutoffs=cut)[0] > 0
    assert mm.pair_ious(dropped, cutoffs=cut, true_pos_only=False)[0] == 0.0  # prob 0.5 is not above 0.5
    assert np.isnan(mm.pair_ious(dropped, cutoffs=cut, true_pos_only=True)[0])
    empty = hand_counts(np.zeros((4, 4), bool), [OTSU], prob=0.5)
    assert mm.pair_ious(empty, true_pos_only=False)[0] == 0.0  # a prediction without a finding
    assert np.isnan(mm.pair_ious(empty, true_pos_only=False, cutoffs=cut)[0])  # gated: nothing on either side


def synthetic_counts(gt_area, pred_area, inter, classes, probs, n_classes) -> mm.MaskCounts:
    """MaskCounts filled by hand, to test the tuning rules on chosen IoUs."""
    pred = np.asarray(pred_area, np.int64)
    n, b = pred.shape
    columns = tuple(mm.Binarisation("fraction", 0.5, 1.0, 1.0) for _ in range(b))
    return mm.MaskCounts(columns=columns, n_classes=n_classes, max_distance=math.inf, rows=np.arange(n),
                         classes=np.asarray(classes, np.int64),
                         gt_area=np.asarray(gt_area, np.int64), pred_area=pred, inter=np.asarray(inter, np.int64),
                         pred_any=pred > 0, peak_distance=np.zeros(n), valid=np.ones(n, bool),
                         probs=np.asarray(probs, np.float64), hist_all=np.zeros((n_classes, 256), np.int64),
                         hist_in=np.zeros((n_classes, 256), np.int64))


def test_tuning_ties_go_to_the_first_candidate():
    # class 0: columns 1 and 2 tie (IoU 5 / 15); class 1 has no defined pair and keeps the default
    counts = synthetic_counts(gt_area=[10, 0], pred_area=[[10, 10, 10], [0, 0, 0]], inter=[[2, 5, 5], [0, 0, 0]],
                              classes=[0, 1], probs=[0.5, 0.5], n_classes=2)
    assert mm.tune_fractions(counts, [1, 2], default=0).tolist() == [1, 0]
    assert mm.tune_fractions(counts, [2, 1], default=0).tolist() == [2, 0]


def test_cutoff_tuning_rounds_like_the_reference():
    # a positive pair with IoU 0.0004 (prob 0.95) and a prediction on an image without the finding
    # (IoU 0, prob 0.35): mIoU 0.0002 up to the cut-off 0.3, then 0.0004 once the second is gated
    counts = synthetic_counts(gt_area=[10000, 0], pred_area=[[10000], [100]], inter=[[8], [0]], classes=[0, 0],
                              probs=[0.95, 0.35], n_classes=1)
    assert mm.pair_ious(counts, true_pos_only=False).tolist() == pytest.approx([8 / 19992, 0.0])
    assert mm.tune_cutoffs(counts, 0)[0] == 0.0  # rounded to 3 decimals both are 0.000: the first wins
    assert mm.tune_cutoffs(counts, 0, decimals=None)[0] == 0.4  # unrounded, gating the false positive wins


# --------------------------------------------------------------------------- invalid maps, encodings, memory


def test_invalid_maps_predict_nothing_and_miss():
    mask = np.zeros((30, 40), bool)
    mask[5:20, 5:30] = True
    counter = mm.MaskCounter(1, [OTSU, FRACTIONS[0], SEED])
    for bad in (np.full((7, 7), 0.3, np.float32), np.where(np.eye(7) > 0, np.nan, 1.0)):
        counter.add(0, 0, bad, mask)
        counter.add(1, 0, bad, np.zeros_like(mask))
    counts = counter.result()
    assert not counts.valid.any() and not counts.pred_any.any()
    assert np.isinf(counts.peak_distance).all()
    assert mm.pair_ious(counts, true_pos_only=False)[0::2].tolist() == [0.0, 0.0]
    assert np.isnan(mm.pair_ious(counts, true_pos_only=False)[1::2]).all()
    # PxAP sees them as all-zero maps: every pixel at level 0
    assert counts.hist_all[0, 0] == 2 * mask.size and counts.hist_in[0, 0] == 2 * mask.sum()


def test_encodings_and_threads_agree():
    rng = np.random.default_rng(5)
    gt = random_mask(rng, (1200, 1100), "ring")
    map2d = smooth_map(rng, 56)
    polygon = MaskRef.from_polygons("a", "b", [[[200, 200], [900, 250], [600, 1000]]], 1200, 1100)
    results = []
    for threads in (1, 2):
        counter = mm.MaskCounter(2, COLUMNS, threads=threads)
        counter.add(0, 0, map2d, gt)
        counter.add(0, 1, map2d, MaskRef.from_coco_rle("a", "b", encode_coco_rle(gt)))
        counter.add(1, 0, map2d, polygon)
        counter.add(1, 1, map2d, polygon.decode())
        results.append(counter.result())
    one, two = results
    for name in ("gt_area", "pred_area", "inter", "pred_any", "peak_distance", "hist_all", "hist_in"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    for name in ("gt_area", "pred_area", "inter", "pred_any", "peak_distance"):  # array == RLE, polygon == decoded
        np.testing.assert_array_equal(getattr(one, name)[[0, 2]], getattr(one, name)[[1, 3]], err_msg=name)
    np.testing.assert_array_equal(one.hist_all[0], one.hist_all[1])
    assert one.gt_area[0] == gt.sum() and one.inter[0, 0] > 0


def test_bad_input_is_refused():
    good = np.zeros((8, 8), bool)
    counter = mm.MaskCounter(2, [OTSU])
    with pytest.raises(ValueError, match="class_index"):
        counter.add(0, 2, np.ones((3, 3)), good)
    with pytest.raises(ValueError, match="2-D"):
        counter.add(0, 0, np.ones((2, 3, 3)), good)
    with pytest.raises(MaskDecodeError):
        counter.add(0, 0, np.ones((3, 3)), MaskRef("a", "b", "coco_rle", "0a", 8, 8))
    counter.add(0, 0, np.eye(3), good, prob=0.4)
    with pytest.raises(ValueError, match="every pair or for none"):
        counter.add(0, 1, np.eye(3), good)
    with pytest.raises(ValueError, match="policy"):
        mm.MaskCounter(1, [ThresholdPolicy(policy="mean")])  # type: ignore[arg-type]
    counts = mm.MaskCounter(1, [OTSU], max_distance=20).result()
    with pytest.raises(ValueError, match="max_distance"):
        mm.hit_rates(counts, 25)
    with pytest.raises(ValueError, match="probabilities"):
        mm.pair_ious(mm.MaskCounter(1, [OTSU]).result(), cutoffs=np.array([0.1]))


def test_distance_beyond_the_window_is_inf():
    mask = np.zeros((50, 50), bool)
    mask[0, 0] = True
    peak_far = np.zeros((50, 50), np.float32)
    peak_far[40, 40] = 1.0
    near = mm.MaskCounter(1, [OTSU], max_distance=60)
    far = mm.MaskCounter(1, [OTSU], max_distance=50)
    for counter in (near, far):
        counter.add(0, 0, peak_far, mask)
    assert near.result().peak_distance[0] == pytest.approx(40 * math.sqrt(2))
    assert far.result().peak_distance[0] == math.inf


def test_memory_stays_per_pair():
    """30 full-size pairs (2320 x 2828): the counts hold a few numbers per pair, nothing per pixel."""
    rng = np.random.default_rng(6)
    gt = random_mask(rng, (2320, 2828), "ellipse")
    rle = MaskRef.from_coco_rle("a", "b", encode_coco_rle(gt))
    empty = MaskRef.from_coco_rle("a", "b", encode_coco_rle(np.zeros_like(gt)))
    counter = mm.MaskCounter(10, [OTSU, *FRACTIONS])
    for i in range(30):
        counter.add(i, i % 10, smooth_map(rng, 7), rle if i % 3 == 0 else empty, 0.5)
    counts = counter.result()
    per_pair = (counts.nbytes - counts.hist_all.nbytes - counts.hist_in.nbytes) / 30
    assert per_pair < 400  # 7 columns x 17 bytes + 6 scalars
    assert len(pickle.dumps(counter)) < 100_000  # the counter keeps no image either (one would be 6.5 MB)
    assert counts.hist_all.sum() == 10 * gt.size


# --------------------------------------------------------------------------- real CheXlocalize masks


@pytest.fixture(scope="module")
def real_masks():
    if not REAL_MASKS.is_file():
        pytest.skip(f"CheXlocalize ground truth not found at {REAL_MASKS}")
    with open(REAL_MASKS) as f:
        return json.load(f)


def test_real_masks_match_the_reference(real_masks):
    rng = np.random.default_rng(7)
    counter = mm.MaskCounter(10, [OTSU, FRACTIONS[2]])
    pairs = []
    for row, (image_id, per_class) in enumerate(sorted(real_masks.items())):
        for klass, (name, rle) in enumerate(sorted(per_class.items())):
            gt = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
            if not gt.any() and klass % 3:
                continue  # every non-empty mask, a few empty ones
            map2d = smooth_map(rng, 7, noise=0.0)
            counter.add(row, klass, map2d, MaskRef.from_coco_rle(image_id, name, rle))
            pairs.append(Pair(row, klass, map2d, gt, None, [OTSU, FRACTIONS[2]]))
    counts = counter.result()
    assert (counts.gt_area > 0).sum() == 4 and counts.gt_area.max() > 100_000
    check_pairs(pairs, counts, [OTSU, FRACTIONS[2]])
    for column in (0, 1):
        ious = mm.pair_ious(counts, column, true_pos_only=False)
        np.testing.assert_allclose(ious, [p.iou(column, False) for p in pairs], rtol=0, atol=1e-12)
