"""Leaderboards from the store: rows, columns (from the metric catalogue), tables, exports, HTML.

No metric is computed here except aggregation over rows (mean and spread when grouping)
and the paired significance test of the top two cells.
"""

from __future__ import annotations

from .exports import FORMATS, export, markdown, to_frame
from .rows import (
    AXES,
    GROUP_AXES,
    LeaderboardRow,
    add_plugin_columns,
    axes_except,
    cell_rows,
    check_sort_key,
    filter_rows,
    group_for_tables,
    group_rows,
    ranked,
    rows_from_cells,
    sort_rows,
    top_rows,
)
from .significance import LocalizerComparison, Significance, compare_localizers, significance
from .tables import classification_table, explain_table, localization_table, per_class_table, render_tables

__all__ = [
    "AXES",
    "FORMATS",
    "GROUP_AXES",
    "LeaderboardRow",
    "LocalizerComparison",
    "Significance",
    "add_plugin_columns",
    "axes_except",
    "cell_rows",
    "check_sort_key",
    "classification_table",
    "compare_localizers",
    "explain_table",
    "export",
    "filter_rows",
    "group_for_tables",
    "group_rows",
    "localization_table",
    "markdown",
    "per_class_table",
    "ranked",
    "render_tables",
    "rows_from_cells",
    "significance",
    "sort_rows",
    "to_frame",
    "top_rows",
]
