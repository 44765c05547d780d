"""End to end on the toy plugin: train, evaluate, localize, record, resume."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrbench.config import parse_grid
from cxrbench.runner import run_grid
from cxrbench.store import ResultsStore


@pytest.fixture
def run(toy_pm, toy_registry, tmp_path):
    def go(grid_dict, **kw):
        grid = parse_grid(grid_dict, toy_registry)
        with ResultsStore(tmp_path / "results") as store:
            summary = run_grid(grid, toy_pm, store, **kw)
            return summary, store.records(grid.name), store

    return go


def test_tiny_grid_end_to_end(run, tiny_grid_dict, tmp_path):
    summary, records, store = run(tiny_grid_dict)
    assert (summary.ok, summary.failed, summary.skipped) == (2, 0, 0)
    cell_dirs = list((tmp_path / "results" / "cells").iterdir())
    assert len(cell_dirs) == 2
    for d in cell_dirs:
        assert (d / "best.pt").exists() and (d / "predictions.npz").exists() and (d / "config.json").exists()
        assert not (d / "last.pt").exists()
        pred = np.load(d / "predictions.npz")
        # the stored AUROC is the independent reference's on the stored predictions
        metrics = next(r["metrics"] for r in records if r["cell_id"] == d.name)
        for k, name in enumerate(["Blob", "Bar"]):
            assert metrics[f"auroc/{name}"] == pytest.approx(roc_auc_score(pred["labels"][:, k], pred["scores"][:, k]))
    by_loc = {(r["head"], r["localizer"]): r for r in records}
    assert set(by_loc) == {("avg", "cam"), ("avg", "gradcam"), ("max", "cam"), ("max", "gradcam")}
    for r in records:
        assert 0 <= r["metrics"]["iou_mean"] <= 1 and 0 <= r["metrics"]["iobb_mean"] <= 1


def test_resume_adds_only_new_localizers(run, tiny_grid_dict):
    tiny_grid_dict["localizers"] = ["cam"]
    tiny_grid_dict["heads"] = ["avg"]
    summary, records, _ = run(tiny_grid_dict)
    assert summary.ok == 1 and [r["localizer"] for r in records] == ["cam"]
    auroc = records[0]["metrics"]["auroc_mean"]
    tiny_grid_dict["localizers"] = ["cam", "gradcam"]
    summary, records, _ = run(tiny_grid_dict)
    assert (summary.ok, summary.skipped) == (1, 0)
    assert sorted(r["localizer"] for r in records) == ["cam", "gradcam"]
    assert all(r["metrics"]["auroc_mean"] == auroc for r in records)  # not retrained
    summary, _, _ = run(tiny_grid_dict)
    assert (summary.ok, summary.skipped) == (0, 1)


def test_same_seed_same_metrics_on_cpu(run, tiny_grid_dict, toy_pm, toy_registry, tmp_path):
    tiny_grid_dict["heads"] = ["avg"]
    _, first, _ = run(tiny_grid_dict)
    _, second, _ = run(tiny_grid_dict, force=True)
    assert first[0]["metrics"] == second[0]["metrics"] or all(
        first[0]["metrics"][k] == second[0]["metrics"][k] for k in first[0]["metrics"] if k != "loc_ms_per_image"
    )


def test_failed_cells_rerun_only_when_asked(run, tiny_grid_dict):
    tiny_grid_dict["backbones"] = ["exploding"]
    tiny_grid_dict["heads"] = ["avg"]
    summary, records, _ = run(tiny_grid_dict)
    assert summary.failed == 1 and records[0]["status"] == "failed"
    summary, _, _ = run(tiny_grid_dict)
    assert (summary.failed, summary.skipped) == (0, 1)
    summary, _, _ = run(tiny_grid_dict, rerun_failed=True)
    assert summary.failed == 1
