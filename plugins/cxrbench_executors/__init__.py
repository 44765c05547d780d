"""Built-in executors: ``local`` (in-process, default) and ``process`` (N worker processes).

Both hand every result back to the caller's ``on_result`` in the main process, which is
the single writer of the results store.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import cxrbench
from cxrbench.interfaces import Executor
from cxrbench.runner import execute_cell, failed_result


class LocalExecutor(Executor):
    """Run cells one after another in this process (default; live progress per batch)."""

    NAME = "local"

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], progress: Any = None,
            warn: Any = None, cell_started: Any = None) -> None:
        for task in tasks:
            if cell_started is not None:
                cell_started(task.cell)
            on_result(execute_cell(task, progress=progress, warn=warn))


_EVENTS: Any = None
"""In a worker: the queue carrying ``start`` and ``progress`` events back to the main process."""


def _init_worker(threads: int, events: Any = None) -> None:
    import torch

    global _EVENTS
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    _EVENTS = events


def _run_in_worker(task: Any) -> Any:
    events, cell_id = _EVENTS, task.cell.cell_id
    if events is None:
        return execute_cell(task)
    events.put(("start", cell_id))

    def progress(phase: str, done: int, total: int) -> None:
        events.put(("progress", cell_id, phase, done, total))

    return execute_cell(task, progress=progress)


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
    """Options of the ``process`` executor.

    Attributes:
        workers: worker processes (cells run in parallel).
        threads_per_worker: torch CPU threads per worker; 0 = CPU count / workers.

    """

    workers: int = 2
    threads_per_worker: int = 0

    def validate(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.threads_per_worker < 0:
            raise ValueError("threads_per_worker must be >= 0")


class ProcessExecutor(Executor):
    """Run cells in N worker processes (spawned), CPU threads divided between them.

    Workers load plugins from entry points, so components must come from installed
    packages (not from plugins registered in code). Workers send a start event and their
    epoch / batch progress through a queue; the display follows the latest started cell.
    """

    NAME = "process"
    Options = ProcessOptions

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], cell_started: Any = None,
            progress: Any = None) -> None:
        if not tasks:
            return
        workers = min(self.options.workers, len(tasks))
        threads = self.options.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads, events))
        cells = {task.cell.cell_id: task.cell for task in tasks}
        followed: list[str] = []  # the display follows the most recently started cell's epochs and batches
        finished: set[str] = set()  # a start event may arrive after its cell's result: ignore it then

        def relay_events() -> None:
            while True:
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    return
                if event[0] == "start" and event[1] not in finished:
                    followed[:] = [event[1]]
                    if cell_started is not None:
                        cell_started(cells[event[1]])
                elif event[0] == "progress" and progress is not None and followed and event[1] == followed[0]:
                    progress(*event[2:])

        try:
            pending = {pool.submit(_run_in_worker, task): task for task in tasks}
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                relay_events()
                for future in done:
                    task = pending.pop(future)
                    finished.add(task.cell.cell_id)
                    try:
                        result = future.result()
                    except Exception as exc:  # the worker died (e.g. out of memory): record, go on
                        result = failed_result(task, f"worker process failed: {type(exc).__name__}: {exc}",
                                               traceback.format_exc())
                    on_result(result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            raise
        pool.shutdown(wait=True)


@cxrbench.hookimpl
def cxrbench_register_executors() -> list[type]:
    return [LocalExecutor, ProcessExecutor]
