"""``cxrbench leaderboard --by COVARIATE``: subgroup records from the cells' saved files, as tables and exports.

For every ok cell of the leaderboard (in its rank order) the test split's saved predictions
and covariates give per-group AUROC; every scored localizer's per-pair scores
(``pairs/<key>.npz``) and the localization split's covariates give per-group MaxBoxAccV2,
IoU and hit rate. The numbers are defined in :mod:`cxrbench.subgroups` (docs/metrics.md,
"Subgroups"). A cell run before cxrbench saved covariates, or whose dataset has no such
covariate, is named in one line of :attr:`SubgroupReport.notes`, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from .. import catalogue
from ..artifacts import CellArtifacts, load_predictions
from ..covariates import SavedCovariates, load_covariates
from ..records import json_safe
from ..subgroups import (
    LOCALIZATION_KEYS,
    Grouping,
    Intersection,
    SubgroupScores,
    subgroup_auroc,
    subgroup_localization,
)
from .columns import fmt
from .rows import LeaderboardRow

SUBGROUP_FORMATS = ("table", "json", "csv", "markdown", "latex")
"""The ``--format`` values ``--by`` supports."""


@dataclasses.dataclass(frozen=True)
class SubgroupRecord:
    """One exported subgroup number set: a group of a cell (``subgroup``) or a gap (``gap``).

    Attributes:
        kind: ``subgroup`` or ``gap``.
        cell_id: the cell.
        grid: its grid.
        dataset: axis label.
        backbone: axis label.
        head: axis label.
        seed: the seed.
        localizer: None for classification records, else the localizer's name.
        by: the ``--by`` value (``sex``, ``age:40,60``).
        split: the split scored (``test``, ``boxes``, ``boxes:test``).
        group: the group's label; a gap's ``best - worst``.
        n_images: images of the group (subgroup records).
        n_patients: their patients.
        n_pairs: localization: (image, class) pairs with a true box.
        metrics: a group's metrics and intervals; a gap's ``gap``, ``gap_ci_low``, ``gap_ci_high``.
        metric: a gap's metric key.
        best: a gap's best group.
        worst: a gap's worst group.
        mean_classes: classification: the classes averaged in ``auroc_mean``.

    """

    kind: Literal["subgroup", "gap"]
    cell_id: str
    grid: str
    dataset: str
    backbone: str
    head: str
    seed: Any
    localizer: str | None
    by: str
    split: str
    group: str
    n_images: int | None = None
    n_patients: int | None = None
    n_pairs: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    metric: str | None = None
    best: str | None = None
    worst: str | None = None
    mean_classes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN as null); a gap record has no image counts."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["mean_classes"] = list(self.mean_classes)
        if self.kind == "gap":
            for key in ("n_images", "n_patients", "n_pairs", "mean_classes"):
                out.pop(key)
        else:
            for key in ("metric", "best", "worst"):
                out.pop(key)
        return json_safe(out)


@dataclasses.dataclass(frozen=True)
class SubgroupReport:
    """The records of ``--by``, and one line per kind of cell that could not be split.

    Attributes:
        grouping: the ``--by`` grouping.
        records: subgroup and gap records, cells in leaderboard order.
        notes: one line per reason cells (or localizers) are left out, naming them.

    """

    grouping: Grouping | Intersection
    records: tuple[SubgroupRecord, ...]
    notes: tuple[str, ...]


# --------------------------------------------------------------------------- computing


def _values(saved: SavedCovariates, column: str, ids: np.ndarray) -> np.ndarray | None:
    """The covariate of each id (missing where the id was not saved), or None without the column."""
    values = saved.column(column)
    if values is None:
        return None
    where = pd.Index(saved.ids).get_indexer(np.asarray(ids).astype(str))
    found = where >= 0
    out = np.full(where.shape, np.nan) if values.dtype.kind == "f" else np.full(where.shape, "", dtype=values.dtype)
    out[found] = values[where[found]]
    return out


def _grouped(saved: SavedCovariates | None, grouping: Grouping | Intersection,
             ids: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """Each id's group label and the groups in order, or None where a covariate is not saved."""
    if saved is None:
        return None
    values = [_values(saved, column, ids) for column in grouping.columns]
    if any(v is None for v in values):
        return None
    return grouping.assign_columns(values)


