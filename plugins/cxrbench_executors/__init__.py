"""Built-in executors: ``local`` (in-process, default) and ``process`` (N worker processes).

Both hand every result back to the caller's ``on_result`` in the main process, which is
the single writer of the results store.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
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


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _run_in_worker(task: Any) -> Any:
    return execute_cell(task)


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
    packages (not from plugins registered in code).
    """

    NAME = "process"
    Options = ProcessOptions

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], cell_started: Any = None) -> None:
        if not tasks:
            return
        workers = min(self.options.workers, len(tasks))
        threads = self.options.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,))
        try:
            pending = {}
            for task in tasks:
                pending[pool.submit(_run_in_worker, task)] = task
                if cell_started is not None:
                    cell_started(task.cell)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
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
