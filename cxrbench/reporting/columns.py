"""Which columns a leaderboard shows and how a value is written, read from the metric catalogue."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .. import catalogue
from .rows import LeaderboardRow, class_names, missing

TABLE_AXES = ("dataset", "backbone", "head", "seed")


def fmt(value: Any, digits: int = 3) -> str:
    """A value as table text: ``-`` for missing, fixed decimals for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_params(params: Any) -> str:
    if missing(params):
        return "-"
    return f"{params / 1e6:.1f}M" if params >= 1e5 else f"{params / 1e3:.1f}k"


def cell_text(row: LeaderboardRow, key: str) -> str:
    """``key``'s value in ``row`` as text: ``mean±std`` for a group, the catalogue's digits."""
    digits = catalogue.digits(key)
    if key == "parameters":
        return fmt_params(row.value(key))
    text = fmt(row.value(key), digits)
    spread = row.spread.get(key)
    if row.kind == "group" and not missing(spread):
        text += f"±{fmt(spread, digits)}"
    return text


def ci_text(row: LeaderboardRow, key: str = "auroc_mean") -> str:
    """``low-high`` of a metric's interval, or ``-``."""
    spec = catalogue.lookup(key)
    if spec is None or spec.ci is None:
        return "-"
    low, high = (row.metrics.get(k) for k in spec.ci)
    if missing(low) or missing(high):
        return "-"
    return f"{fmt(low)}-{fmt(high)}"


def ci_level(rows: Sequence[LeaderboardRow]) -> str:
    """The interval level the rows were computed with, e.g. ``95% CI`` (``CI`` when they differ)."""
    levels = {r.provenance.get("evaluation", {}).get("ci") for r in rows if r.kind == "cell"}
    levels.discard(None)
    if len(levels) == 1:
        (level,) = levels
        return f"{100 * float(level):g}% CI"
    return "95% CI" if not levels else "CI"


def varying_axes(rows: Sequence[LeaderboardRow]) -> list[str]:
    """The axes worth a column: backbone and head always, dataset and seed only when they differ.

    A dataset label carries its options and is long; repeating one value on every row only
    pushes the metrics off a narrow terminal, so a shared value goes into the title instead.
    """
    return [a for a in TABLE_AXES if a in ("backbone", "head") or len({str(r.axis(a)) for r in rows}) > 1]


def classification_keys(rows: Sequence[LeaderboardRow]) -> list[str]:
    """Summary classification columns (catalogue order) that some row has."""
    return catalogue.table_keys("classification", {k for r in rows for k in r.metrics})


def localization_keys(rows: Sequence[LeaderboardRow], *, compact: bool = False) -> list[str]:
    """Summary localization columns (catalogue order) that some row has, plus the speed column."""
    available = {k for r in rows for k in r.metrics}
    keys = catalogue.table_keys("localization", available, compact=compact)
    return keys + [k for k in catalogue.table_keys("speed", available, compact=compact) if k == "loc_ms_per_image"]


def speed_keys() -> list[str]:
    """Per-cell speed and size columns of the classification table."""
    return [k for k in catalogue.table_keys("speed", catalogue.INFO_KEYS)]


def per_class_auroc_keys(rows: Sequence[LeaderboardRow]) -> list[str]:
    return [catalogue.per_class_key("auroc", c) for c in class_names(rows)]
