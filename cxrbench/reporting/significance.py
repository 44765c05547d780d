"""Is the best cell's mean AUROC significantly above the runner-up's? (paired, patient-level bootstrap)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import CellArtifacts
from .rows import LeaderboardRow, cell_rows, missing


@dataclasses.dataclass(frozen=True)
class Significance:
    """The paired comparison of the two best cells (same test images, same resamples).

    Attributes:
        best: the top cell's id.
        next: the runner-up's id.
        diff: mean AUROC of best minus runner-up.
        low: lower bound of the difference's interval.
        high: upper bound.
        p: two-sided bootstrap p-value.
        significant: ``p < alpha`` and the difference is positive.
        level: the interval's level (e.g. 0.95).

    """

    best: str
    next: str
    diff: float
    low: float
    high: float
    p: float
    significant: bool
    level: float = 0.95

    def sentence(self) -> str:
        """One sentence (rich markup) saying whether the best cell beats the runner-up."""
        return _sentence(f"Top cell {self.best}", self.next, "mean AUROC", self)


def _sentence(subject: str, other: str, metric: str, test: Significance | LocalizerComparison) -> str:
    verdict = "[green]significantly better[/] than" if test.significant else "not significantly different from"
    return (f"{subject} is {verdict} {other}: {metric} {test.diff:+.4f} ({100 * test.level:g}% CI {test.low:.4f} "
            f"to {test.high:.4f}, paired bootstrap over patients, p = {test.p:.3g})")


def top_pair(rows: Sequence[LeaderboardRow]) -> tuple[LeaderboardRow, LeaderboardRow] | None:
    """The best ok cell by mean AUROC and its runner-up (reference and grouped rows never count)."""
    ranked = [r for r in cell_rows([r for r in rows if r.kind == "cell" and r.status == "ok"])
              if not missing(r.metrics.get("auroc_mean"))]
    return (ranked[0], ranked[1]) if len(ranked) >= 2 else None


def paired_predictions(results_root: str | Path, a: LeaderboardRow, b: LeaderboardRow) -> tuple[Any, Any] | None:
    """Both cells' saved test predictions, or None when one is missing or their test images differ.

    Raises:
        ValueError, KeyError, OSError: for an unreadable or foreign predictions file.

    """
    paths = [CellArtifacts.of(results_root, r.cell_id).predictions for r in (a, b)]
    if not all(p.exists() for p in paths):
        return None
    first, second = (np.load(p, allow_pickle=False) for p in paths)
    ids_a, ids_b = first["ids"], second["ids"]
    if ids_a.shape != ids_b.shape or not (ids_a == ids_b).all():
        return None
    return first, second


def significance(rows: Sequence[LeaderboardRow], results_root: str | Path, *, n_boot: int = 1000,
                 alpha: float = 0.05) -> Significance | None:
    """Compare the two best cells on their saved test predictions; None without a comparable pair.

    The resamples are the patients of the shared test split (``predictions.npz``); cells with
    different test sets are not compared.
    """
    from ..metrics import paired_bootstrap_auroc_diff

    pair = top_pair(rows)
    if pair is None:
        return None
    best, runner_up = pair
    try:
        loaded = paired_predictions(results_root, best, runner_up)
        if loaded is None:
            return None  # no predictions, or different test sets: no paired comparison
        a, b = loaded
        diff, low, high, p = paired_bootstrap_auroc_diff(a["labels"], a["scores"], b["scores"],
                                                         groups=a["patient_ids"], n_boot=n_boot, seed=0)
    except (ValueError, KeyError, OSError):  # an unreadable or foreign predictions file: no comparison
        return None
    return Significance(best.cell_id, runner_up.cell_id, float(diff), float(low), float(high), float(p),
                        bool(p < alpha and diff > 0))


@dataclasses.dataclass(frozen=True)
class LocalizerComparison:
    """MaxBoxAccV2 of the two best localizers of one cell, compared on the same pairs.

    Attributes:
        cell_id: the cell.
        best: the better localizer's name.
        next: the runner-up's name.
        diff: MaxBoxAccV2 of best minus runner-up.
        low: lower bound of the difference's interval.
        high: upper bound.
        p: two-sided bootstrap p-value.
        level: the interval's level.

    """

    cell_id: str
    best: str
    next: str
    diff: float
    low: float
    high: float
    p: float
    level: float = 0.95

    @property
    def significant(self) -> bool:
        return self.p < 0.05 and self.diff > 0

    def sentence(self) -> str:
        """One sentence (rich markup) saying whether the best localizer beats the runner-up."""
        return _sentence(f"On cell {self.cell_id}, localizer {self.best}", self.next, "MaxBoxAccV2", self)


def compare_localizers(rows: Sequence[LeaderboardRow], results_root: str | Path, *, n_boot: int = 1000,
                       level: float = 0.95) -> LocalizerComparison | None:
    """The top cell's two best localizers by MaxBoxAccV2, compared on their saved per-pair scores."""
    from ..locmetrics.bootstrap import paired_bootstrap_diff

    scored = [r for r in rows if r.kind == "cell" and r.localizer_status == "ok" and r.localizer_key
              and not missing(r.metrics.get("maxboxacc_v2"))]
    if not scored:
        return None
    scored.sort(key=lambda r: -r.metrics["maxboxacc_v2"])
    cell = scored[0].cell_id
    same = [r for r in scored if r.cell_id == cell]
    if len(same) < 2:
        return None
    a, b = same[0], same[1]
    paths = [CellArtifacts.of(results_root, cell).pair_scores(r.localizer_key) for r in (a, b)]
    if not all(p.exists() for p in paths):
        return None
    try:
        sa, sb = (np.load(p, allow_pickle=False) for p in paths)
        if sa["ids"].shape != sb["ids"].shape or not (sa["ids"] == sb["ids"]).all():
            return None
        diff = paired_bootstrap_diff(sa["correct"], sb["correct"], sa["patients"], statistic="max_accuracy",
                                     n_boot=n_boot, seed=0, ci=level)
    except (ValueError, KeyError, OSError):
        return None
    return LocalizerComparison(cell, str(a.localizer), str(b.localizer), float(diff.difference), float(diff.low),
                               float(diff.high), float(diff.p_value), level)
