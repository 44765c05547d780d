"""The MLflow side: one run per cell, found by its ``cxrbench.cell_id`` tag.

Each ok cell has one active run, a mirror of its record in the results store:

- no run yet: a new run is created and filled;
- a run whose ``cxrbench.record_sha256`` tag is the record's digest: nothing to do (the
  same record logged twice, e.g. the hook called again);
- a localizer-only pass (the cell was not retrained; its record gained localizer rows):
  the run is updated in place (new params, changed metrics, refreshed files);
- a retrained cell (``--force``, or a new results directory logging to the same
  tracking store): a new run is filled, then the old one is deleted (MLflow keeps deleted
  runs restorable until ``mlflow gc``), so a run's per-epoch history is never two
  trainings mixed.

The digest tag is written last, so a run left half-filled by a failure is never taken
for complete.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from cxrbench.api import UsageError, one_line

from .payload import CELL_ID_TAG, DIGEST_TAG, RunPayload

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

INSTALL_HINT = 'pip install "cxrbench[mlflow]"'
_CELL_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def import_client() -> type[MlflowClient]:
    """``mlflow.tracking.MlflowClient``, or a one-line UsageError saying how to install it."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UsageError(f"plugin 'mlflow': CXRBENCH_MLFLOW=1 needs MLflow: {INSTALL_HINT}") from None
    return MlflowClient


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def store_hint(exc: BaseException, uri: str = "") -> str:
    """What to do about a tracking store that does not open, in a few words."""
    import importlib.util

    text = str(exc)
    if "MLFLOW_ALLOW_FILE_STORE" in text:
        return ("this MLflow keeps file: stores in maintenance mode; set MLFLOW_ALLOW_FILE_STORE=true, or use a "
                "tracking server or a database URI (sqlite:///mlflow.db needs the full package: pip install mlflow)")
    if uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        # mlflow-skinny (the extra) has no database stores, and MLflow 3 defaults to sqlite:///mlflow.db
        return ("database stores need the full package (pip install mlflow); or set MLFLOW_TRACKING_URI to a "
                "tracking server (http://...) or a file: folder")
    return one_line(text)[:200]


def configured_uri() -> str:
    """The tracking URI MLflow resolves (``MLFLOW_TRACKING_URI`` or its default)."""
    try:
        import mlflow

        return str(mlflow.get_tracking_uri())
    except Exception:
        return "(MLflow's default)"


