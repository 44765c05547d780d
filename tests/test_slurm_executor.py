"""The slurm executor (submitit), run on submitit's local cluster: no Slurm is needed here."""

import os
import re
import sys
import textwrap
import types

import pytest
from helpers import store_records

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.errors import ConfigError, UsageError
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from tests.conftest import REPO
from tests.test_executors import RecordingDisplay, _plugins_from_env, run_with

submitit = pytest.importorskip("submitit", reason="the slurm extra is not installed")

SLURM_LOCAL = {"name": "slurm", "options": {"cluster": "local", "poll_s": 0.2, "cpus_per_task": 1,
                                            "timeout_min": 10}}

KILLING_PLUGIN = textwrap.dedent('''
    """Kills the process running a cell: a job that dies without a result (as OOM-killed or preempted)."""
    import os

    import cxrbench


    @cxrbench.hookimpl(tryfirst=True)
    def cxrbench_run_cell(task, reporter):
        os._exit(3)
''')

DRIVER_ONLY_PLUGIN = textwrap.dedent('''
    """A toy dataset importable on the driver only: jobs cannot unpickle their task."""
    import cxrbench
    from tests.plugins.toy import ToyDataset


    class DriverOnlyToy(ToyDataset):
        NAME = "driver_only_toy"


    @cxrbench.hookimpl
    def cxrbench_register_datasets():
        return DriverOnlyToy
''')


@pytest.fixture
def env_plugins(monkeypatch):
    """Jobs (local processes) see the toy plugin through CXRBENCH_PLUGINS and PYTHONPATH."""
    return _plugins_from_env(monkeypatch, ["tests.plugins.toy"])


def _one_cell(grid):
    grid["heads"] = ["avg"]
    grid["train"]["epochs"] = 1
    return grid


def test_local_cluster_matches_local_executor(env_plugins, tiny_grid_dict, tmp_path):
    tiny_grid_dict["train"]["threads"] = 1  # the same threads, so the same numbers on CPU
    _, local_records = run_with({"name": "local"}, env_plugins, tiny_grid_dict, tmp_path)
    display = RecordingDisplay()
    summary, records = run_with(SLURM_LOCAL, env_plugins, tiny_grid_dict, tmp_path, display=display)
    assert (summary.ok, summary.failed) == (2, 0), records
    assert {r["cell_id"] for r in records} == {r["cell_id"] for r in local_records}
    assert all(r["status"] == "ok" for r in records)
    by_key = {(r["cell_id"], r["localizer"]): r for r in local_records}
    for r in records:
        expected = by_key[(r["cell_id"], r["localizer"])]
        assert r["metrics"]["auroc_mean"] == pytest.approx(expected["metrics"]["auroc_mean"], abs=1e-6)
        assert r["metrics"]["iou_mean"] == pytest.approx(expected["metrics"]["iou_mean"], abs=1e-6)
    # each cell started as its own job, in another process, whose id the display is told
    started = display.of("cell_started")
    assert {e[1] for e in started} == {r["cell_id"] for r in records}
    assert all(re.fullmatch(r"slurm job \S+ on \S+", e[2]) for e in started), started
    kinds = display.kinds()
    assert kinds.index("cell_started") < kinds.index("progress") < kinds.index("cell_finished")
    # progress came live from the jobs' events files: each cell's epoch end with its loss
    for cell_id in {r["cell_id"] for r in records}:
        ends = [e[2] for e in display.of("progress") if e[1] == cell_id and e[2].epoch_end]
        assert ends and ends[0].loss is not None, display.of("progress")
    # the checkpoints were written by the jobs into the cells' folders; submitit's logs under the results
    results = tmp_path / "slurm"
    for cell_id in {r["cell_id"] for r in records}:
        assert (results / "cells" / cell_id / "best.pt").is_file()
    assert any((results / "slurm").glob("*_log.err"))


def test_a_job_that_raises_is_a_failed_cell_naming_the_job(monkeypatch, tiny_grid_dict, tmp_path):
    folder = tmp_path / "driver_only"
    folder.mkdir()
    (folder / "cxrbench_test_driver_only.py").write_text(DRIVER_ONLY_PLUGIN)
    pm, registry = _plugins_from_env(monkeypatch, ["tests.plugins.toy"])  # jobs get the toy only
    monkeypatch.syspath_prepend(str(folder))
    import cxrbench_test_driver_only

    pm.register(cxrbench_test_driver_only, "driver_only")
    registry = Registry.from_plugin_manager(pm)
    grid_dict = _one_cell(tiny_grid_dict)
    grid_dict["datasets"] = [{"name": "driver_only_toy", "options": {"num_images": 64, "image_size": 32}}]
    summary, records = run_with(SLURM_LOCAL, (pm, registry), grid_dict, tmp_path)
    assert (summary.ok, summary.failed) == (0, 1)
    (record,) = records
    error = record["error"]
    assert "\n" not in error
    assert error.startswith("slurm job ") and "ModuleNotFoundError" in error and "cxrbench_test_driver_only" in error
    job_id = error.split()[2]
    assert job_id.isdigit()
    log = tmp_path / "slurm" / "slurm" / f"{job_id}_0_log.err"
    assert f"(log {log})" in error and log.is_file()
    with ResultsStore(tmp_path / "slurm") as store:
        assert "ModuleNotFoundError" in store.cell(record["cell_id"]).traceback


