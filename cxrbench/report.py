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
    ("acc_iou@0.3", "Acc@IoU.3"),
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
        })
    return out


def to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record; metrics flattened into columns (``auroc/Effusion`` ...)."""
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ID_COLUMNS}
        row["error"] = r.get("error") or r.get("localizer_error")
        info = r.get("info") or {}
        for key in ("parameters", "train_images_per_s", "inference_images_per_s", "duration_s"):
            if key in info:
                row[key] = info[key]
        row.update(r["metrics"])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None)
    return frame.replace({None: math.nan}) if not frame.empty else frame


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def sort_records(records: list[dict[str, Any]], key: str = "auroc_mean") -> list[dict[str, Any]]:
    """Best first by ``key`` (missing values last), then by cell id for stability."""
    def sort_key(r: dict[str, Any]) -> tuple:
        v = r["metrics"].get(key)
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        return (missing, -(v or 0.0) if not missing else 0.0, r["cell_id"], r.get("localizer") or "")

    return sorted(records, key=sort_key)


def _class_names(records: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in records:
        for key in r["metrics"]:
            if key.startswith("auroc/"):
                name = key.split("/", 1)[1]
                if name not in names:
                    names.append(name)
    return names


def classification_table(records: Sequence[dict[str, Any]], title: str) -> Table:
    """One row per cell: mean AUROC with CI and the per-class AUROCs."""
    cells: dict[str, dict[str, Any]] = {}
    for r in records:
        cells.setdefault(r["cell_id"], r)
    rows = sort_records(list(cells.values()))
    classes = _class_names(rows)
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("#", "dataset", "backbone", "head", "seed", "status", "AUROC", "95% CI"):
        table.add_column(col, justify="right" if col in ("#", "seed", "AUROC") else "left")
    for name in classes:
        table.add_column(name[:12], justify="right")
    table.add_column("img/s train", justify="right")
    table.add_column("params", justify="right")
    table.add_column("cell", style="dim")
    for rank, r in enumerate(rows, start=1):
        m = r["metrics"]
        ci = "-"
        if m.get("auroc_ci_low") is not None and m.get("auroc_ci_high") is not None:
            ci = f"{_fmt(m['auroc_ci_low'])}-{_fmt(m['auroc_ci_high'])}"
        status = "[green]ok[/]" if r["status"] == "ok" else f"[red]{r['status']}[/]"
        info = r.get("info") or {}
        params = info.get("parameters")
        table.add_row(
            str(rank), r["dataset"], r["backbone"], r["head"], str(r["seed"]), status,
            f"[bold]{_fmt(m.get('auroc_mean'))}[/]" if rank == 1 else _fmt(m.get("auroc_mean")), ci,
            *[_fmt(m.get(f"auroc/{c}")) for c in classes],
            _fmt(info.get("train_images_per_s"), 1),
            f"{params / 1e6:.1f}M" if isinstance(params, (int, float)) else "-",
            r["cell_id"],
        )
    return table


def localization_table(records: Sequence[dict[str, Any]], title: str) -> Table | None:
    """One row per (cell, localizer), best IoU first; None when there is no localizer row."""
    rows = [r for r in records if r.get("localizer")]
    if not rows:
        return None
    rows = sort_records(rows, "iou_mean")
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("#", "dataset", "backbone", "head", "seed", "localizer"):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    for _, label in LOCALIZATION_COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("cell", style="dim")
    for rank, r in enumerate(rows, start=1):
        m = r["metrics"]
        if r.get("localizer_status") == "failed":
            values = [f"[red]failed[/] {r.get('localizer_error') or ''}"[:60]] + [""] * (len(LOCALIZATION_COLUMNS) - 1)
        else:
            values = [_fmt(m.get(key), 1 if key == "loc_ms_per_image" else 3) for key, _ in LOCALIZATION_COLUMNS]
        table.add_row(str(rank), r["dataset"], r["backbone"], r["head"], str(r["seed"]), r["localizer"], *values,
                      r["cell_id"])
    return table


def render_tables(console: Console, records: Sequence[dict[str, Any]], grid: str | None) -> None:
    """Print the classification and localization leaderboards."""
    name = grid or "all grids"
    if not records:
        console.print(f"No results for {name} yet.")
        return
    console.print(classification_table(records, f"Classification leaderboard: {name}"))
    loc = localization_table(records, f"Localization leaderboard: {name}")
    if loc is not None:
        console.print(loc)
    failed = {r["cell_id"]: r for r in records if r["status"] != "ok"}
    for cid, r in failed.items():
        console.print(f"[red]cell {cid} failed:[/] {r.get('error')}  (details: cxrbench show {cid})", highlight=False)


def export(records: Sequence[dict[str, Any]], fmt: str) -> str:
    """The records as ``json``, ``csv`` or ``markdown`` text."""
    if fmt == "json":
        from .store import _json_safe

        return json.dumps(_json_safe(public_records(records)), indent=2, sort_keys=False)
    frame = to_frame(records)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "markdown":
        return markdown(frame)
    raise ValueError(f"unknown format {fmt!r}")


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of the main columns (no extra dependency)."""
    if frame.empty:
        return "_no results_\n"
    columns = [c for c in ID_COLUMNS if c in frame.columns and c not in ("grid",)]
    columns += [k for k, _ in CLASSIFICATION_COLUMNS + LOCALIZATION_COLUMNS if k in frame.columns]
    columns += [c for c in frame.columns if c.startswith("auroc/")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"
