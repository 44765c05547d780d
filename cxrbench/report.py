"""Leaderboards from the store: rich tables and JSON / CSV / Markdown exports.

No metric is computed here except aggregation over rows (mean +/- std when grouping).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

ID_COLUMNS = ["cell_id", "grid", "dataset", "backbone", "head", "localizer", "seed", "status"]
CLASSIFICATION_COLUMNS = [
    ("auroc_mean", "AUROC"),
    ("auroc_ci_low", "CI low"),
    ("auroc_ci_high", "CI high"),
]
LOCALIZATION_COLUMNS = [
    ("iou_mean", "IoU"),
    ("iobb_mean", "IoBB"),
    ("acc_iou@0.1", "Acc@IoU.1"),
    ("acc_iou@0.3", "Acc@IoU.3"),
    ("acc_iou@0.5", "Acc@IoU.5"),
    ("afp_iou@0.3", "AFP@IoU.3"),
    ("acc_iobb@0.5", "Acc@IoBB.5"),
    ("hit_rate", "Hit"),
    ("loc_ms_per_image", "ms/img"),
]


def public_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as exported in JSON: ids, axes, status, error and metrics."""
    out = []
    for r in records:
        out.append({
            "cell_id": r["cell_id"], "grid": r["grid"], "dataset": r["dataset"], "backbone": r["backbone"],
            "head": r["head"], "localizer": r["localizer"], "seed": r["seed"], "status": r["status"],
            "error": r.get("error") or r.get("localizer_error"),
            "metrics": r["metrics"],
            "info": {k: v for k, v in (r.get("info") or {}).items() if k not in ("history", "classes")},
            "localizer_settings": r.get("localizer_settings") or {},
            **({"columns": r["columns"]} if r.get("columns") else {}),
        })
    return out


def add_plugin_columns(records: list[dict[str, Any]], pm: Any) -> list[dict[str, Any]]:
    """Ask every ``cxrbench_leaderboard_columns`` implementation for extra columns.

    Each answer ``{column: [value per record]}`` lands in the records' ``columns`` mapping,
    which the tables and every export show.

    Raises:
        PluginError: naming the plugin whose answer is not such a mapping.

    """
    from .errors import PluginError

    if not records:
        return records
    out = [dict(r, columns=dict(r.get("columns") or {})) for r in records]
    for impl in pm.hook.cxrbench_leaderboard_columns.get_hookimpls():
        answer = impl.function(records=[dict(r) for r in records])
        if answer is None:
            continue
        if not isinstance(answer, dict) or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == len(records)
                for k, v in answer.items()):
            raise PluginError(f"plugin {impl.plugin_name!r}: cxrbench_leaderboard_columns must return "
                              f"{{column name: list of {len(records)} values}} or None")
        for name, values in answer.items():
            for row, value in zip(out, values, strict=True):
                row["columns"][name] = value
    return out