def _records(row: LeaderboardRow, grouping: Grouping | Intersection, split: str, scores: SubgroupScores,
             localizer: str | None) -> list[SubgroupRecord]:
    base = dict(cell_id=row.cell_id, grid=row.grid, dataset=row.dataset, backbone=row.backbone, head=row.head,
                seed=row.seed, localizer=localizer, by=grouping.text, split=split)
    out = [SubgroupRecord(kind="subgroup", group=g.group, n_images=g.n_images, n_patients=g.n_patients,
                          n_pairs=g.n_pairs, metrics=dict(g.metrics), mean_classes=scores.mean_classes, **base)
           for g in scores.groups]
    out += [SubgroupRecord(kind="gap", group=f"{gap.best} - {gap.worst}", metric=gap.metric, best=gap.best,
                           worst=gap.worst, metrics={"gap": gap.value, "gap_ci_low": gap.low, "gap_ci_high": gap.high},
                           **base) for gap in scores.gaps]
    return out


def _evaluation(row: LeaderboardRow) -> tuple[int, int, float]:
    evaluation = row.provenance.get("evaluation") or {}
    return (int(evaluation.get("bootstrap", 1000)), int(evaluation.get("bootstrap_seed", 0)),
            float(evaluation.get("ci", 0.95)))


def _load_pairs(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in ("ids", "patients", "classes", "best_iou", "hits", "correct")}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def subgroup_report(rows: Sequence[LeaderboardRow], results_root: str | Path,
                    grouping: Grouping | Intersection) -> SubgroupReport:
    """Score every ok cell of ``rows`` (and its ok localizers and cross-dataset evaluations) by ``grouping``.

    Args:
        rows: ranked leaderboard rows (one per cell x localizer).
        results_root: the results directory holding ``cells/<id>/``.
        grouping: the ``--by`` grouping.

    Returns:
        The records and the notes.

    Raises:
        ValueError: ``grouping`` does not fit the covariate (a numeric one without edges, or
            edges on a text one): one line.

    """
    root = Path(results_root)
    records: list[SubgroupRecord] = []
    no_file: list[str] = []
    no_column: dict[str, list[str]] = {}
    no_loc: list[str] = []
    scored: list[str] = []
    seen: set[str] = set()
    cells = [r for r in rows if r.kind == "cell" and r.status == "ok"]
    for row in cells:
        if row.cell_id in seen:
            continue
        seen.add(row.cell_id)
        if (row.info or {}).get("kind") == "scored maps":  # 'cxrbench score' rows: no images of their own here
            scored.append(row.cell_id)
            continue
        artifacts = CellArtifacts.of(root, row.cell_id)
        saved = load_covariates(artifacts.covariates)
        if saved is None:
            no_file.append(row.cell_id)
            continue
        n_boot, seed, ci = _evaluation(row)
        test, predictions = saved.get("test"), load_predictions(artifacts.predictions)
        if test is not None and predictions is not None:
            grouped = _grouped(test, grouping, predictions.ids)
            if grouped is None:
                no_column.setdefault(", ".join(sorted(test.columns)) or "none", []).append(row.cell_id)
            else:
                groups, order = grouped
                scores = subgroup_auroc(predictions.labels, predictions.scores, predictions.patient_ids, groups,
                                        order, predictions.classes, n_boot=n_boot, seed=seed, ci=ci)
                records += _records(row, grouping, test.split, scores, None)
        located = saved.get("localization")
        for loc in (r for r in cells if r.cell_id == row.cell_id and r.localizer_status == "ok" and r.localizer_key):
            scores = _localization_groups(artifacts.pair_scores(loc.localizer_key), located, grouping,
                                          n_boot, seed, ci)
            if scores is None:
                no_loc.append(f"{row.cell_id}/{loc.localizer}")
                continue
            records += _records(row, grouping, located.split, scores, loc.localizer)
    no_transfer = _transfer_records(rows, root, grouping, records)
    wanted = "' + '".join(grouping.columns)
    notes = []
    if no_transfer:
        notes.append(f"{len(no_transfer)} cross-dataset evaluation(s) without saved covariates '{wanted}' (scored "
                     f"before cxrbench saved them, or the target has no such covariate): {', '.join(no_transfer)}")
    if no_file:
        notes.append(f"{len(no_file)} cell(s) without covariates (run before cxrbench saved them; --force retrains "
                     f"them): {', '.join(no_file)}")
    for have, ids in no_column.items():
        notes.append(f"{len(ids)} cell(s) whose test split has no covariate '{wanted}' (it has: {have}): "
                     f"{', '.join(ids)}")
    if scored:
        notes.append(f"{len(scored)} row(s) of maps scored by 'cxrbench score' have no covariates: {', '.join(scored)}")
    if no_loc:
        notes.append(f"{len(no_loc)} localizer(s) without per-pair scores or localization covariates with "
                     f"'{wanted}': {', '.join(no_loc)}")
    return SubgroupReport(grouping, tuple(records), tuple(notes))


