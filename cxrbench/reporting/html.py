"""HTML: the leaderboard tables and ``cxrbench report``'s ONE self-contained file.

The report reads top to bottom as a benchmark user asks: what was run (grid, dataset,
when, with which versions), which configuration is best (seeds averaged, with their
spread; per-seed rows a click away), what it costs (accuracy against speed, the Pareto
front marked), per class, how training went, ROC curves, calibration, the heatmaps with
their scores, what failed and why, and the settings. Everything is inline: CSS, a small
sorting script, and PNG figures as ``data:`` URIs, so the file opens without a network.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, catalogue
from ..errors import one_line
from . import charts
from .charts import BarSeries, TradeoffPoint, TrainingRun, roc_figures
from .columns import (
    cell_text,
    ci_level,
    ci_text,
    classification_keys,
    localization_keys,
    per_class_auroc_keys,
    speed_keys,
    varying_axes,
)
from .htmlassets import SCRIPT, STYLE
from .htmltable import (
    Cell,
    Column,
    definition_list,
    esc,
    failed_cell,
    figure,
    flatten,
    metric_column,
    number_cell,
    png_uri,
    settings_table,
    show_value,
    table,
    text_cell,
)
from .rows import LeaderboardRow, cell_rows, class_names, localizer_rows, missing, rows_from_cells
from .seedavg import SeedGroup, classification_groups, failure_reason, localization_groups
from .significance import significance

__all__ = ["build_report", "html_page", "html_tables", "roc_figures"]

TOP_CONFIGURATIONS = 6
"""Configurations drawn in the per-class charts and the ROC curves (best first)."""
TRAINING_CURVES = 12
"""Configurations whose training curves are drawn (best first)."""


def html_page(title: str, body: str) -> str:
    """A complete, self-contained HTML document: inline style and script, nothing fetched."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><main>{body}</main><script>{SCRIPT}</script></body></html>\n")


# --------------------------------------------------------------------------- labels


def _varying(rows: Sequence[LeaderboardRow], axis: str) -> bool:
    return len({str(r.axis(axis)) for r in rows}) > 1


def _short(r: LeaderboardRow, with_dataset: bool = False, with_seed: bool = True) -> str:
    parts = ([str(r.dataset)] if with_dataset else []) + [str(r.backbone), str(r.head)]
    return " / ".join(parts) + (f" / s{r.seed}" if with_seed else "")


def _group_label(g: SeedGroup, with_dataset: bool) -> str:
    label = _short(g.first, with_dataset, with_seed=False)
    return label + (f" / {g.first.localizer}" if len(g.axes) == 4 else "")


def _axis_cell(r: LeaderboardRow, axis: str) -> Cell:
    value = r.axis(axis)
    if axis == "seed":
        return Cell(esc(value), sort=float(value) if isinstance(value, int) else None, sortable_number=True)
    return text_cell(value)


def _axis_columns(axes: Sequence[str]) -> list[Column]:
    return [Column(a, text=a != "seed") for a in axes]


def _status_cell(r: LeaderboardRow) -> Cell:
    if r.status == "ok":
        return Cell("<span class='ok'>ok</span>", css="text")
    return failed_cell(one_line(str(r.error or "no reason recorded")), label=r.status)


def _value_cell(r: LeaderboardRow, key: str, *, plain: bool) -> Cell:
    """A row's metric: as the terminal writes it (``mean±sd``) when ``plain``, else styled with its interval."""
    if plain:
        value = r.value(key)
        return Cell(esc(cell_text(r, key)), sort=None if missing(value) else float(value), sortable_number=True)
    return number_cell(key, r.value(key), spread=r.spread.get(key) if r.kind == "group" else None,
                       interval=_interval(r, key))


def _interval(r: LeaderboardRow, key: str) -> tuple[Any, Any] | None:
    spec = catalogue.lookup(key)
    # (AUROC's interval has its own column)
    if r.kind not in ("cell", "transfer") or spec is None or spec.ci is None or key == "auroc_mean":
        return None
    return r.metrics.get(spec.ci[0]), r.metrics.get(spec.ci[1])


# --------------------------------------------------------------------------- per-row tables (and the export)


def html_tables(rows: Sequence[LeaderboardRow], sort_key: str | None = None) -> str:
    """The classification and localization leaderboards as HTML tables, ranked as in the terminal.

    One row per leaderboard row (a cell, or a group with ``mean±sd``), values written as
    ``cxrbench leaderboard`` prints them; failed localizers show ``failed`` and their reason.
    """
    if not rows:
        return "<p>No results.</p>"
    transfers = [r for r in rows if r.kind == "transfer"]  # evaluate_on: their own table, never ranked with cells
    rows = [r for r in rows if r.kind != "transfer"]
    parts = []
    if rows:
        parts += ["<h2>Classification</h2>", _classification_rows_table(cell_rows(rows, sort_key), plain=True)]
    loc = localizer_rows(rows, sort_key)
    if loc:
        parts += ["<h2>Localization</h2>", _localization_rows_table(loc, plain=True)]
    if transfers:
        parts += ["<h2>Cross-dataset</h2>", f"<p class='note'>{TRANSFER_NOTE}</p>", _transfer_table(transfers)]
    return "\n".join(parts)


