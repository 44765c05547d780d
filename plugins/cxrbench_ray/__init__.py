"""The ``ray`` executor: every cell a Ray task, on an existing cluster or a local one.

Install with ``pip install "cxrbench[ray]"``. Results come back to the driver, which
stays the single writer of the results store. Workers load cxrbench plugins from entry
points, so every machine of the cluster needs the same packages installed.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import cxrbench
from cxrbench.api import Executor, RunEvents, UsageError, execute_cell, failed_result


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Options of the ``ray`` executor.

    Attributes:
        address: an existing cluster (``auto``, ``ray://head:10001``); null starts a
            local Ray instance for the run and stops it afterwards.
        num_cpus: CPUs reserved per cell.
        num_gpus: GPUs reserved per cell (fractions share a GPU).
        max_retries: times Ray retries a cell whose worker died.
        local_cpus: CPUs of a local instance (null = all).

    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 0
    local_cpus: int | None = None

    def validate(self) -> None:
        if self.num_cpus <= 0:
            raise ValueError("num_cpus must be positive")
        if self.num_gpus < 0:
            raise ValueError("num_gpus must be >= 0")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("executor 'ray' needs Ray: pip install \"cxrbench[ray]\"") from None
    return ray


class RayExecutor(Executor):
    """Run each cell as a Ray task (num_cpus / num_gpus per cell) on a cluster or locally."""

    NAME = "ray"
    Options = RayOptions

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: RunEvents) -> None:
        if not tasks:
            return
        ray = _import_ray()
        opts = self.options
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=opts.address, num_cpus=opts.local_cpus if opts.address is None else None,
                         include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            except Exception as exc:
                raise UsageError(f"executor 'ray': cannot connect to Ray at {opts.address or 'a local instance'}: "
                                 f"{type(exc).__name__}: {exc}") from None
        remote = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_retries=opts.max_retries)(
            execute_cell)
        refs: dict[Any, Any] = {}
        try:
            for task in tasks:
                refs[remote.remote(task)] = task
                events.cell_started(task.cell_id, "ray")
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task = refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # the task's worker died: record the cell, go on
                        result = failed_result(task, f"ray task failed: {type(exc).__name__}: {exc}",
                                               traceback.format_exc())
                    for message in result.warnings:  # Ray tasks do not relay events live
                        events.warning(task.cell_id, message)
                    on_result(result)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            if started_here:
                ray.shutdown()


@cxrbench.hookimpl
def cxrbench_register_executors() -> type:
    return RayExecutor
