"""Run events: the one path by which a running cell tells the driver what it is doing.

An executor receives one :class:`RunEvents` object and hands it to every cell it runs
(``Executor.run(tasks, on_result, events)``); the cell pipeline reports through it. The
driver's implementation feeds the live display and the warning lines. Executors that run
cells elsewhere (worker processes, Ray tasks) relay the same calls back: every payload
here is a small frozen dataclass of plain values, so it pickles and crosses process and
Ray boundaries as it is.

Every method has a no-op default, so an implementation overrides only what it shows and
a new event never breaks an old executor or display.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

PHASES = ("load", "train", "predict", "localize", "sanity")
"""The phases a cell reports, in the order a cell goes through them."""


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a running cell is, with the figures a user wants to see live.

    Attributes:
        phase: one of :data:`PHASES`.
        done: steps done in this phase (batches, images).
        total: steps of this phase (0 when unknown).
        detail: what the phase works on (a split name, a localizer name).
        epoch: the current epoch, counted from 1 (``train`` only).
        epochs: the planned number of epochs (``train`` only).
        loss: the latest training loss (mean over the epoch's steps so far).
        val_auroc: the latest validation mean AUROC (after an epoch).
        epoch_end: True on the one report made after an epoch's validation (its final
            loss and validation AUROC).

    """

    phase: str
    done: int = 0
    total: int = 0
    detail: str = ""
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    val_auroc: float | None = None
    epoch_end: bool = False

    def label(self) -> str:
        """A short human label: ``train epoch 2/5``, ``predict test``, ``localize gradcam``."""
        if self.phase == "train" and self.epoch is not None:
            return f"train epoch {self.epoch}/{self.epochs or '?'}"
        return f"{self.phase} {self.detail}".strip()

    def fraction(self) -> float | None:
        """Fraction of the phase done (for training: of all epochs), or None when unknown."""
        if self.total <= 0:
            return None
        step = min(self.done, self.total) / self.total
        if self.phase == "train" and self.epoch is not None and self.epochs:
            return min(1.0, ((self.epoch - 1) + step) / self.epochs)
        return step


class RunEvents:
    """What an executor and a cell report while a grid runs (every method is a no-op here).

    Implementations must be cheap and must not raise: they are called from training loops.
    Calls arrive in the driver's process; executors running cells elsewhere relay them.
    """

    def cell_started(self, cell_id: str, worker: str | None = None) -> None:
        """Cell ``cell_id`` began running (on ``worker``, e.g. ``pid 123`` or a Ray node)."""

    def progress(self, cell_id: str, progress: Progress) -> None:
        """Cell ``cell_id`` reached ``progress``."""

    def warning(self, cell_id: str | None, message: str) -> None:
        """A one-line warning from a dataset, a component or the executor."""

    def cell_retried(self, cell_id: str, attempt: int, reason: str) -> None:
        """The executor runs cell ``cell_id`` again (attempt ``attempt``) after ``reason``."""


NULL_EVENTS = RunEvents()
"""Events that go nowhere (tests, library use)."""


@dataclasses.dataclass(frozen=True)
class CellReporter:
    """A cell's view of the run events: the cell id is bound once.

    The cell pipeline passes this (or its ``progress`` method) down to training,
    prediction and localization, which never need to know which cell they serve.
    """

    events: RunEvents
    cell_id: str

    def progress(self, progress: Progress) -> None:
        self.events.progress(self.cell_id, progress)

    def warning(self, message: str) -> None:
        self.events.warning(self.cell_id, message)


@dataclasses.dataclass(frozen=True)
class Event:
    """One event as a value, for executors that relay events through a queue.

    Attributes:
        kind: the :class:`RunEvents` method name (``cell_started``, ``progress``, ...).
        args: its positional arguments.

    """

    kind: str
    args: tuple[Any, ...]

    def deliver(self, events: RunEvents) -> None:
        """Call the matching method of ``events``; an unknown kind is ignored (newer worker)."""
        method = getattr(events, self.kind, None)
        if self.kind in _RELAYED and method is not None:
            method(*self.args)


_RELAYED = frozenset({"cell_started", "progress", "warning", "cell_retried"})


class QueueEvents(RunEvents):
    """Run events that a worker puts on a queue as :class:`Event` values (see ``Event.deliver``)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def _put(self, kind: str, *args: Any) -> None:
        # a closed queue (the driver is shutting down) must not fail the cell
        with contextlib.suppress(Exception):
            self.queue.put(Event(kind, args))

    def cell_started(self, cell_id: str, worker: str | None = None) -> None:
        self._put("cell_started", cell_id, worker)

    def progress(self, cell_id: str, progress: Progress) -> None:
        self._put("progress", cell_id, progress)

    def warning(self, cell_id: str | None, message: str) -> None:
        self._put("warning", cell_id, message)

    def cell_retried(self, cell_id: str, attempt: int, reason: str) -> None:
        self._put("cell_retried", cell_id, attempt, reason)
