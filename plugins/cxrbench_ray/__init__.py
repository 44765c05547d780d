"""The ``ray`` executor: every cell a Ray task, on an existing cluster or a local one.

Install with ``pip install "cxrbench[ray]"``. Results come back to the driver, which
stays the single writer of the results store. Workers load cxrbench plugins from entry
points, so every machine of the cluster needs the same packages installed.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cxrbench
from cxrbench.api import Event, Executor, QueueEvents, RunEvents, UsageError, execute_cell, failed_result, one_line

from .keeper import ArtifactKeeper, write_files


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
        artifacts: ``driver`` (default): each cell runs in a temporary folder on its node
            and its files (checkpoints, predictions, maps; ``last.pt`` after every epoch)
            are written to the driver's results folder by an actor on the driver's node, so
            no shared filesystem is needed and a retry on another node resumes from the last
            epoch; ``shared``: cells write to the results folder directly (it must be
            mounted at the same path on every node).
        resources: custom Ray resources each cell needs, e.g. ``{gpu_node: 1}``.

    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: Any = "auto"
    max_retries: int = 0
    local_cpus: int | None = None
    connect_timeout_s: float = 30.0
    init: dict | None = None
    artifacts: str = "driver"
    resources: dict | None = None

    def validate(self) -> None:
        if self.num_cpus <= 0:
            raise ValueError("num_cpus must be positive")
        if self.num_gpus != "auto" and (isinstance(self.num_gpus, bool) or not isinstance(self.num_gpus, int | float)
                                        or self.num_gpus < 0):
            raise ValueError(f"num_gpus must be 'auto' or a number >= 0, got {self.num_gpus!r}")
        if not self.connect_timeout_s > 0:
            raise ValueError("connect_timeout_s must be positive")
        if self.artifacts not in ("driver", "shared"):
            raise ValueError(f"artifacts must be 'driver' or 'shared', got {self.artifacts!r}")
        if self.artifacts == "driver" and str(self.address or "").startswith("ray://"):
            raise ValueError("artifacts: 'driver' needs the driver on a cluster node; with Ray Client "
                             "(ray://) use artifacts: shared and a results folder every node mounts")
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


PROGRESS_EVERY_S = 0.5
"""Batch progress is relayed at most this often per cell (epoch ends and warnings always)."""


class NodeEvents(QueueEvents):
    """A cell's run events on a worker node: relayed live to the driver through a Ray queue.

    With a keeper, ``last.pt`` is also sent to the driver's disk after every epoch (the
    progress report comes after the save), so a retry on another node resumes from it.
    """

    def __init__(self, queue: Any, keeper: Any = None, cell_dir: str = "", local_dir: Path | None = None) -> None:
        super().__init__(queue)
        self.keeper, self.cell_dir, self.local_dir = keeper, cell_dir, local_dir
        self._last_progress = 0.0

    def progress(self, cell_id: str, progress: Any) -> None:
        now = time.monotonic()
        if progress.epoch_end and self.keeper is not None and self.local_dir is not None:
            import ray

            last = self.local_dir / "last.pt"
            if last.is_file():
                ray.get(self.keeper.store.remote(self.cell_dir, {"last.pt": last.read_bytes()}))
        if progress.epoch_end or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            super().progress(cell_id, progress)


def _on_granted_devices(task: Any) -> Any:
    """The task on the devices Ray granted (no GPU granted: the CPU), or a failed result."""
    import ray

    if ray.get_gpu_ids():
        return task
    if task.train.device == "cuda":
        return failed_result(task, "train.device is 'cuda' but Ray gave this cell no GPU: set the ray "
                                   "executor's num_gpus (e.g. 1)")
    return dataclasses.replace(task, train=dataclasses.replace(task.train, device="cpu"))


def run_on_node(task: Any, queue: Any = None, keeper: Any = None) -> Any:
    """One cell on a Ray worker: in a node-local folder synchronised through ``keeper``, or in place.

    Without a keeper (``artifacts: shared``) the cell writes to its folder directly, which
    must then be on a filesystem every node mounts at the same path.
    """
    import ray

    task = _on_granted_devices(task)
    if not hasattr(task, "cell"):  # a failed result
        return task
    if queue is not None:  # started here, now: the driver counts starts to see retries
        QueueEvents(queue).cell_started(task.cell_id, node_label(ray))
    events = NodeEvents(queue) if queue is not None else RunEvents()
    if keeper is None:
        return execute_cell(task, events)
    local = Path(tempfile.mkdtemp(prefix=f"cxrbench-{task.cell_id}-"))
    try:
        keeper_files = ray.get(keeper.fetch.remote(task.cell_dir))
        write_files(str(local), keeper_files)
        if queue is not None:
            events = NodeEvents(queue, keeper, task.cell_dir, local)
        result = execute_cell(dataclasses.replace(task, cell_dir=str(local)), events)
        files = {p.relative_to(local).as_posix(): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}
        ray.get(keeper.store.remote(task.cell_dir, files, True))
        return dataclasses.replace(result, info={**result.info, "ran_on": ray.get_runtime_context().get_node_id(),
                                                 "artifacts_sent": len(files)})
    finally:
        shutil.rmtree(local, ignore_errors=True)


def node_label(ray: Any) -> str:
    """``node 10.0.0.7 (3f9a2c)``: the node's address and the start of its id (nodes may share an address)."""
    node_id = ray.get_runtime_context().get_node_id()
    return f"node {ray.util.get_node_ip_address()} ({node_id[:6]})"


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
        remote = ray.remote(num_cpus=opts.num_cpus, num_gpus=num_gpus, max_retries=opts.max_retries,
                            resources=dict(opts.resources or {}))(run_on_node)
        from ray.util.queue import Queue

        # the queue and the keeper live on the driver's node: a worker node's death must not take them along
        queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": _this_node(ray)})
        keeper = _keeper_on_this_node(ray) if opts.artifacts == "driver" else None
        refs: dict[Any, Any] = {}
        finished: set[str] = set()
        warned: dict[str, int] = {}
        starts: dict[str, int] = {}

        def relay() -> None:
            for event in _drain(queue):
                cell = event.args[0] if event.args else None
                if isinstance(event, Event) and cell not in finished:
                    if event.kind == "warning":
                        warned[cell] = warned.get(cell, 0) + 1
                    if event.kind == "cell_started":
                        # Ray retries a task whose worker or node died without telling the driver:
                        # a second start of the same cell is that retry
                        starts[cell] = starts.get(cell, 0) + 1
                        if starts[cell] > 1:
                            events.cell_retried(cell, starts[cell], "its previous attempt's worker or node died")
                    event.deliver(events)

        try:
            for task in tasks:
                refs[remote.remote(task, queue, keeper)] = task
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
                relay()
                for ref in done:
                    task = refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # the task's worker died: record the cell, go on
                        result = failed_result(task, f"ray task failed: {one_line(type(exc).__name__)}: "
                                                     f"{one_line(str(exc))[:300]}", traceback.format_exc())
                    relay()
                    finished.add(task.cell_id)
                    for message in result.warnings[warned.get(task.cell_id, 0):]:  # not relayed live
                        events.warning(task.cell_id, message)
                    on_result(result)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            if started_here:
                ray.shutdown()


def _drain(queue: Any) -> list[Any]:
    from ray.util.queue import Empty

    items = []
    while True:
        try:
            items.append(queue.get_nowait())
        except Empty:
            return items
        except Exception:  # the queue's actor is gone: live events stop, results still arrive
            return items


def _this_node(ray: Any) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _keeper_on_this_node(ray: Any) -> Any:
    """The artifact keeper actor, pinned to the driver's node (it writes the driver's disk)."""
    return ray.remote(num_cpus=0, scheduling_strategy=_this_node(ray))(ArtifactKeeper).remote()


@cxrbench.hookimpl
def cxrbench_register_executors() -> type:
    return RayExecutor
