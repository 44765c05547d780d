"""Leaderboard rows: cells (and their localizers) flattened for display, filtered, grouped, ranked.

The store keeps :class:`~cxrbench.records.CellResult` objects with localizers nested; this
module is where they become rows, one per (cell, localizer), or one per cell when it has no
localizer. A grouped row (``--group-by`` / ``--over``) says so in its ``kind`` and carries
the spread of each metric in ``spread``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd

from .. import catalogue
from ..catalogue import INFO_KEYS
from ..records import CellResult, json_safe

AXES = ("dataset", "backbone", "head", "localizer", "seed", "status", "cell_id")
"""What ``--filter AXIS=VALUE`` accepts."""
GROUP_AXES = AXES[:5]
"""What ``--group-by`` and ``--over`` accept."""


@dataclasses.dataclass(frozen=True)
class LeaderboardRow:
    """One row of a leaderboard: a (cell, localizer) record, or a group of them.

    Attributes:
        kind: ``cell`` for one cell's record, ``group`` for an aggregate of several, ``reference``
            for a published baseline (``reporting.references``: never ranked or tested).
            ``transfer`` for a cell scored on another dataset (``evaluate_on:``; ``dataset`` reads
            ``source -> target``; :mod:`cxrbench.reporting.transfers`).
        cell_id: the cell's id (a group: ``"N cells"``).
        grid: the grid(s) the cell belongs to.
        dataset: axis value (``*`` when a group spans several).
        backbone: axis value.
        head: axis value.
        localizer: the localizer's name, None for a cell without localizer rows.
        seed: the seed (``*`` for a group spanning seeds).
        status: the cell's status.
        error: the cell's error, else the localizer's.
        metrics: classification and localization metrics (a group: means).
        spread: a group's sample standard deviation per metric (ddof 1; NaN for one value).
        n: records aggregated (1 for a cell).
        info: speed and size of the cell (a group: means over its cells).
        localizer_key: the localizer choice's key.
        localizer_status: ``ok`` / ``failed`` / None.
        localizer_error: why the localizer failed.
        localizer_settings: the localizer's settings (threshold policy, tolerance, split).
        provenance: the cell's provenance as JSON (settings and environment).
        columns: plugin columns (``cxrbench_leaderboard_columns``).
        components: the full choice behind each short axis label, ``{"dataset": {"name":
            ..., "options": {...}}, "backbone": ..., "head": ...}`` (from the cell's
            configuration; empty for groups and references).

    """

    kind: Literal["cell", "group", "reference", "transfer"]
    cell_id: str
    grid: str
    dataset: str
    backbone: str
    head: str
    localizer: str | None
    seed: Any
    status: str
    error: str | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    spread: Mapping[str, float] = dataclasses.field(default_factory=dict)
    n: int = 1
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    localizer_key: str | None = None
    localizer_status: str | None = None
    localizer_error: str | None = None
    localizer_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    components: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def axis(self, name: str) -> Any:
        return getattr(self, name)

    def value(self, key: str) -> Any:
        """A metric, else a speed/size figure of the cell, else a plugin column (None if absent)."""
        if key in self.metrics:
            return self.metrics[key]
        if key in self.info:
            return self.info[key]
        return self.columns.get(key)

    @property
    def table_key(self) -> tuple:
        """What makes one row of the classification leaderboard: a cell, or a group of cells."""
        if self.kind == "group":
            return (self.dataset, self.backbone, self.head, self.seed)
        return (self.cell_id,)

    def replace(self, **changes: Any) -> LeaderboardRow:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The exported form (JSON and the plugin column hook): plain values, NaN as null."""
        out = dataclasses.asdict(self)
        out["info"] = {k: v for k, v in self.info.items() if k not in ("history", "classes")}
        if self.kind == "cell":
            out.pop("spread")
        return json_safe(out)


def rows_from_cells(cells: Sequence[CellResult]) -> list[LeaderboardRow]:
    """One row per (cell, localizer); a cell without localizer rows gives one row."""
    out = []
    for cell in cells:
        base = dict(kind="cell", cell_id=cell.cell_id, grid=cell.grid, dataset=cell.axes.dataset,
                    backbone=cell.axes.backbone, head=cell.axes.head, seed=cell.axes.seed, status=cell.status,
                    info=dict(cell.info), provenance=cell.provenance.to_json(),
                    components={axis: cell.config[axis] for axis in ("dataset", "backbone", "head")
                                if isinstance(cell.config.get(axis), dict)})
        if not cell.localizations:
            out.append(LeaderboardRow(localizer=None, error=cell.error, metrics=dict(cell.metrics), **base))
            continue
        for loc in cell.localizations:
            out.append(LeaderboardRow(
                localizer=loc.name, error=cell.error or loc.error, metrics={**cell.metrics, **loc.metrics},
                localizer_key=loc.key, localizer_status=loc.status, localizer_error=loc.error,
                localizer_settings=dict(loc.settings), **base))
    return out


