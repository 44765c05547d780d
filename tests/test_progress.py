"""What a run shows: plain lines off a terminal (or with --no-progress), a rich live display on one."""

from __future__ import annotations

import io
import json
import re

import pytest
import yaml
from rich.console import Console

from cxrbench import cli as cli_module
from cxrbench.config import parse_grid
from cxrbench.driver import RunDisplay, run_grid
from cxrbench.events import Progress
from cxrbench.progress import EtaEstimate, PlainProgress, RichProgress, format_eta, make_progress, phase_text
from cxrbench.records import CellAxes, CellResult
from cxrbench.store import ResultsStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


DATASET, BACKBONE = "toy[num_images=64]", "tiny[width=4]"


def _label(head: str = "avg", seed: int = 0, dataset: str = DATASET, backbone: str = BACKBONE) -> str:
    """The ``dataset / backbone / head / seed N`` line the driver passes to ``RunDisplay.start``."""
    return f"{dataset} / {backbone} / {head} / seed {seed}"


def _result(cell_id: str, head: str = "avg", *, status: str = "ok", error: str | None = None,
            auroc: float | None = None, seconds: float = 0.0) -> CellResult:
    return CellResult(cell_id=cell_id, grid="tiny", axes=CellAxes(DATASET, BACKBONE, head, 0), status=status,
                      error=error, metrics={} if auroc is None else {"auroc_mean": auroc},
                      info={"duration_s": seconds})


def _train(epoch: int, done: int, total: int = 10, epochs: int = 5, **figures) -> Progress:
    return Progress("train", done, total, epoch=epoch, epochs=epochs, **figures)