def _classification_rows_table(rows: Sequence[LeaderboardRow], *, plain: bool = False, table_id: str = "") -> str:
    """One row per cell (or group): status, AUROC and its interval, per class, speed, cell id."""
    axes = varying_axes(rows)
    keys = ["auroc_mean", *[k for k in classification_keys(rows) if k != "auroc_mean"]]
    rest = keys[1:] + per_class_auroc_keys(rows) + speed_keys()
    columns = [*_axis_columns(axes), Column("status", text=True), metric_column(keys[0]),
               Column(ci_level(rows), title="bootstrap interval of the mean AUROC"),
               *[metric_column(k) for k in rest], Column("cell", text=True)]
    body = [[*[_axis_cell(r, a) for a in axes], _status_cell(r), _value_cell(r, keys[0], plain=plain),
             Cell(esc(ci_text(r)), css="ci"), *[_value_cell(r, k, plain=plain) for k in rest],
             text_cell(r.cell_id, css="text muted")] for r in rows]
    return table(columns, body, table_id=table_id)


def _localization_rows_table(rows: Sequence[LeaderboardRow], *, plain: bool = False, table_id: str = "") -> str:
    """One row per (cell, localizer): every localization column; a failed one says why."""
    axes = varying_axes(rows)
    keys = localization_keys(rows)
    columns = [*_axis_columns(axes), Column("localizer", text=True), *[metric_column(k) for k in keys],
               Column("cell", text=True)]
    body = []
    for r in rows:
        if r.localizer_status == "failed":
            values = [failed_cell(one_line(r.localizer_error or "no reason recorded"))]
            values += [Cell("-", sortable_number=True)] * (len(keys) - 1)
        else:
            values = [_value_cell(r, k, plain=plain) for k in keys]
        body.append([*[_axis_cell(r, a) for a in axes], text_cell(r.localizer), *values,
                     text_cell(r.cell_id, css="text muted")])
    return table(columns, body, table_id=table_id)


# --------------------------------------------------------------------------- seed-averaged tables


def _seeds_cell(g: SeedGroup) -> Cell:
    """How many seeds a mean is over; failed seeds named with their reason."""
    n = len(g.members)
    if not g.failures:
        return Cell(esc(n), sort=float(n), sortable_number=True, title="seeds " + ", ".join(map(str, g.seeds)))
    if g.mean is None:  # every seed failed: the reason is shown where the numbers would be
        return Cell(f"0 of {n}", sort=0.0, sortable_number=True)
    by_reason: dict[str, list[str]] = {}
    for r in g.failures:
        by_reason.setdefault(one_line(failure_reason(r)), []).append(str(r.seed))
    reasons = "; ".join(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}: {reason}"
                        for reason, seeds in by_reason.items())
    return Cell(f"{g.ok_seeds} of {n}<span class='reason'>{esc(reasons)}</span>", sort=float(g.ok_seeds),
                css="wrap", title=reasons, sortable_number=True)


def _mean_cell(g: SeedGroup, key: str, best: bool = False) -> Cell:
    return number_cell(key, g.value(key), spread=g.spread(key), best=best)


def _group_axes(groups: Sequence[SeedGroup]) -> list[str]:
    """Backbone and head always, the dataset when it differs (the seed is what is averaged over)."""
    return [a for a in varying_axes([g.first for g in groups]) if a != "seed"]


def _classification_summary(groups: Sequence[SeedGroup]) -> str:
    speed = speed_keys()
    axes = _group_axes(groups)
    columns = [*_axis_columns(axes), metric_column("auroc_mean", "AUROC (mean ± sd over seeds)"),
               Column("seeds", title="seeds averaged (a failed seed is named with its reason)", better="high"),
               *[metric_column(k) for k in speed]]
    body = []
    for i, g in enumerate(groups):
        auroc = _mean_cell(g, "auroc_mean", best=i == 0) if g.mean is not None else \
            failed_cell(one_line(failure_reason(g.failures[0])))
        body.append([*[_axis_cell(g.first, a) for a in axes], auroc, _seeds_cell(g),
                     *[_mean_cell(g, k) for k in speed]])
    return table(columns, body, table_id="classification-summary")


def _per_class_summary(groups: Sequence[SeedGroup], classes: Sequence[str]) -> str:
    keys = [catalogue.per_class_key("auroc", c) for c in classes]
    axes = _group_axes(groups)
    columns = [*_axis_columns(axes), *[metric_column(k) for k in keys]]
    body = [[*[_axis_cell(g.first, a) for a in axes], *[_mean_cell(g, k) for k in keys]]
            for g in groups if g.mean is not None]
    return table(columns, body, table_id="per-class-auroc")


def _localization_summary(groups: Sequence[SeedGroup]) -> str:
    keys = localization_keys([r for g in groups for r in g.members], compact=True)
    axes = _group_axes(groups)
    columns = [*_axis_columns(axes), Column("localizer", text=True), *[metric_column(k) for k in keys],
               Column("seeds", title="seeds averaged (a failed seed is named with its reason)", better="high")]
    body = []
    for g in groups:
        if g.mean is None:  # failed on every seed: say so where the numbers would be
            values = [failed_cell(one_line(failure_reason(g.failures[0])))]
            values += [Cell("-", sortable_number=True)] * (len(keys) - 1)
        else:
            values = [_mean_cell(g, k) for k in keys]
        body.append([*[_axis_cell(g.first, a) for a in axes], text_cell(g.first.localizer), *values,
                     _seeds_cell(g)])
    return table(columns, body, table_id="localization-summary")


