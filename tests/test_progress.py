"""What a run shows: plain lines off a terminal (or with --no-progress), a rich live display on one."""

from __future__ import annotations

import io
import json
import re
import types

import pytest
import yaml
from rich.console import Console

from cxrbench import cli as cli_module
from cxrbench.config import parse_grid
from cxrbench.progress import EtaEstimate, PlainProgress, RichProgress, format_eta, make_progress
from cxrbench.runner import run_grid
from cxrbench.store import ResultsStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cell(cell_id: str, head: str = "avg", seed: int = 0):
    axes = {"dataset": "toy[num_images=64]", "backbone": "tiny[width=4]", "head": head, "seed": seed}
    return types.SimpleNamespace(cell_id=cell_id, axes=axes)


def _terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)


def _screen(ui: RichProgress) -> str:
    """The live display as it is drawn now (rendered once, without the refresh thread's timing)."""
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(ui.bars.get_renderable())
    return console.file.getvalue()


def test_make_progress_picks_rich_only_on_a_terminal_when_enabled():
    assert isinstance(make_progress(_terminal(), enabled=True), RichProgress)
    assert isinstance(make_progress(_terminal(), enabled=False), PlainProgress)  # --no-progress
    assert isinstance(make_progress(Console(file=io.StringIO()), enabled=True), PlainProgress)  # a pipe or a log


@pytest.mark.parametrize("flags", [["--no-progress"], []])
def test_plain_lines_during_a_cli_run(run_cli, tmp_path, tiny_grid_dict, flags):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    result = run_cli("run", "--grid", grid, "--results", results, *flags)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    ids = [r["cell_id"] for r in json.loads(run_cli("leaderboard", "--results", results, "--format", "json",
                                                    "--filter", "localizer=cam").output)]
    assert "2 cells: 2 to run, 0 already in the store" in lines

    def index(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.fullmatch(pattern, line))

    positions = []
    for n, head in ((1, "avg"), (2, "max")):
        cid = next(c for c in ids if c in "\n".join(line for line in lines if f"/ {head} /" in line))
        start = index(rf"\[{n}/2\] start {cid} toy\[num_images=64\] / tiny\[width=4\] / {head} / seed 0")
        epochs = [index(rf"    epoch {e}/2 \(2 steps\)") for e in (1, 2)] if n == 1 else []
        finish = index(rf"\[{n}/2\] ok {cid} in \d+s auroc_mean=\d\.\d{{3}} \({n} of 2 done"
                       + (r", eta \d+:\d\d:\d\d\)" if n == 1 else r"\)"))
        positions += [start, *epochs, finish]
    assert positions == sorted(positions)  # start, epoch lines, finish; then the next cell
    # phases are printed once each, not once per batch
    assert sum(line.strip().startswith("epoch 1/2") for line in lines) == 2  # once per cell
    assert any(line.strip() == "predict (1 steps)" or line.strip() == "predict" for line in lines)
    assert any(line.strip() == "localize cam" for line in lines)
    again = run_cli("run", "--grid", grid, "--results", results, *flags)
    assert "2 cells: 0 to run, 2 already in the store" in again.output


def test_rich_display_on_a_terminal_during_a_cli_run(run_cli, tmp_path, tiny_grid_dict, monkeypatch):
    terminal = _terminal()
    monkeypatch.setattr(cli_module, "console", terminal)
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    result = run_cli("run", "--grid", grid, "--results", tmp_path / "r")
    assert result.exit_code == 0, result.output
    shown = terminal.file.getvalue()
    assert "cells (2 in grid)" in shown and "2/2" in shown and "eta" in shown
    assert "toy[num_images=64] / tiny[width=4] / avg / seed 0: ok auroc_mean=" in shown
    assert "start " not in shown  # not the plain lines
    assert "Classification leaderboard: tiny" in shown


def test_rich_display_shows_cells_epoch_batches_and_eta():
    clock = FakeClock()
    ui = RichProgress(_terminal(), clock=clock)
    ui.start(total=4, pending=3, skipped=1)
    try:
        ui.cell_started(_cell("aaaaaaaaaaaa"))
        screen = _screen(ui)
        assert "cells (4 in grid)" in screen and "0/3" in screen and "eta ?" in screen
        assert "aaaaaaaaaaaa toy[num_images=64] / tiny[width=4] / avg / seed 0" in screen
        clock.now += 26.0
        ui.progress("epoch 2/5", 3, 10)  # 26 % of the cell's training in 26 s: ~100 s per cell
        screen = _screen(ui)
        assert re.search(r"avg / seed 0 +epoch 2/5 .* 3/10", screen)
        assert "eta 0:04:34" in screen  # 3 cells x 100 s, less the 26 s spent
        clock.now += 74.0
        ui.progress("epoch 5/5", 10, 10)
        ui.cell_finished(_cell("aaaaaaaaaaaa"), {"status": "ok", "metrics": {"auroc_mean": 0.75}, "info": {}})
        screen = _screen(ui)
        assert "1/3" in screen and "eta 0:03:20" in screen  # 2 cells left at 100 s each
        ui.cell_started(_cell("bbbbbbbbbbbb", head="max"))
        clock.now += 30.0
        ui.progress("predict", 1, 4)
        screen = _screen(ui)
        assert "bbbbbbbbbbbb" in screen and re.search(r"max / seed 0 +predict .* 1/4", screen)
        assert "eta 0:02:50" in screen  # the cell in flight has used 30 of its 100 s
        ui.cell_finished(_cell("bbbbbbbbbbbb", head="max"),
                         {"status": "failed", "error": "KeyError: '[/bold] [width=4]'", "metrics": {}, "info": {}})
    finally:
        ui.stop()
    out = ui.console.file.getvalue()
    assert "1 of 4 cells already in the store (resumed)" in out
    assert "aaaaaaaaaaaa toy[num_images=64] / tiny[width=4] / avg / seed 0: ok auroc_mean=0.750" in out
    # error text with brackets is printed as is, not parsed as rich markup (which would raise)
    assert "bbbbbbbbbbbb toy[num_images=64] / tiny[width=4] / max / seed 0: failed KeyError: '[/bold] [width=4]'" in out