def missing(value: Any) -> bool:
    """Whether ``value`` is not a usable number (None, NaN, text, bool)."""
    return not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)


def sort_rows(rows: Sequence[LeaderboardRow], key: str = "auroc_mean") -> list[LeaderboardRow]:
    """Best first by ``key`` (missing values last), then by cell id for stability.

    "Best" follows the catalogue's direction for ``key`` (times, sizes and false positives:
    smaller first).
    """
    sign = -1.0 if catalogue.higher_is_better(key) else 1.0

    def sort_key(r: LeaderboardRow) -> tuple:
        v = r.value(key)
        gone = missing(v)
        return (gone, 0.0 if gone else sign * v, r.cell_id, r.localizer or "")

    return sorted(rows, key=sort_key)


def check_sort_key(rows: Sequence[LeaderboardRow], key: str) -> None:
    """Refuse a ``--sort`` metric that no row has (a typo would otherwise sort silently by cell id).

    Raises:
        ValueError: naming the closest known metrics.

    """
    import difflib

    known = {k for r in rows for k in r.metrics} | {k for r in rows for k in r.info if k in INFO_KEYS} | \
        {k for r in rows for k in r.columns}
    if not rows or key in known:
        return
    summaries = sorted(k for k in known if "/" not in k)
    # the headline figure of a family first: 'iou' means 'iou_mean' more often than 'iou>0.5'
    close = [f"{key}_mean"] if f"{key}_mean" in summaries else []
    close += [k for k in difflib.get_close_matches(key, summaries, n=3, cutoff=0.5) if k not in close]
    close += [k for k in summaries if k.startswith(key) and k not in close][:3]
    hint = f"; did you mean {', '.join(repr(c) for c in close[:4])}?" if close else \
        f" (e.g. {', '.join(catalogue.known_keys(summaries)[:8])})"
    raise ValueError(f"--sort {key!r}: no such metric{hint}")


def cell_rows(rows: Sequence[LeaderboardRow], sort_key: str | None = None) -> list[LeaderboardRow]:
    """One row per classification-leaderboard entry (a cell, or a group), ranked."""
    firsts: dict[tuple, LeaderboardRow] = {}
    for r in rows:
        firsts.setdefault(r.table_key, r)
    return sort_rows(list(firsts.values()), sort_key or "auroc_mean")


def localizer_rows(rows: Sequence[LeaderboardRow], sort_key: str | None = None) -> list[LeaderboardRow]:
    """The rows that carry a localizer (groups over localizers excluded), ranked."""
    loc = [r for r in rows if r.localizer and r.localizer != "*"]
    key = sort_key if sort_key and catalogue.lookup(sort_key) is not None and \
        catalogue.lookup(sort_key).group != "classification" else "iou_mean"
    if sort_key and catalogue.lookup(sort_key) is None and any(sort_key in r.metrics for r in loc):
        key = sort_key
    return sort_rows(loc, key)


def ranked(rows: Sequence[LeaderboardRow], sort_key: str | None = None) -> list[LeaderboardRow]:
    """Rows in leaderboard order: by ``sort_key`` (default AUROC), a cell's localizers together."""
    if sort_key and _varies_within_cells(rows, sort_key):
        return sort_rows(rows, sort_key)  # a per-localizer metric: every row in its own place
    order = {r.table_key: i for i, r in enumerate(cell_rows(rows, sort_key))}
    within = sort_rows(rows, sort_key) if sort_key else sort_rows(rows, "iou_mean")
    return sorted(within, key=lambda r: order.get(r.table_key, len(order)))


