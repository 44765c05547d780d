"""A pool of worker processes in which one dead worker costs only its own cell.

``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken when one worker
dies (killed for memory, a segfault in a native library): every cell still running or
queued then fails with ``BrokenProcessPool``, including cells that never started. Here
each worker has its own pipe, over which it receives one task at a time and sends back
that task's run events and its result, in order. A worker that dies is seen as the end
of its pipe: its cell is recorded as failed with the exit reason, and a fresh worker
takes its slot (and its GPU) for the cells still queued.

Workers also never outlive the driver: each asks the kernel to kill it when its parent
dies (``PR_SET_PDEATHSIG`` on Linux) and, where that is not available, a watcher thread
ends it within a second of its parent going away.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from cxrbench.api import Event, RunEvents, execute_cell, failed_result

PARENT_POLL_S = 1.0
"""How often a worker without ``PR_SET_PDEATHSIG`` checks that its driver is alive."""

STOP_GRACE_S = 5.0
"""How long workers get to exit after being told to stop, before they are terminated."""


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (the driver) dies, however it dies.

    A driver killed with SIGKILL runs no clean-up code, so the worker must notice on its
    own: the kernel's parent-death signal where there is one, and a polling thread always
    (it also covers a parent that died before the signal was armed).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)  # no clean-up: the driver that would read our results is gone
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="cxrbench-parent-watch", daemon=True).start()


class PipeEvents(RunEvents):
    """Run events sent to the driver over the worker's pipe (see :class:`WorkerPool`).

    Sends are serialised by a lock: a cell may report from background threads (the
    batch loader, the mask scorer) as well as from its main thread.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: tuple[str, Any]) -> None:
        with self.lock:
            self.conn.send(message)

    def _event(self, kind: str, *args: Any) -> None:
        # a closed pipe (the driver is shutting down) must not fail the cell
        with contextlib.suppress(Exception):
            self.send(("event", Event(kind, args)))

    def cell_started(self, cell_id: str, worker: str | None = None) -> None:
        self._event("cell_started", cell_id, worker)

    def progress(self, cell_id: str, progress: Any) -> None:
        self._event("progress", cell_id, progress)

    def warning(self, cell_id: str | None, message: str) -> None:
        self._event("warning", cell_id, message)

    def cell_retried(self, cell_id: str, attempt: int, reason: str) -> None:
        self._event("cell_retried", cell_id, attempt, reason)


def worker_main(slot: int, conn: Connection, threads: int, gpu: str | None, parent_pid: int) -> None:
    """A worker's life: pin its GPU and threads, then run the tasks it is sent until told to stop."""
    # Ctrl-C reaches the whole process group; the driver decides what happens to workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    from . import pin_gpu

    pin_gpu(gpu)
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    events = PipeEvents(conn)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        events.cell_started(task.cell_id, f"worker {slot + 1} (pid {os.getpid()})")
        result = execute_cell(task, events)
        events.send(("result", result))


def exit_reason(exitcode: int | None) -> str:
    """``killed by SIGKILL`` / ``exit code 3`` for a dead worker's exit code."""
    if exitcode is None:
        return "its pipe closed"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclasses.dataclass
class _Slot:
    """One worker place: its process, its end of the pipe, its GPU and the task it runs."""

    index: int
    gpu: str | None
    process: Any = None
    conn: Connection | None = None
    task: Any = None
    tasks_run: int = 0


class WorkerPool:
    """``size`` worker processes fed one task at a time; a dead worker is replaced.

    Args:
        size: worker processes.
        threads: torch CPU threads per worker.
        gpus: the GPU of each slot (``CUDA_VISIBLE_DEVICES`` value; ``""`` = none), or
            None to leave GPU visibility alone.
        context: a multiprocessing context (``spawn``: workers import plugins afresh).

    """

    def __init__(self, size: int, threads: int, gpus: Sequence[str] | None, context: Any) -> None:
        self.context = context
        self.threads = threads
        self.slots = [_Slot(i, gpus[i] if gpus is not None else None) for i in range(size)]
        self.replaced = 0

    def _start(self, slot: _Slot) -> None:
        ours, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(target=worker_main, name=f"cxrbench-worker-{slot.index + 1}",
                                       args=(slot.index, theirs, self.threads, slot.gpu, os.getpid()))
        process.start()
        theirs.close()  # only the worker holds its end: its death closes the pipe for us
        slot.process, slot.conn, slot.task, slot.tasks_run = process, ours, None, 0

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: RunEvents) -> None:
        """Run every task; hand each result to ``on_result`` in this process as it arrives."""
        queue = collections.deque(tasks)
        try:
            for slot in self.slots[:len(queue)]:
                self._start(slot)
            while queue or any(s.task is not None for s in self.slots):
                for slot in self.slots:
                    if slot.task is None and queue:
                        self._feed(slot, queue.popleft())
                busy = {s.conn: s for s in self.slots if s.task is not None and s.conn is not None}
                for conn in wait(list(busy), timeout=0.5):
                    self._receive(busy[conn], on_result, events)
        except BaseException:
            self.terminate()
            raise
        self.stop()

    def _feed(self, slot: _Slot, task: Any) -> None:
        if slot.process is None or not slot.process.is_alive():
            self._start(slot)
        slot.task = task
        # a worker that died before taking it is seen by _receive, at its pipe's end
        with contextlib.suppress(BrokenPipeError, OSError):
            slot.conn.send(task)

    def _receive(self, slot: _Slot, on_result: Callable[[Any], None], events: RunEvents) -> None:
        try:
            kind, payload = slot.conn.recv()
        except (EOFError, OSError):
            self._worker_died(slot, on_result)
            return
        if kind == "event" and isinstance(payload, Event):
            with contextlib.suppress(Exception):  # a display error must not stop the run
                payload.deliver(events)
        elif kind == "result":
            slot.task, slot.tasks_run = None, slot.tasks_run + 1
            on_result(payload)

    def _worker_died(self, slot: _Slot, on_result: Callable[[Any], None]) -> None:
        task, process = slot.task, slot.process
        process.join(timeout=5)
        reason = exit_reason(process.exitcode)
        with contextlib.suppress(Exception):
            slot.conn.close()
        slot.process, slot.conn, slot.task = None, None, None
        self.replaced += 1
        # only this cell is lost; the slot gets a fresh worker when the next task needs one
        on_result(failed_result(task, f"worker process died ({reason}) while running this cell; "
                                      "other cells were not affected"))

    def stop(self) -> None:
        """Tell idle workers to exit; terminate any that do not within :data:`STOP_GRACE_S`."""
        for slot in self.slots:
            if slot.conn is not None:
                with contextlib.suppress(Exception):
                    slot.conn.send(None)
        deadline = time.monotonic() + STOP_GRACE_S
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
        self.terminate()

    def terminate(self) -> None:
        """End every worker now (Ctrl-C, an error in the driver)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(timeout=2)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(timeout=2)
            if slot.conn is not None:
                with contextlib.suppress(Exception):
                    slot.conn.close()
            slot.process, slot.conn = None, None
