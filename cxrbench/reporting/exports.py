"""Leaderboards as text for machines and papers: JSON, CSV, Markdown (and HTML, see ``html``).

Every format takes the same ranked rows, and its columns come from the metric catalogue.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pandas as pd

from .. import catalogue
from .columns import cell_text, classification_keys, localization_keys, per_class_auroc_keys, speed_keys
from .rows import LeaderboardRow, plugin_column_names

ID_COLUMNS = ["cell_id", "grid", "dataset", "backbone", "head", "localizer", "seed", "status"]
FORMATS = ("table", "json", "csv", "markdown", "html", "latex")


def to_frame(rows: Sequence[LeaderboardRow]) -> pd.DataFrame:
    """One row per leaderboard row: axes, error, metrics, speed, plugin columns, and a group's
    spread as ``<metric>_std``.
    """
    records = []
    for r in rows:
        record = {k: r.axis(k) for k in ID_COLUMNS}
        record["kind"] = r.kind
        record["error"] = r.error or r.localizer_error
        record["localizer_status"] = r.localizer_status
        for key in catalogue.INFO_KEYS:
            if key in r.info:
                record[key] = r.info[key]
        record.update(r.metrics)
        if r.kind == "group":
            record.update({f"{k}_std": v for k, v in r.spread.items()})
            record["n"] = r.n
        record.update(r.columns)
        record.update(_flat("provenance", r.provenance))
        record.update(_flat("options", {axis: c.get("options", {}) for axis, c in r.components.items()}))
        record.update(_flat("localization", {k: v for k, v in r.localizer_settings.items()
                                             if k not in ("tuning", "options", "traceback")}))
        records.append(record)
    frame = pd.DataFrame(records)
    return frame.replace({None: math.nan}) if not frame.empty else frame


def _flat(prefix: str, value: object) -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``: provenance as CSV columns."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out.update(_flat(f"{prefix}.{key}", inner))
        return out
    return {prefix: value if not isinstance(value, (list, tuple)) else json.dumps(value)}


def export(rows: Sequence[LeaderboardRow], fmt: str, sort_key: str | None = None, *, ci_style: str = "pm") -> str:
    """The rows as ``json``, ``csv``, ``markdown``, ``html`` or ``latex`` text, in the order given.

    ``ci_style`` (LaTeX only): ``pm`` writes an interval as ``value ± half-width``,
    ``interval`` as ``value [low, high]``.

    Raises:
        ValueError: for an unknown format.

    """
    if fmt == "json":
        return json.dumps([r.to_json() for r in rows], indent=2)
    if fmt == "csv":
        return to_frame(rows).to_csv(index=False)
    if fmt == "markdown":
        return markdown(rows)
    if fmt == "html":
        from .html import html_page, html_tables

        return html_page("cxrbench leaderboard", html_tables(rows, sort_key))
    if fmt == "latex":
        from .latex import latex_tables

        return latex_tables(rows, sort_key, ci_style=ci_style)
    raise ValueError(f"unknown format {fmt!r}")


def markdown_columns(rows: Sequence[LeaderboardRow]) -> list[str]:
    """The metric columns of the Markdown export, in catalogue order."""
    keys = ["auroc_mean", "auroc_ci_low", "auroc_ci_high", *classification_keys(rows), *localization_keys(rows),
            *per_class_auroc_keys(rows), *[k for k in speed_keys() if k != "parameters"], "parameters"]
    present = {k for r in rows for k in (*r.metrics, *r.info)}
    return [k for k in dict.fromkeys(keys) if k in present]


def markdown(rows: Sequence[LeaderboardRow]) -> str:
    """A GitHub-flavoured Markdown table of the main columns (no extra dependency)."""
    if not rows:
        return "_no results_\n"
    axes = [c for c in ID_COLUMNS if c != "grid"]
    keys = markdown_columns(rows)
    extra = plugin_column_names(rows)
    header = axes + [catalogue.label(k) if "/" not in k else k for k in keys] + extra
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [str(r.axis(a)) if r.axis(a) is not None else "-" for a in axes]
        # exports keep exact counts; the terminal's 4.9M is for reading, not for copying
        cells += [str(int(r.value(k))) if k == "parameters" and isinstance(r.value(k), (int, float))
                  and r.kind == "cell" else cell_text(r, k) for k in keys]
        cells += [str(r.columns.get(c, "-")) for c in extra]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
