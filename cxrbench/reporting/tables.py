"""Rich terminal leaderboards: classification (one row per cell) and localization (per localizer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from .. import catalogue
from .columns import (
    TABLE_AXES,
    cell_text,
    ci_level,
    ci_text,
    classification_keys,
    fmt,
    localization_keys,
    per_class_auroc_keys,
    speed_keys,
    varying_axes,
)
from .rows import LeaderboardRow, cell_rows, localizer_rows, plugin_column_names
from .significance import Significance

# the cell id is what `cxrbench show` and `heatmap` take: never cut it short on a narrow terminal
CELL_COLUMN: dict[str, Any] = {"style": "dim", "min_width": 12, "no_wrap": True}


def _shared_axes_note(rows: Sequence[LeaderboardRow], shown: Sequence[str]) -> str:
    parts = [f"{axis} {escape(str(rows[0].axis(axis)))}" for axis in TABLE_AXES if axis not in shown and rows]
    return f" ({', '.join(parts)})" if parts else ""


def _axis_cells(r: LeaderboardRow, axes: Sequence[str]) -> list[str]:
    # labels like ``tiny[width=4]`` are not rich markup
    return [escape(str(r.axis(axis))) for axis in axes]


def classification_table(rows: Sequence[LeaderboardRow], title: str, sort_key: str | None = None,
                         significant: str | None = None, per_class: bool = True) -> Table:
    """One row per cell (or group): mean AUROC with its CI, per-class AUROCs, speed and size.

    Args:
        rows: leaderboard rows (several per cell are collapsed to one).
        title: the table title.
        sort_key: metric to sort by (default ``auroc_mean``).
        significant: cell id of the best cell when the paired bootstrap found it
            significantly better than the runner-up; its AUROC gets a ``*``.
        per_class: include a column per class (else see :func:`per_class_table`).

    """
    rows = cell_rows(rows, sort_key)
    axes = varying_axes(rows)
    per_class_keys = per_class_auroc_keys(rows) if per_class else []
    table = Table(title=title + _shared_axes_note(rows, axes), title_justify="left", header_style="bold")
    if significant:
        table.caption = "* significantly better than the runner-up (paired bootstrap over the same test images)"
    for col in ("#", *axes, "status"):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    main = [k for k in classification_keys(rows) if k == "auroc_mean"] or ["auroc_mean"]
    for key in main:
        table.add_column(catalogue.label(key), justify="right")
    table.add_column(ci_level(rows), min_width=11)
    # calibration (ece, brier: computed from the stored predictions) right after the AUROC
    calibration = [k for k in classification_keys(rows) if k in ("ece", "brier")]
    for key in calibration:
        table.add_column(catalogue.label(key), justify="right")
    for key in per_class_keys:
        table.add_column(catalogue.label(key)[:12], justify="right")
    speed = speed_keys()
    for key in speed:
        table.add_column(catalogue.label(key), justify="right")
    extra = plugin_column_names(rows)
    for col in extra:
        table.add_column(escape(col), justify="right")
    table.add_column("cell", **CELL_COLUMN)
    for rank, r in enumerate(rows, start=1):
        status = "[green]ok[/]" if r.status == "ok" else f"[red]{escape(r.status)}[/]"
        values = []
        for key in main:
            text = cell_text(r, key) + ("*" if significant and r.cell_id == significant else "")
            values.append(f"[bold]{text}[/]" if rank == 1 else text)
        table.add_row(str(rank), *_axis_cells(r, axes), status, *values, ci_text(r),
                      *[cell_text(r, k) for k in calibration],
                      *[cell_text(r, k) for k in per_class_keys], *[cell_text(r, k) for k in speed],
                      *[escape(fmt(r.columns.get(col))) for col in extra], escape(r.cell_id))
    return table


def per_class_table(rows: Sequence[LeaderboardRow], title: str, sort_key: str | None = None) -> Table:
    """Per-class AUROC, one row per cell in leaderboard order (for when they do not fit beside the rest)."""
    rows = cell_rows(rows, sort_key)
    axes = varying_axes(rows)
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("#", *axes):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    keys = per_class_auroc_keys(rows)
    for key in keys:
        table.add_column(catalogue.label(key)[:12], justify="right")
    for rank, r in enumerate(rows, start=1):
        table.add_row(str(rank), *_axis_cells(r, axes), *[cell_text(r, k) for k in keys])
    return table


def localization_table(rows: Sequence[LeaderboardRow], title: str, sort_key: str | None = None,
                       compact: bool = False) -> Table | None:
    """One row per (cell, localizer), best IoU first; None when there is no localizer row.

    Args:
        rows: leaderboard rows.
        title: the table title.
        sort_key: metric to sort by (default ``iou_mean``).
        compact: only the catalogue's ``compact`` columns (for narrow terminals).

    """
    rows = localizer_rows(rows, sort_key)
    if not rows:
        return None
    axes = varying_axes(rows)
    table = Table(title=title + _shared_axes_note(rows, axes), title_justify="left", header_style="bold")
    for col in ("#", *axes, "localizer"):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    keys = localization_keys(rows, compact=compact)
    if compact:
        table.caption = "narrow terminal: more columns with a wider one, or --format markdown / csv / json"
    for key in keys:
        table.add_column(catalogue.label(key), justify="right")
    table.add_column("cell", **CELL_COLUMN)
    for rank, r in enumerate(rows, start=1):
        if r.localizer_status == "failed":
            error = escape((r.localizer_error or "")[:60])
            values = [f"[red]failed[/] {error}"] + [""] * (len(keys) - 1)
        else:
            values = [cell_text(r, key) for key in keys]
        table.add_row(str(rank), *_axis_cells(r, axes), escape(str(r.localizer)), *values, escape(r.cell_id))
    return table


MAX_FOOTNOTES = 8
"""At most this many label footnotes under a table (the JSON export has every choice in full)."""


def label_footnotes(rows: Sequence[LeaderboardRow]) -> list[str]:
    """``dataset phantom-600 = phantom {num_images: 600, image_size: 128}``: what each dataset label stands for.

    Tables show short labels (a grid's ``label:``, or the name alone when it is the only
    choice of its name); a dataset's options, which decide what its numbers mean, are
    written once below the table. (Backbone and head options are in ``show CELL`` and in
    the JSON export's ``components``.)
    """
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        for axis in ("dataset",):
            component = r.components.get(axis) or {}
            options = component.get("options") or {}
            label = str(r.axis(axis))
            if not options or (axis, label) in seen:
                continue
            inner = ", ".join(f"{k}: {v}" for k, v in sorted(options.items()))
            seen[(axis, label)] = f"{axis} {label} = {component.get('name', label)} {{{inner}}}"
    lines = list(seen.values())
    if len(lines) > MAX_FOOTNOTES:
        lines = lines[:MAX_FOOTNOTES] + [f"... and {len(lines) - MAX_FOOTNOTES} more (--format json has them all)"]
    return lines


SPEED_SPREAD = 2.0
"""A backbone whose training img/s varies more than this factor between cells gets a caveat."""


def speed_caveat(rows: Sequence[LeaderboardRow]) -> str | None:
    """A note when one backbone's training throughput varies a lot between cells, else None.

    Throughput is wall-clock time under whatever else the machine ran (parallel cells,
    other programs), so the same backbone can differ several-fold within one grid; the
    note keeps such spreads from being read as differences between heads or datasets.
    """
    speeds: dict[str, list[float]] = {}
    for r in rows:
        value = (r.info or {}).get("train_images_per_s")
        if isinstance(value, (int, float)) and value > 0:
            speeds.setdefault(str(r.backbone), []).append(float(value))
    spread = {b: (min(v), max(v)) for b, v in speeds.items() if len(v) > 1 and max(v) > SPEED_SPREAD * min(v)}
    if not spread:
        return None
    backbone, (low, high) = max(spread.items(), key=lambda item: item[1][1] / item[1][0])
    return (f"img/s: wall clock under each run's load ({backbone} trained at {low:.0f}-{high:.0f} img/s here); "
            "compare speeds with benchmarks/, not across these rows")


def natural_width(console: Console, table: Table) -> int:
    """The width ``table`` wants; console.measure() clamps to the terminal and never says "too wide"."""
    return Measurement.get(console, console.options.update_width(1_000_000), table).maximum


def render_tables(console: Console, rows: Sequence[LeaderboardRow], grid: str | None, sort_key: str | None = None,
                  sig: Significance | None = None) -> None:
    """Print the classification and localization leaderboards (and the top row's significance)."""
    name = grid or "all grids"
    if not rows:
        console.print(f"No results for {name} yet.")
        return
    best = sig.best if sig is not None and sig.significant else None
    title = f"Classification leaderboard: {name}"
    # rows of maps scored by 'cxrbench score' have no classifier: only the localization table shows them
    trained = [r for r in rows if (r.info or {}).get("kind") != "scored maps"]
    if trained:
        table = classification_table(trained, title, sort_key, best)
        if natural_width(console, table) > console.width:
            # many classes (nih14) or a narrow terminal: the per-class AUROCs get their own table
            console.print(classification_table(trained, title, sort_key, best, per_class=False))
            console.print(per_class_table(trained, f"Per-class AUROC: {name}", sort_key))
        else:
            console.print(table)
        caveat = speed_caveat(trained)
        if caveat:
            console.print(caveat, style="dim", highlight=False)
        for line in label_footnotes(trained):
            console.print(line, style="dim", highlight=False, markup=False)
    loc = localization_table(rows, f"Localization leaderboard: {name}", sort_key)
    if loc is not None and natural_width(console, loc) > console.width:
        loc = localization_table(rows, f"Localization leaderboard: {name}", sort_key, compact=True)
    if loc is not None:
        console.print(loc)
    if sig is not None:
        console.print(sig.sentence(), highlight=False)
    failed = {r.cell_id: r for r in rows if r.status != "ok"}
    for cid, r in failed.items():
        console.print(f"[red]cell {escape(cid)} failed:[/] {escape(str(r.error))}  "
                      f"(details: cxrbench show {escape(cid)})", highlight=False)


def explain_table(rows: Sequence[LeaderboardRow]) -> Table:
    """The definitions of the columns the leaderboards show (``leaderboard --explain``)."""
    keys = ["auroc_mean", *classification_keys(rows), *localization_keys(rows), *speed_keys()]
    table = Table(title="What the columns mean (full definitions: docs/metrics.md)", title_justify="left",
                  header_style="bold", show_lines=False)
    table.add_column("column")
    table.add_column("key", style="dim")
    table.add_column("definition")
    for label, key, text in catalogue.explain(keys):
        table.add_row(escape(label), escape(key), escape(text))
    return table