# --------------------------------------------------------------------------- header and settings


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _short_labels(registry: Any, kind: str, entries: Sequence[Any]) -> list[str]:
    """The grid's display labels for one axis (its ``label:`` or the short default), else the names."""
    from ..registry import short_labels

    try:
        return short_labels([registry.create(kind, e, f"{kind}s[{i}]", allow_threshold=kind == "localizer")
                             for i, e in enumerate(entries)])
    except Exception:  # a component no longer installed: its stored name still says what it was
        return [e if isinstance(e, str) else str(e.get("label") or e.get("name")) for e in entries]


def _header(grid_name: str, spec: dict[str, Any], cells: Sequence[Any], registry: Any) -> str:
    datasets = spec.get("datasets") or []
    labels = _short_labels(registry, "dataset", datasets)
    seeds = spec.get("seeds") or sorted({c.axes.seed for c in cells})
    ok = [c for c in cells if c.status == "ok"]
    failed_localizers = sum(1 for c in cells for loc in c.localizations if not loc.ok)
    finished = [c.finished_at for c in cells if c.finished_at]
    envs = [c.provenance.environment for c in ok] or [c.provenance.environment for c in cells]
    versions = sorted({f"cxrbench {e.cxrbench}, torch {e.torch}, timm {e.timm}, Python {e.python}"
                       for e in envs if e.torch})
    devices = sorted({f"{e.device} ({e.device_name}, {e.dtype}{f', {e.threads} threads' if e.threads else ''})"
                      for e in envs if e.device})
    executors = sorted({e.executor for e in envs if e.executor})
    status = f"{len(cells)}: {len(ok)} ok" + (f", <span class='failed'>{len(cells) - len(ok)} failed</span>"
                                              if len(ok) < len(cells) else "")
    if failed_localizers:
        status += f"; <span class='failed'>{failed_localizers} failed localizer runs</span>"
    when = (f"{_when(min(finished))} to {_when(max(finished))}" if finished else "not recorded")
    items = [
        ("grid", f"<b>{esc(grid_name)}</b>" + (f" <span class='muted'>from {esc(spec['source'])}</span>"
                                               if spec.get("source") else "")),
        ("dataset" if len(labels) == 1 else "datasets",
         ", ".join(esc(x) for x in labels) + " <a href='#settings'>(options)</a>"),
        ("models", f"{_count(spec.get('backbones'), 'backbone')} &times; {_count(spec.get('heads'), 'head')} &times; "
                   f"{_count(seeds, 'seed')} ({esc(', '.join(map(str, seeds)))})"),
        ("localizers", esc(", ".join(_short_labels(registry, "localizer", spec.get("localizers") or []))) or "none"),
        ("cells", status),
        ("trained", esc(when)),
        ("versions", "<br>".join(esc(v) for v in versions) or "not recorded"),
        ("device", esc("; ".join(devices)) + (f" <span class='muted'>({esc(', '.join(executors))} executor)</span>"
                                              if executors else "") if devices else "not recorded"),
        ("report", f"written {esc(_when(time.time()))} by cxrbench {esc(__version__)}"),
    ]
    description = f"<p class='lead'>{esc(spec['description'])}</p>" if spec.get("description") else ""
    return (f"<header><h1>cxrbench report: {esc(grid_name)}</h1>{description}{definition_list(items)}"
            "</header>")


def _count(items: Sequence[Any] | None, noun: str) -> str:
    n = len(items or [])
    return f"{n} {noun}" + ("" if n == 1 else "s")


def attribute_docs(cls: type) -> dict[str, str]:
    """``{attribute: description}`` from a Google-style ``Attributes:`` docstring section."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    current = None
    inside = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current and line.startswith("        "):
            out[current] += " " + line.strip()
    # reStructuredText literals read as plain words in a table
    return {k: re.sub(r"``?([^`]+)``?", r"\1", v).replace(":class:", "").replace(":mod:", "") for k, v in out.items()}


def _defaults(cls: type) -> dict[str, Any]:
    from ..options import options_to_dict

    try:
        return flatten(options_to_dict(cls()))
    except Exception:  # a settings class that needs arguments has no defaults to show
        return {}


HEADLINE_SETTINGS = {
    "train": ("epochs", "batch_size", "lr", "optimizer", "schedule", "loss", "image_size"),
    "evaluation": ("bootstrap", "ci", "cutoff"),
    "localization": ("split", "threshold", "tune", "hit_tolerance"),
}
"""Settings always shown in a block's short table (the rest when they differ from the default)."""


