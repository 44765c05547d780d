"""The ``mlflow`` plugin: each finished cell as an MLflow run (a lifecycle-hook plugin).

Install with ``pip install "cxrbench[mlflow]"`` and switch it on per run with
``CXRBENCH_MLFLOW=1``; MLflow logs where ``MLFLOW_TRACKING_URI`` points (a tracking
server, a database such as ``sqlite:///mlflow.db``, or a ``file:`` folder). Nothing is
imported from MLflow unless tracking is on, so the plugin costs nothing otherwise.

Two hooks do the work:

- ``cxrbench_cells_collected`` (before anything trains) checks the settings, that MLflow
  imports and that the tracking store and the experiment open: a mistake there is a
  one-line usage error (exit code 4), not a surprise after hours of training.
- ``cxrbench_cell_finished`` (after the cell's record is committed to the store) logs the
  record: one run per ok cell in the experiment named after the grid, with the cell's
  configuration as params, its metrics, its per-epoch history as stepped metrics and its
  files as artifacts (:mod:`cxrbench_mlflow.payload` says which keys). A failure inside
  MLflow is one warning line naming the plugin: the cell stays recorded and the grid goes
  on. Failed cells are not logged (``cxrbench show CELL_ID`` has their traceback).

Environment variables (:mod:`cxrbench_mlflow.settings`): ``CXRBENCH_MLFLOW`` (1 / 0),
``CXRBENCH_MLFLOW_ARTIFACTS`` (comma-separated ``record``, ``predictions``,
``checkpoint``, or ``none``; default ``record,predictions``: ``best.pt`` is often large),
``CXRBENCH_MLFLOW_EXPERIMENT`` (default: the grid's name).
"""

from __future__ import annotations

import sys
from typing import Any

import cxrbench
from cxrbench.api import CellResult, CellTask, UsageError, one_line

from .payload import build_payload
from .settings import TrackingSettings
from .tracker import MlflowTracker

PLUGIN = "mlflow"
_warned: set[str] = set()


def warn(message: str, *, once: bool = False) -> None:
    """One warning line on stderr naming the plugin (the rich live display prints it above itself)."""
    if once and message in _warned:
        return
    _warned.add(message)
    print(f"warning: plugin {PLUGIN!r}: {one_line(message)}", file=sys.stderr, flush=True)


@cxrbench.hookimpl
def cxrbench_cells_collected(grid: Any, pending: list[Any]) -> None:
    settings = TrackingSettings.from_env()
    if settings.enabled and pending:
        MlflowTracker().check(settings.experiment_for(grid.name))


@cxrbench.hookimpl
def cxrbench_cell_finished(task: CellTask, result: CellResult) -> None:
    try:
        settings = TrackingSettings.from_env()
    except UsageError as exc:  # checked before the run started; the environment changed since
        warn(str(exc), once=True)
        return
    if not settings.enabled or not result.ok:
        return
    try:
        log_cell(task, result, settings)
    except UsageError as exc:
        warn(str(exc).removeprefix(f"plugin {PLUGIN!r}: "), once=True)
    except Exception as exc:  # never fail the cell or the grid: its record is already in the store
        warn(f"cell {result.cell_id} not logged to MLflow ({type(exc).__name__}: {one_line(str(exc))[:200]}); "
             "its record is in the results store")


def log_cell(task: CellTask, result: CellResult, settings: TrackingSettings,
             tracker: MlflowTracker | None = None) -> tuple[str, str]:
    """Log one finished cell; returns ``(run id, created | replaced | updated | unchanged)``."""
    tracker = tracker or MlflowTracker()
    payload = build_payload(task, result, experiment=settings.experiment_for(result.grid),
                            artifacts=settings.artifacts)
    return tracker.log(payload, retrained=task.retrain)
