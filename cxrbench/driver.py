"""Drive a whole grid: expand it, decide what to run, hand tasks to an executor, record results.

This process is the single writer of the results store: executors run cells wherever they
like and call back with each :class:`~cxrbench.records.CellResult`, which is written in
one transaction as it arrives. A failing cell is recorded, never fatal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import GridSpec
from .crosseval import missing_transfers, plan_transfers
from .errors import UsageError
from .events import RunEvents
from .grid import Cell, expand, localizer_key
from .options import options_to_dict
from .pairing import impossible_pairs, unlocalizable_datasets
from .pipeline import open_dataset, shared_datasets
from .records import CellResult, LocalizerResult, TransferResult
from .registry import ComponentSpec
from .shards import Shard
from .tasks import CellTask, LocalizerTask, TransferTask


@dataclasses.dataclass
class RunSummary:
    """How a ``run`` went."""

    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    localizers_failed: int = 0
    transfers_failed: int = 0
    stale: int = 0
    interrupted: bool = False
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def fingerprint_datasets(cache_root: str | None, warn: Callable[[str], None]) -> Callable[[ComponentSpec], str]:
    """A function giving each dataset choice's data fingerprint (each dataset built once)."""
    cache: dict[int, str] = {}

    def fingerprint(spec: ComponentSpec) -> str:
        key = id(spec)
        if key not in cache:
            try:
                cache[key] = open_dataset(spec, cache_root, warn).fingerprint()
            except UsageError as exc:
                raise UsageError(f"{spec.path}: {exc}") from None
        return cache[key]

    return fingerprint


def data_versions(cells: Sequence[Cell], cache_root: str | None, warn: Callable[[str], None]) -> dict[str, str]:
    """``{cell_id: the version of its data now}`` (``Dataset.data_version``, asked once per dataset)."""
    by_spec: dict[int, str] = {}
    out = {}
    for cell in cells:
        key = id(cell.dataset)  # expand shares one spec object between a dataset's cells
        if key not in by_spec:
            try:
                by_spec[key] = open_dataset(cell.dataset, cache_root, warn).data_version()
            except UsageError as exc:
                raise UsageError(f"{cell.dataset.path}: {exc}") from None
        out[cell.cell_id] = by_spec[key]
    return out


def stale_cells(cells: Sequence[Cell], store: Any, versions: Mapping[str, str]) -> frozenset[str]:
    """The ``ok`` cells whose record names another data version than the data has now.

    A record without a version (written before versions were recorded) is never stale:
    :meth:`cxrbench.store.ResultsStore.adopt_data_versions` stamps it at the next run.
    """
    recorded = store.data_versions()
    return frozenset(c.cell_id for c in cells
                     if recorded.get(c.cell_id) is not None and c.cell_id in versions
                     and recorded[c.cell_id] != versions[c.cell_id])