def _settings_block(key: str, values: dict[str, Any], cls: type) -> str:
    defaults, meanings = _defaults(cls), attribute_docs(cls)
    flat = flatten(values)
    headline = HEADLINE_SETTINGS.get(key, ())
    short = {k: v for k, v in flat.items() if k.split(".")[0] in headline or (k in defaults and defaults[k] != v)}
    return (f"<div><h3>{esc(key)}:</h3>{settings_table(short, defaults=defaults, meanings=meanings)}"
            f"<details><summary>all {len(flat)} {esc(key)} settings</summary>"
            f"{settings_table(flat, defaults=defaults, meanings=meanings)}</details></div>")


def _settings(spec: dict[str, Any], registry: Any) -> str:
    from ..config import EvaluationSpec, LocalizationSpec, TrainSpec

    parts = ["<section id='settings'><h2>Settings</h2>",
             "<p class='note'>as the grid ran them: the main settings and every one that differs from cxrbench's "
             "default (in bold); each block's full list below it</p><div class='columns'>"]
    blocks = [("train", TrainSpec), ("evaluation", EvaluationSpec)]
    if spec.get("localizers"):
        blocks.append(("localization", LocalizationSpec))
    for key, cls in blocks:
        if spec.get(key):
            parts.append(_settings_block(key, spec[key], cls))
    parts.append("</div>")
    columns = [Column("axis", text=True), Column("label", text=True), Column("name", text=True),
                    Column("options", text=True)]
    body = []
    for axis, kind in (("datasets", "dataset"), ("backbones", "backbone"), ("heads", "head"),
                       ("localizers", "localizer")):
        entries = spec.get(axis) or []
        for entry, label in zip(entries, _short_labels(registry, kind, entries), strict=True):
            name = entry if isinstance(entry, str) else entry.get("name")
            options = {} if isinstance(entry, str) else dict(entry.get("options") or {})
            if not isinstance(entry, str) and entry.get("threshold"):
                options["threshold"] = entry["threshold"]
            body.append([text_cell(kind), text_cell(label), text_cell(name),
                         Cell(esc(show_value(options)) if options else "<span class='muted'>defaults</span>",
                              css="wrap")])
    parts += ["<h3>Components</h3>", table(columns, body, table_id="components"), "</section>"]
    return "".join(parts)


# --------------------------------------------------------------------------- sections


def _significance(rows: Sequence[LeaderboardRow], root: Path) -> str:
    sig = significance(rows, root)
    if sig is None:
        return ""
    verdict = "significantly better than" if sig.significant else "not significantly different from"
    return (f"<p>Best cell <code>{esc(sig.best)}</code> is {verdict} the runner-up <code>{esc(sig.next)}</code>: "
            f"mean AUROC difference {sig.diff:.4f} ({100 * sig.level:g}% CI {sig.low:.4f} to {sig.high:.4f}, "
            f"paired bootstrap over patients, p = {sig.p:.3g}).</p>")


def _classification_section(rows: Sequence[LeaderboardRow], groups: Sequence[SeedGroup], root: Path) -> str:
    cells = cell_rows([r for r in rows if r.kind == "cell" and (r.info or {}).get("kind") != "scored maps"])
    if not cells:
        return "<section id='classification'><h2>Classification</h2><p class='note'>no trained cells</p></section>"
    with_dataset = _varying(cells, "dataset")
    classes = class_names(cells)
    parts = ["<section id='classification'><h2>Classification</h2>",
             "<p class='note'>one row per configuration: the mean over its seeds &plusmn; their sample standard "
             "deviation; best first. Click a header to sort.</p>",
             _classification_summary(groups), _significance(rows, root),
             f"<details><summary>Per-seed rows ({len(cells)} cells, with {esc(ci_level(cells))} and per-class "
             f"AUROC)</summary>{_classification_rows_table(cells, table_id='classification-per-seed')}</details>"]
    ok_groups = [g for g in groups if g.mean is not None]
    if classes and ok_groups:
        series = [BarSeries(_group_label(g, with_dataset), [g.value(f"auroc/{c}") for c in classes],
                            [g.spread(f"auroc/{c}") for c in classes]) for g in ok_groups[:TOP_CONFIGURATIONS]]
        png = charts.per_class_figure(series, classes, ylabel="AUROC (mean over seeds)", ylim=_ylim(series))
        parts += ["<h3>Per-class AUROC</h3>", f"<div class='figures wide'>{figure(png, 'per-class AUROC')}</div>",
                  f"<details><summary>Per-class AUROC table</summary>"
                  f"{_per_class_summary(ok_groups, classes)}</details>"]
    parts.append("</section>")
    return "".join(parts)


def _ylim(series: Sequence[BarSeries]) -> tuple[float, float]:
    values = [v for s in series for v in s.values if not missing(v)]
    low = min(values, default=0.0)
    return (0.0 if low < 0.5 else 0.5, 1.0)


