"""The ``ray`` executor: every cell a Ray task, on an existing cluster or a local one.

Install with ``pip install "cxrbench[ray]"``. Results come back to the driver, which
stays the single writer of the results store. Workers load cxrbench plugins from entry
points, so every machine of the cluster needs the same packages installed.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cxrbench
from cxrbench.api import Executor, RunEvents, UsageError, execute_cell, failed_result


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Options of the ``ray`` executor.

    Attributes:
        address: an existing cluster: ``auto`` (the one this machine's ``ray start`` made),
            ``host:port`` (its GCS) or ``ray://host:10001`` (Ray Client). null starts a
            FRESH local Ray instance for the run and stops it afterwards, never joining a
            cluster that happens to be running.
        num_cpus: CPUs reserved per cell.
        num_gpus: GPUs reserved per cell (fractions share a GPU); ``auto`` = 1 when the
            cluster has GPUs, else 0. A cell given no GPU runs on the CPU even where the
            node has one (it never uses a GPU Ray did not give it).
        max_retries: times Ray retries a cell whose worker died.
        local_cpus: CPUs of a local instance (null = all).
        connect_timeout_s: how long to wait for a cluster's address to answer before
            failing with one line.
        init: more ``ray.init`` keyword arguments, e.g. ``{namespace: cxr, runtime_env:
            {env_vars: {OMP_NUM_THREADS: "4"}}}``.

    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: Any = "auto"
    max_retries: int = 0
    local_cpus: int | None = None
    connect_timeout_s: float = 30.0
    init: dict | None = None

    def validate(self) -> None:
        if self.num_cpus <= 0:
            raise ValueError("num_cpus must be positive")
        if self.num_gpus != "auto" and (isinstance(self.num_gpus, bool) or not isinstance(self.num_gpus, int | float)
                                        or self.num_gpus < 0):
            raise ValueError(f"num_gpus must be 'auto' or a number >= 0, got {self.num_gpus!r}")
        if not self.connect_timeout_s > 0:
            raise ValueError("connect_timeout_s must be positive")
        reserved = {"address", "num_cpus", "num_gpus"} & set(self.init or {})
        if reserved:
            raise ValueError(f"init: set {', '.join(sorted(reserved))} with the executor's own options")


def gcs_endpoint(address: str, session_file: Path | None = None) -> tuple[str, int] | None:
    """The ``(host, port)`` an address must answer on, or None when it cannot be known beforehand.

    ``auto`` reads the address ``ray start`` recorded on this machine
    (``/tmp/ray/ray_current_cluster``); no such file means no cluster to join.
    """
    text = address.strip()
    if text == "auto":
        path = session_file or Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not path.is_file():
            raise UsageError("executor 'ray': address 'auto' but no Ray cluster was started on this machine "
                             "('ray start --head'), or use address: null for a local instance")
        text = path.read_text().strip()
    text = text.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail in at most ``timeout_s`` with one line when nothing answers at ``address``."""
    endpoint = gcs_endpoint(address)
    if endpoint is None:
        return
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(endpoint, timeout=min(2.0, timeout_s)):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.2)
    raise UsageError(f"executor 'ray': nothing answers at {endpoint[0]}:{endpoint[1]} ({address}) after "
                     f"{timeout_s:g} s: {type(last).__name__ if last else 'timeout'}; is the cluster up?")


def _cell_on_granted_devices(task: Any, events: Any = None) -> Any:
    """``execute_cell`` on the devices Ray granted: no GPU granted means the CPU."""
    import ray

    if not ray.get_gpu_ids():
        if task.train.device == "cuda":
            return failed_result(task, "train.device is 'cuda' but Ray gave this cell no GPU: set the ray "
                                       "executor's num_gpus (e.g. 1)")
        task = dataclasses.replace(task, train=dataclasses.replace(task.train, device="cpu"))
    return execute_cell(task) if events is None else execute_cell(task, events)


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
            if opts.address is not None:
                check_reachable(opts.address, opts.connect_timeout_s)
            try:
                ray.init(address=opts.address or "local", num_cpus=opts.local_cpus if opts.address is None else None,
                         include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                         **dict(opts.init or {}))
            except Exception as exc:
                raise UsageError(f"executor 'ray': cannot connect to Ray at {opts.address or 'a local instance'}: "
                                 f"{type(exc).__name__}: {exc}") from None
        num_gpus = opts.num_gpus
        if num_gpus == "auto":
            num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        remote = ray.remote(num_cpus=opts.num_cpus, num_gpus=num_gpus, max_retries=opts.max_retries)(
            _cell_on_granted_devices)
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
