"""Speed of the component-tree MaxBoxAcc / MaxBoxAccV2 against wsolevaluation's per-threshold OpenCV loop.

Run: ``python3 -m pytest benchmarks/test_maxboxacc_speed.py --benchmark-enable -s``

984 maps of 224 x 224 (the NIH box count), smooth like upsampled CAMs: a random 7 x 7 grid
upsampled bilinearly (``align_corners=False``) plus 2 % uniform noise, a true box around
the hottest cell (30 % of the pairs get a second one elsewhere), 8 classes. Side by side in one run:

* the reference (``maxboxacc_reference``: one ``cv2.threshold`` + ``cv2.findContours`` per
  map and threshold) at 100 thresholds on all maps; at 1,000 thresholds on a subset of
  ``SUBSET`` maps, extrapolated linearly to 984 maps (its cost is per map and threshold; the
  full run takes about 100 s per metric: set ``CXRBENCH_FULL_REFERENCE=1`` to time it whole);
* the fast version (``maxboxacc`` / ``maxboxacc_v2``) on all maps, best of ``ROUNDS``.

Both must give the same numbers (on the subset at 1,000 thresholds). The ratio at 1,000
thresholds must be at least ``MIN_SPEEDUP``. numpy / OpenCV / numba on the host only: no
``device`` parameter.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.locmetrics.maxboxacc import maxboxacc, maxboxacc_reference, maxboxacc_v2

N_MAPS, SIZE, GRID, N_CLASSES = 984, 224, 7, 8
SUBSET = 96
ROUNDS = 3
MIN_SPEEDUP = 30.0
FULL_REFERENCE = os.environ.get("CXRBENCH_FULL_REFERENCE", "") not in ("", "0")


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    low = torch.from_numpy(rng.random((N_MAPS, 1, GRID, GRID)).astype(np.float32))
    maps = F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0].numpy()
    maps = maps + 0.02 * rng.random(maps.shape, dtype=np.float32)
    # one true box around the hottest grid cell (jittered), sometimes a second one elsewhere
    cell = SIZE / GRID
    boxes = []
    for i in range(N_MAPS):
        r, c = np.unravel_index(np.argmax(low[i, 0].numpy()), (GRID, GRID))
        wh = rng.uniform(1.0, 2.5, 2) * cell
        xy = np.array([(c + 0.5) * cell, (r + 0.5) * cell]) - wh / 2 + rng.normal(0, cell / 4, 2)
        rows = [np.concatenate([np.clip(xy, 0, SIZE - 1), wh])]
        if rng.random() < 0.3:
            rows.append(np.concatenate([rng.uniform(0, SIZE * 0.7, 2), rng.uniform(20, SIZE * 0.3, 2)]))
        boxes.append(np.array(rows))
    classes = rng.integers(0, N_CLASSES, N_MAPS)
    # compile (or load numba's cache) outside the timings
    maxboxacc(maps[:4], boxes[:4], classes[:4])
    maxboxacc_v2(maps[:4], boxes[:4], classes[:4])
    return maps, boxes, classes


def timed(fn, *args, rounds=1, **kwargs):
    best, result = np.inf, None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


METRICS = {"MaxBoxAcc": (maxboxacc, False), "MaxBoxAccV2": (maxboxacc_v2, True)}


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("n_thresholds", [100, 1000])
@pytest.mark.benchmark(group="maxboxacc")
def test_reference_vs_fast(benchmark, pairs, metric, n_thresholds):
    maps, boxes, classes = pairs
    fast_fn, multi = METRICS[metric]
    kwargs = {"n_thresholds": n_thresholds, "n_classes": N_CLASSES}

    fast_s, fast = timed(fast_fn, maps, boxes, classes, rounds=ROUNDS, **kwargs)
    benchmark.pedantic(fast_fn, args=(maps, boxes, classes), kwargs=kwargs, rounds=1, iterations=1)

    whole = n_thresholds == 100 or FULL_REFERENCE
    n_ref = N_MAPS if whole else SUBSET
    ref_s, ref = timed(maxboxacc_reference, maps[:n_ref], boxes[:n_ref], classes[:n_ref], multi_contour=multi, **kwargs)
    ref_full_s = ref_s * N_MAPS / n_ref
    if whole:
        np.testing.assert_array_equal(fast.best_iou, ref.best_iou)
        np.testing.assert_array_equal(fast.max_accuracy, ref.max_accuracy)
    else:
        np.testing.assert_array_equal(fast.best_iou[:n_ref], ref.best_iou)

    speedup = ref_full_s / fast_s
    benchmark.extra_info.update(
        maps=N_MAPS,
        thresholds=n_thresholds,
        reference_maps_timed=n_ref,
        reference_s=round(ref_full_s, 2),
        reference_extrapolated=not whole,
        fast_s=round(fast_s, 3),
        speedup=round(speedup, 1),
        value=round(fast.value, 4),
    )
    note = "" if whole else f" (timed on {n_ref} maps, extrapolated linearly)"
    print(
        f"\n{metric} @ {n_thresholds} thresholds, {N_MAPS} maps of {SIZE} px: reference {ref_full_s:.1f} s{note}, "
        f"fast {fast_s:.2f} s, {speedup:.0f}x; value {fast.value:.4f}"
    )
    if n_thresholds == 1000:
        assert speedup >= MIN_SPEEDUP
