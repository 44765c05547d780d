"""Executors as plugins: process workers and a local Ray instance give the same records."""

import io
import multiprocessing
import os
import re
import textwrap

import pytest
from helpers import store_records
from rich.console import Console

from cxrbench.config import parse_grid
from cxrbench.driver import RunDisplay, run_grid
from cxrbench.events import Event, Progress, QueueEvents, RunEvents
from cxrbench.manager import build_plugin_manager
from cxrbench.progress import PlainProgress
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from tests.conftest import REPO

WARNING_PLUGIN = textwrap.dedent('''
    """A toy dataset that warns when it is built, naming the process that built it."""
    import os

    import cxrbench
    from tests.plugins.toy import ToyDataset


    class WarningToyDataset(ToyDataset):
        NAME = "warning_toy"

        def __init__(self, options, context):
            super().__init__(options, context)
            context.warn(f"toy data [bold]built[/bold] in pid {os.getpid()}")


    @cxrbench.hookimpl
    def cxrbench_register_datasets():
        return WarningToyDataset
''')


def _plugins_from_env(monkeypatch, modules, *paths):
    """Workers see ``modules`` through CXRBENCH_PLUGINS and the repository (and ``paths``) on PYTHONPATH."""
    monkeypatch.setenv("CXRBENCH_PLUGINS", ",".join(modules))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), *map(str, paths),
                                                                   os.environ.get("PYTHONPATH")])))
    for path in (REPO, *paths):
        monkeypatch.syspath_prepend(str(path))
    pm = build_plugin_manager()
    return pm, Registry.from_plugin_manager(pm)


@pytest.fixture
def env_plugins(monkeypatch):
    """Workers see the toy plugin through CXRBENCH_PLUGINS and the repository on PYTHONPATH."""
    return _plugins_from_env(monkeypatch, ["tests.plugins.toy"])


@pytest.fixture
def warning_plugins(monkeypatch, tmp_path_factory):
    """The toy plugin and a dataset that warns when built, importable in worker processes too."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "cxrbench_test_warning_toy.py").write_text(WARNING_PLUGIN)
    return _plugins_from_env(monkeypatch, ["tests.plugins.toy", "cxrbench_test_warning_toy"], folder)


def run_with(executor, env_plugins, tiny_grid_dict, tmp_path, display=None):
    pm, registry = env_plugins
    tiny_grid_dict["executor"] = executor
    tiny_grid_dict["localizers"] = ["cam"]
    grid = parse_grid(tiny_grid_dict, registry)
    with ResultsStore(tmp_path / executor["name"]) as store:
        summary = run_grid(grid, pm, store, display=display)
        return summary, store_records(store, grid.name)


class RecordingDisplay(RunDisplay):
    """Records what a run display is told (and passes it on to ``inner``, a real display)."""

    def __init__(self, inner=None):
        self.events = []
        self.inner = inner or RunDisplay()

    def start(self, total, pending, skipped, labels=None):
        self.events.append(("start", pending, dict(labels or {})))
        self.inner.start(total, pending, skipped, labels)

    def cell_started(self, cell_id, worker=None):
        self.events.append(("cell_started", cell_id, worker))
        self.inner.cell_started(cell_id, worker)

    def progress(self, cell_id, progress):
        self.events.append(("progress", cell_id, progress))
        self.inner.progress(cell_id, progress)

    def warning(self, cell_id, message):
        self.events.append(("warning", cell_id, message))
        self.inner.warning(cell_id, message)

    def cell_retried(self, cell_id, attempt, reason):
        self.events.append(("cell_retried", cell_id, attempt, reason))
        self.inner.cell_retried(cell_id, attempt, reason)

    def cell_finished(self, result):
        self.events.append(("cell_finished", result.cell_id, result))
        self.inner.cell_finished(result)

    def stop(self):
        self.events.append(("stop",))
        self.inner.stop()

    def kinds(self):
        return [e[0] for e in self.events]

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


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
    display = RecordingDisplay()
    tiny_grid_dict["heads"] = ["avg"]
    summary, records = run_with({"name": "process", "options": {"workers": 1, "threads_per_worker": 1}},
                                env_plugins, tiny_grid_dict, tmp_path, display=display)
    assert summary.ok == 1
    kinds = display.kinds()
    cell_id = records[0]["cell_id"]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert display.events[0][1:] == (1, {cell_id: "toy / tiny / avg / seed 0"})
    # the start comes from the worker when it begins the cell, before its progress and its result
    assert kinds.index("cell_started") < kinds.index("progress") < kinds.index("cell_finished")
    (started,) = display.of("cell_started")
    assert started[1] == cell_id and re.fullmatch(r"worker 1 \(pid \d+\)", started[2]), started
    assert f"pid {os.getpid()})" not in started[2]  # the worker's process, not the driver's
    progress = display.of("progress")
    assert {e[1] for e in progress} == {cell_id}
    assert all(isinstance(e[2], Progress) for e in progress)
    assert {"train epoch 1/2", "train epoch 2/2", "predict test", "localize cam"} <= {e[2].label() for e in progress}
    for epoch in (1, 2):  # every step of each epoch arrives, then the epoch's end
        steps = [e[2] for e in progress if e[2].label() == f"train epoch {epoch}/2"]
        assert [(p.done, p.total) for p in steps] == [(1, 2), (2, 2), (2, 2)]
    assert display.of("cell_finished")[0][1] == cell_id


def test_process_worker_warnings_reach_the_display(warning_plugins, tiny_grid_dict, tmp_path):
    console = Console(file=io.StringIO(), width=200, color_system=None)
    display = RecordingDisplay(PlainProgress(console))
    tiny_grid_dict["datasets"] = [{"name": "warning_toy", "options": {"num_images": 64, "image_size": 32}}]
    tiny_grid_dict["heads"] = ["avg"]
    tiny_grid_dict["train"]["epochs"] = 1
    summary, records = run_with({"name": "process", "options": {"workers": 1, "threads_per_worker": 1}},
                                warning_plugins, tiny_grid_dict, tmp_path, display=display)
    assert summary.ok == 1
    cell_id = records[0]["cell_id"]
    driver_warning = f"toy data [bold]built[/bold] in pid {os.getpid()}"
    # the driver builds the dataset once to fingerprint it: that warning has no cell
    assert ("warning", None, driver_warning) in display.events
    # the worker's own warning, relayed through the queue, names its cell and arrives before the result
    from_cell = [e for e in display.of("warning") if e[1] == cell_id]
    assert len(from_cell) == 1, display.of("warning")
    message = from_cell[0][2]
    assert message.startswith("toy data [bold]built[/bold] in pid ") and message != driver_warning
    assert display.events.index(from_cell[0]) < display.kinds().index("cell_finished")
    # the result keeps it too (for executors that cannot relay events live)
    assert message in display.of("cell_finished")[0][2].warnings
    # the plain display prints it once, on one line, markup as is, before the cell's result line
    lines = console.file.getvalue().splitlines()
    warned = [i for i, line in enumerate(lines) if line == f"warning: cell {cell_id}: {message}"]
    finished = [i for i, line in enumerate(lines) if line.startswith(f"[1/1] ok {cell_id} ")]
    assert len(warned) == 1 and len(finished) == 1 and warned[0] < finished[0], lines
    assert f"warning: {driver_warning}" in lines


def _emit_events(channel) -> None:
    """In a spawned process: report a cell's events through the queue, as a worker does."""
    events = QueueEvents(channel)
    events.cell_started("aaaaaaaaaaaa", f"pid {os.getpid()}")
    events.progress("aaaaaaaaaaaa", Progress("train", 2, 2, epoch=1, epochs=2, loss=0.5, val_auroc=0.75))
    events.warning("aaaaaaaaaaaa", "unreadable [bold]image[/bold]")
    events.warning(None, "no cell")
    events.cell_retried("aaaaaaaaaaaa", 2, "worker died")
    channel.put(Event("from_a_newer_worker", ("aaaaaaaaaaaa",)))
    channel.put(Event("__init__", ()))  # only the run events' methods are called


