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
from cxrbench.api import Event, Executor, QueueEvents, RunEvents, execute_cell, failed_result


class LocalExecutor(Executor):
    """Run cells one after another in this process (default; live progress per batch)."""

    NAME = "local"

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: RunEvents) -> None:
        for task in tasks:
            events.cell_started(task.cell_id, f"pid {os.getpid()}")
            on_result(execute_cell(task, events))


_EVENTS: Any = None
"""In a worker: the queue carrying run events back to the main process."""


def _init_worker(threads: int, events: Any = None) -> None:
    import torch

    global _EVENTS
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    _EVENTS = events


def _run_in_worker(task: Any) -> Any:
    events = QueueEvents(_EVENTS) if _EVENTS is not None else RunEvents()
    events.cell_started(task.cell_id, f"pid {os.getpid()}")
    return execute_cell(task, events)


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
    packages (not from plugins registered in code). Workers send their run events (cell
    started, progress, warnings) through a queue; the driver delivers them in its process.
    """

    NAME = "process"
    Options = ProcessOptions

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: RunEvents) -> None:
        if not tasks:
            return
        workers = min(self.options.workers, len(tasks))
        threads = self.options.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        channel = context.Queue()
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads, channel))
        finished: set[str] = set()  # an event may arrive after its cell's result: drop it then
        warned: dict[str, int] = {}  # warnings relayed live, per cell

        def relay_events() -> None:
            while True:
                try:
                    event = channel.get_nowait()
                except queue.Empty:
                    return
                if isinstance(event, Event) and not (event.args and event.args[0] in finished):
                    if event.kind == "warning" and event.args:
                        warned[event.args[0]] = warned.get(event.args[0], 0) + 1
                    event.deliver(events)

        try:
            pending = {pool.submit(_run_in_worker, task): task for task in tasks}
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                relay_events()
                for future in done:
                    task = pending.pop(future)
                    relay_events()  # the cell's last events (warnings) before its result
                    finished.add(task.cell.cell_id)
                    try:
                        result = future.result()
                    except Exception as exc:  # the worker died (e.g. out of memory): record, go on
                        result = failed_result(task, f"worker process failed: {type(exc).__name__}: {exc}",
                                               traceback.format_exc())
                    # the queue's feeder thread may deliver a cell's last warnings after its result
                    for message in result.warnings[warned.get(task.cell_id, 0):]:
                        events.warning(task.cell_id, message)
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