def _localization_section(groups: Sequence[SeedGroup], rows: Sequence[LeaderboardRow]) -> str:
    loc = localizer_rows([r for r in rows if r.kind == "cell"])
    if not loc:
        return ""
    with_dataset = _varying(loc, "dataset")
    parts = ["<section id='localization'><h2>Localization</h2>",
             "<p class='note'>one row per configuration and localizer, mean over seeds &plusmn; sd; hover a header "
             "for its definition. A localizer that failed says why.</p>",
             _localization_summary(groups),
             f"<details><summary>Per-seed rows ({len(loc)}, every column, with bootstrap intervals)</summary>"
             f"{_localization_rows_table(loc, table_id='localization-per-seed')}</details>"]
    ok_groups = [g for g in groups if g.mean is not None]
    classes = class_names(loc)
    metric = _localization_metric(ok_groups)
    if metric and classes and ok_groups:
        series = [BarSeries(_group_label(g, with_dataset), [g.value(f"{metric.per}/{c}") for c in classes],
                            [g.spread(f"{metric.per}/{c}") for c in classes]) for g in ok_groups[:TOP_CONFIGURATIONS]]
        if any(not missing(v) for s in series for v in s.values):
            png = charts.per_class_figure(series, classes, ylabel=f"{metric.label} (mean over seeds)")
            parts += [f"<h3>Per-class {esc(metric.label)}</h3>",
                      f"<div class='figures wide'>{figure(png, f'per-class {metric.label}')}</div>"]
    parts.append("</section>")
    return "".join(parts)


def _transfer_section(cells: Sequence[Any]) -> str:
    """``evaluate_on:``: each trained cell scored on another dataset, one row per cell, target and localizer."""
    from .transfers import transfer_rows

    rows = transfer_rows(cells)
    if not rows:
        return ""
    pairs = sorted({r.dataset for r in rows})
    return ("<section id='cross-dataset'><h2>Cross-dataset</h2>"
            f"<p class='note'>{TRANSFER_NOTE} {len(pairs)} pair{'s' if len(pairs) != 1 else ''}: "
            f"{esc(', '.join(pairs))}.</p>{_transfer_table(rows, table_id='cross-dataset')}</section>")


TRANSFER_NOTE = ("each trained cell scored, without retraining, on another dataset's test split "
                 "(<code>evaluate_on:</code>), on the classes both datasets share by name (docs/datasets.md lists "
                 "the synonyms); AUROC intervals are bootstrapped over the target's patients. These rows are "
                 "never ranked with the cells'.")


def _transfer_table(rows: Sequence[LeaderboardRow], *, table_id: str = "") -> str:
    """The transfer rows as one table: pair, model, status, AUROC with its interval, per class, localization."""
    per_class = per_class_auroc_keys(rows)
    loc_keys = [k for k in localization_keys(rows) if k != "loc_ms_per_image"]
    with_localizer = any(r.localizer for r in rows)
    with_overlap = any((r.metrics.get("overlap_excluded") or 0) > 0 for r in rows)
    columns = [Column("trained on -> scored on", text=True), Column("backbone", text=True),
               Column("head", text=True), Column("seed"),
               *([Column("localizer", text=True)] if with_localizer else []), Column("status", text=True),
               metric_column("auroc_mean"), Column(ci_level(rows), title="bootstrap interval of the mean AUROC"),
               *[metric_column(k) for k in per_class], *[metric_column(k) for k in loc_keys],
               *([metric_column("overlap_excluded", "excluded")] if with_overlap else []),
               Column("cell", text=True)]
    body = []
    for r in rows:
        values = [_value_cell(r, k, plain=False) for k in per_class]
        if r.localizer_status == "failed" and loc_keys:
            values += [failed_cell(one_line(r.localizer_error or "no reason recorded"))]
            values += [Cell("-", sortable_number=True)] * (len(loc_keys) - 1)
        else:
            values += [_value_cell(r, k, plain=False) for k in loc_keys]
        if with_overlap:
            values.append(number_cell("overlap_excluded", r.metrics.get("overlap_excluded")))
        body.append([text_cell(r.dataset), text_cell(r.backbone), text_cell(r.head),
                     Cell(esc(r.seed), sort=float(r.seed), sortable_number=True),
                     *([text_cell(r.localizer or "-")] if with_localizer else []), _status_cell(r),
                     _value_cell(r, "auroc_mean", plain=False), Cell(esc(ci_text(r)), css="ci"), *values,
                     text_cell(r.cell_id, css="text muted")])
    return table(columns, body, table_id=table_id)


@dataclasses.dataclass(frozen=True)
class _Metric:
    key: str
    per: str
    label: str


def _localization_metric(groups: Sequence[SeedGroup]) -> _Metric | None:
    """MaxBoxAccV2 (Choe et al. 2020, threshold-free) where every group has it, else IoU."""
    for key, per in (("maxboxacc_v2", "maxboxacc_v2"), ("iou_mean", "iou")):
        if groups and all(not missing(g.value(key)) for g in groups):
            return _Metric(key, per, catalogue.label(key))
    return None


