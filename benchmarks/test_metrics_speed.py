"""Speed of the metric functions against the straightforward way of computing the same numbers.

Run: ``OMP_NUM_THREADS=1 pytest benchmarks/test_metrics_speed.py --benchmark-enable``

* bootstrap AUROC CI, 1,000 replicates of 25,000 x 14 predictions with patient groups: the
  vectorised kernel vs ``sklearn.metrics.roc_auc_score`` once per replicate and class on
  the SAME resamples (sklearn on a 10-replicate subset: all 1,000 take minutes; costs are
  compared per replicate, and the subset's values must agree);
* localization metrics of ~1,000 (image, class) pairs vs a per-pair loop;
* heatmap -> boxes for 880 images x 8 classes of 256 px maps vs one OpenCV call per map.

numpy / OpenCV / scikit-learn on the host only: unlike the other side-by-side files there
is no ``device`` parameter and no CUDA variant.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrbench.boxes import (
    LocalizationPair,
    ThresholdPolicy,
    heatmaps_to_boxes,
    iobb_matrix,
    iou_matrix,
    localization_metrics,
)
from cxrbench.metrics import bootstrap_auroc, bootstrap_counts

N_IMAGES, N_CLASSES, N_BOOT, N_SKLEARN = 25_000, 14, 1_000, 10
MIN_SPEEDUP = 30.0


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    y = (rng.random((N_IMAGES, N_CLASSES)) < 0.1).astype(float)
    scores = rng.random((N_IMAGES, N_CLASSES)) + 0.3 * y
    patients = np.sort(rng.integers(0, N_IMAGES // 2, N_IMAGES))  # ~2 images per patient
    return y, scores, patients


def sklearn_replicates(y, scores, counts):
    """The reference: expand each resample explicitly and call sklearn per class."""
    out = np.empty((counts.shape[0], y.shape[1]))
    for r in range(counts.shape[0]):
        rows = np.repeat(np.arange(y.shape[0]), counts[r])
        for k in range(y.shape[1]):
            out[r, k] = roc_auc_score(y[rows, k], scores[rows, k])
    return out


def timed(fn, times):
    def run(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return result

    return run


@pytest.mark.benchmark(group="bootstrap-auroc")
def test_bootstrap_sklearn_subset(benchmark, predictions):
    y, scores, patients = predictions
    counts = bootstrap_counts(patients, N_BOOT, seed=0)[:N_SKLEARN]
    benchmark.extra_info["replicates"] = N_SKLEARN
    benchmark.pedantic(sklearn_replicates, args=(y, scores, counts), rounds=1, iterations=1)


@pytest.mark.benchmark(group="bootstrap-auroc")
def test_bootstrap_vectorised(benchmark, predictions):
    y, scores, patients = predictions
    times: list[float] = []
    result = benchmark.pedantic(
        timed(bootstrap_auroc, times),
        args=(y, scores),
        kwargs={"groups": patients, "n_boot": N_BOOT, "seed": 0},
        rounds=3,
        iterations=1,
    )
    assert result.replicates.shape == (N_BOOT, N_CLASSES)

    counts = bootstrap_counts(patients, N_BOOT, seed=0)[:N_SKLEARN]
    start = time.perf_counter()
    reference = sklearn_replicates(y, scores, counts)
    sklearn_per_replicate = (time.perf_counter() - start) / N_SKLEARN
    np.testing.assert_allclose(result.replicates[:N_SKLEARN], reference, rtol=0, atol=1e-12)

    ours_per_replicate = min(times) / N_BOOT
    speedup = sklearn_per_replicate / ours_per_replicate
    benchmark.extra_info.update(
        replicates=N_BOOT,
        sklearn_ms_per_replicate=round(sklearn_per_replicate * 1e3, 3),
        vectorised_ms_per_replicate=round(ours_per_replicate * 1e3, 4),
        speedup=round(speedup, 1),
    )
    print(
        f"\nbootstrap: sklearn {sklearn_per_replicate * 1e3:.1f} ms/replicate, "
        f"vectorised {ours_per_replicate * 1e3:.3f} ms/replicate, {speedup:.0f}x"
    )
    assert speedup >= MIN_SPEEDUP


# --------------------------------------------------------------------------- box metrics


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(1)
    out = []
    for i in range(1_000):
        n_true, n_pred = 1 + (i % 7 == 0), int(rng.integers(0, 6))
        true = np.column_stack([rng.uniform(0, 200, (n_true, 2)), rng.uniform(10, 80, (n_true, 2))])
        pred = np.column_stack([rng.uniform(0, 200, (n_pred, 2)), rng.uniform(5, 100, (n_pred, 2))])
        out.append(LocalizationPair(i % 8, true, pred, tuple(rng.uniform(0, 256, 2))))
    return out


NAMES = [f"C{i}" for i in range(8)]


def per_pair_loop(pairs):
    """Baseline: the per-pair Python loop (best IoU / IoBB / cumulative IoU / hit / AFP@0.5)."""
    rows = []
    for p in pairs:
        iou = iou_matrix(p.pred_boxes, p.true_boxes)
        iobb = iobb_matrix(p.pred_boxes, p.true_boxes)
        per_pred = iou.max(axis=1) if iou.size else np.zeros(0)
        x, y = p.peak_xy
        t = p.true_boxes
        hit = np.any((x >= t[:, 0]) & (x <= t[:, 0] + t[:, 2]) & (y >= t[:, 1]) & (y <= t[:, 1] + t[:, 3]))
        rows.append((per_pred.max(initial=0.0), iobb.max(initial=0.0), per_pred.sum(), hit, (per_pred < 0.5).sum()))
    return np.mean(np.array(rows, dtype=float), axis=0)


@pytest.mark.benchmark(group="box-metrics")
def test_box_metrics_vectorised(benchmark, pairs):
    out = benchmark.pedantic(localization_metrics, args=(pairs, NAMES), rounds=20, iterations=1)
    ref = per_pair_loop(pairs)
    got = [out["iou_mean"], out["iobb_mean"], out["cum_iou_mean"], out["hit_rate"], out["afp_iou@0.5"]]
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.benchmark(group="box-metrics")
def test_box_metrics_per_pair_loop(benchmark, pairs):
    benchmark.pedantic(per_pair_loop, args=(pairs,), rounds=5, iterations=1)


# --------------------------------------------------------------------------- heatmaps -> boxes


@pytest.fixture(scope="module")
def cam_maps():
    """880 images x 8 classes of 256 px maps, upsampled from 8 x 8 like a CAM (float32, 1.8 GB)."""
    rng = np.random.default_rng(2)
    low = rng.random((880 * 8, 8, 8)).astype(np.float32) ** 3
    maps = np.empty((low.shape[0], 256, 256), dtype=np.float32)
    for i, m in enumerate(low):
        maps[i] = cv2.resize(m, (256, 256), interpolation=cv2.INTER_LINEAR)
    maps -= maps.min(axis=(1, 2), keepdims=True)
    maps /= maps.max(axis=(1, 2), keepdims=True)
    return maps


def boxes_per_map_loop(maps, policy):
    """Baseline: the seed's way, one threshold and one OpenCV call per map."""
    out = []
    for m in maps:
        thr = min(float(m.mean()) * policy.factor, policy.high)
        mask = (m > thr).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        out.append(stats[1:, :4].astype(np.float64))
    return out


@pytest.mark.benchmark(group="heatmap-to-boxes")
def test_heatmaps_to_boxes_batched(benchmark, cam_maps):
    policy = ThresholdPolicy()
    boxes = benchmark.pedantic(heatmaps_to_boxes, args=(cam_maps, policy), rounds=2, iterations=1)
    assert len(boxes) == cam_maps.shape[0]
    ref = boxes_per_map_loop(cam_maps[:200], policy)
    for got, want in zip(boxes[:200], ref, strict=True):
        want = want[np.lexsort((want[:, 0], want[:, 1]))]
        np.testing.assert_array_equal(got, want)
    benchmark.extra_info["boxes"] = int(sum(len(b) for b in boxes))


@pytest.mark.benchmark(group="heatmap-to-boxes")
def test_heatmaps_to_boxes_per_map_loop(benchmark, cam_maps):
    benchmark.pedantic(boxes_per_map_loop, args=(cam_maps, ThresholdPolicy()), rounds=2, iterations=1)