def plan_tasks(grid: GridSpec, cells: list[Cell], store: Any, *, force: bool = False, rerun_failed: bool = False,
               cache_root: str | None = None, executor: str = "local", stale: frozenset[str] = frozenset(),
               rerun_stale: bool = False,
               transfers: Mapping[str, tuple[TransferTask, ...]] | None = None) -> tuple[list[CellTask], int]:
    """Decide what to run: pending cells, and finished cells missing a localizer or a target evaluation.

    ``transfers`` (:func:`cxrbench.crosseval.plan_transfers`) gives each cell's wanted
    cross-dataset evaluations: a cell that trains does them all after its own evaluation; a
    trained cell missing one (or, with ``rerun_failed``, with a failed one) loads its model
    and evaluates only those, without retraining.

    A ``stale`` cell (its data changed since it ran) is left alone, localizers included (they
    would explain a model of other data), unless ``rerun_stale`` (or ``force``): then it
    trains again from scratch and its localizers are evaluated again.

    Returns:
        (tasks, number of cells skipped because they are complete or stale).

    """
    statuses = store.statuses()
    default_threshold = grid.localization.threshold
    scoring = options_to_dict(grid.localization)
    cache = str(Path(cache_root).resolve()) if cache_root else None
    tasks, skipped = [], 0
    impossible = {(p.head, p.localizer) for p in impossible_pairs(grid.heads, grid.localizers)}
    no_boxes = {d.dataset for d in unlocalizable_datasets(grid.datasets, grid.localization.split)}
    for cell in cells:
        # a pair its localizer refuses is warned about by validate / --dry-run and never evaluated,
        # as is every localizer on a dataset without a split to score them on
        wanted = [LocalizerTask(localizer_key(spec, default_threshold, scoring), spec) for spec in grid.localizers
                  if (cell.head.label(), spec.label()) not in impossible and cell.dataset.label() not in no_boxes]
        status = statuses.get(cell.cell_id)
        retrain = True
        targets = list((transfers or {}).get(cell.cell_id, ()))
        renew = force or (rerun_stale and cell.cell_id in stale)  # train from scratch, whatever is on disk
        if cell.cell_id in stale and not renew:
            skipped += 1
            continue
        if status == "ok" and not renew:
            done = store.localizer_statuses(cell.cell_id)
            wanted = [lt for lt in wanted if done.get(lt.key) != "ok"] if rerun_failed else \
                [lt for lt in wanted if lt.key not in done]
            if targets:
                targets = missing_transfers(targets, store.transfer_statuses(cell.cell_id), rerun_failed)
            if not wanted and not targets:
                skipped += 1
                continue
            retrain = False
        elif status == "failed" and not (force or rerun_failed):
            skipped += 1
            continue
        tasks.append(CellTask(cell=cell, localizers=tuple(wanted), train=grid.train, evaluation=grid.evaluation,
                              localization=grid.localization,
                              cell_dir=str(store.artifacts(cell.cell_id).folder.resolve()),
                              cache_root=cache, retrain=retrain, executor=executor,
                              force=renew, transfers=tuple(targets)))
    return tasks, skipped


def merge_partial(store: Any, task: CellTask, result: CellResult) -> CellResult:
    """For a localizer-only task, keep the stored classification metrics, info and provenance.

    A localizer-only pass that failed as a whole (e.g. an unreadable checkpoint) never
    overwrites the cell's good record: its localizers are recorded as failed, with the
    reason, and the cell stays ``ok``.
    """
    if task.retrain:
        return result
    previous = store.cell(task.cell.cell_id)
    if previous is None:
        return result
    if not result.ok:
        failed = tuple(LocalizerResult.failure(lt.key, lt.spec.name, result.error or "failed", result.traceback)
                       for lt in task.localizers)
        kept = {loc.key: loc for loc in previous.localizations if loc.key not in {f.key for f in failed}}
        # only this run's target evaluations are written: the cell's other transfer rows stay as they are
        transfers = tuple(TransferResult.failure(t.key, t.target.label(), t.target.name, result.error or "failed",
                                                 result.traceback) for t in task.transfers)
        return dataclasses.replace(previous, localizations=tuple(kept.values()) + failed, transfers=transfers,
                                   warnings=tuple(previous.warnings) + tuple(result.warnings))
    info = {**previous.info, **{k: v for k, v in result.info.items() if k != "history"}}
    return dataclasses.replace(result, metrics=previous.metrics, info=info, provenance=previous.provenance,
                               started_at=previous.started_at or result.started_at)