def _tradeoff_section(cls_groups: Sequence[SeedGroup], loc_groups: Sequence[SeedGroup]) -> str:
    ok_cls = [g for g in cls_groups if g.mean is not None]
    ok_loc = [g for g in loc_groups if g.mean is not None]
    with_dataset = _varying([g.first for g in cls_groups], "dataset") if cls_groups else False
    figures = []
    points = [TradeoffPoint(_group_label(g, with_dataset), g.value("train_images_per_s"), g.value("auroc_mean"),
                            g.spread("auroc_mean")) for g in ok_cls
              if not missing(g.value("train_images_per_s")) and not missing(g.value("auroc_mean"))]
    if points:
        figures.append(_tradeoff(points, "training images per second", "AUROC (mean over seeds)", True))
    metric = _localization_metric(ok_loc)
    loc_points = [TradeoffPoint(_group_label(g, with_dataset), g.value("loc_ms_per_image"), g.value(metric.key),
                                g.spread(metric.key)) for g in ok_loc
                  if not missing(g.value("loc_ms_per_image")) and not missing(g.value(metric.key))] if metric else []
    if loc_points and metric:
        figures.append(_tradeoff(loc_points, "localizer milliseconds per image", f"{metric.label} (mean over seeds)",
                                 False))
    if not figures:
        return ""
    return ("<section id='tradeoff'><h2>Speed and accuracy</h2><p class='note'>each point a configuration (mean "
            "over seeds, bar &plusmn; sd); the line joins the Pareto front, the configurations no other beats on "
            "both speed and accuracy. Speeds are measured on the device each cell ran on (see the header): "
            "compare them within one machine.</p>"
            f"<div class='figures wide'>{''.join(figures)}</div></section>")


def _tradeoff(points: Sequence[TradeoffPoint], xlabel: str, ylabel: str, x_higher: bool) -> str:
    png = charts.tradeoff_figure(points, xlabel=xlabel, ylabel=ylabel, x_higher=x_higher)
    front = charts.pareto_front([p.x for p in points], [p.y for p in points], x_higher=x_higher)
    names = ", ".join(esc(points[i].label) for i in front)
    return figure(png, f"{ylabel} against {xlabel}", f"{esc(ylabel)} against {esc(xlabel)}; front: {names}")


def _training_section(groups: Sequence[SeedGroup]) -> str:
    shown = [g for g in groups if any((r.info or {}).get("history") for r in g.members)]
    if not shown:
        return ""
    with_dataset = _varying([g.first for g in groups], "dataset")
    figures = []
    for g in shown[:TRAINING_CURVES]:
        runs = [TrainingRun(f"seed {r.seed}", r.info["history"], r.info.get("best_epoch"))
                for r in g.members if (r.info or {}).get("history")]
        seconds = [h.get("seconds") for r in runs for h in r.history if not missing(h.get("seconds"))]
        per_epoch = f"; {np.mean(seconds):.2f} s per epoch" if seconds else ""
        best = ", ".join(f"seed {r.label.split()[-1]}: epoch {r.best_epoch}" for r in runs if r.best_epoch)
        caption = f"{esc(_group_label(g, with_dataset))}{esc(per_epoch)}" + (f"<br>kept {esc(best)}" if best else "")
        figures.append(figure(charts.training_figure(_group_label(g, with_dataset), runs),
                              f"training {_group_label(g, with_dataset)}", caption))
    more = (f"<p class='note'>{len(shown) - TRAINING_CURVES} more configurations: <code>cxrbench show CELL</code> "
            "prints any cell's history</p>" if len(shown) > TRAINING_CURVES else "")
    return ("<section id='training'><h2>Training</h2><p class='note'>per configuration, one line per seed: the "
            "training loss and the validation mean AUROC after each epoch (best configurations first)</p>"
            f"<div class='figures wide'>{''.join(figures)}</div>{more}</section>")


def _roc_section(store: Any, ranked: Sequence[LeaderboardRow], count: int) -> str:
    with_dataset = _varying(ranked, "dataset") if ranked else False
    chosen = [(_short(r, with_dataset), store.artifacts(r.cell_id).predictions) for r in ranked[:count]]
    chosen = [(label, path) for label, path in chosen if path.exists()]
    if not chosen:
        return ""
    figures = "".join(figure(png, f"ROC {name}", f"ROC {esc(name)}") for name, png in roc_figures(chosen))
    return (f"<section id='roc'><h2>ROC curves</h2><p class='note'>per class, the {len(chosen)} best cells by mean "
            f"AUROC on the test split; the legend gives each cell's AUROC for the class</p>"
            f"<div class='figures'>{figures}</div></section>")


def reliability_bins_function() -> Callable[..., Any] | None:
    """``cxrbench.calibration.reliability_bins`` where that module exists, else None.

    The calibration module (``reliability_bins(y_true, y_prob, n_bins=15) ->
    ReliabilityBins(edges, mean_predicted, observed, counts)``) is written separately;
    until it exists the report leaves its calibration section out.
    """
    try:
        from ..calibration import reliability_bins
    except ImportError:
        return None
    return reliability_bins


