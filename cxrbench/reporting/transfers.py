"""Cross-dataset leaderboard rows (``evaluate_on:``): each trained cell scored on other datasets.

A transfer row is a :class:`~cxrbench.reporting.rows.LeaderboardRow` of kind ``transfer``
whose ``dataset`` reads ``source -> target`` (``nih -> vindr``); its metrics are the
target's AUROC on the shared classes (and a localizer's metrics on the target's boxes or
masks). They are kept out of the cells' own leaderboards (never ranked or tested with
them) and shown in a "Cross-dataset" table of their own; exports append them after the
cells' records. Where a target was evaluated under several settings, the latest is shown.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from .. import catalogue
from ..records import CellResult, TransferResult
from .columns import ci_level, ci_text, fmt, localization_keys, per_class_auroc_keys
from .rows import LeaderboardRow, missing


def latest_transfers(cell: CellResult) -> list[TransferResult]:
    """The cell's most recent evaluation of each target (by label), in target order."""
    latest: dict[str, TransferResult] = {}
    for transfer in cell.transfers:
        have = latest.get(transfer.target)
        if have is None or (transfer.finished_at or 0.0) >= (have.finished_at or 0.0):
            latest[transfer.target] = transfer
    return [latest[k] for k in sorted(latest)]


def transfer_rows(cells: Sequence[CellResult]) -> list[LeaderboardRow]:
    """One row per (cell, target, localizer); a target without localizer rows gives one row."""
    out = []
    for cell in cells:
        for transfer in latest_transfers(cell):
            base = dict(kind="transfer", cell_id=cell.cell_id, grid=cell.grid,
                        dataset=f"{cell.axes.dataset} -> {transfer.target}", backbone=cell.axes.backbone,
                        head=cell.axes.head, seed=cell.axes.seed, status=transfer.status,
                        provenance={**cell.provenance.to_json(), "transfer": dict(transfer.settings),
                                    "transfer_key": transfer.key})
            if not transfer.localizations:
                out.append(LeaderboardRow(localizer=None, error=transfer.error, metrics=dict(transfer.metrics),
                                          **base))
                continue
            for loc in transfer.localizations:
                out.append(LeaderboardRow(
                    localizer=loc.name, error=transfer.error or loc.error, metrics={**transfer.metrics, **loc.metrics},
                    localizer_key=loc.key, localizer_status=loc.status, localizer_error=loc.error,
                    localizer_settings=dict(loc.settings), **base))
    return sorted(out, key=_order)


def filter_transfer_rows(rows: Sequence[LeaderboardRow], filters: Sequence[str]) -> list[LeaderboardRow]:
    """The rows matching every ``AXIS=VALUE`` filter (``--filter``) as the cells' rows are matched.

    ``dataset=nih`` keeps the rows trained on ``nih`` (``nih -> vindr``) as well as
    ``dataset='nih -> vindr'`` itself. Malformed filters are left to the cells' filter, which
    reports them; a value no transfer row has keeps none (the cells may have it).
    """
    wanted = [tuple(text.split("=", 1)) for text in filters if "=" in text]

    def keep(row: LeaderboardRow) -> bool:
        for key, value in wanted:
            have = str(row.axis(key)) if hasattr(row, key) else None
            if have != value and not (key == "dataset" and have is not None and have.split(" -> ")[0] == value):
                return False
        return True

    return [r for r in rows if keep(r)]


def _order(row: LeaderboardRow) -> tuple:
    """By pair, then best mean AUROC first (missing last), then cell id and localizer."""
    auroc = row.metrics.get("auroc_mean")
    return (row.dataset, missing(auroc), -(auroc if not missing(auroc) else 0.0), row.cell_id, row.localizer or "")


def failed_transfers(rows: Sequence[LeaderboardRow]) -> list[LeaderboardRow]:
    """The failed target evaluations among transfer rows (one per cell and target)."""
    seen: dict[tuple[str, str], LeaderboardRow] = {}
    for r in rows:
        if r.kind == "transfer" and r.status != "ok":
            seen.setdefault((r.cell_id, r.dataset), r)
    return list(seen.values())


def transfer_table(rows: Sequence[LeaderboardRow]) -> Table | None:
    """The "Cross-dataset" terminal table: ``source -> target``, model, AUROC with CI, per class, localization."""
    rows = [r for r in rows if r.kind == "transfer"]
    if not rows:
        return None
    per_class = per_class_auroc_keys(rows)
    loc_keys = [k for k in localization_keys(rows, compact=True) if k != "loc_ms_per_image"]
    with_localizer = any(r.localizer for r in rows)
    # the overlap audit's count (cxrbench.overlap), shown where some target shares images with the training data
    with_overlap = any((r.metrics.get("overlap_excluded") or 0) > 0 for r in rows)
    table = Table(title="Cross-dataset (trained on -> scored on, no retraining)", title_justify="left",
                  header_style="bold")
    for col in ("source -> target", "backbone", "head", "seed", *(["localizer"] if with_localizer else []),
                "status", catalogue.label("auroc_mean"), ci_level(rows)):
        table.add_column(col, justify="right" if col == "seed" else "left")
    for key in per_class:
        table.add_column(catalogue.label(key)[:14], justify="right")
    for key in loc_keys:
        table.add_column(catalogue.label(key), justify="right")
    if with_overlap:
        table.add_column("excluded", justify="right")
    table.add_column("cell", style="dim", min_width=12, no_wrap=True)
    for r in rows:
        status = "ok" if r.status == "ok" else f"failed: {r.error or ''}"
        if r.status == "ok" and r.localizer_status == "failed":
            status = f"localizer failed: {r.localizer_error or ''}"
        values = [fmt(r.metrics.get(k), catalogue.digits(k)) for k in per_class]
        values += [fmt(r.metrics.get(k), catalogue.digits(k)) for k in loc_keys]
        if with_overlap:
            values.append(fmt(r.metrics.get("overlap_excluded"), 0))
        table.add_row(escape(r.dataset), escape(r.backbone), escape(r.head), str(r.seed),
                      *([escape(r.localizer or "-")] if with_localizer else []), escape(status),
                      fmt(r.metrics.get("auroc_mean")), ci_text(r), *values, r.cell_id)
    return table
