"""What every executor calls for a task, wherever the task runs.

:func:`execute_cell` runs one cell through the ``cxrbench_run_cell`` hook and never raises
for a failing cell: the failure, with its traceback, is the result (as pytest's
``CallInfo.from_call`` captures a test outcome). Warnings raised while the cell runs go to
the run's events as they happen and are kept in the result too, so an executor that
cannot relay events live still shows them.
"""

from __future__ import annotations

import dataclasses
import time
import traceback

from .errors import CellError, one_line
from .events import NULL_EVENTS, CellReporter, RunEvents
from .manager import current_plugin_manager
from .pipeline import failed_result, with_duration
from .records import CellResult
from .tasks import CellTask


@dataclasses.dataclass
class _CollectingEvents(RunEvents):
    """Forwards to the run's events and keeps the cell's warnings for its result."""

    inner: RunEvents
    warnings: list[str] = dataclasses.field(default_factory=list)

    def cell_started(self, cell_id: str, worker: str | None = None) -> None:
        self.inner.cell_started(cell_id, worker)

    def progress(self, cell_id, progress) -> None:  # noqa: ANN001 (same signature as RunEvents)
        self.inner.progress(cell_id, progress)

    def warning(self, cell_id: str | None, message: str) -> None:
        self.warnings.append(message)
        self.inner.warning(cell_id, message)


def _run_cell_hook(task: CellTask, reporter: CellReporter) -> tuple[object, str | None]:
    """The first non-None ``cxrbench_run_cell`` answer and the plugin that gave it.

    Called implementation by implementation in pluggy's own order (``tryfirst`` first, the
    core's ``trylast`` last), so a malformed answer can be blamed on the plugin that gave it.
    """
    hook = current_plugin_manager().hook.cxrbench_run_cell
    arguments = {"task": task, "reporter": reporter}
    for impl in reversed(hook.get_hookimpls()):
        answer = impl.function(**{name: arguments[name] for name in impl.argnames})
        if answer is not None:
            return answer, impl.plugin_name
    return None, None


def execute_cell(task: CellTask, events: RunEvents | None = None) -> CellResult:
    """Run one cell; return its result, ``failed`` with the reason when anything raised.

    ``KeyboardInterrupt`` is re-raised (an interrupted run). A hook implementation that
    returns something other than a :class:`CellResult` for this cell fails the cell with a
    message naming the problem (a plugin cannot put a malformed record in the store).
    """
    collecting = _CollectingEvents(events or NULL_EVENTS)
    reporter = CellReporter(collecting, task.cell.cell_id)
    started = time.time()
    try:
        outcome, plugin = _run_cell_hook(task, reporter)
        if outcome is None:
            raise CellError("no plugin ran the cell (every cxrbench_run_cell returned None)")
        if not isinstance(outcome, CellResult):
            raise CellError(f"plugin {plugin!r}: cxrbench_run_cell returned {type(outcome).__name__}, "
                            "not a CellResult")
        try:
            outcome.check(task.cell.cell_id)
        except ValueError as exc:
            raise CellError(f"plugin {plugin!r}: malformed result: {exc}") from None
        result = dataclasses.replace(outcome, warnings=tuple(outcome.warnings) + tuple(collecting.warnings))
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        text = str(exc).strip()
        message = one_line(text.splitlines()[0]) if text else ""
        result = failed_result(task, f"{type(exc).__name__}: {message}".rstrip(": "), traceback.format_exc(),
                               started_at=started, warnings=tuple(collecting.warnings))
    return with_duration(dataclasses.replace(result, started_at=result.started_at or started))
