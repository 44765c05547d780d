"""HTML building blocks of the report: sortable tables, metric cells, definition tables, figures.

A table is a list of :class:`Column` and rows of :class:`Cell`; a cell carries its shown
HTML and the value the inline script sorts by (``data-v``), so ``0.912 ± 0.004`` sorts as
0.912 and a failed row (no value) sorts last. Everything shown is escaped here.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import catalogue
from .columns import fmt, fmt_params
from .rows import missing


def esc(value: Any) -> str:
    """``value`` as escaped HTML text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


@dataclasses.dataclass(frozen=True)
class Column:
    """One table column.

    Attributes:
        header: the header text (plain text, escaped when rendered).
        title: the header's tooltip (a metric's definition).
        better: ``high`` / ``low``: which way a first click sorts (best first).
        text: a text column (left-aligned).

    """

    header: str
    title: str = ""
    better: str | None = None
    text: bool = False


@dataclasses.dataclass(frozen=True)
class Cell:
    """One table cell: HTML to show, the value to sort by, a CSS class and a tooltip."""

    html: str
    sort: float | None = None
    css: str = ""
    title: str = ""
    sortable_number: bool = False


def text_cell(value: Any, *, css: str = "text", title: str = "") -> Cell:
    return Cell(esc(value), css=css, title=title)


def metric_column(key: str, header: str | None = None) -> Column:
    """A column for a catalogue metric: its label, its definition as tooltip, its direction."""
    spec = catalogue.lookup(key)
    title = spec.description if spec is not None else ""
    better = None if spec is None else ("high" if catalogue.higher_is_better(key) else "low")
    return Column(header or catalogue.label(key), title=title, better=better)


def number_text(key: str, value: Any) -> str:
    if key == "parameters":
        return fmt_params(value)
    return fmt(value, catalogue.digits(key))


def number_cell(key: str, value: Any, *, spread: Any = None, interval: tuple[Any, Any] | None = None,
                best: bool = False) -> Cell:
    """A number in the catalogue's digits, with ``± spread`` or a compact ``low-high`` interval.

    A missing value shows ``-`` and sorts last.
    """
    if missing(value):
        return Cell("-", sortable_number=True)
    text = esc(number_text(key, value))
    if best:
        text = f"<span class='best'>{text}</span>"
    if not missing(spread):
        text += f"<span class='sd'> ± {esc(number_text(key, spread))}</span>"
    if interval is not None and not missing(interval[0]) and not missing(interval[1]):
        text += f" <span class='ci'>{esc(number_text(key, interval[0]))}-{esc(number_text(key, interval[1]))}</span>"
    return Cell(text, sort=float(value), sortable_number=True)


def failed_cell(reason: str, *, label: str = "failed") -> Cell:
    """``failed`` and its one-line reason, visible and as the tooltip; sorts last."""
    return Cell(f"<span class='failed'>{esc(label)}</span><span class='reason'>{esc(reason)}</span>",
                css="wrap", title=reason, sortable_number=True)


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, caption: str = "", css: str = "",
          table_id: str = "") -> str:
    """A sortable table inside a frame that scrolls sideways on its own (the page never does)."""
    head = "".join(_th(c) for c in columns)
    body = []
    for cells in rows:
        tds = []
        for cell in cells:
            sort = ""
            if cell.sortable_number:
                sort = f" data-v='{'' if cell.sort is None or math.isnan(cell.sort) else repr(float(cell.sort))}'"
            tds.append(f"<td{_attrs(css=cell.css, title=cell.title)}{sort}>{cell.html}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    classes = " ".join(x for x in ("sortable", css) if x)
    ident = f" id='{esc(table_id)}'" if table_id else ""
    cap = f"<caption class='note'>{caption}</caption>" if caption else ""
    return (f"<div class='table-wrap'><table class='{classes}'{ident}>{cap}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _th(column: Column) -> str:
    better = f" data-better='{column.better}'" if column.better else ""
    return f"<th{_attrs(css='text' if column.text else '', title=column.title)}{better}>{esc(column.header)}</th>"


def _attrs(*, css: str = "", title: str = "") -> str:
    out = f" class='{esc(css)}'" if css else ""
    return out + (f" title='{esc(title)}'" if title else "")


def settings_table(values: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None,
                   meanings: Mapping[str, str] | None = None) -> str:
    """A settings block as a table: setting, value, and (when known) default and meaning.

    Nested mappings are flattened to dotted names; a value that differs from its default
    is shown in bold, so what a grid changed stands out.
    """
    defaults = defaults or {}
    meanings = meanings or {}
    flat = flatten(values)
    columns = [Column("setting", text=True), Column("value", text=True)]
    if defaults:
        columns.append(Column("default", text=True))
    if meanings:
        columns.append(Column("meaning", text=True))
    rows = []
    for name, value in flat.items():
        changed = name in defaults and defaults[name] != value
        shown = f"<b>{esc(show_value(value))}</b>" if changed else esc(show_value(value))
        cells = [text_cell(name), Cell(shown, css="text")]
        if defaults:
            cells.append(text_cell(show_value(defaults[name]) if name in defaults else "", css="text muted"))
        if meanings:
            cells.append(text_cell(meanings.get(name.split(".")[0], ""), css="wrap"))
        rows.append(cells)
    return table(columns, rows, css="settings")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def show_value(value: Any) -> str:
    """A setting as a reader writes it in YAML: ``none``, ``true``, lists comma-separated."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(show_value(v) for v in value) or "[]"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={show_value(v)}" for k, v in value.items()) or "{}"
    return str(value)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(png: bytes, alt: str, caption: str = "") -> str:
    """An inline PNG figure (``caption`` is HTML)."""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img alt='{esc(alt)}' src='{png_uri(png)}'>{cap}</figure>"


def definition_list(items: Sequence[tuple[str, str]]) -> str:
    """``<dl class='meta'>``: (term, HTML description) pairs."""
    return "<dl class='meta'>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"