def _plugin_column_names(records: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in records:
        names += [k for k in (r.get("columns") or {}) if k not in names]
    return names


def to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record; metrics flattened into columns (``auroc/Effusion`` ...)."""
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ID_COLUMNS}
        row["error"] = r.get("error") or r.get("localizer_error")
        info = r.get("info") or {}
        for key in INFO_METRICS:
            if key in info:
                row[key] = info[key]
        row.update(r["metrics"])
        row.update(r.get("columns") or {})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None)
    return frame.replace({None: math.nan}) if not frame.empty else frame


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


INFO_METRICS = ("parameters", "train_images_per_s", "inference_images_per_s", "duration_s")
"""Per-cell numbers kept in ``info`` that leaderboards show and can sort by (speed and size)."""


def lower_is_better(key: str) -> bool:
    """Whether a smaller value of metric ``key`` ranks first (times, sizes, false positives, losses)."""
    return key in ("loc_ms_per_image", "parameters", "duration_s", "hamming_loss") or key.startswith("afp_")


def _value(r: dict[str, Any], key: str) -> Any:
    if key in r["metrics"]:
        return r["metrics"][key]
    return (r.get("info") or {}).get(key)


def _missing(value: Any) -> bool:
    return not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)


def sort_records(records: Sequence[dict[str, Any]], key: str = "auroc_mean") -> list[dict[str, Any]]:
    """Best first by ``key`` (missing values last), then by cell id for stability.

    ``key`` is a metric or one of :data:`INFO_METRICS`; "best" is the largest value except
    for the metrics where :func:`lower_is_better`.
    """
    sign = 1.0 if lower_is_better(key) else -1.0

    def sort_key(r: dict[str, Any]) -> tuple:
        v = _value(r, key)
        missing = _missing(v)
        return (missing, 0.0 if missing else sign * v, r["cell_id"], r.get("localizer") or "")

    return sorted(records, key=sort_key)


def check_sort_key(records: Sequence[dict[str, Any]], key: str) -> None:
    """Refuse a ``--sort`` metric that no record has (a typo would otherwise sort silently by cell id).

    Raises:
        ValueError: naming the closest known metrics.

    """
    import difflib

    known = {k for r in records for k in r["metrics"]} | {k for r in records for k in (r.get("info") or {})
                                                            if k in INFO_METRICS}
    if not records or key in known:
        return
    close = difflib.get_close_matches(key, sorted(known), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
        " (e.g. auroc_mean, iou_mean, iobb_mean, hit_rate, loc_ms_per_image, train_images_per_s)"
    raise ValueError(f"--sort {key!r}: no such metric{hint}")


def _row_key(r: dict[str, Any]) -> tuple:
    """What makes one row of the classification leaderboard: a cell, or a group of cells."""
    if "n" in r["metrics"]:
        return (r["dataset"], r["backbone"], r["head"], r["seed"])
    return (r["cell_id"],)


def top_records(records: Sequence[dict[str, Any]], n: int, key: str | None = None) -> list[dict[str, Any]]:
    """The records of the best ``n`` leaderboard rows by ``key`` (default ``auroc_mean``).

    Sorting by a classification metric keeps every localizer record of the best ``n``
    cells (so the classification table shows ``n`` rows); sorting by a metric that varies
    between localizers of one cell keeps the best ``n`` (cell, localizer) records.

    Raises:
        ValueError: when ``n`` is below 1.

    """
    if n < 1:
        raise ValueError(f"--top {n}: must be at least 1")
    key = key or "auroc_mean"
    ranked = sort_records(records, key)
    if not _varies_within_cells(ranked, key):
        wanted: list[tuple] = []
        for r in ranked:
            if _row_key(r) not in wanted:
                wanted.append(_row_key(r))
        keep = set(wanted[:n])
        return [r for r in ranked if _row_key(r) in keep]
    return ranked[:n]


def _varies_within_cells(records: Sequence[dict[str, Any]], key: str) -> bool:
    """True when two records of one leaderboard row disagree on ``key`` (a per-localizer metric)."""
    seen: dict[tuple, Any] = {}
    for r in records:
        v = _value(r, key)
        v = None if _missing(v) else v
        row = _row_key(r)
        if row in seen and seen[row] != v:
            return True
        seen.setdefault(row, v)
    return False


def _class_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """The classes with a per-class AUROC, in first-seen order.

    A grouped record's ``auroc/<Class>_std`` is the spread of ``auroc/<Class>``, not a class.
    """
    names: list[str] = []
    for r in records:
        for key in r["metrics"]:
            if key.startswith("auroc/") and not _is_std_of(key, r["metrics"]):
                name = key.split("/", 1)[1]
                if name not in names:
                    names.append(name)
    return names


def _is_std_of(key: str, columns: Any) -> bool:
    """Whether ``key`` is the ``_std`` companion of another column in ``columns`` (grouped records)."""
    return key.endswith("_std") and key[: -len("_std")] in columns


def _mean_std(m: dict[str, Any], key: str, digits: int = 3) -> str:
    std = m.get(f"{key}_std")
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return _fmt(m.get(key), digits)
    return f"{_fmt(m.get(key), digits)}±{_fmt(std, digits)}"


# the cell id is what `cxrbench show` and `heatmap` take: never cut it short on a narrow terminal
CELL_COLUMN: dict[str, Any] = {"style": "dim", "min_width": 12, "no_wrap": True}


def classification_table(records: Sequence[dict[str, Any]], title: str, sort_key: str | None = None,
                         significant: str | None = None, per_class: bool = True) -> Table:
    """One row per cell: mean AUROC with CI, the per-class AUROCs, speed and size.

    Args:
        records: leaderboard records (several per cell are collapsed to one row).
        title: the table title.
        sort_key: metric to sort by (default ``auroc_mean``).
        significant: cell id of the best cell when the paired bootstrap found it
            significantly better than the runner-up; its AUROC gets a ``*``.
        per_class: include a column per class (else see :func:`per_class_table`).

    """
    rows = _cell_rows(records, sort_key)
    axes = _varying_axes(rows)
    classes = _class_names(rows) if per_class else []
    table = Table(title=title + _shared_axes_note(rows, axes), title_justify="left", header_style="bold")
    if significant:
        table.caption = "* significantly better than the runner-up (paired bootstrap over the same test images)"
    for col in ("#", *axes, "status", "AUROC"):
        table.add_column(col, justify="right" if col in ("#", "seed", "AUROC") else "left")
    table.add_column("95% CI", min_width=11)
    for name in classes:
        table.add_column(name[:12], justify="right")
    for col in ("img/s train", "img/s infer", "params"):
        table.add_column(col, justify="right")
    extra = _plugin_column_names(rows)
    for col in extra:
        table.add_column(escape(col), justify="right")
    table.add_column("cell", **CELL_COLUMN)
    for rank, r in enumerate(rows, start=1):
        m = r["metrics"]
        ci = "-"
        if not _missing(m.get("auroc_ci_low")) and not _missing(m.get("auroc_ci_high")):
            ci = f"{_fmt(m['auroc_ci_low'])}-{_fmt(m['auroc_ci_high'])}"
        status = "[green]ok[/]" if r["status"] == "ok" else f"[red]{r['status']}[/]"
        info = r.get("info") or {}
        params = info.get("parameters")
        auroc = _mean_std(m, "auroc_mean") + ("*" if significant and r["cell_id"] == significant else "")
        table.add_row(
            str(rank), *_axis_cells(r, axes), status,
            f"[bold]{auroc}[/]" if rank == 1 else auroc, ci,
            *[_mean_std(m, f"auroc/{c}") for c in classes],
            _fmt(info.get("train_images_per_s"), 1),
            _fmt(info.get("inference_images_per_s"), 1),
            _fmt_params(params),
            *[escape(_fmt((r.get("columns") or {}).get(col))) for col in extra],
            escape(r["cell_id"]),
        )
    return table


def per_class_table(records: Sequence[dict[str, Any]], title: str, sort_key: str | None = None) -> Table:
    """Per-class AUROC, one row per cell in leaderboard order (for when they do not fit beside the rest)."""
    rows = _cell_rows(records, sort_key)
    axes = _varying_axes(rows)
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("#", *axes):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    classes = _class_names(rows)
    for name in classes:
        table.add_column(name[:12], justify="right")
    for rank, r in enumerate(rows, start=1):
        table.add_row(str(rank), *_axis_cells(r, axes), *[_mean_std(r["metrics"], f"auroc/{c}") for c in classes])
    return table


def _cell_rows(records: Sequence[dict[str, Any]], sort_key: str | None) -> list[dict[str, Any]]:
    """One record per leaderboard row (a cell, or a group), sorted."""
    cells: dict[tuple, dict[str, Any]] = {}
    for r in records:
        cells.setdefault(_row_key(r), r)
    return sort_records(list(cells.values()), sort_key or "auroc_mean")


TABLE_AXES = ("dataset", "backbone", "head", "seed")


def _varying_axes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The axes worth a column: backbone and head always, dataset and seed only when they differ.

    A dataset label carries its options and is long; repeating one value on every row only
    pushes the metrics off a narrow terminal, so a shared value goes into the title instead.
    """
    return [a for a in TABLE_AXES if a in ("backbone", "head") or len({str(r.get(a)) for r in rows}) > 1]


def _shared_axes_note(rows: Sequence[dict[str, Any]], shown: Sequence[str]) -> str:
    """`` (dataset X, seed 0)`` for the axes left out of the columns because every row shares them."""
    parts = [f"{axis} {escape(str(rows[0].get(axis)))}" for axis in TABLE_AXES if axis not in shown and rows]
    return f" ({', '.join(parts)})" if parts else ""


def _axis_cells(r: dict[str, Any], axes: Sequence[str] = TABLE_AXES) -> list[str]:
    """The row's axis values as table cells; labels like ``tiny[width=4]`` are not rich markup."""
    return [escape(str(r[axis])) for axis in axes]


def _fmt_params(params: Any) -> str:
    if _missing(params):
        return "-"
    return f"{params / 1e6:.1f}M" if params >= 1e5 else f"{params / 1e3:.1f}k"


COMPACT_LOCALIZATION_KEYS = ("iou_mean", "iobb_mean", "acc_iou@0.3", "hit_rate", "loc_ms_per_image")
"""The localization columns kept when the full table does not fit the terminal."""


def localization_table(records: Sequence[dict[str, Any]], title: str, sort_key: str | None = None,
                       compact: bool = False) -> Table | None:
    """One row per (cell, localizer), best IoU first; None when there is no localizer row.

    Args:
        records: leaderboard records.
        title: the table title.
        sort_key: metric to sort by (default ``iou_mean``).
        compact: only the :data:`COMPACT_LOCALIZATION_KEYS` columns (for narrow terminals).

    """
    rows = [r for r in records if r.get("localizer") and r.get("localizer") != "*"]
    if not rows:
        return None
    rows = sort_records(rows, sort_key if sort_key and not sort_key.startswith("auroc") else "iou_mean")
    axes = _varying_axes(rows)
    table = Table(title=title + _shared_axes_note(rows, axes), title_justify="left", header_style="bold")
    for col in ("#", *axes, "localizer"):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    columns = [(k, label) for k, label in LOCALIZATION_COLUMNS if not compact or k in COMPACT_LOCALIZATION_KEYS]
    if compact:
        table.caption = "narrow terminal: more columns with a wider one, or --format markdown / csv / json"
    for _, label in columns:
        table.add_column(label, justify="right")
    table.add_column("cell", **CELL_COLUMN)
    for rank, r in enumerate(rows, start=1):
        m = r["metrics"]
        if r.get("localizer_status") == "failed":
            error = escape((r.get("localizer_error") or "")[:50])
            values = [f"[red]failed[/] {error}"] + [""] * (len(columns) - 1)
        else:
            values = [_mean_std(m, key, 1 if key == "loc_ms_per_image" else 3) for key, _ in columns]
        table.add_row(str(rank), *_axis_cells(r, axes), escape(str(r["localizer"])), *values, escape(r["cell_id"]))
    return table


def _natural_width(console: Console, table: Table) -> int:
    """The width ``table`` wants; console.measure() clamps to the terminal and never says "too wide"."""
    return Measurement.get(console, console.options.update_width(1_000_000), table).maximum


def render_tables(console: Console, records: Sequence[dict[str, Any]], grid: str | None,
                  sort_key: str | None = None, sig: dict[str, Any] | None = None) -> None:
    """Print the classification and localization leaderboards (and the top row's significance).

    Args:
        console: where to print.
        records: leaderboard records.
        grid: the grid's name for the titles (None: every grid).
        sort_key: metric to sort by.
        sig: the result of :func:`significance`, or None.

    """
    name = grid or "all grids"
    if not records:
        console.print(f"No results for {name} yet.")
        return
    best = sig["best"] if sig and sig["significant"] else None
    title = f"Classification leaderboard: {name}"
    table = classification_table(records, title, sort_key, best)
    if _natural_width(console, table) > console.width:
        # many classes (nih14) or a narrow terminal: the per-class AUROCs get their own table
        console.print(classification_table(records, title, sort_key, best, per_class=False))
        console.print(per_class_table(records, f"Per-class AUROC: {name}", sort_key))
    else:
        console.print(table)
    loc = localization_table(records, f"Localization leaderboard: {name}", sort_key)
    if loc is not None and _natural_width(console, loc) > console.width:
        loc = localization_table(records, f"Localization leaderboard: {name}", sort_key, compact=True)
    if loc is not None:
        console.print(loc)
    if sig is not None:
        console.print(significance_line(sig), highlight=False)
    failed = {r["cell_id"]: r for r in records if r["status"] != "ok"}
    for cid, r in failed.items():
        console.print(f"[red]cell {escape(cid)} failed:[/] {escape(str(r.get('error')))}  "
                      f"(details: cxrbench show {escape(cid)})", highlight=False)


def significance_line(sig: dict[str, Any]) -> str:
    """One sentence (rich markup) saying whether the best cell beats the runner-up."""
    verdict = "[green]significantly better[/] than" if sig["significant"] else "not significantly different from"
    return (f"Top cell {sig['best']} is {verdict} {sig['next']}: mean AUROC {sig['diff']:+.4f} "
            f"(95% CI {sig['low']:.4f} to {sig['high']:.4f}, paired bootstrap over patients, p = {sig['p']:.3g})")


def export(records: Sequence[dict[str, Any]], fmt: str, sort_key: str | None = None) -> str:
    """The records as ``json``, ``csv``, ``markdown`` or ``html`` text.

    Args:
        records: leaderboard records, in the order the rows should appear.
        fmt: the format.
        sort_key: the ``--sort`` metric; the HTML tables, which order their rows
            themselves, use it (default: AUROC and IoU, best first).

    """
    if fmt == "json":
        from .store import _json_safe

        return json.dumps(_json_safe(public_records(records)), indent=2, sort_keys=False)
    frame = to_frame(records)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "markdown":
        return markdown(frame, _plugin_column_names(records))
    if fmt == "html":
        return html_page("cxrbench leaderboard", html_tables(records, sort_key))
    raise ValueError(f"unknown format {fmt!r}")


def markdown(frame: pd.DataFrame, extra: Sequence[str] = ()) -> str:
    """A GitHub-flavoured Markdown table of the main columns (no extra dependency).

    Args:
        frame: :func:`to_frame` output.
        extra: plugin columns (``cxrbench_leaderboard_columns``) to append.

    """
    if frame.empty:
        return "_no results_\n"
    columns = [c for c in ID_COLUMNS if c in frame.columns and c not in ("grid",)]
    columns += [k for k, _ in CLASSIFICATION_COLUMNS + LOCALIZATION_COLUMNS if k in frame.columns]
    columns += [c for c in frame.columns if c.startswith("auroc/") and not _is_std_of(c, frame.columns)]
    columns += [c for c in INFO_METRICS[:3] if c in frame.columns]
    columns += [c for c in extra if c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    digits = {"parameters": 0, "train_images_per_s": 1, "inference_images_per_s": 1, "loc_ms_per_image": 2}
    for _, row in frame.iterrows():
        # grouped records (--group-by / --over) carry <metric>_std: shown as mean±std, as in the tables
        lines.append("| " + " | ".join(_mean_std(row, c, digits.get(c, 3)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- filtering, grouping, significance

AXES = ("dataset", "backbone", "head", "localizer", "seed", "status", "cell_id")


def filter_records(records: Sequence[dict[str, Any]], filters: Sequence[str]) -> list[dict[str, Any]]:
    """Keep records matching every ``axis=value`` filter (values compared as text).

    Raises:
        ValueError: on a malformed filter, an unknown axis, or a value no record has.

    """
    wanted = []
    for text in filters:
        if "=" not in text:
            raise ValueError(f"filter {text!r}: expected AXIS=VALUE, e.g. backbone=resnet18")
        key, value = text.split("=", 1)
        if key not in AXES:
            raise ValueError(f"filter {text!r}: unknown axis {key!r} (axes: {', '.join(AXES)})")
        known = {str(r.get(key)) for r in records}
        if records and value not in known:  # a typo would otherwise print an empty leaderboard
            raise ValueError(f"filter {text!r}: no record has {key} {value!r} "
                             f"(values: {', '.join(sorted(known))})")
        wanted.append((key, value))
    return [r for r in records if all(str(r.get(k)) == v for k, v in wanted)]


def axes_except(over: Sequence[str]) -> list[str]:
    """The grouping axes that aggregate over ``over`` (``--over seed`` = group by everything else).

    Raises:
        ValueError: on an unknown axis, or when nothing would be left to group by.

    """
    axes = AXES[:5]
    for axis in over:
        if axis not in axes:
            raise ValueError(f"--over {axis!r}: not an axis (axes: {', '.join(axes)})")
    rest = [a for a in axes if a not in over]
    if not over or not rest:
        raise ValueError("--over: name one to four of the axes " + ", ".join(axes))
    return rest


def group_records(records: Sequence[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Aggregate ok records over every axis NOT in ``by``: each metric's mean and std.

    ``--group-by dataset,backbone,head,localizer`` averages over seeds; ``--group-by
    backbone`` compares backbones over everything else. Each grouped record's metrics
    hold ``<metric>`` (mean), ``<metric>_std`` (sample std, ddof 1; NaN for one value) and
    ``n`` (records aggregated); its ``info`` holds the mean speed and size columns.

    A cell has one record per localizer, all carrying the same classification metrics: a
    metric that is the same in every record of a cell counts once per cell, so grouping
    over localizers does not repeat a cell's AUROC (which would shrink its std).

    Raises:
        ValueError: on an unknown axis.

    """
    for axis in by:
        if axis not in AXES[:5]:
            raise ValueError(f"--group-by {axis!r}: not an axis (axes: {', '.join(AXES[:5])})")
    if not by:
        raise ValueError("--group-by: name at least one axis (axes: " + ", ".join(AXES[:5]) + ")")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok":
            groups.setdefault(tuple(r.get(a) for a in by), []).append(r)
    out = []
    for key, rows in groups.items():
        frame = pd.DataFrame([r["metrics"] for r in rows]).apply(pd.to_numeric, errors="coerce")
        cell_ids = pd.Series([r["cell_id"] for r in rows], index=frame.index)
        info = pd.DataFrame([{k: (r.get("info") or {}).get(k) for k in INFO_METRICS} for r in rows],
                            index=frame.index).apply(pd.to_numeric, errors="coerce")
        metrics: dict[str, Any] = {}
        for column in frame.columns:
            values = _per_cell_or_per_record(frame[column], cell_ids).dropna()
            metrics[column] = float(values.mean()) if len(values) else math.nan
            metrics[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        metrics["n"] = len(rows)
        # speed and size are properties of a cell, not of a localizer row: one value per cell
        per_cell_info = info.groupby(cell_ids).first().mean()
        record = {axis: "*" for axis in ("dataset", "backbone", "head", "localizer", "seed")}
        record.update(dict(zip(by, key, strict=True)))
        record.update({"cell_id": f"{cell_ids.nunique()} cells", "grid": rows[0]["grid"], "status": "ok",
                       "metrics": metrics,
                       "info": {k: float(v) for k, v in per_cell_info.items() if not math.isnan(v)}})
        out.append(record)
    return out


def _per_cell_or_per_record(values: pd.Series, cell_ids: pd.Series) -> pd.Series:
    """One value per cell when ``values`` is constant within each cell, else every record's."""
    # NaN-aware "constant within the cell": the number of distinct values, NaN counted as one
    distinct = values.groupby(cell_ids).nunique(dropna=False)
    if (distinct <= 1).all():
        return values.groupby(cell_ids).first()
    return values


def significance(records: Sequence[dict[str, Any]], results_root: Any, *, n_boot: int = 1000,
                 alpha: float = 0.05) -> dict[str, Any] | None:
    """Is the best cell's mean AUROC significantly above the runner-up's?

    A paired bootstrap (patients resampled, same resamples for both) over the SAME test
    images, read from each cell's ``predictions.npz``. Returns None when there is no
    comparable pair.

    Returns:
        ``{"best": id, "next": id, "diff": d, "low": l, "high": h, "p": p, "significant": bool}``.

    """
    from pathlib import Path

    import numpy as np

    from .metrics import paired_bootstrap_auroc_diff

    cells: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["status"] == "ok" and r["metrics"].get("auroc_mean") is not None:
            cells.setdefault(r["cell_id"], r)
    ranked = sort_records(list(cells.values()))
    if len(ranked) < 2:
        return None
    best, runner_up = ranked[0], ranked[1]
    paths = [Path(results_root) / "cells" / r["cell_id"] / "predictions.npz" for r in (best, runner_up)]
    if not all(p.exists() for p in paths):
        return None
    a, b = (np.load(p) for p in paths)
    if a["ids"].shape != b["ids"].shape or not (a["ids"] == b["ids"]).all():
        return None  # different test sets: no paired comparison
    diff, low, high, p = paired_bootstrap_auroc_diff(a["labels"], a["scores"], b["scores"], groups=a["patient_ids"],
                                                     n_boot=n_boot, seed=0)
    return {"best": best["cell_id"], "next": runner_up["cell_id"], "diff": diff, "low": low, "high": high,
            "p": p, "significant": bool(p < alpha and diff > 0)}


# --------------------------------------------------------------------------- HTML

HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0} td:nth-child(-n+7){text-align:left}
h1,h2,h3{font-weight:600} .muted{color:#777} .gallery img{margin:4px;border:1px solid #ddd}
figure{display:inline-block;margin:6px;text-align:center;font-size:12px}
"""


def _with_std(columns: Sequence[str], available: Any) -> list[str]:
    """``columns`` with each one's ``_std`` companion (grouped records) right after it."""
    out: list[str] = []
    for c in columns:
        out += [c, f"{c}_std"] if f"{c}_std" in available else [c]
    return out


def html_tables(records: Sequence[dict[str, Any]], sort_key: str | None = None) -> str:
    """The classification and localization leaderboards as HTML tables (no styling).

    Args:
        records: leaderboard records (grouped ones get a ``<metric>_std`` column beside each metric).
        sort_key: metric to sort both tables by, best first (default: ``auroc_mean`` for
            classification, ``iou_mean`` for localization), as in the rich tables.

    """
    frame = to_frame(records)
    if frame.empty:
        return "<p>No results.</p>"
    cls_cols = [c for c in ("dataset", "backbone", "head", "seed", "status", "auroc_mean", "auroc_ci_low",
                            "auroc_ci_high") if c in frame.columns]
    cls_cols += [c for c in frame.columns if c.startswith("auroc/") and not _is_std_of(c, frame.columns)]
    cls_cols += [c for c in ("train_images_per_s", "inference_images_per_s", "parameters", "cell_id")
                 if c in frame.columns]
    cls_cols = _with_std(cls_cols, frame.columns)
    # frame row i is records[i]: rank the records, then take their rows in that order
    indexed = [{**r, "_row": i} for i, r in enumerate(records)]
    first_of_cell: dict[tuple, int] = {}
    for r in sort_records(indexed, sort_key or "auroc_mean"):
        first_of_cell.setdefault(_row_key(r), r["_row"])
    cells = frame.iloc[list(first_of_cell.values())]
    parts = ["<h2>Classification</h2>", cells[cls_cols].to_html(index=False, na_rep="-", float_format="%.3f")]
    if "localizer" in frame.columns and frame["localizer"].notna().any():
        loc_cols = [c for c in ("dataset", "backbone", "head", "seed", "localizer", "iou_mean", "iobb_mean",
                                "cum_iou_mean", "hit_rate") if c in frame.columns]
        loc_cols += sorted(c for c in frame.columns if c.startswith(("acc_iou@", "acc_iobb@")) and "/" not in c
                           and not _is_std_of(c, frame.columns))
        loc_cols += [c for c in ("loc_ms_per_image", "cell_id") if c in frame.columns]
        loc_cols = _with_std(loc_cols, frame.columns)
        loc_key = sort_key if sort_key and not sort_key.startswith("auroc") else "iou_mean"
        loc = frame.iloc[[r["_row"] for r in sort_records([r for r in indexed if r.get("localizer")], loc_key)]]
        parts += ["<h2>Localization</h2>", loc[loc_cols].to_html(index=False, na_rep="-", float_format="%.3f")]
    return "\n".join(parts)


def html_page(title: str, body: str) -> str:
    """A complete, self-contained HTML document."""
    import html

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
