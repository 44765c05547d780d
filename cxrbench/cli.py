"""The ``cxrbench`` command line. The ONE place that maps errors to exit codes.

Exit codes (as pytest's ``ExitCode``): 0 all cells ok, 1 some cells failed,
2 interrupted, 3 internal error (a bug), 4 usage or configuration error (one red line,
no traceback).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .artifacts import DB_NAME
from .errors import PluginError, UsageError, one_line

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2, 3, 4
KIND_OF_LIST = {"datasets": "dataset", "backbones": "backbone", "heads": "head", "localizers": "localizer",
                "executors": "executor"}

# Logs and pipes get wide lines rather than rich's 80-column default, which would fold the
# leaderboards into unreadable slivers; COLUMNS still wins when set.
console = Console(width=None if Console().is_terminal or os.environ.get("COLUMNS") else 200)
err_console = Console(stderr=True)


class _State:
    """Lazily built plugin manager and registry, shared by the commands of one call."""

    def __init__(self) -> None:
        self._pm: Any = None
        self._registry: Any = None

    @property
    def pm(self) -> Any:
        if self._pm is None:
            from .manager import build_plugin_manager

            self._pm = build_plugin_manager()
        return self._pm

    @pm.setter
    def pm(self, value: Any) -> None:
        self._pm = value

    def reset(self, pm: Any = None) -> None:
        """Forget the plugin manager and registry (tests pass a hermetic ``pm``)."""
        self._pm = pm
        self._registry = None

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from .registry import Registry

            self._registry = Registry.from_plugin_manager(self.pm)
        return self._registry


STATE = _State()


def _warn(message: str) -> None:
    # soft_wrap: one warning is one line in a log or a pipe, as an error is
    err_console.print(f"[yellow]warning:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


results_option = click.option(
    "--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
    show_default=True, envvar="CXRBENCH_RESULTS", help="Results directory (SQLite store + one folder per cell).",
)


class CxrbenchGroup(click.Group):
    """The root command: loads plugin commands, maps every error to its exit code."""

    def _add_plugin_commands(self) -> None:
        """Each plugin's ``cxrbench_add_commands``, one at a time; none may replace a built-in command.

        Raises:
            PluginError: naming the plugin that failed, exited, or replaced a built-in command.

        """
        for impl in reversed(STATE.pm.hook.cxrbench_add_commands.get_hookimpls()):
            before = dict(self.commands)
            try:
                impl.function(cli=self)
            except (Exception, SystemExit) as exc:
                self.commands = before
                raise PluginError(f"plugin {impl.plugin_name!r}: cxrbench_add_commands failed: "
                                  f"{type(exc).__name__}: {one_line(str(exc))[:200]}") from None
            replaced = sorted(name for name, command in before.items() if self.commands.get(name) is not command)
            if replaced:
                self.commands = before
                raise PluginError(f"plugin {impl.plugin_name!r} tried to replace the built-in command "
                                  f"{replaced[0]!r}; plugin commands need names of their own")

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # noqa: D102
        extra.pop("standalone_mode", None)
        try:
            if not getattr(self, "_plugin_commands_added", False):
                self._add_plugin_commands()
                self._plugin_commands_added = True
            super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except (PluginError, UsageError) as exc:
            _fail(str(exc))
        except (KeyboardInterrupt, click.exceptions.Abort):
            _ignore_further_interrupts()
            _fail("interrupted", EXIT_INTERRUPTED)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_USAGE)
        except sqlite3.DatabaseError as exc:  # met while reading: writes already say it in their own words
            _fail(f"the results database cannot be read ({one_line(str(exc))[:200]}); if it is damaged, restore a "
                  "copy or recover it with: sqlite3 cxrbench.sqlite .recover | sqlite3 recovered.sqlite", EXIT_USAGE)
        except MemoryError as exc:  # a setting (or the data) asks for more memory than there is
            detail = f": {one_line(str(exc))[:200]}" if str(exc) else ""
            _fail(f"out of memory{detail}; lower the sizes in the grid (num_images, image_size, batch_size) "
                  "or use a larger machine", EXIT_USAGE)
        except Exception as exc:  # a bug, not a user error: say so in one line unless debugging
            if os.environ.get("CXRBENCH_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set CXRBENCH_DEBUG=1 for the traceback)",
                  EXIT_INTERNAL)
        sys.exit(EXIT_OK)


@click.group(cls=CxrbenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cxrbench")
def cli() -> None:
    """Benchmark chest X-ray classifiers and their weakly supervised localization.

    \b
    Typical session:
      cxrbench list backbones              what can go in a grid
      cxrbench validate grids/quickstart.yaml
      cxrbench run --grid grids/quickstart.yaml
      cxrbench leaderboard --grid quickstart --format markdown

    Set CXRBENCH_TRACE_PLUGINS=1 to trace every hook call.
    """  # noqa: D301 - click's \b (no rewrap) marker must stay a real backspace


# --------------------------------------------------------------------------- grids


@cli.command()
@click.argument("grid_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grid", "grid_option", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The grid file, as 'run --grid' takes it (or give it as the argument).")
def validate(grid_file: Path | None, grid_option: Path | None) -> None:
    """Check a grid file: YAML, component names, every option. Nothing runs.

    'cxrbench validate grid.yaml' and 'cxrbench validate --grid grid.yaml' are the same.
    """
    from .config import load_grid

    if grid_file is not None and grid_option is not None and grid_file != grid_option:
        raise UsageError(f"two grid files given ({grid_file} and --grid {grid_option}): give one")
    grid_file = grid_file or grid_option
    if grid_file is None:
        raise UsageError("give the grid file to check: cxrbench validate GRID_FILE (or --grid GRID_FILE)")

    grid = load_grid(grid_file, STATE.registry)
    n_cells = _count_cells(grid)
    _warn_impossible_pairs(grid)
    if grid.evaluate_on:
        from .crosseval import skipped_pairs

        for pair in skipped_pairs(grid):  # a target sharing no class with a trained dataset
            _warn(pair.line())
    console.print(f"[green]{grid_file}: ok[/] grid '{grid.name}', {n_cells} cells "
                  f"({len(grid.datasets)} datasets x {len(grid.backbones)} backbones x {len(grid.heads)} heads x "
                  f"{len(grid.seeds)} seeds, {len(grid.exclude)} exclusion rules), "
                  f"{len(grid.localizers)} localizers", highlight=False)


def _warn_impossible_pairs(grid: Any) -> None:
    """One warning line per head / localizer (or dataset / localizer) pair that cannot work; not evaluated."""
    from .pairing import impossible_pairs, unlocalizable_datasets

    for pair in impossible_pairs(grid.heads, grid.localizers):
        _warn(f"{pair.line()}; it is not evaluated on cells with that head")
    if grid.localizers:
        for dataset in unlocalizable_datasets(grid.datasets, grid.localization.split):
            _warn(dataset.line())


def _show_transfers(cells: Any, grid: Any) -> int:
    """Print the grid's "Cross-dataset" table; return how many of its targets' evaluations are failed."""
    from .reporting.transfers import failed_transfers, transfer_rows, transfer_table

    rows = transfer_rows(cells)
    table = transfer_table(rows)
    if table is not None:
        console.print(table)
    targets = {t.label() for t in grid.evaluate_on}  # a target taken out of the grid no longer counts
    return sum(1 for r in failed_transfers(rows) if r.dataset.rsplit(" -> ", 1)[-1] in targets)


def _count_cells(grid: Any) -> int:
    from .grid import expand

    return len(expand(grid, lambda spec: ""))


@cli.command()
@click.option("--grid", "grid_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The grid YAML file.")
@results_option
@click.option("--dry-run", is_flag=True, help="Print the expanded cells (and whether each is done) and stop.")
@click.option("--executor", default=None, metavar="NAME|YAML",
              help="Override the grid's executor: a name (local, process, ray, slurm) or a YAML mapping as in a grid, "
                   "e.g. --executor '{name: ray, options: {address: auto, num_gpus: 1}}'.")
@click.option("--force", is_flag=True, help="Rerun every cell, even finished ones.")
@click.option("--rerun-failed", is_flag=True, help="Rerun cells (and localizers) that failed before.")
@click.option("--rerun-stale", is_flag=True,
              help="Retrain finished cells whose data changed since they ran (shown as stale by --dry-run).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared-image cache (default: RESULTS/cache).")
@click.option("--no-progress", is_flag=True, help="Plain line-by-line output instead of a live display.")
@click.option("--wait", is_flag=True, help="If another run uses the results directory, wait for it.")
@click.option("--shard", "shard_text", default=None, metavar="I/N",
              help="Run only shard I of N (1-based; cells are dealt by a digest of their id). Give each shard its "
                   "own --results and put them together with 'cxrbench merge'.")
def run(grid_file: Path, results_dir: Path, dry_run: bool, executor: str | None, force: bool,
        rerun_failed: bool, rerun_stale: bool, cache_dir: Path | None, no_progress: bool, wait: bool,
        shard_text: str | None) -> None:
    """Run a grid: train every cell, evaluate AUROC and localization, print the leaderboard.

    Finished cells are skipped (resume); a failing cell is recorded and the grid goes
    on. Exit code 0 when every cell is ok, 1 when some failed, 2 when interrupted.
    """
    from .config import load_grid
    from .crosseval import plan_transfers
    from .driver import RunPlan, data_versions, fingerprint_datasets, plan_tasks, run_grid, stale_cells
    from .progress import make_progress
    from .reporting import add_plugin_columns, render_tables, rows_from_cells
    from .shards import Shard
    from .store import ResultsStore

    shard = Shard.parse(shard_text) if shard_text is not None else None
    registry = STATE.registry
    grid = load_grid(grid_file, registry)
    executor_spec = registry.create("executor", _executor_entry(executor), "--executor") if executor else None
    cache_root = str(cache_dir or results_dir / "cache")
    if dry_run:
        from .grid import expand
        from .pipeline import shared_datasets

        with shared_datasets():  # each dataset built once for its fingerprint and its data version
            cells = expand(grid, fingerprint_datasets(cache_root, _warn))
            versions = data_versions(cells, cache_root, _warn)
            transfer_plan = plan_transfers(grid, cells, cache_root, _warn)  # evaluate_on: targets per cell
        for pair in transfer_plan.skipped:
            _warn(pair.line())
        total = len(cells)
        if shard is not None:
            cells = shard.select(cells)
        statuses: dict[str, str] = {}
        stale: frozenset[str] = frozenset()
        if (results_dir / DB_NAME).exists():
            with ResultsStore(results_dir, readonly=True) as store:
                statuses = store.statuses()
                stale = stale_cells(cells, store, versions)
                tasks, _ = plan_tasks(grid, cells, store, force=force, rerun_failed=rerun_failed, stale=stale,
                                      rerun_stale=rerun_stale, transfers=transfer_plan.by_cell)
                pending = {t.cell.cell_id: t for t in tasks}
        else:
            pending = {c.cell_id: None for c in cells}
        title = f"grid '{grid.name}': {len(cells)} cells" + (f" (shard {shard} of its {total})" if shard else "")
        table = Table(title=title, title_justify="left")
        for col in ("#", "cell", "dataset", "backbone", "head", "seed", "state"):
            table.add_column(col)
        for i, c in enumerate(cells, start=1):
            task = pending.get(c.cell_id)
            if c.cell_id in stale and c.cell_id not in pending:
                state = "stale: its data changed since it ran"
            elif c.cell_id not in pending:
                state = f"done ({statuses.get(c.cell_id, '?')})"
            elif task is not None and not task.retrain:  # trained: only localizers are missing
                state = "trained; to evaluate: " + ", ".join(
                    [lt.spec.label() for lt in task.localizers] + [f"on {t.target.label()}" for t in task.transfers])
            else:
                state = "to train"
            a = c.axes
            table.add_row(str(i), c.cell_id, *(escape(str(a[k])) for k in ("dataset", "backbone", "head", "seed")),
                          state)
        console.print(table)
        plan = RunPlan.of(len(cells), [t for t in pending.values() if t is not None],
                          fresh=sum(t is None for t in pending.values()),
                          fresh_transfers=sum(len(transfer_plan.by_cell.get(cid, ())) for cid, t in pending.items()
                                              if t is None))
        console.print(plan.sentence(), highlight=False)
        if stale and not (force or rerun_stale):
            console.print(f"{len(stale)} of the done cells are stale: their data changed since they ran "
                          "(--rerun-stale retrains them)", highlight=False)
        _warn_impossible_pairs(grid)
        console.print(f"localizers: {', '.join(s.label() for s in grid.localizers) or 'none'}; "
                      f"executor: {(executor_spec or grid.executor).name}", highlight=False)
        return
    from .pipeline import shared_datasets

    with ResultsStore(results_dir) as store, shared_datasets():  # each dataset root scanned once per run
        store.acquire_lock(wait=wait)
        if grid.prepare:  # decode once into the shared cache: no cell then holds a decoded split in RAM
            _prepare_grid(grid, Path(cache_root), None, tuple(dict.fromkeys(RUN_SPLITS + (grid.localization.split,))),
                          quiet=True)
        display = make_progress(console, enabled=not no_progress)
        summary = run_grid(grid, STATE.pm, store, executor=executor_spec, force=force, rerun_failed=rerun_failed,
                           cache_root=cache_root, display=display, shard=shard, rerun_stale=rerun_stale)
        recorded = store.cells(grid.name)
        rows = rows_from_cells(recorded)
    if summary.interrupted:
        _ignore_further_interrupts()
    render_tables(console, add_plugin_columns(rows, STATE.pm), grid.name)
    failed_transfers = _show_transfers(recorded, grid)
    if summary.interrupted:
        err_console.print("[yellow]interrupted:[/] finished cells are saved; run the same command to resume")
        sys.exit(EXIT_INTERRUPTED)
    localizers = f", {summary.localizers_failed} localizer runs failed" if summary.localizers_failed else ""
    if summary.transfers_failed:
        localizers += f", {summary.transfers_failed} cross-dataset evaluations failed"
    which = f"shard {shard} ({summary.total} cells): " if shard is not None else ""
    console.print(f"{which}{summary.ok} ok, {summary.failed} failed, {summary.skipped} already done{localizers} "
                  f"(results in {results_dir})", highlight=False)
    if summary.stale:
        _warn(f"{summary.stale} finished cells of grid '{grid.name}' are stale: their data changed since they ran; "
              "their records are kept as they are (rerun them with --rerun-stale)")
    # the exit code tells the state of the whole grid, also of cells that failed in an earlier run
    failed_cells = sorted({r.cell_id for r in rows if r.status != "ok"})
    failed_localizers = sum(1 for r in rows if r.status == "ok" and r.localizer_status == "failed")
    if failed_transfers and not summary.transfers_failed:
        err_console.print(f"[red]{failed_transfers} cross-dataset evaluations of grid '{escape(grid.name)}' are "
                          "failed in the store[/] (rerun them with --rerun-failed)", highlight=False)
    if failed_cells or failed_localizers or failed_transfers:
        if not (summary.failed or summary.localizers_failed) and (failed_cells or failed_localizers):
            err_console.print(f"[red]{len(failed_cells)} cells and {failed_localizers} localizer runs of grid "
                              f"'{escape(grid.name)}' are failed in the store[/] (rerun them with --rerun-failed)",
                              highlight=False)
        sys.exit(EXIT_FAILED)


@cli.command()
@results_option
@click.argument("sources", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
def merge(results_dir: Path, sources: tuple[Path, ...]) -> None:
    """Merge the results directories SOURCES (e.g. the shards of a grid) into --results.

    Every cell record comes with its localizer rows, grid membership and artifact folder
    (checkpoints, predictions, maps). A cell already ok in --results is kept unless the
    source's record is ok and newer; a failed record never replaces an ok one. Grids of the
    same name with different specs are refused. Safe to repeat.

    \b
      cxrbench run --grid grid.yaml --shard 1/2 --results results/shard1
      cxrbench run --grid grid.yaml --shard 2/2 --results results/shard2
      cxrbench merge --results results results/shard1 results/shard2
    """  # noqa: D301 - click's \b (no rewrap) marker must stay a real backspace
    from contextlib import ExitStack

    from .merge import merge_results
    from .store import ResultsStore

    dest = results_dir.resolve()
    unique: list[Path] = []
    for source in sources:
        if not (source / DB_NAME).is_file():
            raise UsageError(f"{source}: no results store ({DB_NAME}) to merge")
        if source.resolve() == dest:
            raise UsageError(f"{source} is the destination (--results) itself; name other directories")
        if source.resolve() not in {u.resolve() for u in unique}:
            unique.append(source)
    with ExitStack() as stack:
        target = stack.enter_context(ResultsStore(results_dir))
        target.acquire_lock()
        # the sources are only read: a read-only shard folder (a finished job's, a mounted copy) merges too
        stores = [stack.enter_context(ResultsStore(source, readonly=True)) for source in unique]
        report = merge_results(target, stores)
        total = len(target.statuses())
    for store in stores:
        source = str(store.root)
        counts = report.counts(source)
        grids = report.grids.get(source) or []
        console.print(f"{escape(source)}: {counts['added']} added, {counts['replaced']} replaced, {counts['kept']} "
                      f"kept" + (f"; new grids: {escape(', '.join(grids))}" if grids else ""), highlight=False)
        for cell in report.cells:
            if cell.source == source and cell.action != "kept":
                console.print(f"  {cell.action} {cell.cell_id} {escape(cell.label)} ({cell.status}; "
                              f"{cell.reason})", highlight=False)
    counts = report.counts()
    console.print(f"merged {len(stores)} result directories into {escape(str(results_dir))}: {counts['added']} "
                  f"added, {counts['replaced']} replaced, {counts['kept']} kept; it holds {total} cells",
                  highlight=False)


@cli.command()
@results_option
@click.option("--grid", "grid_name", default=None, help="Only this grid (default: every cell in the store).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown", "html", "latex"]),
              default="table", show_default=True,
              help="table = rich tables; latex = booktabs tables for a paper; the others print machine-readable "
                   "records.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the export to this file instead of standard output.")
@click.option("--ci-style", "ci_style", type=click.Choice(["pm", "interval"]), default="pm", show_default=True,
              help="--format latex: an interval as 'value ± half-width' (pm) or 'value [low, high]' (interval).")
@click.option("--group-by", "group_by", default=None, metavar="AXES",
              help="Aggregate (mean +/- std) over every axis NOT listed, e.g. 'dataset,backbone,head,localizer' "
                   "averages over seeds; 'backbone' compares backbones over everything else.")
@click.option("--over", "over", default=None, metavar="AXES",
              help="The complement of --group-by: aggregate (mean +/- std) over the listed axes only, e.g. "
                   "'--over seed' averages each configuration's seeds.")
@click.option("--sort", "sort_key", default=None, metavar="METRIC",
              help="Sort by this metric, best first (default: auroc_mean; iou_mean for localization).")
@click.option("--filter", "filters", multiple=True, metavar="AXIS=VALUE",
              help="Keep matching rows only (repeatable), e.g. --filter backbone=resnet18 --filter status=ok.")
@click.option("--top", type=int, default=None, help="Show only the best N rows.")
@click.option("--significance/--no-significance", default=True, show_default=True,
              help="Paired bootstrap: is the best cell significantly better than the runner-up? (table format)")
@click.option("--test", "test", type=click.Choice(["bootstrap", "delong"]), default="bootstrap", show_default=True,
              help="With --significance (table format): 'delong' adds DeLong's test per class (clustered by "
                   "patient, Holm-adjusted over the classes) of the top cell vs the runner-up; the mean AUROC stays "
                   "the paired bootstrap.")
@click.option("--baselines", is_flag=True,
              help="Also show published per-class numbers on the same dataset as reference rows (never ranked).")
@click.option("--explain", is_flag=True, help="Also print what every column shown means, with its source.")
@click.option("--by", "by", default=None, metavar="COVARIATE",
              help="Subgroups instead of the leaderboard: AUROC and localization per group of 'sex', 'view' or "
                   "'age:40,60' (bins <40, 40-59, >=60), or their combinations ('sex+view'), with patient-level "
                   "bootstrap CIs and the best-worst gap (table, json, csv, markdown or latex; docs/metrics.md, "
                   "'Subgroups').")
def leaderboard(results_dir: Path, grid_name: str | None, fmt: str, output: Path | None, ci_style: str,
                group_by: str | None, over: str | None, sort_key: str | None, filters: tuple[str, ...],
                top: int | None, significance: bool, test: str, baselines: bool, explain: bool,
                by: str | None = None) -> None:
    """Show the leaderboards of a results directory.

    Classification: mean AUROC with its confidence interval (the grid's evaluation.ci),
    per-class AUROC, speed and size per cell. Localization: IoU, IoBB, accuracy at T(IoU) /
    T(IoBB), hit rate and ms/image per cell x localizer. JSON / CSV / Markdown / HTML give
    one record per (cell, localizer) with the cell's AUROC metrics, that localizer's metrics
    and the settings they were computed with, ranked as the tables are. Every column is
    defined in docs/metrics.md (``--explain`` prints the definitions). Calibration (ECE,
    Brier) is computed from each cell's saved test predictions; ``--baselines`` adds
    published numbers as unranked reference rows; ``--format latex`` writes booktabs tables.
    """
    from . import reporting

    with _open_results(results_dir) as store:
        if grid_name is not None and grid_name not in store.grids():
            known = ", ".join(store.grids()) or "none"
            raise UsageError(f"no grid named {grid_name!r} in {results_dir} (grids: {known})")
        recorded = store.cells(grid_name)
        rows = reporting.rows_from_cells(recorded)
    transfers = _transfer_rows(recorded, filters)  # evaluate_on: rows of their own, never ranked with the cells
    rows = reporting.add_calibration(rows, results_dir)  # ece / brier from each cell's saved predictions
    try:
        rows = reporting.filter_rows(rows, filters)
        if over:
            if group_by:
                raise ValueError("--over and --group-by say the same thing two ways: give one of them")
            group_by = ",".join(reporting.axes_except([a.strip() for a in over.split(",") if a.strip()]))
        ungrouped = rows
        if group_by:
            rows = reporting.group_for_tables(rows, [a.strip() for a in group_by.split(",") if a.strip()])
        if sort_key:
            reporting.check_sort_key(rows, sort_key)
        rows = reporting.ranked(rows, sort_key)
        shown = reporting.top_rows(rows, top, sort_key) if top is not None else rows
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if by is not None:
        _subgroups([*shown, *transfers], results_dir, by, fmt, output, bool(group_by))  # external sets too
        return
    # the best cell is compared with the runner-up even when --top hides the runner-up
    sig = reporting.significance(ungrouped, results_dir) if fmt == "table" and significance and not group_by \
        else None
    shown = reporting.add_plugin_columns(shown, STATE.pm)
    # published baselines come after ranking and --top: never ranked, never tested
    references = reporting.reference_rows(shown) if baselines else []
    if fmt == "table":
        reporting.render_tables(console, shown, grid_name, sort_key=sort_key, sig=sig)
        by_class = reporting.delong_comparison(ungrouped, results_dir) if sig is not None and test == "delong" \
            else None
        if by_class is not None:
            console.print(by_class.table())
            console.print(by_class.sentence(), highlight=False)
        for table in (reporting.reference_table(references, shown), reporting.reference_localization_table(references)):
            if table is not None:
                console.print(table)
        if baselines and not references:
            console.print("No published baseline matches these cells' dataset and classes.", highlight=False)
        comparison = reporting.compare_localizers(ungrouped, results_dir) if significance and not group_by else None
        if comparison is not None:
            console.print(comparison.sentence(), highlight=False)
        if explain:
            console.print(reporting.explain_table(shown))
        table = _transfers_table(transfers)
        if table is not None:
            console.print(table)
        return
    records = [*shown, *references, *transfers]
    text = reporting.export(records, fmt, sort_key, ci_style=ci_style)
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, output)
        err_console.print(f"wrote {len(records)} records to {output}")
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _subgroups(rows: Any, results_dir: Path, by: str, fmt: str, output: Path | None, grouped: bool) -> None:
    """``leaderboard --by``: subgroup tables, or their records as JSON / CSV (:mod:`.reporting.subgroup_tables`)."""
    from .reporting.subgroup_tables import SUBGROUP_FORMATS, export_subgroups, render_subgroups, subgroup_report
    from .subgroups import parse_by

    if grouped:
        raise UsageError("--by scores each cell's own images: it cannot be combined with --group-by / --over")
    if fmt not in SUBGROUP_FORMATS:
        raise UsageError(f"--by: --format {fmt} is not supported; use one of {', '.join(SUBGROUP_FORMATS)}")
    try:
        report = subgroup_report(rows, results_dir, parse_by(by))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if fmt == "table":
        render_subgroups(console, report, rows)
        return
    for note in report.notes:  # on stderr: the export on stdout stays machine-readable
        _warn(note)
    text = export_subgroups(report, fmt, rows)
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, output)
        err_console.print(f"wrote {len(report.records)} records to {output}")
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _transfer_rows(cells: Any, filters: tuple[str, ...]) -> list:
    """The cells' cross-dataset rows (``evaluate_on:``), filtered as the cells' rows are."""
    from .reporting.transfers import filter_transfer_rows, transfer_rows

    return filter_transfer_rows(transfer_rows(cells), filters)


def _transfers_table(rows: Any) -> Any:
    from .reporting.transfers import transfer_table

    return transfer_table(rows)


def _yaml_option(text: str, option: str) -> Any:
    """A command-line value written as YAML (a name, or a mapping such as ``{policy: otsu}``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{option}: not valid YAML ({one_line(str(exc))[:120]})") from None


@cli.command()
@results_option
@click.option("--dataset", "dataset_text", required=True, metavar="YAML",
              help="The dataset, as a grid's datasets entry: a name, or e.g. "
                   "'{name: chexlocalize, options: {root: data/chexlocalize}}'.")
@click.option("--maps", "maps_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The maps file (.npz: maps N x K x H x W in [0, 1], ids, classes, optional probs; README, "
                   "'Scoring maps made elsewhere').")
@click.option("--name", required=True, help="The row's name on the leaderboard, e.g. my-gradcam.")
@click.option("--threshold", "threshold_text", default="{policy: otsu}", show_default=True, metavar="YAML",
              help="How a map becomes boxes and masks, as a grid's localization.threshold: "
                   "'{policy: otsu}', '{policy: fraction, fraction: 0.5}' or '{policy: seed}'.")
@click.option("--split", default="boxes", show_default=True, help="The split the maps are of.")
@click.option("--grid", "grid_name", default="scored", show_default=True,
              help="File the row under this grid (a run grid's name puts it next to that grid's cells).")
@click.option("--hit-tolerance", type=float, default=15.0, show_default=True,
              help="Pointing-game tolerance in original image pixels (0 = cheXlocalize's hit rate).")
@click.option("--true-pos-only/--all-pairs", default=True, show_default=True,
              help="mIoU over true positives only (cheXlocalize's default), or over every annotated pair.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(0, 100_000), default=1000, show_default=True,
              help="Bootstrap replicates of the intervals (patients resampled).")
@click.option("--ci", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95, show_default=True,
              help="Interval level.")
@click.option("--tune-maps", "tune_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Maps of the tuning split (same format): per-class mask thresholds are tuned on its masks.")
@click.option("--tune-split", default="val", show_default=True, help="The split of --tune-maps.")
@click.option("--gate", is_flag=True, help="Probability gating with cut-offs tuned on --tune-maps (needs probs).")
def score(results_dir: Path, dataset_text: str, maps_path: Path, name: str, threshold_text: str, split: str,
          grid_name: str, hit_tolerance: float, true_pos_only: bool, n_boot: int, ci: float, tune_path: Path | None,
          tune_split: str, gate: bool) -> None:
    """Score heatmaps made elsewhere against a dataset's boxes and masks, without a model.

    Computes what a grid cell's localizer row has (boxes: IoU, hit rate, MaxBoxAccV2, PxAP;
    masks: mIoU, hit rate, PxAP; intervals) and stores it as its own row, shown by
    'cxrbench leaderboard'. Example:

    \b
      cxrbench score --name my-gradcam --maps gradcam_test.npz
        --dataset '{name: chexlocalize, options: {root: data/chexlocalize}}'
    """  # noqa: D301 - click's \b (no rewrap) marker must stay a real backspace
    import time as _time

    from .pipeline import open_dataset
    from .registry import parse_threshold
    from .scoremaps import ScoreRequest, load_maps_file, score_file, scored_result
    from .store import ResultsStore

    started = _time.time()
    dataset_entry = _yaml_option(dataset_text, "--dataset")
    spec = STATE.registry.create("dataset", dataset_entry, "--dataset")
    threshold = parse_threshold(_yaml_option(threshold_text, "--threshold"), "--threshold")
    if not name.strip():
        raise UsageError("--name: give the row a name, e.g. my-gradcam")
    request = ScoreRequest(name=name.strip(), dataset_entry={"name": spec.name, "options": spec.options_dict()},
                           split=split, threshold=threshold, hit_tolerance=hit_tolerance,
                           true_pos_only=true_pos_only, n_boot=n_boot, ci=ci, tune_split=tune_split, gate=gate)
    if not maps_path.is_file():
        raise UsageError(f"--maps: {maps_path} does not exist")
    maps_file = load_maps_file(maps_path)
    tune_file = load_maps_file(tune_path) if tune_path is not None else None
    dataset = open_dataset(spec, warn=_warn)
    with console.status(f"scoring {maps_file.maps.shape[0]} images x {maps_file.maps.shape[1]} classes"):
        metrics, settings = score_file(request, dataset, maps_file, tune_file)
    if tune_file is not None:
        settings["tune_sha256"] = tune_file.sha256
    result = scored_result(request, spec, grid_name, metrics, settings, started)
    results_dir.mkdir(parents=True, exist_ok=True)
    with ResultsStore(results_dir) as store:
        if grid_name not in store.grids():
            members = [c.cell_id for c in store.cells(grid_name)]
            store.register_grid(grid_name, {"name": grid_name, "kind": "scored maps"}, members)
        store.write_result(grid_name, result)
        rows = reporting_rows(store, grid_name)
    from .reporting import render_tables

    render_tables(console, rows, grid_name)
    console.print(f"stored as cell {result.cell_id} in grid '{grid_name}' of {results_dir}", highlight=False)


def reporting_rows(store: Any, grid_name: str) -> Any:
    from .reporting import add_plugin_columns, rows_from_cells

    return add_plugin_columns(rows_from_cells(store.cells(grid_name)), STATE.pm)


@cli.command()
@results_option
@click.option("--grid", "grid_name", default=None,
              help="The grid to report on (its name in the store; may be left out when the store holds one grid).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write.")
@click.option("--by", "by", multiple=True, metavar="COVARIATE",
              help="Add a Subgroups section split by this covariate, as 'leaderboard --by' (repeatable: "
                   "--by sex --by age:40,60 --by sex+view).")
def report(results_dir: Path, grid_name: str | None, out: Path, by: tuple[str, ...]) -> None:
    """Write ONE self-contained HTML report: leaderboards, ROC curves, heatmap gallery.

    Opens without a network connection (images are inlined).
    """
    from .reporting.html import build_report
    from .subgroups import parse_by

    try:
        groupings = [parse_by(text) for text in by]
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    with _open_results(results_dir) as store:
        grids = store.grids()
        if grid_name is None:
            if len(grids) != 1:
                known = ", ".join(grids) or "none"
                raise UsageError(f"{results_dir} holds {len(grids)} grids: name one with --grid (grids: {known})")
            grid_name = grids[0]
        if grid_name not in grids:
            known = ", ".join(grids) or "none"
            raise UsageError(f"no grid named {grid_name!r} in {results_dir} (grids: {known})")
        try:
            text = build_report(store, STATE.registry, grid_name, by=groupings)
        except ValueError as exc:  # a grouping that does not fit its covariate (numeric without edges, ...)
            raise UsageError(str(exc)) from None
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    console.print(f"wrote {out} ({len(text) / 1e6:.1f} MB)", highlight=False)


@cli.command()
@results_option
@click.argument("cell_id")
@click.option("--localizer", "-l", "localizers", multiple=True,
              help="Localizer to draw (repeatable; default: the localizers of the cell's grid).")
@click.option("--image", "-i", "images", multiple=True, help="Image id to draw (repeatable; default: the first few).")
@click.option("--count", type=int, default=4, show_default=True, help="How many boxed images when no --image.")
@click.option("--split", default="boxes", show_default=True, help="Split to draw from.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: RESULTS/cells/CELL/heatmaps).")
def heatmap(results_dir: Path, cell_id: str, localizers: tuple[str, ...], images: tuple[str, ...], count: int,
            split: str, out_dir: Path | None) -> None:
    """Draw a finished cell's heatmaps: the X-ray, each localizer's map, the true box (red), predicted boxes (green).

    One PNG per image, class and localizer. Nothing is retrained.
    """
    from .heatmap import render_heatmaps

    registry = STATE.registry
    with _open_results(results_dir) as store:
        found = store.resolve(cell_id)
        if localizers:
            specs = [registry.create("localizer", n, f"--localizer {n}") for n in localizers]
        else:
            entries: list = []
            for grid in store.grids_of().get(found, []):
                entries = (store.grid_spec(grid) or {}).get("localizers") or []
                if entries:
                    break
            specs = [registry.create("localizer", e, f"localizers[{i}]", allow_threshold=True)
                     for i, e in enumerate(entries)]
            if not specs:
                raise UsageError("the cell's grid has no localizers; name one with --localizer")
        folder = out_dir or store.artifacts(found).heatmaps
        paths = render_heatmaps(store, registry, found, specs, folder, split=split, images=list(images) or None,
                                count=count, warn=_warn)
    console.print(f"wrote {len(paths)} pictures to {folder}", highlight=False)


@cli.command()
@results_option
@click.argument("cell_id")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole record (config, metrics, info, provenance, localizers, transfers) as JSON.")
def show(results_dir: Path, cell_id: str, as_json: bool) -> None:
    """Show one cell: its configuration, training history, metrics per class, localizers and failures.

    CELL_ID may be any unique prefix of the id. --json prints the record as stored.
    """
    import json

    from .records import json_safe

    with _open_results(results_dir) as store:
        cell = store.cell(store.resolve(cell_id))
    assert cell is not None
    if as_json:
        record = {"cell_id": cell.cell_id, "status": cell.status, "error": cell.error, "config": cell.config,
                  "metrics": cell.metrics, "info": cell.info, "provenance": cell.provenance.to_json(),
                  "localizations": [dataclasses.asdict(loc) for loc in cell.localizations],
                  "transfers": [dataclasses.asdict(t) for t in cell.transfers], "traceback": cell.traceback}
        click.echo(json.dumps(json_safe(record), indent=2, default=str))
        return
    a = cell.axes
    console.print(f"[bold]cell {escape(cell.cell_id)}[/] {escape(a.dataset)} / {escape(a.backbone)} / "
                  f"{escape(a.head)} / seed {a.seed}: {cell.status}", highlight=False)
    if cell.error:
        console.print(f"[red]failed:[/] {escape(cell.error)}", highlight=False)
    console.print(_settings_table(cell))
    per_class = _class_metrics_table(cell)
    if per_class is not None:
        console.print(per_class)
    history = _history_table(cell.info)
    if history is not None:
        console.print(history)
    if cell.localizations:
        console.print(_localizers_table(cell))
    if cell.transfers:
        from .reporting.transfers import transfer_rows, transfer_table

        console.print(transfer_table(transfer_rows([cell])))
        for transfer in cell.transfers:  # every evaluation, also those a later one replaced on the leaderboard
            state = "ok" if transfer.ok else f"failed: {one_line(transfer.error or '')}"
            console.print(f"  {escape(cell.axes.dataset)} -> {escape(transfer.target)} [{transfer.key}]: "
                          f"{escape(state)}", highlight=False)
    if cell.traceback:
        console.print("[red]traceback:[/]")
        console.print(cell.traceback, highlight=False, markup=False)


def _compact(values: Any) -> str:
    """``{a: 1, b: {c: 2}}`` as ``a=1, b.c=2`` (a settings block on one line)."""
    from .reporting.htmltable import flatten

    if not isinstance(values, dict):
        return str(values)
    return ", ".join(f"{k}={v}" for k, v in flatten(values).items()) or "(defaults)"


def _settings_table(cell: Any) -> Table:
    """What produced the cell: each component with its options, the train and evaluation settings, the environment."""
    config, provenance = cell.config or {}, cell.provenance.to_json()
    table = Table(title="configuration", title_justify="left", header_style="bold", show_header=False)
    table.add_column("setting", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for kind in ("dataset", "backbone", "head"):
        entry = config.get(kind) or {}
        if entry:
            table.add_row(kind, escape(f"{entry.get('name', '?')}  {_compact(entry.get('options') or {})}"))
    table.add_row("seed", str(config.get("seed", cell.axes.seed)))
    for key in ("train", "evaluation"):
        values = provenance.get(key) or config.get(key)
        if values:
            table.add_row(key, escape(_compact(values)))
    environment = provenance.get("environment")
    if environment:
        table.add_row("environment", escape(_compact(environment)))
    if config.get("data_fingerprint"):
        table.add_row("data", escape(str(config["data_fingerprint"]).rsplit(":", 1)[-1]))
    return table


CLASS_METRIC_KEYS = ("auroc", "threshold", "sensitivity", "specificity", "precision", "f1")
"""Per-class metrics ``show`` lists, in order (docs/metrics.md defines each; thresholds by the cutoff rule)."""


def _class_metrics_table(cell: Any) -> Table | None:
    """Per class (and their mean): AUROC with its interval, the operating threshold and what it gives."""
    from . import catalogue
    from .reporting.columns import fmt

    metrics = cell.metrics or {}
    classes = list(dict.fromkeys(k.split("/", 1)[1] for k in metrics if k.startswith("auroc/")))
    if not classes:
        return None
    level = (cell.provenance.to_json().get("evaluation") or {}).get("ci", 0.95)
    cutoff = cell.provenance.to_json().get("cutoff") or "youden"
    table = Table(title=f"classification (test split; threshold by {cutoff})", title_justify="left",
                  header_style="bold")
    table.add_column("class")
    for key in CLASS_METRIC_KEYS:
        summary = "auroc_mean" if key == "auroc" else f"{key}_mean"
        table.add_column(catalogue.label(summary) if catalogue.lookup(summary) is not None else key, justify="right")
        if key == "auroc":
            table.add_column(f"{100 * float(level):g}% CI", justify="left")

    def interval(low: Any, high: Any) -> str:
        return "-" if low is None or high is None else f"{fmt(low)}-{fmt(high)}"

    table.add_row("[bold]mean[/]", fmt(metrics.get("auroc_mean")),
                  interval(metrics.get("auroc_ci_low"), metrics.get("auroc_ci_high")), "",
                  *[fmt(metrics.get(f"{k}_mean")) for k in CLASS_METRIC_KEYS[2:]], end_section=True)
    for name in classes:
        table.add_row(escape(name), fmt(metrics.get(f"auroc/{name}")),
                      interval(metrics.get(f"auroc_ci_low/{name}"), metrics.get(f"auroc_ci_high/{name}")),
                      *[fmt(metrics.get(f"{k}/{name}")) for k in CLASS_METRIC_KEYS[1:]])
    return table


def _history_table(info: Any) -> Table | None:
    """The cell's training epochs: loss, validation AUROC, seconds; the kept epoch marked."""
    from .reporting.columns import fmt

    history = list(info.get("history") or [])
    if not history:
        return None
    best = info.get("best_epoch")
    resumed = info.get("resumed_from_epoch") or 0
    title = f"training: {len(history)} epochs, kept epoch {best}" + (f", resumed after epoch {resumed}"
                                                                      if resumed else "")
    if info.get("reused_checkpoint"):
        title += " (evaluated from its saved best.pt)"
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("epoch", "loss", "val AUROC", "lr", "seconds", ""):
        table.add_column(col, justify="right")
    for record in history:
        epoch = record.get("epoch")
        table.add_row(str(epoch), fmt(record.get("loss"), 4), fmt(record.get("val_auroc_mean")),
                      f"{record.get('lr', float('nan')):.2g}", fmt(record.get("seconds"), 1),
                      "kept" if epoch == best else "")
    return table


def _localizers_table(cell: Any) -> Table:
    """Each localizer's status, reason and headline metrics (the catalogue's compact columns)."""
    from . import catalogue
    from .reporting.columns import fmt

    available = {k for loc in cell.localizations for k in loc.metrics}
    keys = catalogue.table_keys("localization", available, compact=True)
    table = Table(title="localizers", title_justify="left", header_style="bold")
    for col in ("localizer", "status", *(catalogue.label(k) for k in keys)):
        table.add_column(col)
    for loc in cell.localizations:
        status = "ok" if loc.ok else f"failed: {escape(one_line(loc.error or ''))}"
        values = [fmt(loc.metrics.get(k), getattr(catalogue.lookup(k), "digits", 3)) for k in keys]
        table.add_row(escape(loc.name), status, *values)
    return table


# --------------------------------------------------------------------------- discovery


@cli.command()
def plugins() -> None:
    """List every plugin: distribution, version, built-in or third-party, components."""
    pm, registry = STATE.pm, STATE.registry
    table = Table(title="cxrbench plugins", title_justify="left", header_style="bold")
    for col in ("plugin", "distribution", "version", "kind", "components"):
        table.add_column(col)
    for name, info in sorted(pm.infos.items()):
        provided = registry.components_of(name)
        parts = [f"{kind}s: {', '.join(names)}" for kind, names in provided.items()]
        hooks = sorted(set(_hooks_of(pm, name)) - set(_REGISTRATION_HOOKS))
        if hooks:
            parts.append("hooks: " + ", ".join(h.removeprefix("cxrbench_") for h in hooks))
        table.add_row(name, info.distribution, info.version or "-", "built-in" if info.builtin else "third-party",
                      "\n".join(parts) or "-")
    console.print(table)


_REGISTRATION_HOOKS = ("cxrbench_register_datasets", "cxrbench_register_backbones",
                       "cxrbench_register_pooling_heads", "cxrbench_register_localizers",
                       "cxrbench_register_executors")


def _hooks_of(pm: Any, plugin_name: str) -> list[str]:
    """Names of the hooks a plugin implements."""
    return [caller.name for caller in pm.get_hookcallers(pm.get_plugin(plugin_name)) or []]


def _describe_field(field: Any) -> str:
    import dataclasses

    if field.default is not dataclasses.MISSING:
        return f"{field.name}={field.default!r}"
    if field.default_factory is not dataclasses.MISSING:
        return f"{field.name}={field.default_factory()!r}"
    return f"{field.name} (required)"


@cli.command(name="list")
@click.argument("kind", type=click.Choice(sorted(KIND_OF_LIST)))
def list_components(kind: str) -> None:
    """List the registered components of one kind, with their options and defaults."""
    import dataclasses

    registry = STATE.registry
    component_kind = KIND_OF_LIST[kind]
    table = Table(title=f"{kind}", title_justify="left", header_style="bold")
    for col in ("name", "plugin", "description", "options (defaults)"):
        table.add_column(col)
    for name, cls, provider in registry.items(component_kind):
        fields = dataclasses.fields(cls.Options)
        opts = ", ".join(_describe_field(f) for f in fields)
        table.add_row(escape(name), escape(provider), escape(_plain_text(cls.describe())), escape(opts or "-"))
    console.print(table)
    families = registry.families(component_kind)
    for cls in families:
        console.print(f"[dim]{escape(cls.NAME)}: {escape(_plain_text(cls.describe()))} — any matching name is "
                      "accepted.[/]", highlight=False)


def _plain_text(docstring_text: str) -> str:
    """A docstring line for the terminal: RST literals (````x````) as ``'x'``."""
    return re.sub(r"``(.+?)``", r"'\1'", docstring_text)


# --------------------------------------------------------------------------- data

cache_option = click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="Cache directory (default: RESULTS/cache; perceptual hashes are stored there too).")
workers_option = click.option("--workers", type=click.IntRange(min=1), default=None,
                              help="Decoding threads (default: CPU count).")


@cli.command()
@click.option("--grid", "grid_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Prepare every dataset of this grid at the grid's input size.")
@results_option
@cache_option
@workers_option
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable; default: all).")
@click.option("--verify", is_flag=True,
              help="First hash every table and image in full (SHA-256) and compare with the last --verify: a "
                   "change the quick key (size, time, sampled bytes) missed rebuilds the cache and makes cells stale.")
def prepare(grid_file: Path, results_dir: Path, cache_dir: Path | None, workers: int | None,
            splits: tuple[str, ...], verify: bool) -> None:
    """Decode and resize every image once into a uint8 cache that runs then read.

    Resumable: an interrupted prepare continues where it stopped. Unreadable files are
    reported by name and skipped. A cache of changed data is rebuilt.
    """
    from .config import load_grid

    grid = load_grid(grid_file, STATE.registry)
    if verify:
        _verify_grid(grid, cache_dir or results_dir / "cache", workers)
    failures = _prepare_grid(grid, cache_dir or results_dir / "cache", workers, splits)
    if failures:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option("--grid", "grid_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Audit every pair of this grid's datasets and its evaluate_on: targets.")
@results_option
@cache_option
@workers_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A table, or one JSON record per (dataset, target) pair.")
def audit(grid_file: Path, results_dir: Path, cache_dir: Path | None, workers: int | None, fmt: str) -> None:
    """Before training: how many images of each evaluate_on target are training images of a grid dataset.

    The same overlap audit 'run' applies when it scores a target (by a published name
    mapping, else by perceptual hash; docs/metrics.md, "Cross-dataset evaluation"): the matching
    images, and the other images of their patients, are left out of that target's scores.
    Nothing is trained or written but hashes into the cache.
    """
    import json

    from .audit import audit_grid
    from .config import load_grid

    grid = load_grid(grid_file, STATE.registry)
    if not grid.evaluate_on:
        raise UsageError(f"{grid_file}: the grid has no evaluate_on: targets, so nothing is scored on another "
                         "dataset (add evaluate_on: [{name: DATASET, options: {...}}])")

    def started(text: str) -> None:
        if fmt == "table" and err_console.is_terminal:
            err_console.print(f"auditing {escape(text)}", style="dim", highlight=False)

    pairs = audit_grid(grid, cache_dir or results_dir / "cache", workers=workers, warn=_warn, on_split=started)
    if fmt == "json":
        click.echo(json.dumps([p.to_json() for p in pairs], indent=2))
        return
    from rich.table import Table

    table = Table(title=f"Overlap audit of grid '{escape(grid.name)}' (trained on -> scored on)",
                  title_justify="left", header_style="bold")
    for col in ("trained on -> scored on", "split", "images", "training images", "their patients", "excluded",
                "by"):
        table.add_column(col, justify="right" if col in ("images", "training images", "their patients", "excluded")
                         else "left")
    for pair in pairs:
        label = escape(f"{pair.source} -> {pair.target}")
        if pair.skipped:
            table.add_row(label, "-", "", "", "", "", escape(f"never scored: {pair.skipped}"))
        for found in pair.splits:
            table.add_row(label, found.split, f"{found.images:,}", f"{found.by_image:,}", f"{found.by_patient:,}",
                          f"{found.count:,}" if found.count else "[green]0[/]", escape(found.evidence))
    console.print(table)


# --------------------------------------------------------------------------- entry point


RUN_SPLITS = ("train", "val", "test", "boxes")
"""The splits ``run`` prepares before its cells (those a cell reads)."""


def _verify_grid(grid: Any, cache_root: Path, workers: int | None) -> None:
    """``prepare --verify``: every dataset's files hashed in full, one line each."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .data import verify_dataset
    from .pipeline import open_dataset

    for spec in grid.datasets:
        dataset = open_dataset(spec, cache_root, _warn)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, disable=not console.is_terminal) as bars:
            task = bars.add_task(f"verify {spec.label()}", total=None)
            report = verify_dataset(dataset, cache_root, workers=workers, progress=lambda n, t=task: bars.advance(t, n))
        if report is None:
            console.print(f"{spec.label()}: generated data, no files to verify", highlight=False)
        elif report.hidden:
            _warn(report.line(spec.label()))
        else:
            console.print(escape(report.line(spec.label())), highlight=False, soft_wrap=True)


def _prepare_grid(grid: Any, cache_root: Path, workers: int | None, splits: tuple[str, ...], *,
                  quiet: bool = False) -> int:
    """Decode every image of the grid's datasets into the cache (resumable); returns unreadable files.

    With ``quiet`` (before ``run``) only the splits each dataset has are prepared, and a
    split already cached is passed over without a line.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .data import open_cache, prepare_split
    from .pipeline import input_size, open_dataset

    failures = 0
    for spec in grid.datasets:
        dataset = open_dataset(spec, cache_root, _warn)
        size = input_size(grid.train, dataset)
        unknown = [name for name in splits if name not in dataset.split_names]
        if unknown and not quiet:  # before decoding anything, not after the splits listed first
            raise UsageError(f"dataset '{spec.name}' has no split {unknown[0]!r} "
                             f"(splits: {', '.join(dataset.split_names)})")
        wanted = [s for s in (splits or dataset.split_names) if s in dataset.split_names]
        for split_name in wanted:
            if quiet and open_cache(dataset, split_name, size, cache_root, warn=False) is not None:
                continue
            total = len(dataset.split(split_name))
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=console, disable=not console.is_terminal) as bars:
                task = bars.add_task(f"prepare {spec.label()} {split_name} @ {size}px", total=total)
                report = prepare_split(dataset, split_name, size, cache_root, workers=workers,
                                       progress=lambda n, t=task: bars.advance(t, n))
            for image_id, error in report.failed:
                # soft_wrap: one line per file even in a narrow terminal or a log, so it greps whole.
                err_console.print("[red]unreadable:[/] " + escape(one_line(f"{image_id}: {error}")), highlight=False,
                                  soft_wrap=True)
            failures += len(report.failed)
            if not quiet or report.failed:
                console.print(f"{spec.label()} {split_name}: {report.decoded} decoded, {report.already_done} already "
                              f"cached, {len(report.failed)} unreadable -> {report.folder}", highlight=False,
                              soft_wrap=True)
    return failures


