"""Leaderboards from the store: rows, columns (from the metric catalogue), tables, exports, HTML.

No metric is computed here except aggregation over rows (mean and spread when grouping)
and the paired significance test of the top two cells.
"""

from __future__ import annotations

from .calibration_columns import add_calibration
from .delong_report import DeLongComparison, delong_comparison
from .exports import FORMATS, export, markdown, to_frame
from .references import reference_localization_table, reference_rows, reference_table
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
    "DeLongComparison",
    "FORMATS",
    "GROUP_AXES",
    "LeaderboardRow",
    "LocalizerComparison",
    "Significance",
    "add_calibration",
    "add_plugin_columns",
    "axes_except",
    "cell_rows",
    "check_sort_key",
    "classification_table",
    "compare_localizers",
    "delong_comparison",
    "explain_table",
    "export",
    "filter_rows",
    "group_for_tables",
    "group_rows",
    "localization_table",
    "markdown",
    "per_class_table",
    "ranked",
    "reference_localization_table",
    "reference_rows",
    "reference_table",
    "render_tables",
    "rows_from_cells",
    "significance",
    "sort_rows",
    "to_frame",
    "top_rows",
]
