"""The ``slurm`` executor: a grid's cells as a Slurm job array, submitted through submitit.

Install with ``pip install "cxrbench[slurm]"``. Each pending cell becomes one element of a
job array (``sbatch --array``, at most ``array_parallelism`` running at once); each job runs
``execute_cell`` and returns the cell's ``CellResult``, which submitit pickles into its log
folder. The driver polls the jobs and records each result as it arrives, so it stays the
single writer of the results store: jobs never open the SQLite database. Live progress
(start and host, epochs with loss and validation AUROC, warnings) comes through a
JSON-lines file per job in ``folder/events`` that the driver tails (:mod:`.relay`).

**Slurm nodes need a shared filesystem.** A job writes the cell's checkpoints, predictions
and maps into the cell's folder under the results directory, at the absolute path the
driver put in the task, and submitit passes tasks and results through its log folder
(``folder``, default ``<results>/slurm``). Both must be visible at the same paths on every
node (a network or parallel filesystem, not ``/tmp``). Jobs load cxrbench plugins from
entry points (and ``CXRBENCH_PLUGINS``: ``sbatch`` exports the driver's environment), so
the nodes need the same packages installed; ``setup`` runs shell lines first (``module
load ...``, ``source venv/bin/activate``).

``cluster: local`` runs every job as a local process through submitit's own local
backend (how the executor is tested without Slurm); ``debug`` runs them one by one in the
driver's process; ``auto`` uses Slurm where ``srun`` is on the PATH, else ``local``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import cxrbench
from cxrbench.api import CellResult, Executor, RunEvents, UsageError, execute_cell, failed_result, one_line

from .relay import EventTail, FileEvents, job_worker_label

CELLS_DEPTH = 2
"""A task's cell folder is ``<results>/cells/<cell_id>``: the results directory is two levels up."""


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Options of the ``slurm`` executor.

    Attributes:
        cluster: ``auto`` (Slurm where ``srun`` exists, else local processes), ``slurm``,
            ``local`` (submitit's local processes) or ``debug`` (in the driver's process).
        partition: the Slurm partition (null = the cluster's default).
        timeout_min: each job's time limit in minutes (``sbatch --time``; also enforced
            on local jobs).
        cpus_per_task: CPUs per job; torch runs with as many threads unless ``train.threads``
            says otherwise.
        gpus_per_node: GPUs per job; 0 = none, and cells then run on the CPU even on a GPU
            node.
        mem_gb: memory per job in GB (null = the partition's default).
        array_parallelism: at most this many jobs run at once (``--array=0-N%P``; on the
            local cluster, jobs are submitted in waves of this size).
        additional_parameters: more ``sbatch`` options, e.g. ``{account: radiology, qos:
            high, constraint: a100}`` (submitit's ``slurm_additional_parameters``).
        setup: shell lines run before each job (``module load cuda``, ``source venv/bin/activate``).
        folder: submitit's folder of job pickles and logs (null = ``<results>/slurm``);
            made absolute on the driver. Must be on the shared filesystem.
        job_name: the jobs' name in ``squeue``.
        poll_s: seconds between polls of the jobs' states.

    """

    cluster: Literal["auto", "slurm", "local", "debug"] = "auto"
    partition: str | None = None
    timeout_min: int = 60
    cpus_per_task: int = 4
    gpus_per_node: int = 0
    mem_gb: float | None = None
    array_parallelism: int = 256
    additional_parameters: dict | None = None
    setup: tuple[str, ...] = ()
    folder: str | None = None
    job_name: str = "cxrbench"
    poll_s: float = 5.0

    def validate(self) -> None:
        if self.timeout_min < 1:
            raise ValueError("timeout_min must be at least 1 (minutes)")
        if self.cpus_per_task < 1:
            raise ValueError("cpus_per_task must be at least 1")
        if self.gpus_per_node < 0:
            raise ValueError("gpus_per_node must be >= 0")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError("mem_gb must be positive (or null)")
        if self.array_parallelism < 1:
            raise ValueError("array_parallelism must be at least 1")
        if not self.poll_s > 0:
            raise ValueError("poll_s must be positive")
        if not self.job_name.strip():
            raise ValueError("job_name must not be empty")
        bad = [key for key in self.additional_parameters or {} if not isinstance(key, str)]
        if bad:
            raise ValueError(f"additional_parameters: keys are sbatch option names, got {bad[0]!r}")
        reserved = {"array", "output", "error", "time", "partition", "cpus-per-task", "cpus_per_task",
                    "gpus-per-node", "gpus_per_node", "mem", "job-name", "job_name"} & set(
            self.additional_parameters or {})
        if reserved:
            raise ValueError(f"additional_parameters: set {', '.join(sorted(reserved))} with the executor's "
                             "own options")


def run_job(task: Any, threads: int, gpus: int, events_path: str | None = None) -> CellResult:
    """In a job: ``execute_cell`` with torch threads pinned to the job's CPUs.

    A job given no GPU runs its cell on the CPU even where the node has one (as the Ray
    executor does): it never uses a GPU the scheduler did not grant. The cell's run events
    go to ``events_path`` (:mod:`cxrbench_slurm.relay`), which the driver tails.
    """
    import torch

    events = FileEvents(events_path) if events_path else RunEvents()
    events.cell_started(task.cell_id, job_worker_label(_job_id()))

    # the node may have more cores than the job was given; never more threads than the node has
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or threads)))
    if gpus == 0:
        if task.train.device == "cuda":
            return failed_result(task, "train.device is 'cuda' but the slurm job has no GPU: set the slurm "
                                       "executor's gpus_per_node (e.g. 1)")
        task = dataclasses.replace(task, train=dataclasses.replace(task.train, device="cpu"))
    return execute_cell(task, events)


def _job_id() -> str | None:
    """The running job's Slurm id (``1234_5`` for an array element), or None outside submitit."""
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except Exception:  # not in a submitit job (the debug cluster runs in the driver)
        return None


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UsageError("executor 'slurm' needs submitit: pip install \"cxrbench[slurm]\"") from None
    return submitit


def job_failure(job: Any, exc: BaseException) -> str:
    """One line saying why a job gave no result, with its id and its log's path.

    Args:
        job: the submitit job.
        exc: what ``job.result()`` raised: ``FailedJobError`` (the job raised; its message
            holds the job's traceback) or ``UncompletedJobError`` (killed, timed out,
            cancelled, out of memory: no result pickle).

    """
    name = type(exc).__name__
    if name == "FailedJobError":
        what = _job_exception_line(str(exc))
    elif name == "UncompletedJobError":
        what = f"ended without a result (state {_state(job)})"
    else:
        what = f"{name}: {one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else '')}".rstrip(": ")
    return one_line(f"slurm job {job.job_id} failed: {what} (log {_log_path(job)})")


def _job_exception_line(message: str) -> str:
    """The exception line (``RuntimeError: boom``) of a ``FailedJobError``'s job traceback.

    submitit puts the job's traceback between two lines of dashes.
    """
    lines = message.splitlines()
    fences = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"-"}]
    trace = lines[fences[0] + 1:fences[1]] if len(fences) >= 2 else lines
    last = [line.strip() for line in trace if line.strip()]
    return last[-1] if last else "the job raised"