def _open_results(results_dir: Path) -> Any:
    """The results store of ``results_dir`` for reading; one line when there is none yet."""
    from .store import ResultsStore

    if not (results_dir / DB_NAME).exists():
        raise UsageError(f"{results_dir}: no results yet (run 'cxrbench run --grid GRID' first)")
    return ResultsStore(results_dir, readonly=True)  # reading never writes: a read-only folder opens too


def _executor_entry(text: str) -> Any:
    """``--executor``'s value: a plain name, or a YAML mapping such as a grid's ``executor:``."""
    if not text.lstrip().startswith("{"):
        return text
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise UsageError(f"--executor: {problem} in {text!r}") from None


def _ignore_further_interrupts() -> None:
    """A second Ctrl-C (or SIGTERM) while shutting down must not end the process by the signal."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"[red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _terminate(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM (Ctrl-C, a scheduler, ``kill``): stop the run, finished cells saved, exit 2.

    Further signals are ignored from this moment, before the interrupt is raised: one
    arriving while the first is handled (even before the handler reaches its own
    ``except``) would otherwise end the process by the signal (rc -2) instead of exit 2.
    """
    _ignore_further_interrupts()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``cxrbench``)."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    cli.main(args=argv, prog_name="cxrbench")


if __name__ == "__main__":  # pragma: no cover
    main()