def _calibration_section(store: Any, best: LeaderboardRow | None) -> str:
    bins_of = reliability_bins_function()
    if bins_of is None or best is None:
        return ""
    path = store.artifacts(best.cell_id).predictions
    if not path.exists():
        return ""
    from ..artifacts import load_predictions

    saved = load_predictions(path)
    if saved is None:  # unreadable (e.g. object arrays): no reliability diagrams rather than no report
        return ""
    labels, scores, classes = saved.labels, saved.scores, list(saved.classes)
    figures, skipped = [], []
    for k, name in enumerate(classes):
        known = np.isin(labels[:, k], (0, 1))  # uncertain / missing labels have no observed outcome
        if known.sum() == 0:
            continue
        try:
            bins = bins_of(labels[known, k], np.clip(scores[known, k], 0.0, 1.0), n_bins=15)
        except ValueError as exc:  # one class the calibration module refuses must not cost the report
            skipped.append(f"{name}: {one_line(str(exc))}")
            continue
        png = charts.reliability_figure(name, bins.edges, bins.mean_predicted, bins.observed, bins.counts)
        ece = getattr(bins, "ece", None)
        caption = f"reliability {esc(name)}" + ("" if missing(ece) else f"; ECE {ece:.3f}")
        figures.append(figure(png, f"reliability {name}", caption))
    if not figures:
        return ""
    if skipped:
        figures.append(f"<p class='note'>not drawn: {esc('; '.join(skipped))}</p>")
    return (f"<section id='calibration'><h2>Calibration</h2><p class='note'>reliability diagrams of the best cell "
            f"(<code>{esc(best.cell_id)}</code>, {esc(_short(best))}) on the test split, 15 equal-width bins: on the "
            f"diagonal, a predicted probability is the observed frequency</p><div class='figures'>"
            f"{''.join(figures)}</div></section>")


def _saved_overlays(store: Any, ranked: Sequence[LeaderboardRow], limit: int) -> list[tuple[str, Path]]:
    """Overlays saved during the run (``localization.save_overlays``), best cells first."""
    found: list[tuple[str, Path]] = []
    for r in ranked:
        folder = store.artifacts(r.cell_id).overlays_root
        if folder.is_dir():
            found += [(f"{_short(r).replace(' / s', ' / seed ')} / {p.parent.name}", p)
                      for p in sorted(folder.glob("*/*.png"))]
    return found[:limit]


def _gallery_section(store: Any, registry: Any, spec: dict[str, Any], ranked: Sequence[LeaderboardRow],
                     count: int) -> str:
    from .gallery import draw_gallery

    parts = ["<section id='heatmaps'><h2>Heatmaps</h2>",
             "<div class='legend'><span>map value</span><span>0</span>"
             f"<img alt='colour scale' src='{png_uri(charts.colour_bar())}'><span>1</span>"
             "<span><span class='swatch' style='border-color:#ff0000'></span>true box</span>"
             "<span><span class='swatch' style='border-color:#00c800'></span>predicted boxes</span></div>"]
    localizers = spec.get("localizers") or []
    if not ranked or not localizers:
        parts.append("<p class='note'>no heatmaps: the grid has no localizers or no finished cell</p>")
    else:
        best = ranked[0]
        try:
            gallery = draw_gallery(store, registry, best.cell_id, localizers, count=count)
        except Exception as exc:  # the report still renders without its gallery
            parts.append(f"<p class='note'>gallery unavailable: {esc(one_line(str(exc)))}</p>")
        else:
            parts.append(f"<p class='note'>the best cell, <code>{esc(best.cell_id)}</code> ({esc(_short(best))}), "
                         "on its first boxed images: each map with the model's probability for the class, the best "
                         "IoU of a predicted box and whether its peak hits a true box (the leaderboard's pointing "
                         "game)</p>")
            pairs: dict[tuple[str, str], list[str]] = {}
            for item in gallery.items:
                s = item.scores
                scores = ("" if s is None else
                          f"<span class='scores'>p <b>{s.probability:.2f}</b> &middot; IoU <b>{s.iou:.2f}</b> "
                          f"&middot; {'<b>hit</b>' if s.hit else 'miss'}</span>")
                pairs.setdefault((item.image_id, item.class_name), []).append(
                    figure(item.png, f"{item.image_id} {item.class_name} {item.localizer}",
                           f"<b>{esc(item.localizer)}</b><br>{scores}"))
            per_pair = max((len(f) for f in pairs.values()), default=1)
            cards = "".join(f"<div class='pair'><h4>{esc(class_name)} on {esc(image_id)}</h4><div class='gallery' "
                            f"style='grid-template-columns:repeat({per_pair},minmax(0,1fr))'>{''.join(figures)}</div>"
                            "</div>" for (image_id, class_name), figures in pairs.items())
            parts.append(f"<div class='pairs' style='grid-template-columns:repeat(auto-fill,minmax("
                         f"{max(300, 190 * per_pair)}px,1fr))'>{cards}</div>")
            for name, reason in gallery.skipped:
                parts.append(f"<p class='note'>{esc(name)}: not drawn, <span class='failed'>failed</span> "
                             f"<span class='reason'>{esc(reason)}</span></p>")
    saved = _saved_overlays(store, ranked, 4 * count)
    if saved:
        figures = "".join(figure(path.read_bytes(), path.stem, f"{esc(caption)}<br>{esc(path.stem)}")
                          for caption, path in saved if path.is_file())
        parts.append(f"<details><summary>Overlays saved during the run ({len(saved)})</summary>"
                     f"<div class='gallery saved'>{figures}</div></details>")
    parts.append("</section>")
    return "".join(parts)


