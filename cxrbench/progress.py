"""What the user sees while a grid runs: a rich live display, or plain lines.

The rich display shows cells done / total with an ETA and the current cell's phase
(epoch, prediction, localization) with its step progress. Without a terminal, or with
``--no-progress``, one plain line per finished cell is printed instead.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _cell_line(cell: Any) -> str:
    axes = cell.axes
    return f"{axes['dataset']} / {axes['backbone']} / {axes['head']} / seed {axes['seed']}"


class PlainProgress:
    """Line-by-line progress for logs and non-terminals."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.done = 0
        self.pending = 0
        self.last_phase = ""

    def start(self, total: int, pending: int, skipped: int) -> None:
        self.pending = pending
        self.console.print(f"{total} cells: {pending} to run, {skipped} already in the store", highlight=False)

    def cell_started(self, cell: Any) -> None:
        self.console.print(f"[{self.done + 1}/{self.pending}] {cell.cell_id} {_cell_line(cell)} ...", highlight=False)
        self.last_phase = ""

    def progress(self, phase: str, done: int, total: int) -> None:
        if phase != self.last_phase and done <= 1:
            self.last_phase = phase

    def cell_finished(self, cell: Any, result: dict[str, Any]) -> None:
        self.done += 1
        status = result["status"]
        auroc = result.get("metrics", {}).get("auroc_mean")
        detail = f"auroc_mean={auroc:.3f}" if isinstance(auroc, float) else (result.get("error") or "")
        seconds = result.get("info", {}).get("duration_s", 0.0)
        self.console.print(f"[{self.done}/{self.pending}] {cell.cell_id} {status} in {seconds:.0f}s {detail}",
                           highlight=False)

    def stop(self) -> None:
        pass


class RichProgress:
    """Live display: overall cells bar with ETA, and the current cell's phase bar."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self.overall: Any = None
        self.current: Any = None
        self._last_update = 0.0

    def start(self, total: int, pending: int, skipped: int) -> None:
        if skipped:
            self.console.print(f"{skipped} of {total} cells already in the store (resumed)")
        self.bars.start()
        self.overall = self.bars.add_task("cells", total=max(pending, 1) if pending else 0)
        self.current = self.bars.add_task("", total=1, visible=False)

    def cell_started(self, cell: Any) -> None:
        self.bars.update(self.current, description=f"  {_cell_line(cell)}", completed=0, total=1, visible=True)

    def progress(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done not in (0, total) and now - self._last_update < 0.1:
            return  # keep the display cheap: at most ~10 updates a second
        self._last_update = now
        self.bars.update(self.current, description=f"  {phase}", completed=done, total=max(total, 1), visible=True)

    def cell_finished(self, cell: Any, result: dict[str, Any]) -> None:
        status = result["status"]
        auroc = result.get("metrics", {}).get("auroc_mean")
        if status == "ok":
            detail = f"[green]ok[/] auroc_mean={auroc:.3f}" if isinstance(auroc, float) else "[green]ok[/]"
        else:
            detail = f"[red]failed[/] {result.get('error') or ''}"
        self.console.print(f"{cell.cell_id} {_cell_line(cell)}: {detail}", highlight=False)
        self.bars.advance(self.overall)

    def stop(self) -> None:
        self.bars.stop()


def make_progress(console: Console, enabled: bool) -> Any:
    """A rich display on a terminal when enabled, plain lines otherwise."""
    if enabled and console.is_terminal:
        return RichProgress(console)
    return PlainProgress(console)
