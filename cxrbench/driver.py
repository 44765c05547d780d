"""Drive a whole grid: expand it, decide what to run, hand tasks to an executor, record results.

This process is the single writer of the results store: executors run cells wherever they
like and call back with each :class:`~cxrbench.records.CellResult`, which is written in
one transaction as it arrives. A failing cell is recorded, never fatal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import GridSpec
from .errors import UsageError
from .events import RunEvents
from .grid import Cell, expand, localizer_key
from .options import options_to_dict
from .pairing import impossible_pairs
from .pipeline import open_dataset, shared_datasets
from .records import CellResult, LocalizerResult
from .registry import ComponentSpec
from .shards import Shard
from .tasks import CellTask, LocalizerTask


@dataclasses.dataclass
class RunSummary:
    """How a ``run`` went."""

    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    localizers_failed: int = 0
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


def plan_tasks(grid: GridSpec, cells: list[Cell], store: Any, *, force: bool = False, rerun_failed: bool = False,
               cache_root: str | None = None, executor: str = "local") -> tuple[list[CellTask], int]:
    """Decide what to run: pending cells, and finished cells missing a localizer.

    Returns:
        (tasks, number of cells skipped because they are complete).

    """
    statuses = store.statuses()
    default_threshold = grid.localization.threshold
    scoring = options_to_dict(grid.localization)
    cache = str(Path(cache_root).resolve()) if cache_root else None
    tasks, skipped = [], 0
    impossible = {(p.head, p.localizer) for p in impossible_pairs(grid.heads, grid.localizers)}
    for cell in cells:
        # a pair its localizer refuses is warned about by validate / --dry-run and never evaluated
        wanted = [LocalizerTask(localizer_key(spec, default_threshold, scoring), spec) for spec in grid.localizers
                  if (cell.head.label(), spec.label()) not in impossible]
        status = statuses.get(cell.cell_id)
        retrain = True
        if status == "ok" and not force:
            done = store.localizer_statuses(cell.cell_id)
            wanted = [lt for lt in wanted if done.get(lt.key) != "ok"] if rerun_failed else \
                [lt for lt in wanted if lt.key not in done]
            if not wanted:
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
                              force=force))
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
        return dataclasses.replace(previous, localizations=tuple(kept.values()) + failed,
                                   warnings=tuple(previous.warnings) + tuple(result.warnings))
    info = {**previous.info, **{k: v for k, v in result.info.items() if k != "history"}}
    return dataclasses.replace(result, metrics=previous.metrics, info=info, provenance=previous.provenance,
                               started_at=previous.started_at or result.started_at)


def grid_summary(grid: GridSpec) -> dict[str, Any]:
    """A JSON-friendly description of the grid for the store."""
    def comp(specs: tuple) -> list:
        return [s.key() for s in specs]

    return {"name": grid.name, "description": grid.description, "seeds": list(grid.seeds),
            "datasets": comp(grid.datasets), "backbones": comp(grid.backbones), "heads": comp(grid.heads),
            "localizers": comp(grid.localizers), "train": options_to_dict(grid.train),
            "evaluation": options_to_dict(grid.evaluation), "localization": options_to_dict(grid.localization),
            "source": grid.source}


class RunDisplay(RunEvents):
    """What ``run_grid`` tells about a run besides the events of its cells (no-op defaults)."""

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

    Returns:
        The :class:`RunSummary`; ``interrupted`` is True after Ctrl-C (the cell in
        flight is lost, every finished one is stored).

    """
    with shared_datasets():
        return _run_grid(grid, pm, store, executor=executor, force=force, rerun_failed=rerun_failed,
                         cache_root=cache_root, display=display, shard=shard)


def _run_grid(grid: GridSpec, pm: Any, store: Any, *, executor: ComponentSpec | None, force: bool,
              rerun_failed: bool, cache_root: str | None, display: RunDisplay | None,
              shard: Shard | None) -> RunSummary:
    from .manager import set_plugin_manager

    display = display or RunDisplay()
    set_plugin_manager(pm)
    cells = expand(grid, fingerprint_datasets(cache_root, lambda message: display.warning(None, message)))
    store.register_grid(grid.name, grid_summary(grid), [c.cell_id for c in cells])
    if shard is not None:
        cells = shard.select(cells)
    executor_spec = executor or grid.executor
    # --force keeps the old records until each cell's new one replaces them: an interrupted
    # forced run loses nothing
    tasks, skipped = plan_tasks(grid, cells, store, force=force, rerun_failed=rerun_failed, cache_root=cache_root,
                                executor=executor_spec.name)
    summary = RunSummary(total=len(cells), skipped=skipped)
    pm.hook.cxrbench_cells_collected(grid=grid, cells=cells, pending=[t.cell for t in tasks])
    runner = executor_spec.build()
    by_id = {t.cell.cell_id: t for t in tasks}

    def on_result(result: CellResult) -> None:
        task = by_id[result.cell_id]
        result = merge_partial(store, task, result)
        store.write_result(grid.name, result, replace_localizations=task.retrain)
        if result.ok:
            summary.ok += 1
            # a trained cell whose localizer failed is not a clean run either (exit code 1)
            for loc in result.failed_localizers():
                summary.localizers_failed += 1
                summary.failures.append((task.cell.cell_id, f"localizer {loc.name}: {loc.error}"))
        else:
            summary.failed += 1
            summary.failures.append((task.cell.cell_id, result.error or "failed"))
        pm.hook.cxrbench_cell_finished(task=task, result=result)
        display.cell_finished(result)

    labels = {t.cell_id: " / ".join(f"seed {v}" if k == "seed" else str(v) for k, v in t.cell.axes.items())
              for t in tasks}
    display.start(len(cells), len(tasks), skipped, labels)
    try:
        runner.run(tasks, on_result, display)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        display.stop()
    return summary