def _failures_section(cells: Sequence[Any]) -> str:
    columns = [Column("cell", text=True), Column("configuration", text=True), Column("what", text=True),
               Column("reason", text=True)]
    body = []
    for c in cells:
        label = f"{c.axes.backbone} / {c.axes.head} / seed {c.axes.seed}"
        if c.status != "ok":
            body.append([text_cell(c.cell_id), text_cell(label), text_cell("cell"),
                         failed_cell(one_line(str(c.error or "no reason recorded")))])
        for loc in c.localizations:
            if not loc.ok:
                body.append([text_cell(c.cell_id), text_cell(label), text_cell(f"localizer {loc.name}"),
                             failed_cell(one_line(str(loc.error or "no reason recorded")))])
    if not body:
        return ("<section id='failures'><h2>Failures</h2><p class='note'>nothing failed</p></section>")
    return ("<section id='failures'><h2>Failures</h2><p class='note'>each with its one-line reason; "
            "<code>cxrbench show CELL</code> prints the traceback</p>"
            f"{table(columns, body, table_id='failures-table')}</section>")


def _subgroup_section(rows: Sequence[LeaderboardRow], cells: Sequence[Any], root: Path,
                      groupings: Sequence[Any]) -> str:
    """``report --by``: per cell, each group's AUROC and localization with intervals, and the best-worst gap."""
    from .rows import ranked
    from .subgroup_tables import subgroup_grids, subgroup_report
    from .transfers import transfer_rows

    if not groupings:
        return ""
    leaderboard = [*ranked([r for r in rows if r.kind == "cell"]), *transfer_rows(cells)]
    parts = ["<section id='subgroups'><h2>Subgroups</h2>",
             "<p class='note'>each cell's scored images (and each cross-dataset evaluation's target images) split by a "
             "covariate: AUROC on the test split and "
             "localization on the boxed split per group, with intervals from the cell's own patient resamples; "
             "gap: the best minus the worst known group, with its paired-bootstrap interval; a class with fewer "
             "than 5 positives or negatives in a group is '-' (docs/metrics.md, 'Subgroups').</p>"]
    for grouping in groupings:
        report = subgroup_report(leaderboard, root, grouping)
        grids = subgroup_grids(report, leaderboard)
        if not grids:
            parts.append(f"<h3>By {esc(grouping.text)}</h3><p class='note'>no cell could be split by it</p>")
        for grid in grids:
            columns = [Column(h, text=not numeric) for h, numeric in zip(grid.header, grid.numeric, strict=True)]
            columns.append(Column("cell", text=True))
            body = []
            for i, (cells, cell_id) in enumerate(zip(grid.rows, grid.cells, strict=True)):
                gap = i in grid.gap_rows
                body.append([Cell(f"<b>{esc(t)}</b>" if gap and t else esc(t), css="" if numeric else "text")
                             for t, numeric in zip(cells, grid.numeric, strict=True)]
                            + [text_cell(cell_id, css="text muted")])
            ident = f"subgroups-{grid.kind}-{re.sub(r'[^A-Za-z0-9_-]', '_', grouping.text)}"
            parts += [f"<h3>{esc(grid.title)}</h3>", table(columns, body, table_id=ident)]
        parts += [f"<p class='note'>{esc(note)}</p>" for note in report.notes]
    parts.append("</section>")
    return "".join(parts)


def build_report(store: Any, registry: Any, grid_name: str, *, roc_cells: int = TOP_CONFIGURATIONS,
                 gallery_images: int = 3, by: Sequence[Any] = ()) -> str:
    """The report's HTML text for one grid.

    Args:
        store: the results store.
        registry: the component registry (to label the grid's components and draw the gallery).
        grid_name: the grid.
        roc_cells: cells compared in each class's ROC figure.
        gallery_images: boxed images drawn in the gallery.
        by: subgroup groupings (:func:`cxrbench.subgroups.parse_by`) for a Subgroups section.

    """
    stored = store.cells(grid_name)
    rows = rows_from_cells(stored)
    spec = store.grid_spec(grid_name) or {}
    cls_groups = classification_groups([r for r in rows if (r.info or {}).get("kind") != "scored maps"])
    loc_groups = localization_groups(rows)
    ranked = cell_rows([r for r in rows if r.status == "ok" and (r.info or {}).get("kind") != "scored maps"])
    best = ranked[0] if ranked else None
    body = [_header(grid_name, spec, stored, registry)]
    if not rows:
        body.append("<p>No results yet.</p>")
    body += [
        _classification_section(rows, cls_groups, store.root),
        _localization_section(loc_groups, rows),
        _transfer_section(stored),
        _subgroup_section(rows, stored, store.root, by),
        _tradeoff_section(cls_groups, loc_groups),
        _training_section(cls_groups),
        _roc_section(store, ranked, roc_cells),
        _calibration_section(store, best),
        _gallery_section(store, registry, spec, ranked, gallery_images),
        _failures_section(stored),
        _settings(spec, registry),
    ]
    text = "\n".join(part for part in body if part)
    # the table of contents lists the sections this grid has (no calibration without predictions, ...)
    toc = "".join(f"<a href='#{anchor}'>{title}</a>"
                  for anchor, title in re.findall(r"<section id='([\w-]+)'><h2>(.*?)</h2>", text))
    text = text.replace("</header>", f"<nav class='toc'>{toc}</nav></header>", 1)
    return html_page(f"cxrbench report: {grid_name}", text)