def test_queue_events_round_trip_through_a_spawned_process():
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    worker = context.Process(target=_emit_events, args=(channel,))
    worker.start()
    try:
        received = [channel.get(timeout=60) for _ in range(7)]
    finally:
        worker.join(timeout=60)
    assert worker.exitcode == 0
    assert all(isinstance(event, Event) for event in received)

    class Recording(RunEvents):
        def __init__(self):
            self.calls = []

        def cell_started(self, cell_id, worker=None):
            self.calls.append(("cell_started", cell_id, worker))

        def progress(self, cell_id, progress):
            self.calls.append(("progress", cell_id, progress))

        def warning(self, cell_id, message):
            self.calls.append(("warning", cell_id, message))

        def cell_retried(self, cell_id, attempt, reason):
            self.calls.append(("cell_retried", cell_id, attempt, reason))

    recording = Recording()
    for event in received:
        event.deliver(recording)
    assert recording.calls == [
        ("cell_started", "aaaaaaaaaaaa", f"pid {worker.pid}"),
        ("progress", "aaaaaaaaaaaa", Progress("train", 2, 2, epoch=1, epochs=2, loss=0.5, val_auroc=0.75)),
        ("warning", "aaaaaaaaaaaa", "unreadable [bold]image[/bold]"),
        ("warning", None, "no cell"),
        ("cell_retried", "aaaaaaaaaaaa", 2, "worker died"),
    ]
    for event in received:  # the no-op defaults take every event
        event.deliver(RunEvents())


def test_queue_events_never_fail_the_cell_on_a_closed_queue():
    class Closed:
        def put(self, item):
            raise ValueError("Queue is closed")

    QueueEvents(Closed()).warning("aaaaaaaaaaaa", "lost, silently")
    QueueEvents(Closed()).progress("aaaaaaaaaaaa", Progress("load", 0, 1, detail="train"))


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(warning_plugins, tiny_grid_dict, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    display = RecordingDisplay()
    tiny_grid_dict["datasets"] = [{"name": "warning_toy", "options": {"num_images": 64, "image_size": 32}}]
    summary, records = run_with({"name": "ray", "options": {"num_cpus": 1, "local_cpus": 2}}, warning_plugins,
                                tiny_grid_dict, tmp_path, display=display)
    assert (summary.ok, summary.failed) == (2, 0), records
    assert all(r["status"] == "ok" and "iou_mean" in r["metrics"] for r in records)
    cell_ids = {r["cell_id"] for r in records}
    # each cell's start comes from the node that runs it, naming that node
    assert {e[1] for e in display.of("cell_started")} == cell_ids
    assert all(e[2].startswith("node ") for e in display.of("cell_started")), display.of("cell_started")
    # Ray tasks do not relay events live: each cell's warnings come with its result, before it is recorded
    for cell_id in cell_ids:
        warned = [e for e in display.of("warning") if e[1] == cell_id]
        assert len(warned) == 1 and warned[0][2].startswith("toy data [bold]built[/bold] in pid "), warned
        finished = next(e for e in display.events if e[0] == "cell_finished" and e[1] == cell_id)
        assert display.events.index(warned[0]) < display.events.index(finished)


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
