"""The ``process`` executor's pool: a dead worker costs only its cell; no worker outlives the driver.

Regressions of issue 18, items 2 and 8: with ``ProcessPoolExecutor``, one killed worker
failed every cell still running or queued (``BrokenProcessPool``, twice for cells that had
never started), and after a SIGKILL of the driver two workers were alive 90 s later.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from test_executors import _plugins_from_env

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.store import ResultsStore
from tests.conftest import REPO

KILLER_PLUGIN = textwrap.dedent('''
    """Kills the worker running seed 1's cells (as the kernel's OOM killer would); others run normally."""
    import os
    import signal
    import time

    import cxrbench


    @cxrbench.hookimpl(tryfirst=True)
    def cxrbench_run_cell(task, reporter):
        marker = os.environ.get("CXRBENCH_TEST_PIDS")
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()}\\n")
        if os.environ.get("CXRBENCH_TEST_SLEEP"):
            time.sleep(float(os.environ["CXRBENCH_TEST_SLEEP"]))
        if task.cell.seed == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return None
''')


@pytest.fixture
def killer_plugins(monkeypatch, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "cxrbench_test_killer.py").write_text(KILLER_PLUGIN)
    return _plugins_from_env(monkeypatch, ["tests.plugins.toy", "cxrbench_test_killer"], folder)


def test_a_killed_worker_fails_only_its_own_cell(killer_plugins, tiny_grid_dict, tmp_path):
    pm, registry = killer_plugins
    tiny_grid_dict.update(seeds=[0, 1, 2], heads=["avg"], localizers=["cam"],
                          executor={"name": "process", "options": {"workers": 1, "threads_per_worker": 1}})
    grid = parse_grid(tiny_grid_dict, registry)
    with ResultsStore(tmp_path / "results") as store:
        summary = run_grid(grid, pm, store)
        by_seed = {c.axes.seed: c for c in store.cells(grid.name)}
    # one worker: seed 1's death comes after seed 0 and before seed 2, which never started yet
    assert (summary.ok, summary.failed) == (2, 1)
    assert by_seed[0].status == by_seed[2].status == "ok"
    assert by_seed[1].status == "failed"
    assert "worker process died (killed by SIGKILL)" in by_seed[1].error
    assert by_seed[2].metrics["auroc_mean"] == by_seed[2].metrics["auroc_mean"]  # a real number


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose; its parent (init) reaps it
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_within_seconds_of_a_killed_driver(killer_plugins, tiny_grid_dict, tmp_path):
    pids_file = tmp_path / "worker-pids"
    tiny_grid_dict.update(seeds=[0, 2], heads=["avg"], localizers=[],
                          executor={"name": "process", "options": {"workers": 2, "threads_per_worker": 1}})
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(tiny_grid_dict))
    env = {**os.environ, "CXRBENCH_TEST_PIDS": str(pids_file), "CXRBENCH_TEST_SLEEP": "120"}
    driver = subprocess.Popen([sys.executable, "-m", "cxrbench.cli", "run", "--grid", str(tmp_path / "grid.yaml"),
                               "--results", str(tmp_path / "results"), "--no-progress"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else []
            if len(pids) == 2:
                break
            time.sleep(0.2)
        assert len(pids) == 2, "the two workers never started their cells"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        survivors = [p for p in pids if _alive(p)]
        assert not survivors, f"workers {survivors} outlived their driver by 5 s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)


def test_exit_reason_names_the_signal():
    from cxrbench_executors.pool import exit_reason

    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(3) == "exit code 3"
    assert json.dumps(exit_reason(None))
