"""``leaderboard --test delong``: the top two cells compared class by class with DeLong's test.

The behaviour, in one place: the best cell by mean AUROC and its runner-up (the pair the
paired bootstrap compares) are compared on each class with the clustered DeLong test of
Obuchowski (1997), the clusters being the test split's patients, on that class's known
labels. The class-wise p-values are one family: Holm's step-down correction over the classes
tested controls the family-wise error rate, and a class counts as significantly different
when its Holm-adjusted p is below ``alpha``. DeLong's test is a test of one AUROC pair, so the
comparison of the mean AUROC over classes stays the paired patient-level bootstrap (its
sentence is printed as without ``--test delong``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from ..delong import DeLongResult, delong_test, holm
from .rows import LeaderboardRow
from .significance import paired_predictions, top_pair


@dataclasses.dataclass(frozen=True)
class ClassTest:
    """One class's DeLong comparison of the two cells.

    Attributes:
        name: the class.
        result: the test (AUROCs, difference, SE, z, p, method).
        p_holm: the p-value adjusted by Holm over the classes tested.

    """

    name: str
    result: DeLongResult
    p_holm: float


@dataclasses.dataclass(frozen=True)
class DeLongComparison:
    """The top cell against the runner-up, class by class.

    Attributes:
        best: the top cell's id.
        next: the runner-up's id.
        classes: one test per class with both labels in the test split.
        skipped: classes without both a positive and a negative test image.
        alpha: the family-wise level the Holm-adjusted p-values are read at.

    """

    best: str
    next: str
    classes: tuple[ClassTest, ...]
    skipped: tuple[str, ...] = ()
    alpha: float = 0.05

    @property
    def method(self) -> str:
        methods = {t.result.method for t in self.classes}
        return methods.pop() if len(methods) == 1 else "mixed"

    def wins(self) -> tuple[list[str], list[str]]:
        """(classes where best is significantly better, classes where the runner-up is), after Holm."""
        better = [t.name for t in self.classes if t.p_holm < self.alpha and t.result.diff > 0]
        worse = [t.name for t in self.classes if t.p_holm < self.alpha and t.result.diff < 0]
        return better, worse

    def sentence(self) -> str:
        """One sentence (rich markup): the method, the family and the verdict."""
        better, worse = self.wins()
        how = "DeLong's test clustered by patient (Obuchowski 1997)" if self.method == "obuchowski" else \
            "DeLong's test"
        verdict = (f"{len(better)} of {len(self.classes)} classes significantly better"
                   + (f" ({escape(', '.join(better))})" if better else "")
                   + (f", {len(worse)} significantly worse ({escape(', '.join(worse))})" if worse else ""))
        skipped = f"; not tested (one label value only): {escape(', '.join(self.skipped))}" if self.skipped else ""
        return (f"Per class, top cell {self.best} vs {self.next}: {verdict}; {how}, Holm-adjusted over "
                f"{len(self.classes)} classes at {self.alpha:g}{skipped}. The mean AUROC is compared by the paired "
                f"bootstrap above.")

    def table(self) -> Table:
        """The per-class tests: AUROCs, difference, SE, z, p and Holm-adjusted p."""
        table = Table(title=f"Per-class DeLong test: {self.best} vs {self.next}", title_justify="left",
                      header_style="bold")
        for col in ("class", f"AUROC {self.best}", f"AUROC {self.next}", "diff", "SE", "z", "p", "p (Holm)"):
            table.add_column(escape(col), justify="left" if col == "class" else "right")
        for t in self.classes:
            r = t.result
            mark = "*" if t.p_holm < self.alpha else ""
            table.add_row(escape(t.name), f"{r.auc1:.3f}", f"{r.auc2:.3f}", f"{r.diff:+.4f}", f"{r.se:.4f}",
                          f"{r.z:.2f}", f"{r.p:.3g}", f"{t.p_holm:.3g}{mark}")
        table.caption = f"* Holm-adjusted p < {self.alpha:g} (family: the {len(self.classes)} classes tested)"
        return table


def class_tests(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, classes: Sequence[str],
                patients: np.ndarray | None) -> tuple[list[ClassTest], list[str]]:
    """DeLong per class (clustered by ``patients`` when given) and Holm over the classes tested.

    Returns:
        (the tests, the classes skipped for lacking a positive or a negative image).

    """
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    results: list[tuple[str, DeLongResult]] = []
    skipped = []
    for j, name in enumerate(classes):
        known = y[~np.isnan(y[:, j]), j]
        if not (known == 1).any() or not (known == 0).any():
            skipped.append(str(name))
            continue
        results.append((str(name), delong_test(y[:, j], scores_a[:, j], scores_b[:, j], groups=patients)))
    adjusted = holm([r.p for _, r in results])
    return [ClassTest(n, r, float(p)) for (n, r), p in zip(results, adjusted, strict=True)], skipped


def delong_comparison(rows: Sequence[LeaderboardRow], results_root: str | Path, *,
                      alpha: float = 0.05) -> DeLongComparison | None:
    """The top two cells compared per class from their saved predictions; None without a comparable pair."""
    pair = top_pair(rows)
    if pair is None:
        return None
    best, runner_up = pair
    try:
        loaded = paired_predictions(results_root, best, runner_up)
        if loaded is None:
            return None
        a, b = loaded
        classes = [str(c) for c in a["classes"]]
        tests, skipped = class_tests(a["labels"], a["scores"], b["scores"], classes, a["patient_ids"])
    except (ValueError, KeyError, OSError):  # an unreadable or foreign predictions file: no comparison
        return None
    if not tests:
        return None
    return DeLongComparison(best.cell_id, runner_up.cell_id, tuple(tests), tuple(skipped), alpha)
