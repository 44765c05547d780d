"""How tracking is switched on and tuned: environment variables, read into one typed value.

A grid file describes an experiment, not where one person's tracker lives, and the grid
schema has no plugin-owned blocks; so tracking is configured like MLflow itself, through
the environment. MLflow reads ``MLFLOW_TRACKING_URI`` (and its credentials) on its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from cxrbench.api import UsageError, one_line

ENABLE_ENV = "CXRBENCH_MLFLOW"
ARTIFACTS_ENV = "CXRBENCH_MLFLOW_ARTIFACTS"
EXPERIMENT_ENV = "CXRBENCH_MLFLOW_EXPERIMENT"

ARTIFACTS = {
    "record": "the cell's record as JSON (record.json: config, metrics, history, provenance)",
    "predictions": "the test-split scores (predictions.npz)",
    "checkpoint": "the selected model's weights (best.pt; often large)",
}
"""What ``CXRBENCH_MLFLOW_ARTIFACTS`` may name."""

DEFAULT_ARTIFACTS = ("record", "predictions")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class TrackingSettings:
    """What the MLflow plugin does.

    Attributes:
        enabled: log finished cells (``CXRBENCH_MLFLOW=1``).
        artifacts: which of the cell's files to attach (``CXRBENCH_MLFLOW_ARTIFACTS``,
            comma-separated names from :data:`ARTIFACTS`, or ``none``).
        experiment: the MLflow experiment (``CXRBENCH_MLFLOW_EXPERIMENT``); empty = the
            grid's name.

    """

    enabled: bool = False
    artifacts: tuple[str, ...] = DEFAULT_ARTIFACTS
    experiment: str = ""

    def experiment_for(self, grid: str) -> str:
        return self.experiment or grid

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrackingSettings:
        """Read the settings from ``environ`` (default: this process's environment).

        Raises:
            UsageError: one line naming the variable and what it accepts.

        """
        env = os.environ if environ is None else environ
        flag = env.get(ENABLE_ENV, "").strip().lower()
        if flag not in _TRUE | _FALSE:
            raise UsageError(f"{ENABLE_ENV}: expected 1 (track finished cells in MLflow) or 0, "
                             f"got {one_line(env[ENABLE_ENV])[:40]!r}")
        artifacts = DEFAULT_ARTIFACTS
        if ARTIFACTS_ENV in env:
            names = [n.strip().lower() for n in env[ARTIFACTS_ENV].split(",") if n.strip()]
            if names == ["none"]:
                names = []
            unknown = [n for n in names if n not in ARTIFACTS]
            if unknown:
                raise UsageError(f"{ARTIFACTS_ENV}: unknown artifact {one_line(unknown[0])[:40]!r} "
                                 f"(valid: {', '.join(ARTIFACTS)}, or none)")
            artifacts = tuple(dict.fromkeys(names))
        return cls(enabled=flag in _TRUE, artifacts=artifacts, experiment=env.get(EXPERIMENT_ENV, "").strip())
