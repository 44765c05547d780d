"""Built-in executors: ``local`` (in-process, default) and ``process`` (N worker processes).

Both hand every result back to the caller's ``on_result`` in the main process, which is
the single writer of the results store.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import cxrbench
from cxrbench.api import Executor, RunEvents, UsageError, execute_cell

from .pool import WorkerPool


class LocalExecutor(Executor):
    """Run cells one after another in this process (default; live progress per batch)."""

    NAME = "local"

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: RunEvents) -> None:
        for task in tasks:
            events.cell_started(task.cell_id, f"pid {os.getpid()}")
            on_result(execute_cell(task, events))


def pin_gpu(gpu: str | None) -> None:
    """Make ``gpu`` this process's only visible GPU (``""``: none), before CUDA initialises.

    CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when the first CUDA call initialises it; the
    worker's initializer runs before any cell, so every cell of the worker sees its GPU as
    ``cuda:0``.
    """
    if gpu is None:
        return
    import torch

    if torch.cuda.is_initialized():  # pragma: no cover - a plugin touched CUDA at import time
        raise RuntimeError("CUDA was initialised before the worker's GPU could be pinned")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (without initialising CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and not g.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def assign_gpus(gpus: Any, workers: int | None, visible: Sequence[str]) -> tuple[int, list[str] | None]:
    """How many workers to start and the GPU of each (None: GPUs are not assigned).

    Args:
        gpus: the ``gpus`` option: ``auto`` (every visible GPU, one per worker), ``none``
            (CPU only: workers see no GPU), or a list of GPU ids.
        workers: the ``workers`` option (None: one per assigned GPU, else 2).
        visible: the GPUs visible to the driver.

    Returns:
        ``(workers, per-worker GPU ids)``; with more workers than GPUs, GPUs are dealt round robin.

    Raises:
        ValueError: for a listed GPU that is not visible.

    """
    if gpus == "none":
        return (workers or 2), [""] * (workers or 2)
    chosen = list(visible) if gpus == "auto" else [str(g) for g in gpus]
    missing = [g for g in chosen if g not in visible]
    if missing:
        raise ValueError(f"gpus: {', '.join(missing)} not visible (visible: {', '.join(visible) or 'none'})")
    if not chosen:
        return (workers or 2), None
    n = workers or len(chosen)
    return n, [chosen[i % len(chosen)] for i in range(n)]


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
    """Options of the ``process`` executor.

    Attributes:
        workers: worker processes (cells run in parallel); null = one per assigned GPU,
            or 2 without GPUs.
        threads_per_worker: torch CPU threads per worker; 0 = CPU count / workers.
        gpus: ``auto`` (each worker pinned to one visible GPU, dealt round robin), ``none``
            (workers see no GPU) or a list of GPU ids, e.g. ``[0, 1]``.

    """

    workers: int | None = None
    threads_per_worker: int = 0
    gpus: Any = "auto"

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not (self.gpus in ("auto", "none") or (isinstance(self.gpus, list) and all(
                isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in self.gpus))):
            raise ValueError(f"gpus must be 'auto', 'none' or a list of GPU indices, got {self.gpus!r}")
        if self.threads_per_worker < 0:
            raise ValueError("threads_per_worker must be >= 0")


class ProcessExecutor(Executor):
    """Run cells in N worker processes (spawned), CPU threads divided between them.

    Workers load plugins from entry points, so components must come from installed
    packages (not from plugins registered in code). Each worker sends its run events (cell
    started, progress, warnings) and results over its own pipe; the driver delivers them
    in its process. A worker that dies fails only the cell it was running and is replaced
    (:mod:`cxrbench_executors.pool`); workers end when the driver does, however it ends.
    """

    NAME = "process"
    Options = ProcessOptions

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: RunEvents) -> None:
        if not tasks:
            return
        try:
            workers, gpus = assign_gpus(self.options.gpus, self.options.workers, visible_gpus())
        except ValueError as exc:
            raise UsageError(f"executor 'process': {exc}") from None
        workers = min(workers, len(tasks))
        threads = self.options.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        pool = WorkerPool(workers, threads, gpus[:workers] if gpus is not None else None,
                          multiprocessing.get_context("spawn"))
        pool.run(tasks, on_result, events)


@cxrbench.hookimpl
def cxrbench_register_executors() -> list[type]:
    return [LocalExecutor, ProcessExecutor]
