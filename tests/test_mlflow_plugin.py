"""The ``mlflow`` plugin: finished cells as MLflow runs in a local file store, read back."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import cxrbench_mlflow
import numpy as np
import pytest
import yaml
from cxrbench_mlflow.payload import build_payload, mlflow_key
from cxrbench_mlflow.settings import TrackingSettings
from cxrbench_mlflow.tracker import MlflowTracker
from hypothesis import given
from hypothesis import strategies as st

import cxrbench
from cxrbench.api import CellAxes, CellResult, LocalizerResult, UsageError
from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from tests.conftest import TINY_GRID, builtin_plugins, cli_with
from tests.plugins import toy

HINT = 'pip install "cxrbench[mlflow]"'


requires_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                     reason=f"mlflow is not installed ({HINT})")


class Capture:
    """Keeps what ``cxrbench_cell_finished`` received (registered after the mlflow plugin)."""

    def __init__(self):
        self.calls = []

    @cxrbench.hookimpl
    def cxrbench_cell_finished(self, task, result):
        self.calls.append((task, result))


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """Tracking on, to a ``file:`` store in tmp_path; returns its URI."""
    uri = (tmp_path / "mlruns").as_uri()
    for name in ("CXRBENCH_MLFLOW_ARTIFACTS", "CXRBENCH_MLFLOW_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXRBENCH_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # recent MLflow keeps file stores in maintenance mode and refuses them without this
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


@pytest.fixture
def grid_run(tmp_path):
    """Run a one-cell toy grid with the mlflow plugin: ``go(**run_grid kwargs) -> (summary, capture)``."""
    capture = Capture()
    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy),
                                       ("mlflow", cxrbench_mlflow), ("capture", capture)], entry_points=False)
    grid_dict = copy.deepcopy(TINY_GRID)
    grid_dict.update(heads=["avg"], localizers=["cam"])

    def go(localizers=("cam",), **kw):
        grid_dict["localizers"] = list(localizers)
        grid = parse_grid(grid_dict, Registry.from_plugin_manager(pm))
        capture.calls.clear()
        with ResultsStore(tmp_path / "results") as store:
            summary = run_grid(grid, pm, store, **kw)
            summary.records = store.cells("tiny")
        return summary, capture

    return go


def client_of(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def active_runs(uri, experiment="tiny"):
    client = client_of(uri)
    experiment = client.get_experiment_by_name(experiment)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


# --------------------------------------------------------------------------- end to end


@requires_mlflow
def test_a_finished_cell_becomes_one_run_with_params_metrics_history_and_files(tracking, grid_run, tmp_path):
    import mlflow

    summary, capture = grid_run()
    assert summary.ok == 1
    (record,) = summary.records
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list",
                              filter_string=f"tags.`cxrbench.cell_id` = '{record.cell_id}'")
    assert len(runs) == 1 and len(active_runs(tracking)) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny / avg / toy / seed 0"
    assert (run.info.start_time, run.info.end_time) == (round(record.started_at * 1000),
                                                        round(record.finished_at * 1000))
    tags = run.data.tags
    assert (tags["cxrbench.status"], tags["cxrbench.grid"], tags["cxrbench.version"]) == ("ok", "tiny",
                                                                                           cxrbench.__version__)
    assert tags["cxrbench.env.device"] == "cpu" and tags["cxrbench.localizers"] == "cam (ok)"

    params = run.data.params
    assert {k: params[k] for k in ("dataset", "backbone", "head", "seed")} == {
        "dataset": record.axes.dataset, "backbone": record.axes.backbone, "head": "avg", "seed": "0"}
    assert (params["train.lr"], params["train.epochs"], params["train.batch_size"]) == ("0.01", "2", "16")
    assert params["backbone.options.width"] == "4" and params["evaluation.bootstrap"] == "20"
    assert params["dataset.options.num_images"] == "64"

    metrics = run.data.metrics
    for key in ("auroc_mean", "auroc/Blob", "auroc/Bar", "auroc_ci_low/Blob", "auroc_ci_high/Blob"):
        assert metrics[key.replace("/", ".")] == record.metrics[key]
    assert all(metrics[k.replace("/", ".")] == v for k, v in record.metrics.items() if math.isfinite(v))
    cam = record.localizer("cam").metrics
    assert metrics["loc/cam/iou_mean"] == cam["iou_mean"]
    assert metrics["loc/cam/acc_iou_at_0.5"] == cam["acc_iou@0.5"]
    assert metrics["loc/cam/iou_gt_0.3"] == cam["iou>0.3"]
    assert metrics["loc/cam/hit_rate"] == cam["hit_rate"] and metrics["loc/cam/hit_rate.Bar"] == cam["hit_rate/Bar"]
    assert metrics["info/parameters"] == record.info["parameters"]

    client = client_of(tracking)
    history = record.info["history"]
    for key in ("loss", "val_auroc_mean", "lr"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"history/{key}"))
        assert points == [(e["epoch"], e[key]) for e in history] and len(points) == 2

    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert files == {"record.json", "predictions.npz"}  # best.pt only when asked for
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "down")))
    assert json.loads((local / "record.json").read_text()) == json.loads(json.dumps(record.to_json()))
    cell_dir = Path(capture.calls[0][0].cell_dir)
    assert (local / "predictions.npz").read_bytes() == (cell_dir / "predictions.npz").read_bytes()
    with np.load(local / "predictions.npz", allow_pickle=False) as pred:
        assert list(pred["classes"]) == ["Blob", "Bar"]


@requires_mlflow
def test_reruns_keep_one_run_per_cell(tracking, grid_run):
    _, capture = grid_run()
    (first,) = active_runs(tracking)
    task, result = capture.calls[0]

    summary, capture = grid_run()  # resumed: nothing runs, nothing is logged
    assert summary.skipped == 1 and not capture.calls
    settings = TrackingSettings.from_env()
    assert cxrbench_mlflow.log_cell(task, result, settings) == (first.info.run_id, "unchanged")

    summary, capture = grid_run(force=True)  # retrained: the run is replaced, not duplicated
    (record,) = summary.records
    (second,) = active_runs(tracking)
    assert second.info.run_id != first.info.run_id
    assert client_of(tracking).get_run(first.info.run_id).info.lifecycle_stage == "deleted"
    assert second.data.tags["cxrbench.cell_id"] == record.cell_id
    assert second.data.metrics["auroc_mean"] == record.metrics["auroc_mean"]
    assert len(client_of(tracking).get_metric_history(second.info.run_id, "history/loss")) == 2


@requires_mlflow
def test_a_failure_inside_mlflow_never_fails_the_cell(tracking, grid_run, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    def boom(self, *args, **kwargs):
        raise RuntimeError("store on fire\nsecond line")

    monkeypatch.setattr(MlflowClient, "log_batch", boom)
    summary, _ = grid_run()
    assert (summary.ok, summary.failed) == (1, 0)
    (record,) = summary.records
    assert record.ok and record.metrics["auroc_mean"] > 0  # the result is in the store
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert lines == [f"warning: plugin 'mlflow': cell {record.cell_id} not logged to MLflow "
                     "(RuntimeError: store on fire\\nsecond line); its record is in the results store"]
    assert active_runs(tracking) == []  # the half-filled run was removed


# --------------------------------------------------------------------------- the tracker on hand-made records


def make_result(tmp_path, *, localizers=("gradcam",), started=1000.0, history=True):
    cell_dir = tmp_path / "cells" / "c0ffee123456"
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "predictions.npz").write_bytes(b"PRED")
    (cell_dir / "best.pt").write_bytes(b"WEIGHTS" * 10)
    locs = tuple(LocalizerResult(key=f"k{i}", name=name, metrics={"iou_mean": 0.25 + i, "acc_iou@0.5": 0.5,
                                                                  "hit_rate": 0.75, "hit_rate/Bar": 0.5})
                 for i, name in enumerate(localizers))
    info = {"parameters": 938, "select_best": True, "classes": ["Blob", "Bar"]}
    if history:
        info["history"] = [{"epoch": 1, "loss": 0.7, "lr": 0.01}, {"epoch": 2, "loss": 0.6, "lr": 0.001,
                                                                   "val_auroc_mean": None}]
    result = CellResult(
        cell_id="c0ffee123456", grid="g", axes=CellAxes("toy", "tiny[width=4]", "avg", 3),
        config={"seed": 3, "train": {"lr": 0.01, "epochs": 2, "milestones": [1, 2]},
                "backbone": {"name": "tiny", "options": {"width": 4}}},
        metrics={"auroc_mean": 0.8, "auroc/Pleural Effusion": 0.9, "auroc_ci_low/Pleural Effusion": 0.7,
                 "brier": math.nan},
        info=info, localizations=locs, started_at=started, finished_at=started + 5.0,
    )
    return SimpleNamespace(cell_dir=str(cell_dir), retrain=True), result


def test_payload_keys_follow_mlflow_rules_and_are_computed_by_hand(tmp_path):
    task, result = make_result(tmp_path, localizers=("gradcam", "gradcam", "cam"))
    result = result.replace(localizations=result.localizations[:2] + (
        LocalizerResult.failure("k2", "cam", "no logit map\nfor max"),))
    payload = build_payload(task, result, experiment="g", artifacts=("record", "checkpoint"))
    assert payload.params == {"dataset": "toy", "backbone": "tiny[width=4]", "head": "avg", "seed": "3",
                              "train.lr": "0.01", "train.epochs": "2", "train.milestones": "[1, 2]",
                              "backbone.name": "tiny", "backbone.options.width": "4"}
    assert payload.metrics == {
        "auroc_mean": 0.8, "auroc.Pleural Effusion": 0.9, "auroc_ci_low.Pleural Effusion": 0.7,  # NaN left out
        "loc/gradcam-k0/iou_mean": 0.25, "loc/gradcam-k0/acc_iou_at_0.5": 0.5, "loc/gradcam-k0/hit_rate": 0.75,
        "loc/gradcam-k0/hit_rate.Bar": 0.5, "loc/gradcam-k1/iou_mean": 1.25, "loc/gradcam-k1/acc_iou_at_0.5": 0.5,
        "loc/gradcam-k1/hit_rate": 0.75, "loc/gradcam-k1/hit_rate.Bar": 0.5, "info/parameters": 938.0}
    assert [(p.key, p.value, p.step) for p in payload.history] == [
        ("history/loss", 0.7, 1), ("history/lr", 0.01, 1), ("history/loss", 0.6, 2), ("history/lr", 0.001, 2)]
    assert payload.tags["cxrbench.localizer.cam.error"] == "no logit map\\nfor max"
    assert payload.tags["cxrbench.localizers"] == "gradcam-k0 (ok), gradcam-k1 (ok), cam (failed)"
    assert [p.name for p, _ in payload.files] == ["best.pt"]
    assert payload.record == json.loads(json.dumps(result.to_json()))
    assert (payload.start_ms, payload.end_ms) == (1_000_000, 1_005_000)


@requires_mlflow
@given(st.lists(st.text(min_size=0, max_size=30), min_size=1, max_size=4))
def test_every_key_passes_mlflow_own_validation(segments):
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    key = mlflow_key(*segments)
    _validate_metric_name(key)
    _validate_param_name(key)
    assert key.count("/") == len(segments) - 1  # a segment never adds a folder level


@requires_mlflow
def test_artifacts_option_and_in_place_update_of_a_localizer_only_pass(tracking, tmp_path):
    task, result = make_result(tmp_path)
    ckpt = TrackingSettings(enabled=True, artifacts=("checkpoint",))
    run_id, action = cxrbench_mlflow.log_cell(task, result, ckpt)
    client = client_of(tracking)
    assert action == "created" and [a.path for a in client.list_artifacts(run_id)] == ["best.pt"]

    # a localizer-only pass: same trained cell, one more localizer, not retrained
    task2, more = make_result(tmp_path, localizers=("gradcam", "cam"), started=1000.0)
    task2.retrain = False
    more = more.replace(finished_at=2000.0)
    assert cxrbench_mlflow.log_cell(task2, more, TrackingSettings(enabled=True, artifacts=())) == (run_id, "updated")
    run = client.get_run(run_id)
    assert run.data.metrics["loc/cam/iou_mean"] == 1.25 and run.data.metrics["loc/gradcam/iou_mean"] == 0.25
    assert len(client.get_metric_history(run_id, "history/loss")) == 2  # the training's history, once
    assert len(client.get_metric_history(run_id, "auroc_mean")) == 1  # unchanged values are not logged again
    assert run.info.end_time == 2_000_000 and run.data.tags["cxrbench.localizers"] == "gradcam (ok), cam (ok)"
    assert len(active_runs(tracking, "g")) == 1


@requires_mlflow
def test_experiment_name_override_and_failed_cells_are_not_logged(tracking, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_MLFLOW_EXPERIMENT", "team-cxr")
    task, result = make_result(tmp_path)
    cxrbench_mlflow.cxrbench_cell_finished(task=task, result=result.replace(status="failed", error="x"))
    assert active_runs(tracking, "team-cxr") == []
    cxrbench_mlflow.cxrbench_cell_finished(task=task, result=result)
    (run,) = active_runs(tracking, "team-cxr")
    assert run.data.tags["cxrbench.cell_id"] == "c0ffee123456" and active_runs(tracking, "g") == []


# --------------------------------------------------------------------------- switching it on, and mistakes


def test_settings_from_the_environment():
    assert TrackingSettings.from_env({}) == TrackingSettings(enabled=False, artifacts=("record", "predictions"))
    on = TrackingSettings.from_env({"CXRBENCH_MLFLOW": " True ", "CXRBENCH_MLFLOW_ARTIFACTS": "checkpoint, record"})
    assert on.enabled and on.artifacts == ("checkpoint", "record") and on.experiment_for("grid") == "grid"
    assert TrackingSettings.from_env({"CXRBENCH_MLFLOW_ARTIFACTS": "none"}).artifacts == ()
    with pytest.raises(UsageError, match=r"^CXRBENCH_MLFLOW: expected 1 .* got 'maybe'$"):
        TrackingSettings.from_env({"CXRBENCH_MLFLOW": "maybe"})
    with pytest.raises(UsageError, match=r"^CXRBENCH_MLFLOW_ARTIFACTS: unknown artifact 'best.pt' \(valid: record, "
                                         r"predictions, checkpoint, or none\)$"):
        TrackingSettings.from_env({"CXRBENCH_MLFLOW_ARTIFACTS": "record,best.pt"})


def test_off_by_default_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRBENCH_MLFLOW", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setitem(sys.modules, "mlflow", None)  # would fail if imported
    task, result = make_result(tmp_path)
    cxrbench_mlflow.cxrbench_cells_collected(grid=SimpleNamespace(name="g"), pending=[object()])
    cxrbench_mlflow.cxrbench_cell_finished(task=task, result=result)
    assert not (tmp_path / "mlruns").exists()


def test_missing_mlflow_is_one_line_with_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRBENCH_MLFLOW", "1")
    for name in ("mlflow", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(UsageError) as info:
        cxrbench_mlflow.cxrbench_cells_collected(grid=SimpleNamespace(name="g"), pending=[object()])
    assert str(info.value) == f"plugin 'mlflow': CXRBENCH_MLFLOW=1 needs MLflow: {HINT}"
    cxrbench_mlflow._warned.clear()
    task, result = make_result(tmp_path)
    for _ in range(2):  # said once, not once per cell
        cxrbench_mlflow.cxrbench_cell_finished(task=task, result=result)
    assert capsys.readouterr().err.splitlines() == [f"warning: plugin 'mlflow': CXRBENCH_MLFLOW=1 needs MLflow: {HINT}"]


@requires_mlflow
def test_store_problems_stop_the_run_before_training(tracking, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://tracker")
    with pytest.raises(UsageError, match=r"^plugin 'mlflow': cannot use tracking store nosuchscheme://tracker: "):
        cxrbench_mlflow.cxrbench_cells_collected(grid=SimpleNamespace(name="g"), pending=[object()])
    if importlib.util.find_spec("sqlalchemy") is None:  # the client alone has no database stores
        monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlflow.db").as_uri().replace("file:", "sqlite:"))
        with pytest.raises(UsageError, match=r"database stores need the full package \(pip install mlflow\)"):
            cxrbench_mlflow.cxrbench_cells_collected(grid=SimpleNamespace(name="g"), pending=[object()])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    client = client_of(tracking)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(UsageError, match=r"experiment 'gone' is deleted in .*CXRBENCH_MLFLOW_EXPERIMENT"):
        MlflowTracker().check("gone")


def test_a_bad_setting_is_exit_code_4_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_MLFLOW", "maybe")
    grid = copy.deepcopy(TINY_GRID)
    grid.update(heads=["avg"], localizers=[], prepare=False)
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy), ("mlflow", cxrbench_mlflow)],
                              entry_points=False)
    with cli_with(pm) as invoke:
        result = invoke("run", "--grid", grid_file, "--results", tmp_path / "r", "--no-progress")
    assert result.exit_code == 4
    assert "CXRBENCH_MLFLOW: expected 1 (track finished cells in MLflow) or 0, got 'maybe'" in result.output
    assert "Traceback" not in result.output
    with ResultsStore(tmp_path / "r") as store:
        assert store.cells("tiny") == []  # nothing trained