def top_rows(rows: Sequence[LeaderboardRow], n: int, key: str | None = None) -> list[LeaderboardRow]:
    """The rows of the best ``n`` leaderboard entries by ``key`` (default ``auroc_mean``).

    Sorting by a classification metric keeps every localizer row of the best ``n`` cells
    (so the classification table shows ``n`` rows); sorting by a metric that varies between
    localizers of one cell keeps the best ``n`` (cell, localizer) rows.

    Raises:
        ValueError: when ``n`` is below 1.

    """
    if n < 1:
        raise ValueError(f"--top {n}: must be at least 1")
    key = key or "auroc_mean"
    ordered = sort_rows(rows, key)
    if not _varies_within_cells(ordered, key):
        wanted = list(dict.fromkeys(r.table_key for r in ordered))
        keep = set(wanted[:n])
        return [r for r in ordered if r.table_key in keep]
    return ordered[:n]


def _varies_within_cells(rows: Sequence[LeaderboardRow], key: str) -> bool:
    seen: dict[tuple, Any] = {}
    for r in rows:
        v = r.value(key)
        v = None if missing(v) else v
        if r.table_key in seen and seen[r.table_key] != v:
            return True
        seen.setdefault(r.table_key, v)
    return False


def filter_rows(rows: Sequence[LeaderboardRow], filters: Sequence[str]) -> list[LeaderboardRow]:
    """Keep rows matching every ``axis=value`` filter (values compared as text).

    Raises:
        ValueError: on a malformed filter, an unknown axis, or a value no row has.

    """
    wanted = []
    for text in filters:
        if "=" not in text:
            raise ValueError(f"filter {text!r}: expected AXIS=VALUE, e.g. backbone=resnet18")
        key, value = text.split("=", 1)
        if key not in AXES:
            raise ValueError(f"filter {text!r}: unknown axis {key!r} (axes: {', '.join(AXES)})")
        known = {str(r.axis(key)) for r in rows}
        if rows and value not in known:  # a typo would otherwise print an empty leaderboard
            raise ValueError(f"filter {text!r}: no record has {key} {value!r} (values: {', '.join(sorted(known))})")
        wanted.append((key, value))
    return [r for r in rows if all(str(r.axis(k)) == v for k, v in wanted)]


def axes_except(over: Sequence[str]) -> list[str]:
    """The grouping axes that aggregate over ``over`` (``--over seed`` = group by everything else).

    Raises:
        ValueError: on an unknown axis, or when nothing would be left to group by.

    """
    for axis in over:
        if axis not in GROUP_AXES:
            raise ValueError(f"--over {axis!r}: not an axis (axes: {', '.join(GROUP_AXES)})")
    rest = [a for a in GROUP_AXES if a not in over]
    if not over or not rest:
        raise ValueError("--over: name one to four of the axes " + ", ".join(GROUP_AXES))
    return rest


def group_rows(rows: Sequence[LeaderboardRow], by: Sequence[str]) -> list[LeaderboardRow]:
    """Aggregate ok rows over every axis NOT in ``by``: each metric's mean and spread.

    ``--group-by dataset,backbone,head,localizer`` averages over seeds; ``--group-by
    backbone`` compares backbones over everything else. A grouped row's ``metrics`` hold
    means, its ``spread`` the sample std (ddof 1; NaN for one value), ``n`` the rows
    aggregated, and ``info`` the mean speed and size columns over its cells.

    A cell has one row per localizer, all carrying the same classification metrics: a
    metric that is the same in every row of a cell counts once per cell, so grouping over
    localizers does not repeat a cell's AUROC (which would shrink its std). When ``by``
    does not include ``localizer``, localizer rows are grouped per localizer name as well
    only if ``localizer`` is in ``by``; otherwise every localizer of the group is pooled.

    Raises:
        ValueError: on an unknown axis.

    """
    for axis in by:
        if axis not in GROUP_AXES:
            raise ValueError(f"--group-by {axis!r}: not an axis (axes: {', '.join(GROUP_AXES)})")
    if not by:
        raise ValueError("--group-by: name at least one axis (axes: " + ", ".join(GROUP_AXES) + ")")
    groups: dict[tuple, list[LeaderboardRow]] = {}
    for r in rows:
        if r.status == "ok":
            groups.setdefault(tuple(r.axis(a) for a in by), []).append(r)
    out = []
    for key, members in groups.items():
        frame = pd.DataFrame([dict(r.metrics) for r in members]).apply(pd.to_numeric, errors="coerce")
        cell_ids = pd.Series([r.cell_id for r in members], index=frame.index)
        info = pd.DataFrame([{k: r.info.get(k) for k in INFO_KEYS} for r in members],
                            index=frame.index).apply(pd.to_numeric, errors="coerce")
        means: dict[str, float] = {}
        spread: dict[str, float] = {}
        for column in frame.columns:
            values = _per_cell_or_per_row(frame[column], cell_ids).dropna()
            means[column] = float(values.mean()) if len(values) else math.nan
            spread[column] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        # speed and size are properties of a cell, not of a localizer row: one value per cell
        per_cell_info = info.groupby(cell_ids).first().mean()
        fields: dict[str, Any] = {axis: "*" for axis in ("dataset", "backbone", "head", "localizer", "seed")}
        fields.update(dict(zip(by, key, strict=True)))
        localizer = fields.pop("localizer")
        if localizer == "*" and not any(r.localizer for r in members):
            localizer = None
        out.append(LeaderboardRow(
            kind="group", cell_id=f"{cell_ids.nunique()} cells", grid=members[0].grid, localizer=localizer,
            status="ok", metrics=means, spread=spread, n=len(members),
            info={k: float(v) for k, v in per_cell_info.items() if not math.isnan(v)}, **fields))
    return out


