"""Speed of the streaming mask metrics against the per-pair loop the cheXlocalize scripts describe.

Run: ``python3 -m pytest benchmarks/test_mask_scoring_speed.py --benchmark-enable -s``

A CheXlocalize-like validation set: 24 images alternating 2320 x 2828 and 2022 x 2021 (the
sizes of the two published sample images), 10 classes, 27 % of the 240 pairs with a
non-empty mask (643 of 2,340 in the real validation set), masks as COCO RLE, saliency maps of
224 x 224 float32 (a random 7 x 7 grid upsampled bilinearly plus 2 % noise), a probability
per pair. Side by side in one run:

* the straightforward loop, as a researcher writes it from ``heatmap_to_segmentation.py``
  and ``eval.py``: per pair ``F.interpolate`` to the image's size, min-max, ``np.uint8``,
  ``cv2.threshold(THRESH_OTSU)``, ``pycocotools`` decoding of the ground truth,
  ``np.logical_and`` / ``np.logical_or`` sums (IoU with ``true_pos_only=False``) and
  ``np.argmax`` (hit); then eval.py's bootstrap: 1,000 times ``df.iloc`` of a random sample
  of images and the per-class means;
* ``cxrbench.locmetrics.maskmetrics``: ``MaskCounter`` over the same pairs, ``pair_ious`` /
  ``mean_iou``, ``hit_rates``, and a 1,000-replicate image-level ``bootstrap_mean`` of the
  mIoU; best of ``ROUNDS``.

Both must give the same mIoU and hit rate. The ratio (whole run against whole run) must be at
least ``MIN_SPEEDUP``. numpy / OpenCV / numba / torch on the host only: no ``device`` parameter.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask

from cxrbench.boxes import ThresholdPolicy
from cxrbench.locmetrics import maskmetrics as mm
from cxrbench.locmetrics.bootstrap import bootstrap_mean
from cxrbench.masks import MaskRef, encode_coco_rle

SIZES = ((2320, 2828), (2022, 2021))
N_IMAGES, N_CLASSES, MAP_SIZE, GRID = 24, 10, 224, 7
POSITIVE_SHARE = 643 / 2340
N_BOOT, ROUNDS = 1000, 3
MIN_SPEEDUP = 20.0


def finding_mask(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """One or two filled ellipses covering a few percent of the image, and the first one's centre (x, y) in [0, 1]."""
    h, w = hw
    img = np.zeros(hw, np.uint8)
    centres = []
    for _ in range(1 + int(rng.random() < 0.3)):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        axes = (int(rng.uniform(0.05, 0.2) * w), int(rng.uniform(0.05, 0.2) * h))
        cv2.ellipse(img, (int(cx * w), int(cy * h)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        centres.append((cx, cy))
    return img, centres[0]


def bump(centre: tuple[float, float], jitter: np.ndarray) -> np.ndarray:
    """A Gaussian blob near the finding, so that the maps localize it now and then."""
    yy, xx = np.mgrid[0:MAP_SIZE, 0:MAP_SIZE] / MAP_SIZE
    cx, cy = np.asarray(centre) + jitter
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06**2)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    grids = torch.from_numpy(rng.random((N_IMAGES * N_CLASSES, 1, GRID, GRID)).astype(np.float32))
    maps = F.interpolate(grids, size=(MAP_SIZE, MAP_SIZE), mode="bilinear", align_corners=False)[:, 0].numpy()
    maps = maps + 0.02 * rng.random(maps.shape, dtype=np.float32)
    positive = rng.permutation(N_IMAGES * N_CLASSES) < round(POSITIVE_SHARE * N_IMAGES * N_CLASSES)
    pairs = []
    for image in range(N_IMAGES):
        hw = SIZES[image % 2]
        for klass in range(N_CLASSES):
            i = image * N_CLASSES + klass
            saliency, gt = maps[i], np.zeros(hw, np.uint8)
            if positive[i]:
                gt, centre = finding_mask(rng, hw)
                saliency = saliency + bump(centre, rng.normal(0, 0.08, 2))
            rle = encode_coco_rle(gt)  # the JSON form: {"size": [h, w], "counts": str}
            pairs.append((image, klass, saliency, rle, float(rng.random())))
    # compile (or load numba's cache) outside the timings
    mm.MaskCounter(1, [ThresholdPolicy(policy="otsu")]).add(0, 0, maps[0], np.eye(300, 400, dtype=bool))
    return pairs


def straightforward_pairs(pairs):
    """The per-pair loop of the cheXlocalize scripts: IoU (``true_pos_only=False``) and hit per (image, class)."""
    ious = np.full((N_IMAGES, N_CLASSES), np.nan)
    hits = np.full((N_IMAGES, N_CLASSES), np.nan)
    for image, klass, saliency, rle, _prob in pairs:
        h, w = rle["size"]
        resized = F.interpolate(torch.from_numpy(saliency)[None, None], size=(h, w), mode="bilinear",
                                align_corners=False)
        cam = resized.squeeze()
        normalised = cam - cam.min()
        normalised = normalised.div(normalised.max()).numpy()
        levels = np.uint8(255 * normalised)
        segmentation = cv2.threshold(levels, 0, int(np.max(levels)), cv2.THRESH_OTSU)[1]
        gt = coco_mask.decode(rle)
        union = np.sum(np.logical_or(segmentation, gt))
        if union:
            ious[image, klass] = np.sum(np.logical_and(segmentation, gt)) / union
        saliency_full = cam.numpy()
        peak = np.unravel_index(np.argmax(saliency_full), saliency_full.shape)
        if gt[peak] == 1:
            hits[image, klass] = 1.0
        elif np.sum(gt) > 0:
            hits[image, klass] = 0.0
    return pd.DataFrame(ious), pd.DataFrame(hits)


def pandas_bootstrap(iou_df: pd.DataFrame) -> np.ndarray:
    """eval.py's ``bootstrap_metric``: resample images, a mean per class column, ``N_BOOT`` times."""
    records = []
    rng = np.random.default_rng(0)
    for _ in range(N_BOOT):
        replicate = iou_df.iloc[rng.choice(len(iou_df), size=len(iou_df), replace=True)]
        records.append({task: replicate[task].mean() for task in iou_df.columns})
    return pd.DataFrame.from_records(records).mean(axis=1).to_numpy()


def streaming(pairs):
    """The module: counts per pair, then mIoU, hit rate and an image-level bootstrap of the mIoU."""
    counter = mm.MaskCounter(N_CLASSES, [ThresholdPolicy(policy="otsu")])
    for image, klass, saliency, rle, prob in pairs:
        counter.add(image, klass, saliency, MaskRef.from_coco_rle(str(image), str(klass), rle), prob)
    counts = counter.result()
    ious = mm.pair_ious(counts, 0, true_pos_only=False)
    miou, _ = mm.mean_iou(ious, counts.classes, N_CLASSES)
    hit_rate, _, _ = mm.hit_rates(counts, 0.0)
    defined = np.isfinite(ious)
    interval = bootstrap_mean(ious[defined], counts.rows[defined], classes=counts.classes[defined], n_boot=N_BOOT)
    return miou, hit_rate, interval


def best_of(fn, *args, rounds=1):
    best, result = np.inf, None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


@pytest.mark.benchmark(group="mask-scoring")
def test_straightforward_vs_streaming(benchmark, dataset):
    stream_s, (miou, hit_rate, interval) = best_of(streaming, dataset, rounds=ROUNDS)
    benchmark.pedantic(streaming, args=(dataset,), rounds=1, iterations=1)
    pairs_s, (iou_df, hit_df) = best_of(straightforward_pairs, dataset)
    boot_s, loop_replicates = best_of(pandas_bootstrap, iou_df)
    loop_s = pairs_s + boot_s

    assert miou == pytest.approx(iou_df.mean().mean(), abs=1e-12)  # pandas: per-class means skip NaN
    assert hit_rate == pytest.approx(hit_df.mean().mean(), abs=1e-12)
    assert interval.replicates.shape == loop_replicates.shape == (N_BOOT,)

    n_pairs = len(dataset)
    n_positive = sum(1 for *_, rle, _p in dataset if coco_mask.area(rle) > 0)
    speedup = loop_s / stream_s
    benchmark.extra_info.update(
        pairs=n_pairs, positive_pairs=n_positive, straightforward_s=round(loop_s, 2),
        straightforward_bootstrap_s=round(boot_s, 2), streaming_s=round(stream_s, 3),
        speedup=round(speedup, 1), miou=round(miou, 4), hit_rate=round(hit_rate, 4),
    )
    print(
        f"\nmask scoring, {n_pairs} pairs ({n_positive} with a mask) at {SIZES[0]} / {SIZES[1]}, "
        f"{N_BOOT} bootstrap replicates: straightforward {loop_s:.2f} s ({pairs_s / n_pairs * 1e3:.1f} ms/pair "
        f"+ {boot_s:.2f} s pandas bootstrap), "
        f"streaming {stream_s:.3f} s ({stream_s / n_pairs * 1e3:.2f} ms/pair), {speedup:.0f}x; "
        f"mIoU {miou:.4f}, hit rate {hit_rate:.4f}"
    )
    assert speedup >= MIN_SPEEDUP