def _localization_groups(path: Path, located: SavedCovariates | None, grouping: Grouping | Intersection,
                         n_boot: int, seed: int, ci: float) -> SubgroupScores | None:
    """One localizer's per-pair scores (``path``) split by ``grouping``; None without them or the covariates."""
    pairs = _load_pairs(path)
    grouped = _grouped(located, grouping, pairs["ids"]) if pairs else None
    if grouped is None:
        return None
    groups, order = grouped
    return subgroup_localization(pairs["patients"], pairs["best_iou"], pairs["hits"], pairs["correct"],
                                 pairs["classes"], groups, pairs["ids"], order, n_boot=n_boot, seed=seed, ci=ci)


def _transfer_records(rows: Sequence[LeaderboardRow], root: Path, grouping: Grouping | Intersection,
                      records: list[SubgroupRecord]) -> list[str]:
    """Append the subgroups of each ok cross-dataset evaluation and its ok localizers; return those left out.

    A transfer's scores, per-pair localization scores and covariates are the ones it saved
    (``transfers/<key>.npz``, ``<key>.pairs/<localizer>.npz``, ``<key>.covariates.npz``:
    the target's images left after the overlap audit); the resamples are its own (the
    cell's evaluation settings).
    """
    seen: set[tuple[str, str]] = set()
    left_out: list[str] = []
    for row in rows:
        key = (row.provenance or {}).get("transfer_key") if row.kind == "transfer" and row.status == "ok" else None
        if not key:
            continue
        artifacts = CellArtifacts.of(root, row.cell_id)
        saved = load_covariates(artifacts.transfer_covariates(key)) or {}
        n_boot, seed, ci = _evaluation(row)
        if (row.cell_id, key) not in seen:  # classification: once per evaluation, whatever its localizers
            seen.add((row.cell_id, key))
            predictions = load_predictions(artifacts.transfer_scores(key))
            grouped = _grouped(saved.get("test"), grouping, predictions.ids) if predictions is not None else None
            if grouped is None:
                left_out.append(f"{row.cell_id} ({row.dataset})")
            else:
                groups, order = grouped
                scores = subgroup_auroc(predictions.labels, predictions.scores, predictions.patient_ids, groups,
                                        order, predictions.classes, n_boot=n_boot, seed=seed, ci=ci)
                records += _records(row, grouping, "test", scores, None)
        if not row.localizer or row.localizer_status != "ok" or not row.localizer_key:
            continue
        located = saved.get("localization")
        scores = _localization_groups(artifacts.transfer_pair_scores(key, row.localizer_key), located, grouping,
                                      n_boot, seed, ci)
        if scores is None:
            left_out.append(f"{row.cell_id} ({row.dataset}, {row.localizer})")
            continue
        records += _records(row, grouping, located.split, scores, row.localizer)
    return left_out


# --------------------------------------------------------------------------- output


def export_subgroups(report: SubgroupReport, fmt_name: str, rows: Sequence[LeaderboardRow] = ()) -> str:
    """The records as ``json`` (a list) or ``csv`` (one row per record, metrics as columns), or the
    tables as ``markdown`` / ``latex`` (``rows``: the cells' leaderboard rows, for the CI level).
    """
    if fmt_name == "markdown":
        return subgroups_markdown(report, rows)
    if fmt_name == "latex":
        return subgroups_latex(report, rows)
    records = [r.to_json() for r in report.records]
    if fmt_name == "json":
        return json.dumps(records, indent=2)
    if fmt_name == "csv":
        flat = []
        for record in records:
            metrics = record.pop("metrics")
            if "mean_classes" in record:
                record["mean_classes"] = "|".join(record["mean_classes"])
            flat.append({**record, **metrics})
        frame = pd.DataFrame(flat)
        for count in ("n_images", "n_patients", "n_pairs"):  # whole numbers, blank for gap rows
            if count in frame:
                frame[count] = frame[count].astype("Int64")
        return frame.to_csv(index=False) if not frame.empty else "kind\n"
    raise ValueError(f"--by: --format {fmt_name} is not supported; use one of {', '.join(SUBGROUP_FORMATS)}")