def grid_summary(grid: GridSpec) -> dict[str, Any]:
    """A JSON-friendly description of the grid for the store."""
    def comp(specs: tuple) -> list:
        return [s.key() for s in specs]

    summary = {"name": grid.name, "description": grid.description, "seeds": list(grid.seeds),
               "datasets": comp(grid.datasets), "backbones": comp(grid.backbones), "heads": comp(grid.heads),
               "localizers": comp(grid.localizers), "train": options_to_dict(grid.train),
               "evaluation": options_to_dict(grid.evaluation), "localization": options_to_dict(grid.localization),
               "source": grid.source}
    if getattr(grid, "evaluate_on", ()):  # only when set: the spec of a grid without targets is unchanged
        summary["evaluate_on"] = comp(grid.evaluate_on)
    return summary


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will do: cells to train, trained cells that only need localizers, cells done.

    Attributes:
        total: cells in the grid (or the shard).
        to_train: cells that train (new, failed and rerun, or forced).
        to_evaluate: trained cells whose model is loaded to run new (or failed) localizers.
        localizer_runs: localizer evaluations on those trained cells.
        done: cells with nothing left to do.
        transfer_runs: cross-dataset evaluations (``evaluate_on:``), of cells that train and
            of trained cells alike.
        to_resume: of ``to_train``, cells that pick up an interrupted training (``last.pt``)
            or only re-evaluate a finished one (``best.pt``).

    """

    total: int
    to_train: int
    to_evaluate: int
    localizer_runs: int
    done: int
    transfer_runs: int = 0
    to_resume: int = 0

    @classmethod
    def of(cls, total: int, tasks: Sequence[CellTask], fresh: int = 0, fresh_transfers: int = 0) -> RunPlan:
        """The plan of ``tasks`` (as :func:`plan_tasks` returns them) and ``fresh`` new cells, of ``total``.

        ``fresh_transfers`` counts the target evaluations of the ``fresh`` cells.
        """
        evaluate = [t for t in tasks if not t.retrain]
        return cls(total=total, to_train=len(tasks) - len(evaluate) + fresh, to_evaluate=len(evaluate),
                   localizer_runs=sum(len(t.localizers) for t in evaluate), done=total - len(tasks) - fresh,
                   transfer_runs=sum(len(getattr(t, "transfers", ())) for t in tasks) + fresh_transfers,
                   to_resume=sum(_resumes(t) for t in tasks if t.retrain))

    def sentence(self) -> str:
        """``6 cells: 0 to train, 6 localizer runs on 6 trained cells (no retraining), 0 done``.

        Cross-dataset evaluations add ``, 2 cross-dataset evaluations``; trained cells that
        only miss those read ``2 trained cells to evaluate (no retraining)``.
        """
        cells = f"{self.to_evaluate} trained cell{'s' * (self.to_evaluate != 1)}"
        if self.to_evaluate and self.localizer_runs:
            evaluate = (f", {self.localizer_runs} localizer run{'s' * (self.localizer_runs != 1)} on {cells} "
                        "(no retraining)")
        else:
            evaluate = f", {cells} to evaluate (no retraining)" if self.to_evaluate else ""
        if self.transfer_runs:
            evaluate += f", {self.transfer_runs} cross-dataset evaluation{'s' * (self.transfer_runs != 1)}"
        resume = f" ({self.to_resume} resuming)" if self.to_resume else ""
        return (f"{self.total} cell{'s' * (self.total != 1)}: {self.to_train} to train{resume}{evaluate}, "
                f"{self.done} done")


def _resumes(task: CellTask) -> bool:
    """Does this training task pick up an interrupted run (``last.pt``) or a finished training (``best.pt``)?"""
    if getattr(task, "force", False) or not getattr(task, "cell_dir", None):
        return False
    folder = Path(task.cell_dir)
    return (folder / "last.pt").is_file() or (folder / "best.pt").is_file()


class RunDisplay(RunEvents):
    """What ``run_grid`` tells about a run besides the events of its cells (no-op defaults)."""

    def plan(self, plan: RunPlan) -> None:
        """What the run will do; called just before :meth:`start`."""

    def start(self, total: int, pending: int, skipped: int, labels: Mapping[str, str] | None = None) -> None:
        """The run has ``total`` cells; ``pending`` will run, ``skipped`` are complete.

        ``labels`` maps each pending cell id to its ``dataset / backbone / head / seed`` line.
        """

    def cell_finished(self, result: CellResult) -> None:
        """A cell's result was written to the store."""

    def stop(self) -> None:
        """The run ended (normally or not)."""


