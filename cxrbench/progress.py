"""What the user sees while a grid runs: a rich live display, or plain lines.

The rich display shows cells done / total with an ETA and a line per running cell: its
phase (epoch with loss and validation AUROC, prediction, localization) with step
progress, and the worker or node running it. Without a terminal, or with
``--no-progress``, plain lines are printed instead: one when a cell starts (with its
worker), one per phase (``epoch 2/5``, ``predict``, ...), one per epoch with its loss and
validation AUROC, one per retry, and one when it finishes, with counts and the ETA.

Both are :class:`cxrbench.driver.RunDisplay` implementations: they receive the run's
events (cell started, structured :class:`~cxrbench.events.Progress`, warnings) from the
executor, and ``start`` / ``cell_finished`` / ``stop`` from the driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

from .driver import RunDisplay, RunPlan
from .errors import one_line
from .events import Progress as CellProgress
from .records import CellResult


def cell_line(axes: Any) -> str:
    """``dataset / backbone / head / seed N`` of a cell's axes."""
    return f"{axes.dataset} / {axes.backbone} / {axes.head} / seed {axes.seed}"


def phase_text(progress: CellProgress) -> str:
    """The phase with its live figures: ``train epoch 2/5 loss 0.412 val AUROC 0.803``."""
    text = progress.label()
    if progress.loss is not None:
        text += f" loss {progress.loss:.3f}"
    if progress.val_auroc is not None and progress.val_auroc == progress.val_auroc:
        text += f" val AUROC {progress.val_auroc:.3f}"
    return text