def test_a_killed_job_is_a_failed_cell_and_the_run_goes_on(monkeypatch, tiny_grid_dict, tmp_path):
    folder = tmp_path / "killing"
    folder.mkdir()
    (folder / "cxrbench_test_killing.py").write_text(KILLING_PLUGIN)
    pm, registry = _plugins_from_env(monkeypatch, ["tests.plugins.toy"])
    # only the jobs, started after this, load the killing hook: the driver never runs a cell itself
    monkeypatch.setenv("CXRBENCH_PLUGINS", "tests.plugins.toy,cxrbench_test_killing")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(folder)]))
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)  # no result pickle will come
    summary, records = run_with(SLURM_LOCAL, (pm, registry), _one_cell(tiny_grid_dict), tmp_path)
    assert (summary.ok, summary.failed) == (0, 1)
    error = records[0]["error"]
    assert error.startswith("slurm job ") and "ended without a result" in error and "_log.err)" in error


def test_options_errors_are_one_line(env_plugins, tiny_grid_dict):
    _, registry = env_plugins
    cases = [({"cluster": "pbs"}, "executor.options.cluster"), ({"timeout_min": 0}, "executor.options.timeout_min"),
             ({"cpus_per_task": "four"}, "executor.options.cpus_per_task"),
             ({"additional_parameters": {"time": 5}}, "executor.options"), ({"gpu": 1}, "executor.options.gpu")]
    for options, where in cases:
        tiny_grid_dict["executor"] = {"name": "slurm", "options": options}
        with pytest.raises(ConfigError) as info:
            parse_grid(tiny_grid_dict, registry)
        message = str(info.value)
        assert "\n" not in message and where in message, message


def test_slurm_cluster_without_sbatch_is_one_line(monkeypatch, env_plugins, tiny_grid_dict, tmp_path):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name in ("sbatch", "srun")
                        else real_which(name, *a, **k))
    with pytest.raises(UsageError, match="sbatch is not on the PATH") as info:
        run_with({"name": "slurm", "options": {"cluster": "slurm"}}, env_plugins, _one_cell(tiny_grid_dict),
                 tmp_path)
    assert "\n" not in str(info.value)


def test_submitit_missing_is_a_usage_error(monkeypatch, env_plugins, tiny_grid_dict, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    with pytest.raises(UsageError, match=r'pip install "cxrbench\[slurm\]"'):
        run_with({"name": "slurm"}, env_plugins, _one_cell(tiny_grid_dict), tmp_path)


class _FakeJob:
    def __init__(self, job_id):
        self.job_id = job_id
        self.cancelled = False

    def done(self):
        return False

    def cancel(self, check=True):
        self.cancelled = True


class _FakeAutoExecutor:
    jobs: list = []

    def __init__(self, folder, cluster=None):
        self.folder, self.cluster = folder, cluster or "local"

    def update_parameters(self, **kwargs):
        self.parameters = kwargs

    def map_array(self, fn, *iterables):
        jobs = [_FakeJob(str(100 + i)) for i, _ in enumerate(iterables[0])]
        _FakeAutoExecutor.jobs.extend(jobs)
        return jobs


def test_interrupt_cancels_the_pending_jobs(monkeypatch, tmp_path):
    import cxrbench_slurm

    _FakeAutoExecutor.jobs = []
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=_FakeAutoExecutor))

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(cxrbench_slurm.time, "sleep", interrupted)
    tasks = [types.SimpleNamespace(cell_id=f"cell{i}", cell_dir=str(tmp_path / "cells" / f"cell{i}")) for i in range(3)]
    display = RecordingDisplay()
    executor = cxrbench_slurm.SlurmExecutor(cxrbench_slurm.SlurmOptions(cluster="local", array_parallelism=2))
    with pytest.raises(KeyboardInterrupt):
        executor.run(tasks, lambda result: pytest.fail("no job finished"), display)
    # the first wave of array_parallelism jobs was submitted, and every one of them cancelled
    assert [job.job_id for job in _FakeAutoExecutor.jobs] == ["100", "101"]
    assert all(job.cancelled for job in _FakeAutoExecutor.jobs)
    assert display.of("cell_started") == []  # queued jobs that never ran are not shown as started


def test_debug_cluster_runs_cells_in_the_driver(env_plugins, tiny_grid_dict, tmp_path):
    pm, registry = env_plugins
    tiny_grid_dict["executor"] = {"name": "slurm", "options": {"cluster": "debug"}}
    grid = parse_grid(_one_cell(tiny_grid_dict), registry)
    with ResultsStore(tmp_path / "debug") as store:
        summary = run_grid(grid, pm, store)
        assert (summary.ok, summary.failed, summary.interrupted) == (1, 0, False)
        assert store_records(store, grid.name)[0]["status"] == "ok"