def _per_cell_or_per_row(values: pd.Series, cell_ids: pd.Series) -> pd.Series:
    """One value per cell when ``values`` is constant within each cell, else every row's."""
    distinct = values.groupby(cell_ids).nunique(dropna=False)
    if (distinct <= 1).all():
        return values.groupby(cell_ids).first()
    return values


def group_for_tables(rows: Sequence[LeaderboardRow], by: Sequence[str]) -> list[LeaderboardRow]:
    """Groups for both leaderboards: classification over ``by``, localization over ``by`` + localizer.

    ``--group-by backbone`` then still shows a localization table, one row per (backbone,
    localizer), instead of silently pooling every localizer into one number.
    """
    grouped = group_rows(rows, by)
    if "localizer" in by or not any(r.localizer for r in rows):
        return grouped
    per_localizer = [r for r in group_rows([r for r in rows if r.localizer], [*by, "localizer"])]
    def classification_only(mapping: Mapping[str, float]) -> dict[str, float]:
        return {k: v for k, v in mapping.items()
                if (spec := catalogue.lookup(k)) is None or spec.group == "classification"}

    classification = [r.replace(localizer=None, metrics=classification_only(r.metrics),
                                spread=classification_only(r.spread)) for r in grouped]
    return classification + per_localizer


def class_names(rows: Sequence[LeaderboardRow]) -> list[str]:
    """The classes with a per-class AUROC, in first-seen order."""
    names: list[str] = []
    for r in rows:
        for key in r.metrics:
            base, cls = catalogue.split_key(key)
            if base == "auroc" and cls is not None and cls not in names:
                names.append(cls)
    return names


def plugin_column_names(rows: Sequence[LeaderboardRow]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r.columns))


def add_plugin_columns(rows: list[LeaderboardRow], pm: Any) -> list[LeaderboardRow]:
    """Ask every ``cxrbench_leaderboard_columns`` implementation for extra columns.

    Each implementation receives the rows in their JSON form and answers
    ``{column: [value per row]}``; the values land in each row's ``columns``.

    Raises:
        PluginError: naming the plugin whose answer is not such a mapping, or that raised.

    """
    from ..errors import PluginError, one_line

    if not rows:
        return rows
    columns: list[dict[str, Any]] = [dict(r.columns) for r in rows]
    for impl in pm.hook.cxrbench_leaderboard_columns.get_hookimpls():
        try:
            answer = impl.function(records=[r.to_json() for r in rows])
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r}: cxrbench_leaderboard_columns failed: "
                              f"{type(exc).__name__}: {one_line(str(exc))[:200]}") from None
        if answer is None:
            continue
        if not isinstance(answer, dict) or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == len(rows)
                for k, v in answer.items()):
            raise PluginError(f"plugin {impl.plugin_name!r}: cxrbench_leaderboard_columns must return "
                              f"{{column name: list of {len(rows)} values}} or None")
        for name, values in answer.items():
            for target, value in zip(columns, values, strict=True):
                # a plugin's text reaches terminals and files: control characters (escape
                # sequences that move the cursor or retitle the terminal) are shown, not obeyed
                target[printable(name)] = printable(value) if isinstance(value, str) else value
    return [r.replace(columns=c) for r, c in zip(rows, columns, strict=True)]


def printable(text: str) -> str:
    r"""``text`` with every non-printable character written as its escape (``\x1b``, ``\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
