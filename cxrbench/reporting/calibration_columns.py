"""The ``ece`` and ``brier`` leaderboard columns, computed from each cell's stored test predictions.

Computing them at leaderboard time (rather than when a cell runs) gives every cell already in
a store its calibration columns. A cell's values use the cell's own evaluation settings
(``provenance.evaluation``: bootstrap replicates, seed and interval level), so its ECE and
Brier intervals come from the same patient resamples as its AUROC interval. A metric the
store already holds for a cell wins over the recomputed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..artifacts import CellArtifacts
from ..calibration import calibration_metrics
from .rows import LeaderboardRow


def _cell_calibration(results_root: Path, row: LeaderboardRow) -> dict[str, float]:
    """The cell's calibration metrics, or ``{}`` when its predictions are missing or not probabilities."""
    path = CellArtifacts.of(results_root, row.cell_id).predictions
    if not path.exists():
        return {}
    evaluation = row.provenance.get("evaluation") or {}
    try:
        with np.load(path, allow_pickle=False) as data:
            labels, scores = data["labels"], data["scores"]
            patients, classes = data["patient_ids"], [str(c) for c in data["classes"]]
        return calibration_metrics(labels, scores, classes, groups=patients,
                                   n_boot=int(evaluation.get("bootstrap", 1000)),
                                   seed=int(evaluation.get("bootstrap_seed", 0)),
                                   ci=float(evaluation.get("ci", 0.95)))
    except (ValueError, KeyError, OSError, TypeError):
        # an unreadable or foreign file, or scores that are not probabilities: no columns
        return {}


def add_calibration(rows: Sequence[LeaderboardRow], results_root: str | Path) -> list[LeaderboardRow]:
    """The rows with each ok cell's ``ece`` / ``brier`` metrics (and intervals, per class) added.

    Args:
        rows: leaderboard rows straight from the store (one per cell x localizer).
        results_root: the results directory holding ``cells/<id>/predictions.npz``.

    Returns:
        New rows; every row of a cell gets the same values, the store's own keys win.

    """
    root = Path(results_root)
    computed: dict[str, dict[str, float]] = {}
    out = []
    for r in rows:
        if r.kind != "cell" or r.status != "ok":
            out.append(r)
            continue
        if r.cell_id not in computed:
            computed[r.cell_id] = _cell_calibration(root, r)
        extra = computed[r.cell_id]
        out.append(r.replace(metrics={**r.metrics, **{k: v for k, v in extra.items() if k not in r.metrics}})
                   if extra else r)
    return out
