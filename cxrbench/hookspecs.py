"""Every hook a cxrbench plugin can implement.

Plugins are found through the ``cxrbench`` entry-point group; a plugin is any module (or
object) with functions decorated by :data:`cxrbench.hookimpl` whose names match the
specs below. Hooks are always called with keyword arguments, so an implementation may
accept any subset of a spec's arguments and new arguments never break old plugins.

Registration hooks return a component class or a list of classes (each with a ``NAME``);
the registry collects them into ``{kind: {name: class}}``. Lifecycle hooks are few and
broadcast-shaped; the one hook that needs a single answer (running a cell) is
``firstresult`` with the core's own default marked ``trylast``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .config import GridSpec
    from .events import CellReporter
    from .grid import Cell
    from .records import CellResult
    from .tasks import CellTask

hookspec = pluggy.HookspecMarker("cxrbench")

# --------------------------------------------------------------------------- registration


@hookspec
def cxrbench_register_datasets() -> Any:
    """Contribute dataset classes.

    Called once when the registry is built (every CLI command, every worker process).

    Returns:
        A :class:`cxrbench.interfaces.Dataset` subclass, a list of them, or None.

    """


@hookspec
def cxrbench_register_backbones() -> Any:
    """Contribute backbone classes (:class:`cxrbench.interfaces.Backbone` subclasses).

    A class may serve a family of names through its ``matches`` classmethod (the timm
    plugin serves every timm model name this way).

    Returns:
        A class, a list of classes, or None.

    """


@hookspec
def cxrbench_register_pooling_heads() -> Any:
    """Contribute pooling head classes (:class:`cxrbench.interfaces.PoolingHead`).

    Returns:
        A class, a list of classes, or None.

    """


@hookspec
def cxrbench_register_localizers() -> Any:
    """Contribute localizer classes (:class:`cxrbench.interfaces.Localizer`).

    Returns:
        A class, a list of classes, or None.

    """


@hookspec
def cxrbench_register_executors() -> Any:
    """Contribute executor classes (:class:`cxrbench.interfaces.Executor`).

    Returns:
        A class, a list of classes, or None.

    """


# --------------------------------------------------------------------------- grid lifecycle


@hookspec
def cxrbench_cells_collected(grid: GridSpec, cells: list[Cell], pending: list[Cell]) -> None:
    """The grid has been expanded and resumed cells removed; nothing has run yet.

    Called once per ``cxrbench run`` in the main process, before the executor starts.
    Use it to open a tracker run or log the plan.

    Args:
        grid: the validated grid spec.
        cells: every cell of the grid.
        pending: the cells that will run now (the others are already in the store).

    """


@hookspec(firstresult=True)
def cxrbench_run_cell(task: CellTask, reporter: CellReporter) -> CellResult | None:
    """Run one cell and return its result; the first non-None answer wins.

    Called in whichever process the executor runs the cell in. The core's own
    implementation (train, evaluate, localize) is registered ``trylast``; a plugin can
    take over a cell (e.g. to load results from elsewhere) by returning a result. An
    answer that is not a :class:`cxrbench.records.CellResult` for ``task``'s cell fails
    the cell with a message (it never reaches the store).

    Args:
        task: the cell, its resolved config and where its artifacts go.
        reporter: where to report progress (``reporter.progress(Progress(...))``) and
            one-line warnings (``reporter.warning(text)``).

    """


@hookspec
def cxrbench_cell_finished(task: CellTask, result: CellResult) -> None:
    """A cell's result has been written to the store (main process, after the commit).

    Broadcast to every plugin: loggers, trackers, notifiers.

    Args:
        task: the cell that finished.
        result: its :class:`cxrbench.records.CellResult`, ``status`` ``ok`` or ``failed``.

    """


# --------------------------------------------------------------------------- reporting and CLI


@hookspec
def cxrbench_leaderboard_columns(records: list[dict[str, Any]]) -> Any:
    """Add columns to leaderboards.

    Args:
        records: the leaderboard rows in their exported JSON form
            (``cxrbench.reporting.LeaderboardRow.to_json``: the axes, ``metrics``, ``info``,
            ``provenance``, the localizer's status and settings).

    Returns:
        A mapping ``{column name: list of values, one per record}``, or None.

    """


@hookspec
def cxrbench_add_commands(cli: click.Group) -> None:
    """Add subcommands to the ``cxrbench`` command line (``cli.add_command(...)``)."""