def run_grid(
    grid: GridSpec,
    pm: Any,
    store: Any,
    *,
    executor: ComponentSpec | None = None,
    force: bool = False,
    rerun_failed: bool = False,
    cache_root: str | None = None,
    display: RunDisplay | None = None,
    shard: Shard | None = None,
    rerun_stale: bool = False,
) -> RunSummary:
    """Run every pending cell of ``grid`` and record each result as it arrives.

    Args:
        grid: the validated grid.
        pm: the plugin manager (lifecycle hooks).
        store: the results store (this process is its only writer).
        executor: overrides the grid's executor.
        force: rerun every cell, finished or not.
        rerun_failed: rerun failed cells (and failed localizers of finished cells).
        cache_root: prepared-image cache root.
        display: receives the run's events (live display, warning lines); None = silent.
        shard: run only this shard's cells (``--shard I/N``). The store still registers
            every cell of the grid, in grid order, so merged shards keep the grid's order.
        rerun_stale: retrain finished cells whose data changed since they ran (otherwise
            they are left alone and counted in ``RunSummary.stale``).

    Returns:
        The :class:`RunSummary`; ``interrupted`` is True after Ctrl-C (the cell in
        flight is lost, every finished one is stored).

    """
    with shared_datasets():
        return _run_grid(grid, pm, store, executor=executor, force=force, rerun_failed=rerun_failed,
                         cache_root=cache_root, display=display, shard=shard, rerun_stale=rerun_stale)


def _run_grid(grid: GridSpec, pm: Any, store: Any, *, executor: ComponentSpec | None, force: bool,
              rerun_failed: bool, cache_root: str | None, display: RunDisplay | None,
              shard: Shard | None, rerun_stale: bool = False) -> RunSummary:
    from .manager import set_plugin_manager

    display = display or RunDisplay()
    set_plugin_manager(pm)
    cells = expand(grid, fingerprint_datasets(cache_root, lambda message: display.warning(None, message)))
    store.register_grid(grid.name, grid_summary(grid), [c.cell_id for c in cells])
    store.relabel({c.cell_id: (str(c.axes["dataset"]), str(c.axes["backbone"]), str(c.axes["head"]))
                   for c in cells})
    if shard is not None:
        cells = shard.select(cells)
    executor_spec = executor or grid.executor
    # --force keeps the old records until each cell's new one replaces them: an interrupted
    # forced run loses nothing
    versions = data_versions(cells, cache_root, lambda message: display.warning(None, message))
    store.adopt_data_versions(versions)
    stale = stale_cells(cells, store, versions)
    transfer_plan = plan_transfers(grid, cells, cache_root, lambda message: display.warning(None, message))
    for pair in transfer_plan.skipped:
        display.warning(None, pair.line())
    tasks, skipped = plan_tasks(grid, cells, store, force=force, rerun_failed=rerun_failed, cache_root=cache_root,
                                executor=executor_spec.name, stale=stale, rerun_stale=rerun_stale,
                                transfers=transfer_plan.by_cell)
    summary = RunSummary(total=len(cells), skipped=skipped, stale=0 if force or rerun_stale else len(stale))
    pm.hook.cxrbench_cells_collected(grid=grid, cells=cells, pending=[t.cell for t in tasks])
    runner = executor_spec.build()
    by_id = {t.cell.cell_id: t for t in tasks}

    def on_result(result: CellResult) -> None:
        task = by_id[result.cell_id]
        result = merge_partial(store, task, result)
        if isinstance(result.info, Mapping):  # the version of the data it was computed on (stale once it moves)
            result = dataclasses.replace(result, info={**result.info, "data_version": versions[result.cell_id]})
        store.write_result(grid.name, result, replace_localizations=task.retrain)
        if result.ok:
            summary.ok += 1
            # a trained cell whose localizer failed is not a clean run either (exit code 1)
            for loc in result.failed_localizers():
                summary.localizers_failed += 1
                summary.failures.append((task.cell.cell_id, f"localizer {loc.name}: {loc.error}"))
            for transfer in result.transfers:  # a failed target evaluation is not a clean run either
                if not transfer.ok:
                    summary.transfers_failed += 1
                    summary.failures.append((task.cell.cell_id, f"evaluate_on {transfer.target}: {transfer.error}"))
        else:
            summary.failed += 1
            summary.failures.append((task.cell.cell_id, result.error or "failed"))
        pm.hook.cxrbench_cell_finished(task=task, result=result)
        display.cell_finished(result)

    labels = {t.cell_id: " / ".join(f"seed {v}" if k == "seed" else str(v) for k, v in t.cell.axes.items())
              for t in tasks}
    display.plan(RunPlan.of(len(cells), tasks))
    display.start(len(cells), len(tasks), skipped, labels)
    try:
        runner.run(tasks, on_result, display)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        display.stop()
    return summary
