"""End to end on the toy plugin: train, evaluate, localize, record, resume."""

import numpy as np
import pytest
from helpers import store_records
from sklearn.metrics import roc_auc_score

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.pipeline import failed_result
from cxrbench.store import ResultsStore


@pytest.fixture
def run(toy_pm, toy_registry, tmp_path):
    def go(grid_dict, **kw):
        grid = parse_grid(grid_dict, toy_registry)
        with ResultsStore(tmp_path / "results") as store:
            summary = run_grid(grid, toy_pm, store, **kw)
            return summary, store_records(store, grid.name), store

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


def test_lifecycle_hooks_and_a_plugin_taking_over_a_cell(tiny_grid_dict, tmp_path):
    import cxrbench
    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry
    from tests.conftest import builtin_plugins
    from tests.plugins import toy

    class Recorder:
        def __init__(self):
            self.events = []
            self.store = None

        @cxrbench.hookimpl
        def cxrbench_cells_collected(self, grid, cells, pending):
            self.events.append(("collected", grid.name, [c.cell_id for c in cells], [c.cell_id for c in pending]))

        @cxrbench.hookimpl
        def cxrbench_run_cell(self, task):
            if task.cell.head.name != "max":
                return None  # let the core run it
            return failed_result(task, "").replace(status="ok", error=None, metrics={"auroc_mean": 0.5},
                                                   info={"from": "plugin"})

        @cxrbench.hookimpl
        def cxrbench_cell_finished(self, task, result):
            committed = self.store.cell(task.cell.cell_id)  # the record is in the store already
            self.events.append(("finished", task.cell.cell_id, result.status, committed.status))

    recorder = Recorder()
    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy), ("recorder", recorder)], entry_points=False)
    grid = parse_grid(tiny_grid_dict, Registry.from_plugin_manager(pm))
    with ResultsStore(tmp_path / "results") as store:
        recorder.store = store
        summary = run_grid(grid, pm, store)
        records = store_records(store, grid.name)
    assert summary.ok == 2
    (kind, name, all_ids, pending), *finished = recorder.events
    assert (kind, name) == ("collected", "tiny") and all_ids == pending and len(all_ids) == 2
    assert sorted(e[1] for e in finished) == sorted(all_ids)
    assert all(e[0] == "finished" and e[2] == e[3] == "ok" for e in finished)
    taken = [r for r in records if r["head"] == "max"]  # the plugin's answer, stored as the cell's record
    assert [(r["metrics"]["auroc_mean"], r["localizer"]) for r in taken] == [(0.5, None)]
    assert sorted(r["localizer"] for r in records if r["head"] == "avg") == ["cam", "gradcam"]  # the core ran it


def test_force_retrains_and_replaces_records_only_when_each_cell_finishes(run, tiny_grid_dict, monkeypatch):
    from cxrbench import pipeline as runner

    tiny_grid_dict["localizers"] = ["cam", "gradcam"]
    summary, first, store = run(tiny_grid_dict)
    assert summary.ok == 2 and len(first) == 4
    # the forced run dies in its second cell: the first is replaced, the second keeps its old record
    real, calls = runner.run_cell_core, []

    def dies_second(task, reporter):
        calls.append(task.cell.cell_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task, reporter)

    monkeypatch.setattr(runner, "run_cell_core", dies_second)
    tiny_grid_dict["localizers"] = ["cam"]  # gradcam rows of a retrained cell must not survive
    summary, records, _ = run(tiny_grid_dict, force=True)
    assert summary.interrupted and summary.ok == 1
    kept = {(r["cell_id"], r["localizer"]) for r in records}
    assert (calls[0], "gradcam") not in kept and (calls[0], "cam") in kept
    assert {(calls[1], "cam"), (calls[1], "gradcam")} <= kept  # untouched: still the old model's rows
