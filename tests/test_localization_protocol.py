"""The localization protocol as scored in a cell: no peak for constant maps, Zhang's pointing game in
original pixels, MaxBoxAcc(V2) next to the fixed-threshold metrics, bootstrap intervals, saved maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.boxes import ThresholdPolicy
from cxrbench.localization import LocalizationRun, localization_intervals, renormalise, score


def run_of(maps, boxes, classes, patients=None, scale=1.0, peaks=None, valid=None):
    from cxrbench.locmetrics.peaks import map_peaks

    maps = np.asarray(maps, dtype=np.float32)
    n = maps.shape[0]
    found = map_peaks(maps)
    return LocalizationRun(
        maps=maps, pair_rows=np.arange(n), pair_classes=np.asarray(classes), true_boxes=[np.asarray(b, float)
                                                                                          for b in boxes],
        peaks=found.xy if peaks is None else peaks, ms_per_image=1.0, n_images=n,
        peak_valid=found.valid if valid is None else valid, scale=np.full((n, 2), scale),
        patients=np.asarray(patients if patients is not None else [str(i) for i in range(n)]))


def test_a_constant_map_has_no_peak_and_is_a_miss():
    # the audit's repro: an all-zero map used to "peak" at the centre, inside the box
    run = run_of(np.zeros((1, 96, 96)), [[[30.0, 30, 40, 40]]], [0])
    metrics, _ = score(run, ThresholdPolicy(), ["A"], hit_tolerance=15)
    assert metrics["hit_rate"] == 0.0 and metrics["no_peak_maps"] == 1.0


def test_pointing_game_tolerance_is_in_original_pixels_and_mean_over_classes():
    maps = np.zeros((3, 32, 32), dtype=np.float32)
    maps[0, 5, 5] = 1.0  # peak at (5.5, 5.5): 4.5 map px left of the box at x = 10
    maps[1, 20, 20] = 1.0  # inside its box
    maps[2, 0, 31] = 1.0  # far away
    boxes = [[[10.0, 5, 5, 5]], [[18.0, 18, 6, 6]], [[2.0, 20, 4, 4]]]
    # 4.5 map px x 4 original px per map px = 18 original px: a miss at 15, a hit at 20
    for tolerance, first in ((15, 0.0), (20, 1.0)):
        metrics, _ = score(run_of(maps, boxes, [0, 1, 1], scale=4.0), ThresholdPolicy(), ["A", "B"],
                           hit_tolerance=tolerance)
        assert metrics["hit_rate/A"] == first and metrics["hit_rate/B"] == 0.5
        assert metrics["hit_rate"] == pytest.approx((first + 0.5) / 2)  # mean over classes, not pairs
        assert metrics["hit_rate_pairs"] == pytest.approx((first + 1) / 3)


def test_threshold_free_metrics_and_their_settings():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 24, 24)).astype(np.float32)
    boxes = [[[4.0, 4, 8, 8]]] * 6
    metrics, extra = score(run_of(maps, boxes, [0, 1, 0, 1, 0, 1]), ThresholdPolicy(), ["A", "B"], hit_tolerance=0,
                           box_thresholds=50)
    from cxrbench.locmetrics.maxboxacc import maxboxacc_v2

    reference = maxboxacc_v2(maps, [np.asarray(b) for b in boxes], [0, 1, 0, 1, 0, 1], n_thresholds=50, n_classes=2)
    assert metrics["maxboxacc_v2"] == pytest.approx(reference.value)
    assert metrics["maxboxacc_v2/A"] == pytest.approx(reference.class_value[0])
    assert set(extra["maxboxacc_v2_thresholds"]) == {"0.3", "0.5", "0.7"} and extra["box_thresholds"] == 50


def test_localization_intervals_match_a_resampling_loop():
    from cxrbench.metrics import bootstrap_counts

    rng = np.random.default_rng(3)
    n = 12
    patients = np.asarray([f"p{i // 2}" for i in range(n)])  # two pairs per patient
    classes = rng.integers(0, 2, n)
    best_iou, hits = rng.random(n), rng.random(n) < 0.5
    correct = rng.random((n, 3, 5)) < 0.4
    run = run_of(np.zeros((n, 4, 4)), [np.zeros((1, 4))] * n, classes, patients=patients)
    out = localization_intervals(run, best_iou, hits, correct, n_boot=200, seed=7, ci=0.9, n_classes=2)
    weights = bootstrap_counts(patients, 200, 7)
    iou, hit, v2 = [], [], []
    for w in weights:  # the straightforward loop: repeat each pair as often as it was drawn
        idx = np.repeat(np.arange(n), w)
        iou.append(best_iou[idx].mean())
        rates = [hits[idx][classes[idx] == c].mean() for c in (0, 1) if (classes[idx] == c).any()]
        hit.append(np.mean(rates))
        v2.append(correct[idx].mean(axis=0).max(axis=1).mean())
    for key, values in (("iou_mean", iou), ("hit_rate", hit), ("maxboxacc_v2", v2)):
        low, high = np.percentile(values, [5, 95])
        assert out[f"{key}_ci_low"] == pytest.approx(low) and out[f"{key}_ci_high"] == pytest.approx(high), key


def test_renormalise_restores_the_range_after_upsampling():
    grid = torch.zeros((1, 1, 3, 3))
    grid[0, 0, 1, 1] = 1.0
    up = torch.nn.functional.interpolate(grid, size=(96, 96), mode="bilinear", align_corners=False)[0]
    assert float(up.max()) < 1.0  # the interior cell's maximum falls between pixel centres
    out = renormalise(up)
    assert float(out.max()) == pytest.approx(1.0) and float(out.min()) == 0.0
    assert torch.equal(renormalise(torch.full((1, 4, 4), 0.3)), torch.zeros((1, 4, 4)))  # constant: zeros


def test_saved_maps_rescore_to_the_stored_numbers(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    from cxrbench.config import parse_grid
    from cxrbench.driver import run_grid
    from cxrbench.locmetrics.maxboxacc import maxboxacc_v2
    from cxrbench.store import ResultsStore

    tiny_grid_dict.update(heads=["avg"], localizers=["cam"], localization={"save_maps": True, "box_thresholds": 30})
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        (cell,) = store.cells(grid.name)
        (loc,) = cell.localizations
        saved = np.load(store.artifacts(cell.cell_id).maps(loc.key), allow_pickle=False)
    maps, ids, classes = saved["maps"], saved["ids"], [str(c) for c in saved["classes"]]
    assert maps.dtype == np.float16 and maps.shape[:2] == (len(ids), len(classes)) and maps.shape[2] == maps.shape[3]
    assert float(maps.max()) <= 1.0 and float(maps.min()) >= 0.0
    # re-score from the file alone: one map per (image, class) with boxes, boxes from the file
    pairs = sorted({(int(i), int(c)) for i, c in zip(saved["box_index"], saved["box_class"], strict=True)})
    pair_maps = np.stack([maps[i, c].astype(np.float32) for i, c in pairs])
    pair_boxes = [saved["box_xywh"][(saved["box_index"] == i) & (saved["box_class"] == c)] for i, c in pairs]
    names = list(cell.info["classes"])
    pair_classes = [names.index(classes[c]) for _, c in pairs]
    again = maxboxacc_v2(pair_maps, pair_boxes, pair_classes, n_thresholds=30, n_classes=len(names))
    # float16 storage moves values by < 1e-3: the threshold-free score agrees to that precision
    assert again.value == pytest.approx(loc.metrics["maxboxacc_v2"], abs=0.05)
    assert len(pairs) == loc.metrics["n_pairs"]


def _pair_file(root, cell_id, key, correct, patients):
    from cxrbench.artifacts import CellArtifacts, save_npz_atomic

    n = correct.shape[0]
    save_npz_atomic(CellArtifacts.of(root, cell_id).pair_scores(key), ids=np.asarray([f"i{i}" for i in range(n)]),
                    patients=patients, classes=np.zeros(n, np.int64), best_iou=np.zeros(n), hits=np.zeros(n, bool),
                    correct=correct)


def test_compare_localizers_on_the_same_pairs(tmp_path):
    from cxrbench.reporting import LeaderboardRow, compare_localizers

    rng = np.random.default_rng(0)
    n = 80
    patients = np.asarray([f"p{i // 2}" for i in range(n)])
    good = rng.random((n, 3, 10)) < 0.8
    bad = good & (rng.random((n, 3, 10)) < 0.4)

    def row(name, key, value):
        return LeaderboardRow(kind="cell", cell_id="c1", grid="g", dataset="d", backbone="b", head="h", localizer=name,
                              seed=0, status="ok", metrics={"maxboxacc_v2": value}, localizer_key=key,
                              localizer_status="ok")

    _pair_file(tmp_path, "c1", "ka", good, patients)
    _pair_file(tmp_path, "c1", "kb", bad, patients)
    _pair_file(tmp_path, "c1", "kc", good.copy(), patients)
    clear = compare_localizers([row("bad", "kb", 0.3), row("good", "ka", 0.8)], tmp_path, n_boot=300)
    assert (clear.best, clear.next) == ("good", "bad") and clear.significant and clear.low > 0
    same = compare_localizers([row("good", "ka", 0.8), row("twin", "kc", 0.8)], tmp_path, n_boot=300)
    assert same.diff == 0 and not same.significant
    assert compare_localizers([row("good", "ka", 0.8)], tmp_path) is None  # nothing to compare with