def _terminal(width: int = 160) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def _screen(ui: RichProgress, width: int = 160) -> str:
    """The live display as it is drawn now (rendered once, without the refresh thread's timing)."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(ui.bars.get_renderable())
    return console.file.getvalue()


def _plain() -> tuple[PlainProgress, FakeClock]:
    clock = FakeClock()
    return PlainProgress(Console(file=io.StringIO(), width=80, color_system=None), clock=clock), clock


def _lines(ui: PlainProgress) -> list[str]:
    return ui.console.file.getvalue().splitlines()


def test_progress_labels_and_fractions():
    assert Progress("train", 3, 10, epoch=2, epochs=5).label() == "train epoch 2/5"
    assert Progress("train", 3, 10, epoch=2).label() == "train epoch 2/?"
    assert Progress("predict", 1, 4, detail="test").label() == "predict test"
    assert Progress("localize", 0, 1, detail="cam").label() == "localize cam"
    assert Progress("load", 0, 1, detail="train").label() == "load train"
    assert Progress("sanity").label() == "sanity"
    # training: the fraction of all epochs; other phases: of the phase
    assert Progress("train", 3, 10, epoch=2, epochs=5).fraction() == pytest.approx(0.26)
    assert Progress("train", 10, 10, epoch=5, epochs=5).fraction() == 1.0
    assert Progress("predict", 1, 4, detail="test").fraction() == 0.25
    assert Progress("load", 0, 0, detail="train").fraction() is None  # unknown total
    # live figures: loss, and the validation AUROC once there is one (not NaN)
    assert phase_text(_train(2, 3, loss=0.41234)) == "train epoch 2/5 loss 0.412"
    assert phase_text(_train(2, 3, loss=0.41234, val_auroc=0.8031)) == "train epoch 2/5 loss 0.412 val AUROC 0.803"
    assert phase_text(_train(2, 3, loss=0.5, val_auroc=float("nan"))) == "train epoch 2/5 loss 0.500"
    assert phase_text(Progress("predict", 1, 4, detail="val")) == "predict val"


def test_make_progress_picks_rich_only_on_a_terminal_when_enabled():
    assert isinstance(make_progress(_terminal(), enabled=True), RichProgress)
    assert isinstance(make_progress(_terminal(), enabled=False), PlainProgress)  # --no-progress
    assert isinstance(make_progress(Console(file=io.StringIO()), enabled=True), PlainProgress)  # a pipe or a log
    assert all(isinstance(make_progress(_terminal(), enabled=e), RunDisplay) for e in (True, False))


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
    assert "2 cells: 2 to train, 0 done" in lines

    def index(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.fullmatch(pattern, line)]
        assert found, f"no line matches {pattern!r}:\n{result.output}"
        return found[0]

    def count(pattern: str) -> int:
        return sum(bool(re.fullmatch(pattern, line)) for line in lines)

    positions = []
    for n, head in ((1, "avg"), (2, "max")):
        cid = next(c for c in ids if c in "\n".join(line for line in lines if f"/ {head} /" in line))
        short = re.escape(cid[:8])
        # one dataset and one backbone in the grid: their short labels are the bare names
        start = index(rf"\[{n}/2\] start {cid} toy / tiny / {head} / seed 0 \(on pid \d+\)")
        epochs = [index(rf"    {short} train epoch {e}/2 \(2 steps\)") for e in (1, 2)]
        finish = index(rf"\[{n}/2\] ok {cid} in \d+s auroc_mean=\d\.\d{{3}} \({n} of 2 done"
                       + (r", eta \d+:\d\d:\d\d\)" if n == 1 else r"\)"))
        positions += [start, *epochs, finish]
        # phases are printed once each per cell, not once per batch
        for e in (1, 2):
            assert count(rf"    {short} train epoch {e}/2 \(2 steps\)") == 1
            # and the epoch's end with its loss (and val AUROC, unless undefined on the tiny split)
            assert count(rf"    {short} train epoch {e}/2 loss \d\.\d{{3}}( val AUROC \d\.\d{{3}})?") >= 1
        for phase in ("load train", "load test", "predict test", "localize cam", "localize gradcam"):
            assert count(rf"    {short} {phase}( \(\d+ steps\))?") == 1, phase
    assert positions == sorted(positions)  # start, epoch lines, finish; then the next cell
    again = run_cli("run", "--grid", grid, "--results", results, *flags)
    assert "2 cells: 0 to train, 2 done" in again.output


def test_rich_display_on_a_terminal_during_a_cli_run(run_cli, tmp_path, tiny_grid_dict, monkeypatch):
    terminal = _terminal()
    monkeypatch.setattr(cli_module, "console", terminal)
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    result = run_cli("run", "--grid", grid, "--results", tmp_path / "r")
    assert result.exit_code == 0, result.output
    shown = terminal.file.getvalue()
    assert "cells (2 in grid)" in shown and "2/2" in shown and "eta" in shown
    assert f"{_label('avg', dataset='toy', backbone='tiny')}: ok auroc_mean=" in shown
    assert "2 cells: 2 to train, 0 done" in shown
    assert "start " not in shown  # not the plain lines
    assert "Classification leaderboard: tiny" in shown


def test_plain_prints_one_line_per_epoch_with_loss_and_val_auroc():
    # the sequence train_model reports: every step (running loss, the previous epoch's val AUROC),
    # then once more after the epoch's validation with its exact loss and val AUROC
    ui, _clock = _plain()
    ui.start(total=1, pending=1, skipped=0, labels={"aaaaaaaaaaaa": _label()})
    ui.cell_started("aaaaaaaaaaaa")
    val = {1: 0.6104, 2: 0.7251}
    for epoch in (1, 2):
        previous = val.get(epoch - 1)
        for step in range(1, 5):
            ui.progress("aaaaaaaaaaaa", _train(epoch, step, 4, 2, loss=0.9 - 0.1 * step, val_auroc=previous))
        ui.progress("aaaaaaaaaaaa", _train(epoch, 4, 4, 2, loss=0.5 - 0.1 * epoch, val_auroc=val[epoch],
                                           epoch_end=True))
    ui.progress("aaaaaaaaaaaa", Progress("predict", 1, 1, detail="test"))
    lines = [line.strip() for line in _lines(ui)]
    assert lines[:2] == ["1 cells: 1 to run, 0 already in the store", f"[1/1] start aaaaaaaaaaaa {_label()}"]
    for epoch in (1, 2):
        assert lines.count(f"aaaaaaaa train epoch {epoch}/2 (4 steps)") == 1  # the phase, once
        ends = [line for line in lines if line.startswith(f"aaaaaaaa train epoch {epoch}/2 loss")]
        # one line at the epoch's end, with that epoch's loss and validation AUROC
        assert ends == [f"aaaaaaaa train epoch {epoch}/2 loss {0.5 - 0.1 * epoch:.3f} val AUROC {val[epoch]:.3f}"], \
            lines
    assert lines[-1] == "aaaaaaaa predict test"


def test_plain_lines_count_starts_and_finishes_and_print_markup_literally():
    ui, clock = _plain()
    labels = {"aaaaaaaaaaaa": _label(), "bbbbbbbbbbbb": _label("max")}
    ui.start(total=3, pending=2, skipped=1, labels=labels)
    ui.cell_started("aaaaaaaaaaaa", "pid 1")
    clock.now += 10.0
    ui.progress("aaaaaaaaaaaa", _train(1, 5, 10, 2))  # a quarter of the cell in 10 s
    ui.warning("aaaaaaaaaaaa", "image [bold]x.png[/bold]\nunreadable")
    ui.warning(None, "dataset [red]warning[/]")
    clock.now += 30.0
    ui.cell_finished(_result("aaaaaaaaaaaa", auroc=0.75, seconds=40.0))
    ui.cell_started("bbbbbbbbbbbb")
    ui.cell_retried("bbbbbbbbbbbb", 2, "node 127.0.0.1 died\n(raylet)")
    ui.cell_started("bbbbbbbbbbbb", "node 127.0.0.2")
    ui.cell_finished(_result("bbbbbbbbbbbb", "max", status="failed", error="KeyError: '[/bold] [width=4]'"))
    ui.stop()
    assert _lines(ui) == [
        "3 cells: 2 to run, 1 already in the store",
        f"[1/2] start aaaaaaaaaaaa {_label()} (on pid 1)",
        "    aaaaaaaa train epoch 1/2 (10 steps)",
        "warning: cell aaaaaaaaaaaa: image [bold]x.png[/bold]\\nunreadable",  # kept on one line
        "warning: dataset [red]warning[/]",
        "[1/2] ok aaaaaaaaaaaa in 40s auroc_mean=0.750 (1 of 2 done, eta 0:00:40)",
        f"[2/2] start bbbbbbbbbbbb {_label('max')}",
        "retry: cell bbbbbbbbbbbb attempt 2 after node 127.0.0.1 died\\n(raylet)",
        "    bbbbbbbb attempt 2 started on node 127.0.0.2",
        "[2/2] failed bbbbbbbbbbbb in 0s KeyError: '[/bold] [width=4]' (2 of 2 done)",
    ]


def test_rich_display_shows_cells_epoch_batches_and_eta():
    clock = FakeClock()
    ui = RichProgress(_terminal(), clock=clock)
    ui.start(total=4, pending=3, skipped=1, labels={"aaaaaaaaaaaa": _label(), "bbbbbbbbbbbb": _label("max")})
    try:
        ui.cell_started("aaaaaaaaaaaa", "pid 1")
        screen = _screen(ui)
        assert "cells (4 in grid)" in screen and "0/3" in screen and "eta ?" in screen
        assert f"aaaaaaaa {_label()}" in screen and "pid 1" in screen
        clock.now += 26.0
        ui.progress("aaaaaaaaaaaa", _train(2, 3, loss=0.4123))  # 26 % of the cell's training in 26 s: ~100 s a cell
        screen = _screen(ui)
        assert re.search(r"avg / seed 0 +train epoch 2/5 loss 0\.412 .* 3/10 .* pid 1", screen), screen
        assert "eta 0:04:34" in screen  # 3 cells x 100 s, less the 26 s spent
        clock.now += 74.0
        ui.progress("aaaaaaaaaaaa", _train(5, 10, loss=0.3, val_auroc=0.8))
        assert re.search(r"train epoch 5/5 loss 0\.300 val AUROC 0\.800 .* 10/10", _screen(ui)), _screen(ui)
        ui.cell_finished(_result("aaaaaaaaaaaa", auroc=0.75))
        screen = _screen(ui)
        assert "1/3" in screen and "eta 0:03:20" in screen  # 2 cells left at 100 s each
        assert "aaaaaaaa" not in screen  # a finished cell's line is gone
        ui.cell_started("bbbbbbbbbbbb")
        clock.now += 30.0
        ui.progress("bbbbbbbbbbbb", Progress("predict", 1, 4, detail="test"))
        screen = _screen(ui)
        assert "bbbbbbbb" in screen and re.search(r"max / seed 0 +predict test .* 1/4", screen), screen
        assert "eta 0:02:50" in screen  # the cell in flight has used 30 of its 100 s
        ui.cell_retried("bbbbbbbbbbbb", 2, "node died")
        ui.cell_started("bbbbbbbbbbbb", "node 10.0.0.2")
        screen = _screen(ui)
        assert "bbbbbbbb" in screen and "(attempt 2)" in screen and "node 10.0.0.2" in screen, screen
        ui.warning("bbbbbbbbbbbb", "a [bold]bracketed[/bold] warning")
        ui.cell_finished(_result("bbbbbbbbbbbb", "max", status="failed", error="KeyError: '[/bold] [width=4]'"))
    finally:
        ui.stop()
    out = ui.console.file.getvalue()
    assert "1 of 4 cells already in the store (resumed)" in out
    assert f"aaaaaaaaaaaa {_label()}: ok auroc_mean=0.750" in out
    # error text with brackets is printed as is, not parsed as rich markup (which would raise)
    assert f"bbbbbbbbbbbb {_label('max')}: failed KeyError: '[/bold] [width=4]'" in out
    assert "warning: cell bbbbbbbbbbbb: a [bold]bracketed[/bold] warning" in out
    assert "retry: bbbbbbbbbbbb attempt 2 after node died" in out


def test_rich_display_shows_a_line_per_running_cell_with_its_worker():
    # a parallel executor runs several cells: each has its own line, phase and worker
    ui = RichProgress(_terminal(), clock=FakeClock())
    ui.start(total=2, pending=2, skipped=0, labels={"aaaaaaaaaaaa": _label(), "bbbbbbbbbbbb": _label("max")})
    try:
        ui.cell_started("aaaaaaaaaaaa", "worker 1 (pid 11)")
        ui.cell_started("bbbbbbbbbbbb", "worker 2 (pid 12)")
        ui.progress("bbbbbbbbbbbb", Progress("load", 0, 1, detail="train"))
        ui.progress("aaaaaaaaaaaa", _train(1, 3, loss=0.5))
        screen = _screen(ui)
    finally:
        ui.stop()
    assert re.search(r"aaaaaaaa .*avg / seed 0 +train epoch 1/5 loss 0\.500 .* worker 1 \(pid 11\)", screen), screen
    assert re.search(r"bbbbbbbb .*max / seed 0 +load train .* worker 2 \(pid 12\)", screen), screen


def test_rich_epoch_bar_restarts_each_epoch_so_its_eta_moves():
    # rich estimates a bar's speed from its counts: when epoch 2 counted down from 16 to 1
    # on the same bar, its ETA stuck at 0:00:00 until the end (issue 15)
    ui = RichProgress(_terminal(), clock=FakeClock())
    ui.start(total=1, pending=1, skipped=0, labels={"aaaaaaaaaaaa": _label()})
    try:
        ui.cell_started("aaaaaaaaaaaa")
        ui.progress("aaaaaaaaaaaa", _train(1, 16, 16, 3))
        ui.progress("aaaaaaaaaaaa", _train(2, 1, 16, 3))
        task = ui.bars.tasks[ui.running["aaaaaaaaaaaa"]]
        assert task.completed == 1 and task.total == 16
        assert all(sample.completed <= 1 for sample in task._progress)  # epoch 1's steps are forgotten
    finally:
        ui.stop()


@pytest.mark.parametrize("width", [80, 120])
def test_rich_display_keeps_phase_counts_and_eta_visible_beside_a_long_label(width):
    # a long label (a user's own, or a dataset's options) must not push the phase, the step
    # counts and the ETA off a common terminal: the label is cut instead
    clock = FakeClock()
    ui = RichProgress(_terminal(width), clock=clock)
    dataset = "phantom[classes=['Cardiomegaly', 'Effusion', 'Mass', 'Nodule', 'Pneumothorax'],num_images=800]"
    ui.start(total=3, pending=3, skipped=0, labels={"cccccccccccc": _label(dataset=dataset, backbone="resnet18")})
    try:
        ui.cell_started("cccccccccccc", "pid 7")
        clock.now += 10.0
        ui.progress("cccccccccccc", _train(1, 5, 10, 2))  # a quarter of the cell in 10 s: 40 s per cell, 110 s left
        screen = _screen(ui, width)
    finally:
        ui.stop()
    lines = screen.splitlines()
    assert len(lines) == 2 and all(len(line) <= width for line in lines), screen
    assert "cells (3 in grid)" in lines[0] and "0/3" in lines[0] and "eta 0:01:50" in lines[0], screen
    assert "cccccccc phan" in lines[1] and "…" in lines[1], screen
    assert re.search(r"train epoch 1/2 .* 5/10", lines[1]), screen


def test_eta_estimate():
    clock = FakeClock()
    eta = EtaEstimate(clock)
    eta.start(pending=4)
    assert eta.seconds() is None  # nothing to go on yet
    eta.progress(Progress("load", 0, 1, detail="train"))
    assert eta.seconds() is None  # only training progress is extrapolated
    clock.now += 10.0
    eta.progress(Progress("train", 5, 10, epoch=1, epochs=2))  # a quarter of the training in 10 s
    assert eta.seconds() == pytest.approx(4 * 40 - 10)
    eta.progress(Progress("predict", 1, 4, detail="test"))  # other phases leave the estimate alone
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


def test_training_events_reach_the_display(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    calls = []

    class Recording(RichProgress):
        def start(self, total, pending, skipped, labels=None):
            calls.append(("start", pending, dict(labels or {})))
            super().start(total, pending, skipped, labels)

        def cell_started(self, cell_id, worker=None):
            calls.append(("started", cell_id))
            super().cell_started(cell_id, worker)

        def progress(self, cell_id, progress):
            calls.append(("progress", cell_id, progress))
            super().progress(cell_id, progress)

        def cell_finished(self, result):
            calls.append(("finished", result.cell_id))
            super().cell_finished(result)

    ui = Recording(_terminal())
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path / "r") as store:
        summary = run_grid(grid, toy_pm, store, display=ui)
    assert summary.ok == 2
    assert calls[0][:2] == ("start", 2)
    assert sorted(calls[0][2].values()) == [_label("avg", dataset="toy", backbone="tiny"),
                                            _label("max", dataset="toy", backbone="tiny")]
    events = [c for c in calls if c[0] in ("started", "finished")]
    assert [e[0] for e in events] == ["started", "finished"] * 2
    assert events[0][1] == events[1][1] != events[2][1] == events[3][1]
    within = 0
    for cell_id in (events[0][1], events[2][1]):
        # the cell's progress arrives between its start and its finish, tagged with its id
        first, last = calls.index(("started", cell_id)), calls.index(("finished", cell_id))
        progress = [c[2] for c in calls[first:last] if c[0] == "progress"]
        assert all(c[1] == cell_id for c in calls[first:last] if c[0] == "progress")
        assert all(isinstance(p, Progress) for p in progress)
        # 64 toy images: 32 train, batch 16 -> 2 steps per epoch, 2 epochs; each epoch's
        # steps, then its end (after validation) with the epoch's loss
        for epoch in (1, 2):
            steps = [p for p in progress if p.label() == f"train epoch {epoch}/2"]
            assert [(p.done, p.total) for p in steps] == [(1, 2), (2, 2), (2, 2)], steps
            assert all(p.loss is not None and p.loss == p.loss for p in steps)
        assert any(p.phase == "predict" and p.done == p.total for p in progress)
        assert {p.label() for p in progress} >= {"load train", "load test", "predict test", "localize cam",
                                                  "localize gradcam"}
        within += len(progress)
    assert within == sum(c[0] == "progress" for c in calls)  # no progress outside a cell's start..finish
    overall = ui.bars.tasks[ui.overall]
    assert (overall.completed, overall.total) == (2, 2)
    assert "2/2" in _screen(ui) and "eta 0:00:00" in _screen(ui)