class MlflowTracker:
    """Logs cells to the tracking store MLflow is configured with (``MLFLOW_TRACKING_URI``).

    Args:
        client: an ``MlflowClient``; default: one for MLflow's configured tracking URI.

    """

    def __init__(self, client: Any = None) -> None:
        if client is None:
            factory = import_client()
            try:
                client = factory()
            except Exception as exc:  # an unknown scheme, a store that refuses to open
                uri = configured_uri()
                raise UsageError(f"plugin 'mlflow': cannot use tracking store {uri}: {store_hint(exc, uri)}") from None
        self.client = client
        self._experiments: dict[str, str] = {}

    @property
    def tracking_uri(self) -> str:
        return str(getattr(self.client, "tracking_uri", "") or "")

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if missing (another process may race us)."""
        if name in self._experiments:
            return self._experiments[name]
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except Exception:
                experiment = self.client.get_experiment_by_name(name)  # created meanwhile by a parallel shard
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        elif experiment.lifecycle_stage != "active":
            raise UsageError(f"plugin 'mlflow': experiment {name!r} is deleted in {self.tracking_uri}; restore it "
                             "or set CXRBENCH_MLFLOW_EXPERIMENT to another name")
        else:
            experiment_id = experiment.experiment_id
        self._experiments[name] = experiment_id
        return experiment_id

    def check(self, experiment: str) -> None:
        """Open the store and the experiment now, before anything trains.

        Raises:
            UsageError: one line naming the plugin and the tracking URI.

        """
        try:
            self.experiment_id(experiment)
        except UsageError:
            raise
        except Exception as exc:
            uri = self.tracking_uri or configured_uri()
            raise UsageError(f"plugin 'mlflow': cannot use tracking store {uri}: {store_hint(exc, uri)}") from None

    def runs_of(self, experiment_id: str, cell_id: str) -> list[Any]:
        """The active runs tagged with ``cell_id``, newest first."""
        if not _CELL_ID.match(cell_id):
            raise ValueError(f"cell id {cell_id!r} cannot be searched for")
        from mlflow.entities import ViewType

        return list(self.client.search_runs([experiment_id], filter_string=f"tags.`{CELL_ID_TAG}` = '{cell_id}'",
                                            run_view_type=ViewType.ACTIVE_ONLY, max_results=50,
                                            order_by=["attributes.start_time DESC"]))

    def log(self, payload: RunPayload, *, retrained: bool) -> tuple[str, str]:
        """Mirror ``payload`` into its cell's run.

        Args:
            payload: the cell's run contents.
            retrained: the cell's model was trained in this pass (not a localizer-only pass).

        Returns:
            ``(run id, what happened)``: ``created``, ``replaced``, ``updated`` or ``unchanged``.

        """
        experiment_id = self.experiment_id(payload.experiment)
        runs = self.runs_of(experiment_id, payload.cell_id)
        if len(runs) == 1 and runs[0].data.tags.get(DIGEST_TAG) == payload.digest:
            return runs[0].info.run_id, "unchanged"
        if runs and not retrained:
            current, stale = runs[0], runs[1:]
            self._fill(current.info.run_id, payload, known=current)
            action = "updated"
        else:
            current, stale = self._create(experiment_id, payload), runs
            action = "replaced" if runs else "created"
        for run in stale:
            self.client.delete_run(run.info.run_id)
        return current.info.run_id, action

    def _create(self, experiment_id: str, payload: RunPayload) -> Any:
        run = self.client.create_run(experiment_id, start_time=payload.start_ms, tags=dict(payload.tags),
                                     run_name=payload.run_name)
        try:
            self._fill(run.info.run_id, payload, known=None)
        except BaseException:
            # never leave a half-filled run beside the good one it was meant to replace
            try:
                self.client.set_terminated(run.info.run_id, "FAILED")
                self.client.delete_run(run.info.run_id)
            except Exception:  # the original error is the one worth reporting
                pass
            raise
        return run

    def _fill(self, run_id: str, payload: RunPayload, known: Any) -> None:
        """Log ``payload`` into ``run_id``; ``known``: the run as it is (None = a new, empty run)."""
        from mlflow.entities import Metric, Param, RunTag

        have_params = dict(known.data.params) if known is not None else {}
        have_metrics = dict(known.data.metrics) if known is not None else {}
        now = int(time.time() * 1000)
        stamp = payload.end_ms or now
        # params are immutable in MLflow: log only new keys (a cell's config never changes under its id)
        params = [Param(k, v) for k, v in payload.params.items() if k not in have_params]
        metrics = [Metric(k, v, stamp, 0) for k, v in payload.metrics.items() if have_metrics.get(k) != v]
        # history is the training's; a localizer-only pass keeps it, so log it once per run
        history_logged = any(p.key in have_metrics for p in payload.history)
        if not history_logged:
            metrics += [Metric(p.key, p.value, now, p.step) for p in payload.history]
        tags = [RunTag(k, v) for k, v in payload.tags.items()] if known is not None else []
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        if payload.record is not None:
            self.client.log_dict(run_id, dict(payload.record), "record.json")
        for path, folder in payload.files:
            self.client.log_artifact(run_id, str(path), folder)
        self.client.set_tag(run_id, DIGEST_TAG, payload.digest)
        self.client.set_terminated(run_id, "FINISHED", end_time=payload.end_ms)