def _ci(metrics: dict[str, float], key: str) -> str:
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "-"
    return f"{low:.3f}-{high:.3f}"


def _level(rows: Sequence[LeaderboardRow]) -> str:
    levels = {(r.provenance.get("evaluation") or {}).get("ci", 0.95) for r in rows if r.kind == "cell"}
    return f"{100 * float(levels.pop()):g}% CI" if len(levels) == 1 else "CI"


def _gap_text(record: SubgroupRecord) -> tuple[str, str]:
    m = record.metrics
    value = "-" if math.isnan(m["gap"]) else f"{m['gap']:+.3f} ({record.best} - {record.worst})"
    low, high = m.get("gap_ci_low", math.nan), m.get("gap_ci_high", math.nan)
    # brackets: a gap's bounds may be negative, and "-0.09-0.18" reads badly
    return value, "-" if math.isnan(low) or math.isnan(high) else f"[{low:+.3f}, {high:+.3f}]"


@dataclasses.dataclass(frozen=True)
class SubgroupGrid:
    """One subgroup table as plain text cells, drawn by the terminal, Markdown and LaTeX alike.

    Attributes:
        title: the table's title (``Classification by sex (test split)``).
        header: column names.
        numeric: per column, whether it is right-aligned.
        rows: the cells' text; a gap row's group cell reads ``gap``.
        gap_rows: indices of the gap rows (each closes a cell's block).
        cells: per row, the full cell id.
        kind: ``classification`` or ``localization``.

    """

    title: str
    header: tuple[str, ...]
    numeric: tuple[bool, ...]
    rows: tuple[tuple[str, ...], ...]
    gap_rows: frozenset[int]
    cells: tuple[str, ...]
    kind: str