def format_eta(seconds: float | None) -> str:
    """``h:mm:ss``, or ``?`` while there is nothing to estimate from."""
    if seconds is None:
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class EtaEstimate:
    """Time left for the pending cells of a run.

    After the first finished cell: the run's throughput so far (wall seconds per finished
    cell, which also holds when an executor runs cells in parallel) times the cells left,
    less the time already spent since the last cell finished. Before that: the running
    cells' mean training progress (``epoch e/E`` at step ``s/S``) extrapolated, since
    training dominates a cell's time, in rounds of as many cells as have run at once.

    Args:
        clock: monotonic seconds (tests pass a fake one).

    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.pending = 0
        self.finished = 0
        self.started_at = clock()
        self.last_finish = self.started_at
        self.fractions: dict[str | None, float] = {}
        self.running: set[str] = set()
        self.parallel = 1

    @property
    def train_fraction(self) -> float:
        """Mean training progress of the cells in flight (0 when none has reported)."""
        return sum(self.fractions.values()) / len(self.fractions) if self.fractions else 0.0

    def start(self, pending: int) -> None:
        """A run with ``pending`` cells to go begins now."""
        self.pending = pending
        self.finished = 0
        self.started_at = self.last_finish = self.clock()
        self.fractions, self.running, self.parallel = {}, set(), 1

    def cell_started(self, cell_id: str) -> None:
        """Cell ``cell_id`` runs now (a parallel executor runs several at once)."""
        self.running.add(cell_id)
        self.parallel = max(self.parallel, len(self.running))

    def progress(self, progress: CellProgress, cell_id: str | None = None) -> None:
        """Note a cell's training progress (other phases are ignored)."""
        if progress.phase == "train":
            fraction = progress.fraction()
            if fraction is not None:
                self.fractions[cell_id] = fraction

    def cell_finished(self, cell_id: str | None = None) -> None:
        """One more cell is done."""
        self.finished += 1
        self.last_finish = self.clock()
        self.running.discard(cell_id)  # type: ignore[arg-type]
        self.fractions.pop(cell_id, None)
        if cell_id is None:
            self.fractions.clear()

    def seconds(self) -> float | None:
        """Estimated seconds until every pending cell is done, or None when unknown."""
        left = self.pending - self.finished
        if left <= 0:
            return 0.0
        now = self.clock()
        if self.finished:
            per_cell = (self.last_finish - self.started_at) / self.finished
            # the cell in flight has used some of its share; never promise less than the cells after it
            return max(per_cell * left - (now - self.last_finish), per_cell * (left - 1))
        if self.train_fraction > 0:
            # cells run ``parallel`` at a time: the pending ones take that many fewer rounds
            per_cell = (now - self.started_at) / self.train_fraction
            rounds = -(-left // self.parallel)
            return per_cell * rounds - (now - self.started_at)
        return None


class PlainProgress(RunDisplay):
    """Line-by-line progress for logs and non-terminals.

    Args:
        console: where lines go (markup in cell labels and errors is printed literally).
        clock: monotonic seconds, for the ETA.

    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.eta = EtaEstimate(clock)
        self.done = 0
        self.started = 0
        self.pending = 0
        self.labels: Mapping[str, str] = {}
        self.last_phase: dict[str, str] = {}
        self.planned: RunPlan | None = None
        self.attempts: dict[str, int] = {}

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def plan(self, plan: RunPlan) -> None:
        self.planned = plan

    def start(self, total: int, pending: int, skipped: int, labels: Mapping[str, str] | None = None) -> None:
        self.pending = pending
        self.labels = labels or {}
        self.eta.start(pending)
        if self.planned is not None:
            self._line(self.planned.sentence())
        else:
            self._line(f"{total} cells: {pending} to run, {skipped} already in the store")

    def cell_started(self, cell_id: str, worker: str | None = None) -> None:
        self.eta.cell_started(cell_id)
        self.last_phase[cell_id] = ""
        if cell_id in self.attempts:  # a retry of a cell already counted as started
            where = f" on {worker}" if worker else ""
            self._line(f"    {cell_id[:8]} attempt {self.attempts[cell_id]} started{where}")
            return
        # counted separately from ``done``: a parallel executor starts several cells before one finishes
        self.started += 1
        where = f" (on {worker})" if worker else ""
        self._line(f"[{self.started}/{self.pending}] start {cell_id} {self.labels.get(cell_id, '')}".rstrip()
                   + where)

    def progress(self, cell_id: str, progress: CellProgress) -> None:
        self.eta.progress(progress, cell_id)
        phase = progress.label()
        if phase != self.last_phase.get(cell_id):
            # one line per phase (and per epoch), not per batch: logs stay readable over days-long grids
            self.last_phase[cell_id] = phase
            steps = f" ({progress.total} steps)" if progress.total > 1 else ""
            self._line(f"    {cell_id[:8]} {phase}{steps}")
        if progress.epoch_end:
            self._line(f"    {cell_id[:8]} {phase_text(progress)}")

    def cell_retried(self, cell_id: str, attempt: int, reason: str) -> None:
        self.attempts[cell_id] = attempt
        self._line(f"retry: cell {cell_id} attempt {attempt} after {one_line(reason)}")

    def warning(self, cell_id: str | None, message: str) -> None:
        where = f"cell {cell_id}: " if cell_id else ""
        self._line(f"warning: {where}{one_line(message)}")

    def cell_finished(self, result: CellResult) -> None:
        self.done += 1
        self.eta.cell_finished(result.cell_id)
        auroc = result.metrics.get("auroc_mean")
        detail = f"auroc_mean={auroc:.3f}" if isinstance(auroc, float) and auroc == auroc else (result.error or "")
        seconds = result.info.get("duration_s", 0.0)
        eta = f", eta {format_eta(self.eta.seconds())}" if self.done < self.pending else ""
        self._line(f"[{self.done}/{self.pending}] {result.status} {result.cell_id} in {seconds:.0f}s {detail} "
                   f"({self.done} of {self.pending} done{eta})")


class _EtaColumn(ProgressColumn):
    """The run's ETA on the cells bar (from :class:`EtaEstimate`), rich's own on the phase bar."""

    def __init__(self, owner: RichProgress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        if task.id == self.owner.overall:
            return Text(f"eta {format_eta(self.owner.eta.seconds())}", style="progress.remaining")
        remaining = task.time_remaining
        return Text(f"eta {format_eta(remaining)}" if remaining is not None else "", style="progress.remaining")


class _LabelColumn(TextColumn):
    """A task's description, cut short with an ellipsis so that the columns after it fit.

    A cell's label carries its dataset's options and easily outgrows a terminal; rich
    would then squeeze every column alike, down to a bar, counts and ETA of one ``…``.
    The width is worked out at each refresh, so a resized terminal is followed.
    """

    def __init__(self, console: Console, reserved: int) -> None:
        super().__init__("{task.description}", markup=False)
        self.console = console
        self.reserved = reserved

    def get_table_column(self) -> Column:
        return Column(no_wrap=True, overflow="ellipsis", max_width=max(20, self.console.width - self.reserved))


class RichProgress(RunDisplay):
    """Live display: the cells bar (done / total, ETA) and one line per running cell.

    Each running cell's line shows its label (``dataset / backbone / head / seed``), its
    phase with the latest loss and validation AUROC, the phase's step bar and ETA, and
    the worker or node that runs it; a retried cell says which attempt it is on. With a
    parallel executor there are as many cell lines as cells in flight.

    Args:
        console: a terminal console.
        clock: monotonic seconds, for the ETA.

    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.eta = EtaEstimate(clock)
        # label | phase | bar | n/N | elapsed | eta | worker: everything right of the label takes
        # about 90 columns (the longest phases, e.g. "localize gradcampp", and a worker name included)
        self.bars = Progress(
            _LabelColumn(console, reserved=90),
            TextColumn("{task.fields[phase]}", markup=False, table_column=Column(no_wrap=True)),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            _EtaColumn(self),
            TextColumn("{task.fields[worker]}", markup=False, style="dim",
                       table_column=Column(no_wrap=True, overflow="ellipsis", max_width=22)),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self.overall: Any = None
        self.running: dict[str, Any] = {}
        self.labels: Mapping[str, str] = {}
        self.attempts: dict[str, int] = {}
        self.workers: dict[str, str] = {}
        self.planned: RunPlan | None = None
        self._phase: dict[str, str] = {}
        self._last_update: dict[str, float] = {}

    def plan(self, plan: RunPlan) -> None:
        self.planned = plan

    def start(self, total: int, pending: int, skipped: int, labels: Mapping[str, str] | None = None) -> None:
        self.labels = labels or {}
        if self.planned is not None:
            self.console.print(self.planned.sentence(), highlight=False)
        elif skipped:
            self.console.print(f"{skipped} of {total} cells already in the store (resumed)", highlight=False)
        self.eta.start(pending)
        self.bars.start()
        self.overall = self.bars.add_task(f"cells ({total} in grid)", total=pending, phase="", worker="")

    def _label(self, cell_id: str) -> str:
        attempt = self.attempts.get(cell_id)
        # before the label, which is the part cut short on a narrow terminal
        retry = f" (attempt {attempt})" if attempt else ""
        return f"  {cell_id[:8]}{retry} {self.labels.get(cell_id, '')}".rstrip()

    def cell_started(self, cell_id: str, worker: str | None = None) -> None:
        self.eta.cell_started(cell_id)
        self._phase[cell_id] = ""
        self.workers[cell_id] = worker or ""
        if cell_id in self.running:  # a retry: the same line starts over
            self.bars.reset(self.running[cell_id], description=self._label(cell_id), total=1, phase="",
                            worker=worker or "")
            return
        self.running[cell_id] = self.bars.add_task(self._label(cell_id), total=1, phase="", worker=worker or "")

    def progress(self, cell_id: str, progress: CellProgress) -> None:
        task = self.running.get(cell_id)
        if task is None:
            return
        self.eta.progress(progress, cell_id)
        phase, done, total = phase_text(progress), progress.done, progress.total
        label = progress.label()
        now = time.monotonic()
        if label != self._phase.get(cell_id):
            # a new phase or epoch restarts the step bar, and with it rich's speed estimate
            # (otherwise the ETA of epoch 2 onwards is computed from counts that went backwards)
            self._phase[cell_id] = label
            self._last_update[cell_id] = now
            # (rich's reset replaces every field: the worker is passed again)
            self.bars.reset(task, description=self._label(cell_id), phase=phase, completed=done,
                            total=max(total, 1), worker=self.workers.get(cell_id, ""))
            return
        if done not in (0, total) and not progress.epoch_end and now - self._last_update.get(cell_id, 0.0) < 0.1:
            return  # keep the display cheap: at most ~10 updates a second per cell
        self._last_update[cell_id] = now
        self.bars.update(task, phase=phase, completed=done, total=max(total, 1))

    def cell_retried(self, cell_id: str, attempt: int, reason: str) -> None:
        self.attempts[cell_id] = attempt
        self.console.print(f"[yellow]retry:[/] {escape(cell_id)} attempt {attempt} after {escape(one_line(reason))}",
                           highlight=False)
        if cell_id in self.running:
            self.bars.update(self.running[cell_id], description=self._label(cell_id))

    def warning(self, cell_id: str | None, message: str) -> None:
        where = f"cell {cell_id}: " if cell_id else ""
        self.console.print(f"[yellow]warning:[/] {escape(where + one_line(message))}", highlight=False)

    def cell_finished(self, result: CellResult) -> None:
        self.eta.cell_finished(result.cell_id)
        task = self.running.pop(result.cell_id, None)
        if task is not None:
            self.bars.remove_task(task)
        auroc = result.metrics.get("auroc_mean")
        if result.ok:
            good = isinstance(auroc, float) and auroc == auroc
            detail = f"[green]ok[/] auroc_mean={auroc:.3f}" if good else "[green]ok[/]"
        else:
            detail = f"[red]failed[/] {escape(result.error or '')}"
        # labels like ``tiny[width=4]`` and error text must not be read as rich markup
        self.console.print(f"{escape(result.cell_id)} {escape(cell_line(result.axes))}: {detail}", highlight=False)
        self.bars.advance(self.overall)

    def stop(self) -> None:
        for task in self.running.values():
            self.bars.update(task, visible=False)
        self.bars.stop()


def make_progress(console: Console, enabled: bool) -> Any:
    """A rich display on a terminal when enabled, plain lines otherwise."""
    if enabled and console.is_terminal:
        return RichProgress(console)
    return PlainProgress(console)