@pytest.mark.parametrize("width", [80, 120])
def test_rich_display_keeps_phase_counts_and_eta_visible_beside_a_long_label(width):
    # a dataset label with its options (the quickstart's is ~120 characters) must not push the
    # phase, the step counts and the ETA off a common terminal: the label is cut instead
    clock = FakeClock()
    ui = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None), clock=clock)
    label = "phantom[classes=['Cardiomegaly', 'Effusion', 'Mass', 'Nodule', 'Pneumothorax'],num_images=800]"
    cell = types.SimpleNamespace(cell_id="cccccccccccc", axes={"dataset": label, "backbone": "resnet18",
                                                               "head": "avg", "seed": 0})
    ui.start(total=3, pending=3, skipped=0)
    try:
        ui.cell_started(cell)
        clock.now += 10.0
        ui.progress("epoch 1/2", 5, 10)  # a quarter of the cell in 10 s: 40 s per cell, 110 s left
        console = Console(file=io.StringIO(), width=width, color_system=None)
        console.print(ui.bars.get_renderable())
        screen = console.file.getvalue()
    finally:
        ui.stop()
    lines = screen.splitlines()
    assert len(lines) == 2 and all(len(line) <= width for line in lines), screen
    assert "cells (3 in grid)" in lines[0] and "0/3" in lines[0] and "eta 0:01:50" in lines[0], screen
    assert "cccccccccccc phan" in lines[1] and "…" in lines[1], screen
    assert re.search(r"epoch 1/2 .* 5/10", lines[1]), screen


def test_eta_estimate():
    clock = FakeClock()
    eta = EtaEstimate(clock)
    eta.start(pending=4)
    assert eta.seconds() is None  # nothing to go on yet
    eta.progress("load train", 0, 1)
    assert eta.seconds() is None
    clock.now += 10.0
    eta.progress("epoch 1/2", 5, 10)  # a quarter of the training in 10 s
    assert eta.seconds() == pytest.approx(4 * 40 - 10)
    clock.now += 30.0
    eta.cell_finished()
    assert eta.seconds() == pytest.approx(3 * 40)
    clock.now += 100.0  # the current cell runs long: still at least the cells after it
    assert eta.seconds() == pytest.approx(2 * 40)
    for _ in range(3):
        eta.cell_finished()
    assert eta.seconds() == 0.0
    assert format_eta(None) == "?" and format_eta(0) == "0:00:00" and format_eta(3723.4) == "1:02:03"


def test_training_callbacks_reach_the_display(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    calls = []

    class Recording(RichProgress):
        def cell_started(self, cell):
            calls.append(("started", cell.cell_id))
            super().cell_started(cell)

        def progress(self, phase, done, total):
            calls.append((phase, done, total))
            super().progress(phase, done, total)

        def cell_finished(self, cell, result):
            calls.append(("finished", cell.cell_id))
            super().cell_finished(cell, result)

    ui = Recording(_terminal())
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path / "r") as store:
        summary = run_grid(grid, toy_pm, store, ui=ui)
    assert summary.ok == 2
    # 64 toy images: 32 train, batch 16 -> 2 steps per epoch, 2 epochs, for each cell
    for epoch in (1, 2):
        assert [c for c in calls if c[0] == f"epoch {epoch}/2"] == [(f"epoch {epoch}/2", 1, 2),
                                                                  (f"epoch {epoch}/2", 2, 2)] * 2
    assert any(c[0] == "predict" and c[1] == c[2] for c in calls)
    assert {c[0] for c in calls} >= {"load train", "load test", "localize cam", "localize gradcam"}
    events = [c for c in calls if c[0] in ("started", "finished")]
    assert [e[0] for e in events] == ["started", "finished"] * 2
    assert events[0][1] == events[1][1] != events[2][1] == events[3][1]
    first_cell = calls[: calls.index(events[1])]
    assert ("epoch 2/2", 2, 2) in first_cell  # the callbacks arrive while the cell runs, before it finishes
    overall = ui.bars.tasks[ui.overall]
    assert (overall.completed, overall.total) == (2, 2)
    assert "2/2" in _screen(ui) and "eta 0:00:00" in _screen(ui)