def classification_subgroup_grid(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> SubgroupGrid | None:
    """Rows cell x group (then the cell's gap row): images, patients, mean AUROC with CI, per class."""
    records = [r for r in report.records if r.localizer is None]
    if not records:
        return None
    classes = list(dict.fromkeys(k.split("/", 1)[1] for r in records if r.kind == "subgroup" for k in r.metrics
                                 if k.startswith("auroc/")))
    header = ("dataset", "backbone", "head", "seed", "group", "images", "patients", catalogue.label("auroc_mean"),
              _level(rows), *classes)
    numeric = tuple(c in ("seed", "images", "patients") or i >= 7 and i != 8 for i, c in enumerate(header))
    body, gaps, previous = [], set(), None
    for r in records:
        here = (r.cell_id, r.dataset)  # a cell, or one of its cross-dataset evaluations ("nih -> vindr")
        axes = [r.dataset, r.backbone, r.head, str(r.seed)] if here != previous else ["", "", "", ""]
        previous = here
        if r.kind == "gap":
            value, ci = _gap_text(r)
            gaps.add(len(body))
            body.append((*axes, "gap", "", "", value, ci, *["" for _ in classes]))
            continue
        body.append((*axes, r.group, str(r.n_images), str(r.n_patients), fmt(r.metrics.get("auroc_mean")),
                     _ci(r.metrics, "auroc"), *[fmt(r.metrics.get(f"auroc/{c}")) for c in classes]))
    return SubgroupGrid(f"Classification by {report.grouping.text} ({records[0].split} split)", header, numeric,
                        tuple(body), frozenset(gaps), tuple(r.cell_id for r in records), "classification")


def localization_subgroup_grid(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> SubgroupGrid | None:
    """Rows cell x localizer x group (then one gap row): pairs, MaxBoxAccV2, IoU, hit rate with CIs."""
    records = [r for r in report.records if r.localizer is not None]
    if not records:
        return None
    level = _level(rows)
    header = ("dataset", "backbone", "head", "seed", "localizer", "group", "images", "patients", "pairs",
              *[name for key in LOCALIZATION_KEYS for name in (catalogue.label(key), level)])
    numeric = tuple(i in (3, 6, 7, 8) or (i > 8 and (i - 9) % 2 == 0) for i in range(len(header)))
    body, gaps, cells, previous = [], set(), [], None
    for r in records:
        here = (r.cell_id, r.dataset, r.localizer)  # a cell's localizer, or one on a cross-dataset target
        axes = [r.dataset, r.backbone, r.head, str(r.seed), r.localizer or ""] if here != previous \
            else ["", "", "", "", ""]
        previous = here
        if r.kind == "gap":
            gap_records = {g.metric: g for g in records
                           if g.kind == "gap" and (g.cell_id, g.dataset, g.localizer) == here}
            if r is not next(iter(gap_records.values())):
                continue  # one gap row per (cell, localizer), every metric's gap in its column
            values = [text for key in LOCALIZATION_KEYS
                      for text in (_gap_text(gap_records[key]) if key in gap_records else ("-", "-"))]
            gaps.add(len(body))
            body.append((*axes, "gap", "", "", "", *values))
            cells.append(r.cell_id)
            continue
        values = [text for key in LOCALIZATION_KEYS
                  for text in (fmt(r.metrics.get(key), catalogue.digits(key)), _ci(r.metrics, key))]
        body.append((*axes, r.group, str(r.n_images), str(r.n_patients), str(r.n_pairs), *values))
        cells.append(r.cell_id)
    return SubgroupGrid(f"Localization by {report.grouping.text} ({records[0].split} split)", header, numeric,
                        tuple(body), frozenset(gaps), tuple(cells), "localization")


AXIS_COLUMNS = ("dataset", "backbone", "head", "seed", "localizer")


def _without_constant_axes(grid: SubgroupGrid) -> SubgroupGrid:
    """For the terminal: axis columns with one value throughout move into the title (width for the figures)."""
    constant = []
    for name in AXIS_COLUMNS:
        if name not in grid.header:
            continue
        j = grid.header.index(name)
        values = {row[j] for row in grid.rows if row[j]}
        if len(values) == 1:
            constant.append((j, f"{name} {values.pop()}" if name == "seed" else values.pop()))
    if not constant:
        return grid
    drop = {j for j, _ in constant}
    keep = [j for j in range(len(grid.header)) if j not in drop]
    return _columns(grid, keep, f"{grid.title}: {' / '.join(text for _, text in constant)}")


def _rich_table(grid: SubgroupGrid) -> Table:
    grid = _without_constant_axes(grid)
    table = Table(title=escape(grid.title), title_justify="left", header_style="bold")
    for name, numeric in zip(grid.header, grid.numeric, strict=True):
        # group labels ("F / 40-59") and the gap's text stay on one line; the figures are short
        table.add_column(escape(name[:14] if numeric and name not in ("seed", "images", "patients", "pairs")
                                else name), justify="right" if numeric else "left",
                         no_wrap=name in ("group", catalogue.label("auroc_mean")),
                         min_width=11 if name.endswith("CI") else None)  # "0.020-0.061" whole
    one_cell = len(set(grid.cells)) == 1
    if one_cell:  # named in the title instead
        table.title = escape(f"{grid.title} (cell {grid.cells[0][:12]})")
    else:
        table.add_column("cell", style="dim", no_wrap=True)
    for i, (row, cell) in enumerate(zip(grid.rows, grid.cells, strict=True)):
        texts = [("[bold]gap[/]" if i in grid.gap_rows and j == grid.header.index("group") else escape(text))
                 for j, text in enumerate(row)]
        table.add_row(*texts, *([] if one_cell else [cell[:12]]), end_section=i in grid.gap_rows)
    return table


def _columns(grid: SubgroupGrid, keep: Sequence[int], title: str) -> SubgroupGrid:
    """The grid with only the columns ``keep`` (rows keep their order and gap marks)."""
    return dataclasses.replace(grid, title=title, header=tuple(grid.header[i] for i in keep),
                               numeric=tuple(grid.numeric[i] for i in keep),
                               rows=tuple(tuple(row[i] for i in keep) for row in grid.rows))


CLASSIFICATION_SUMMARY_COLUMNS = 9
"""dataset, backbone, head, seed, group, images, patients, mean AUROC, its interval: the
terminal's first classification table; the per-class AUROCs follow in a second one, as in
the leaderboard (eight NIH classes beside intervals do not fit 120 columns)."""


def classification_subgroup_tables(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> list[Table]:
    """The classification subgroup grid as terminal tables: the mean AUROC, then per class."""
    grid = classification_subgroup_grid(report, rows)
    if grid is None:
        return []
    n = CLASSIFICATION_SUMMARY_COLUMNS
    tables = [_rich_table(_columns(grid, range(n), grid.title))]
    if len(grid.header) > n:
        per_class = _columns(grid, [*range(5), *range(n, len(grid.header))],
                             f"Per-class AUROC {grid.title.split(' ', 1)[1]}")
        # the gap is of the mean AUROC: its rows would be empty here
        kept = [i for i in range(len(per_class.rows)) if i not in per_class.gap_rows]
        per_class = dataclasses.replace(per_class, rows=tuple(per_class.rows[i] for i in kept),
                                        cells=tuple(per_class.cells[i] for i in kept), gap_rows=frozenset())
        tables.append(_rich_table(per_class))
    return tables


def classification_subgroup_table(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> Table | None:
    """The classification subgroup grid as ONE terminal table (every column)."""
    grid = classification_subgroup_grid(report, rows)
    return None if grid is None else _rich_table(grid)


def localization_subgroup_table(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> Table | None:
    """The localization subgroup grid as a terminal table."""
    grid = localization_subgroup_grid(report, rows)
    return None if grid is None else _rich_table(grid)


def subgroup_grids(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> list[SubgroupGrid]:
    """The classification and localization grids the report has (none, one or both)."""
    return [g for g in (classification_subgroup_grid(report, rows), localization_subgroup_grid(report, rows))
            if g is not None]


def subgroups_markdown(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> str:
    """The subgroup tables as GitHub-flavoured Markdown, a heading above each; gap rows in bold."""
    out = []
    for grid in subgroup_grids(report, rows):
        header = [*grid.header, "cell"]
        align = ["---:" if n else "---" for n in grid.numeric] + ["---"]
        lines = [f"**{grid.title}**", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        for i, (row, cell) in enumerate(zip(grid.rows, grid.cells, strict=True)):
            texts = [f"**{t}**" if i in grid.gap_rows and t else t for t in row]
            lines.append("| " + " | ".join(t.replace("|", "\\|") for t in [*texts, cell]) + " |")
        out.append("\n".join(lines))
    return ("\n\n".join(out) if out else f"_no subgroups by {report.grouping.text}_") + "\n"


def subgroups_latex(report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> str:
    r"""The subgroup tables as booktabs LaTeX floats; each cell's block ends with its gap row and a rule."""
    from .latex import escape as tex

    out = [r"% cxrbench subgroups (needs \usepackage{booktabs})"]
    for grid in subgroup_grids(report, rows):
        align = "".join("r" if numeric else "l" for numeric in grid.numeric)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex(grid.title)}; patient-level bootstrap "
                 rf"intervals; gap: best minus worst group, paired bootstrap.}}",
                 rf"\label{{tab:cxrbench-subgroups-{grid.kind}}}",
                 rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(tex(h) for h in grid.header) + r" \\",
                 r"\midrule"]
        last = len(grid.rows) - 1
        for i, row in enumerate(grid.rows):
            texts = [rf"\emph{{{tex(t)}}}" if i in grid.gap_rows and t else tex(t) for t in row]
            lines.append(" & ".join(texts) + r" \\")
            if i in grid.gap_rows and i != last:
                lines.append(r"\midrule")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        out.append("\n".join(lines))
    if len(out) == 1:
        out.append("% no subgroups")
    return "\n\n".join(out) + "\n"


def render_subgroups(console: Any, report: SubgroupReport, rows: Sequence[LeaderboardRow]) -> None:
    """Print the classification and localization subgroup tables and the notes."""
    located = localization_subgroup_table(report, rows)
    tables = [*classification_subgroup_tables(report, rows), *([located] if located is not None else [])]
    for table in tables:
        console.print(table)
    if not tables:
        console.print(f"No subgroups by {escape(report.grouping.text)}.", highlight=False)
    for note in report.notes:
        console.print(escape(note), style="yellow", highlight=False)
