"""Executors as plugins: process workers and a local Ray instance give the same records."""

import os

import pytest

from cxrbench.config import parse_grid
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry
from cxrbench.runner import run_grid
from cxrbench.store import ResultsStore
from tests.conftest import REPO


@pytest.fixture
def env_plugins(monkeypatch):
    """Workers see the toy plugin through CXRBENCH_PLUGINS and the repository on PYTHONPATH."""
    monkeypatch.setenv("CXRBENCH_PLUGINS", "tests.plugins.toy")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(REPO))
    pm = build_plugin_manager()
    return pm, Registry.from_plugin_manager(pm)


def run_with(executor, env_plugins, tiny_grid_dict, tmp_path, ui=None):
    pm, registry = env_plugins
    tiny_grid_dict["executor"] = executor
    tiny_grid_dict["localizers"] = ["cam"]
    grid = parse_grid(tiny_grid_dict, registry)
    with ResultsStore(tmp_path / executor["name"]) as store:
        summary = run_grid(grid, pm, store, ui=ui)
        return summary, store.records(grid.name)


class RecordingUI:
    """Records what a progress display is told."""

    def __init__(self):
        self.events = []

    def start(self, total, pending, skipped):
        self.events.append(("start", pending))

    def cell_started(self, cell):
        self.events.append(("cell_started", cell.cell_id))

    def progress(self, phase, done, total):
        self.events.append(("progress", phase, done, total))

    def cell_finished(self, cell, result):
        self.events.append(("cell_finished", cell.cell_id))

    def stop(self):
        self.events.append(("stop",))


def test_env_plugins_are_loaded(env_plugins):
    pm, registry = env_plugins
    assert "tests.plugins.toy" in pm.infos
    assert registry.get("dataset", "toy").__name__ == "ToyDataset"


def test_process_executor_matches_local(env_plugins, tiny_grid_dict, tmp_path):
    local, local_records = run_with({"name": "local"}, env_plugins, tiny_grid_dict, tmp_path)
    proc, proc_records = run_with({"name": "process", "options": {"workers": 2, "threads_per_worker": 1}},
                                  env_plugins, tiny_grid_dict, tmp_path)
    assert (proc.ok, proc.failed) == (2, 0)
    assert {r["cell_id"] for r in proc_records} == {r["cell_id"] for r in local_records}
    by_id = {r["cell_id"]: r["metrics"]["auroc_mean"] for r in local_records}
    for r in proc_records:
        assert r["metrics"]["auroc_mean"] == pytest.approx(by_id[r["cell_id"]], abs=1e-6)


def test_process_workers_report_starts_and_epoch_progress(env_plugins, tiny_grid_dict, tmp_path):
    ui = RecordingUI()
    tiny_grid_dict["heads"] = ["avg"]
    summary, records = run_with({"name": "process", "options": {"workers": 1, "threads_per_worker": 1}},
                                env_plugins, tiny_grid_dict, tmp_path, ui=ui)
    assert summary.ok == 1
    kinds = [e[0] for e in ui.events]
    cell_id = records[0]["cell_id"]
    # the start comes from the worker when it begins the cell, before its progress and its result
    assert kinds.index("cell_started") < kinds.index("progress") < kinds.index("cell_finished")
    assert ("cell_started", cell_id) in ui.events
    phases = {e[1] for e in ui.events if e[0] == "progress"}
    assert {"epoch 1/2", "epoch 2/2"} <= phases


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(env_plugins, tiny_grid_dict, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    summary, records = run_with({"name": "ray", "options": {"num_cpus": 1, "local_cpus": 2}}, env_plugins,
                                tiny_grid_dict, tmp_path)
    assert (summary.ok, summary.failed) == (2, 0), records
    assert all(r["status"] == "ok" and "iou_mean" in r["metrics"] for r in records)


def test_ray_missing_is_a_usage_error(monkeypatch, env_plugins, tiny_grid_dict, tmp_path):
    import builtins

    from cxrbench.errors import UsageError

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UsageError, match=r'pip install "cxrbench\[ray\]"'):
        run_with({"name": "ray"}, env_plugins, tiny_grid_dict, tmp_path)