def _state(job: Any) -> str:
    try:
        return str(job.state)
    except Exception:  # the scheduler could not be asked: the reason is still worth a line
        return "unknown"


def _log_path(job: Any) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:
        return "unknown"


@dataclasses.dataclass(eq=False)  # identity: two jobs are never the same job
class _Running:
    """A submitted job, the task it runs and the reader of its events file."""

    job: Any
    task: Any
    tail: EventTail | None = None


class SlurmExecutor(Executor):
    """Run each cell as an element of a Slurm job array (submitit); local processes for testing."""

    NAME = "slurm"
    Options = SlurmOptions

    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: RunEvents) -> None:
        if not tasks:
            return
        submitit = _import_submitit()
        folder = self._folder(tasks)
        backend = self._backend(submitit, folder, events)
        # Slurm queues the whole array and runs array_parallelism at once; submitit's local
        # backend would start every job at once, so it gets waves of that size instead
        window = len(tasks) if backend.cluster == "slurm" else self.options.array_parallelism
        queued = list(tasks)
        running: list[_Running] = []
        try:
            while queued or running:
                free = window - len(running)
                if queued and free > 0:
                    batch, queued = queued[:free], queued[free:]
                    running.extend(self._submit(backend, batch, folder / "events"))
                for item in running:
                    if item.tail is not None:
                        item.tail.deliver(events)
                finished = [r for r in running if r.job.done()]
                for item in finished:
                    running.remove(item)
                    relayed = 0
                    if item.tail is not None:
                        item.tail.deliver(events)  # the job's last lines, before its result
                        relayed = item.tail.warnings
                    result = self._collect(item)
                    for message in result.warnings[relayed:]:  # those the events file did not carry
                        events.warning(item.task.cell_id, message)
                    on_result(result)
                if not finished:
                    time.sleep(self.options.poll_s)
        except BaseException:
            self._cancel(backend.cluster, [r.job for r in running])
            raise

    def _folder(self, tasks: Sequence[Any]) -> Path:
        if self.options.folder is not None:
            return Path(self.options.folder).expanduser().resolve()
        return Path(tasks[0].cell_dir).resolve().parents[CELLS_DEPTH - 1] / "slurm"

    def _backend(self, submitit: Any, folder: Path, events: RunEvents) -> Any:
        """The ``submitit.AutoExecutor`` of the chosen cluster, with the jobs' resources."""
        opts = self.options
        cluster = None if opts.cluster == "auto" else opts.cluster
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise UsageError("executor 'slurm': cluster 'slurm' but sbatch is not on the PATH (is this a Slurm "
                             "login node?); cluster: local runs the jobs as local processes")
        try:
            backend = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
            if opts.cluster == "auto" and backend.cluster != "slurm":
                events.warning(None, f"executor 'slurm': no Slurm here (no srun on the PATH): cells run on "
                                     f"submitit's {backend.cluster!r} cluster")
            parameters: dict[str, Any] = {
                "name": opts.job_name,
                "timeout_min": opts.timeout_min,
                "cpus_per_task": opts.cpus_per_task,
                "gpus_per_node": opts.gpus_per_node or None,  # sbatch --gpus-per-node=0 is refused by some sites
                "mem_gb": opts.mem_gb,
                "slurm_partition": opts.partition,
                "slurm_array_parallelism": opts.array_parallelism,
                "slurm_additional_parameters": dict(opts.additional_parameters) if opts.additional_parameters
                else None,
            }
            if opts.setup:
                parameters.update(slurm_setup=list(opts.setup), local_setup=list(opts.setup))
            backend.update_parameters(**parameters)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"executor 'slurm': cannot set up submitit's {opts.cluster!r} cluster: "
                             f"{type(exc).__name__}: {one_line(str(exc))[:300]}") from None
        return backend

    def _submit(self, backend: Any, batch: list[Any], events_dir: Path) -> list[_Running]:
        """Submit ``batch`` as one job array, each job with its events file in ``events_dir``."""
        n = len(batch)
        # one events file per job, in the shared folder the jobs already read their tasks from
        paths: list[str | None] = [None] * n
        with contextlib.suppress(OSError):
            events_dir.mkdir(parents=True, exist_ok=True)
            paths = [str(events_dir / f"{t.cell_id}-{secrets.token_hex(4)}.jsonl") for t in batch]
        try:
            jobs = backend.map_array(run_job, batch, [self.options.cpus_per_task] * n,
                                     [self.options.gpus_per_node] * n, paths)
        except Exception as exc:  # sbatch refused (unknown partition, limits): nothing of the batch runs
            raise UsageError(f"executor 'slurm': submitting {n} jobs failed: {type(exc).__name__}: "
                             f"{one_line(str(exc))[:300]}") from None
        # a job tells when it starts (a queued job has not): its events file carries that line
        return [_Running(job, task, EventTail(path) if path else None)
                for job, task, path in zip(jobs, batch, paths, strict=True)]

    @staticmethod
    def _collect(item: _Running) -> CellResult:
        """The job's ``CellResult``, or a failed one naming the job and its log."""
        try:
            result = item.job.result()
        except Exception as exc:  # the job raised, was killed or timed out: record the cell, go on
            return failed_result(item.task, job_failure(item.job, exc), f"{exc}\n\n{traceback.format_exc()}")
        if not isinstance(result, CellResult):
            return failed_result(item.task, f"slurm job {item.job.job_id} returned {type(result).__name__}, "
                                            "not a CellResult")
        return result

    @staticmethod
    def _cancel(cluster: str, jobs: list[Any]) -> None:
        """Cancel the jobs still queued or running (an interrupted run)."""
        if not jobs:
            return
        if cluster == "slurm":  # one scancel for all of them, not one per array element
            subprocess.call(["scancel", *sorted({str(job.job_id) for job in jobs})], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
            return
        for job in jobs:
            try:
                job.cancel(check=False)
            except Exception:  # a job that ended meanwhile cannot be cancelled: nothing to do
                continue


@cxrbench.hookimpl
def cxrbench_register_executors() -> type:
    return SlurmExecutor
