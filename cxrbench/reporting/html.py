"""HTML: the leaderboard tables and ``cxrbench report``'s ONE self-contained file (images inlined).

Report sections: the grid, the leaderboards (with the significance of the top row), ROC
curves per class comparing the best cells (matplotlib), and a gallery of heatmap overlays
with the true box (red) and predicted boxes (green).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import catalogue
from .columns import (
    cell_text,
    ci_level,
    ci_text,
    classification_keys,
    localization_keys,
    per_class_auroc_keys,
    speed_keys,
)
from .rows import LeaderboardRow, cell_rows, localizer_rows, rows_from_cells
from .significance import significance

HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0} td.axis{text-align:left}
h1,h2,h3{font-weight:600} .muted{color:#777} .gallery img{margin:4px;border:1px solid #ddd}
figure{display:inline-block;margin:6px;text-align:center;font-size:12px}
.failed{color:#b00}
"""


def _table(header: Sequence[str], body: Sequence[Sequence[str]], axis_columns: int) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = []
    for cells in body:
        tds = "".join(f"<td class='axis'>{c}</td>" if i < axis_columns else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        lines.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def html_tables(rows: Sequence[LeaderboardRow], sort_key: str | None = None) -> str:
    """The classification and localization leaderboards as HTML tables, ranked as in the terminal."""
    if not rows:
        return "<p>No results.</p>"
    axes = ["dataset", "backbone", "head", "seed", "status"]
    cells = cell_rows(rows, sort_key)
    keys = ["auroc_mean", *[k for k in classification_keys(cells) if k != "auroc_mean"]]
    per_class = per_class_auroc_keys(cells)
    speed = speed_keys()
    header = [*axes, catalogue.label("auroc_mean"), ci_level(cells),
              *[catalogue.label(k) for k in keys[1:]], *[catalogue.label(k) for k in per_class],
              *[catalogue.label(k) for k in speed], "cell"]
    body = [[html.escape(str(r.axis(a))) for a in axes] + [cell_text(r, keys[0]), ci_text(r)]
            + [cell_text(r, k) for k in keys[1:] + per_class + speed] + [html.escape(r.cell_id)] for r in cells]
    parts = ["<h2>Classification</h2>", _table(header, body, len(axes))]
    loc = localizer_rows(rows, sort_key)
    if loc:
        loc_keys = localization_keys(loc)
        header = [*axes[:4], "localizer", *[catalogue.label(k) for k in loc_keys], "cell"]
        body = []
        for r in loc:
            if r.localizer_status == "failed":
                values = [f"<span class='failed'>failed: {html.escape(r.localizer_error or '')}</span>"] + \
                    [""] * (len(loc_keys) - 1)
            else:
                values = [cell_text(r, k) for k in loc_keys]
            body.append([html.escape(str(r.axis(a))) for a in axes[:4]] + [html.escape(str(r.localizer))]
                        + values + [html.escape(r.cell_id)])
        parts += ["<h2>Localization</h2>", _table(header, body, 5)]
    return "\n".join(parts)


def html_page(title: str, body: str) -> str:
    """A complete, self-contained HTML document."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def roc_figures(cells: list[tuple[str, Path]]) -> list[tuple[str, bytes]]:
    """One ROC figure per class, with a curve for each cell, as PNG bytes.

    Comparing models is what a leaderboard report is for, so each class gets its own
    axes with the cells overlaid (rather than one figure per cell).

    Args:
        cells: ``(label, predictions.npz path)`` per cell, best first.

    Returns:
        ``(class name, PNG bytes)`` per class, in the first cell's class order.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..metrics import auroc, roc_curve_points

    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray, float]]] = {}
    for label, path in cells:
        data = np.load(path)
        labels, scores, classes = data["labels"], data["scores"], [str(c) for c in data["classes"]]
        values = auroc(labels, scores)
        for k, points in enumerate(roc_curve_points(labels, scores)):
            entry = curves.setdefault(classes[k], [])
            if points is not None:
                entry.append((label, points[0], points[1], float(values[k])))
    figures = []
    for name, entries in curves.items():
        fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=90)
        for label, fpr, tpr, value in entries:
            ax.plot(fpr, tpr, lw=1.3, label=f"{label} ({value:.3f})")
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=name, xlim=(0, 1), ylim=(0, 1.01))
        ax.title.set_fontsize(10)
        if entries:
            ax.legend(fontsize=6, loc="lower right")
        else:  # a class without both labels in the test split has no curve: say so in the figure
            ax.text(0.5, 0.5, "no positive and negative\ntest images", ha="center", va="center", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        figures.append((name, buffer.getvalue()))
    return figures


def _label(r: LeaderboardRow) -> str:
    return f"{r.backbone} / {r.head} / seed {r.seed}"


def _gallery_images(store: Any, registry: Any, grid_name: str, rows: Sequence[LeaderboardRow], count: int,
                    workdir: Path) -> list[tuple[str, Path]]:
    """Saved overlays of the grid's cells (best cells first), or freshly drawn ones for the best cell."""
    ranked = cell_rows([r for r in rows if r.status == "ok"])
    found: list[tuple[str, Path]] = []
    for r in ranked:
        folder = store.artifacts(r.cell_id).overlays_root
        if folder.is_dir():
            found += [(f"{_label(r)} / {p.parent.name}", p) for p in sorted(folder.glob("*/*.png"))]
    if found:
        return found[: count * 4]
    spec = store.grid_spec(grid_name) or {}
    if not ranked or not spec.get("localizers"):
        return []
    from ..heatmap import render_heatmaps

    localizers = [registry.create("localizer", entry, f"localizers[{i}]", allow_threshold=True)
                  for i, entry in enumerate(spec["localizers"])]
    best = ranked[0]
    try:
        paths = render_heatmaps(store, registry, best.cell_id, localizers, workdir, count=count)
    except Exception as exc:  # the report still renders without its gallery
        return [(f"gallery unavailable: {exc}", Path())]
    return [(f"{best.backbone} / {best.head}", p) for p in paths]


def build_report(store: Any, registry: Any, grid_name: str, *, roc_cells: int = 6, gallery_images: int = 3) -> str:
    """The report's HTML text for one grid."""
    rows = rows_from_cells(store.cells(grid_name))
    spec = store.grid_spec(grid_name) or {}
    body = []
    if spec.get("description"):
        body.append(f"<p>{html.escape(spec['description'])}</p>")
    cells = {r.cell_id for r in rows}
    ok = {r.cell_id for r in rows if r.status == "ok"}
    body.append(f"<p class='muted'>{len(cells)} cells ({len(ok)} ok) from {html.escape(str(spec.get('source')))}; "
                f"train settings: {html.escape(str(spec.get('train', {})))}</p>")
    sig = significance(rows, store.root)
    if sig is not None:
        verdict = "significantly better than" if sig.significant else "not significantly different from"
        body.append(f"<p>Best cell <code>{sig.best}</code> is {verdict} the runner-up <code>{sig.next}</code>: "
                    f"mean AUROC difference {sig.diff:.4f} ({100 * sig.level:g}% CI {sig.low:.4f} to {sig.high:.4f}, "
                    f"paired bootstrap over patients, p = {sig.p:.3g}).</p>")
    body.append(html_tables(rows))
    body.append(f"<h2>ROC curves</h2><p class='muted'>per class, the {roc_cells} best cells by mean AUROC</p><div>")
    ranked = cell_rows([r for r in rows if r.status == "ok"])
    with_predictions = [(_label(r), store.artifacts(r.cell_id).predictions) for r in ranked[:roc_cells]]
    with_predictions = [(label, path) for label, path in with_predictions if path.exists()]
    for name, png in roc_figures(with_predictions) if with_predictions else []:
        body.append(f"<figure><img alt='ROC {html.escape(name)}' src='{_png_data_uri(png)}'>"
                    f"<figcaption>ROC {html.escape(name)}</figcaption></figure>")
    body.append("</div><h2>Heatmaps</h2><p class='muted'>true box red, predicted boxes green</p>"
                "<div class='gallery'>")
    with tempfile.TemporaryDirectory() as tmp:
        gallery = _gallery_images(store, registry, grid_name, rows, gallery_images, Path(tmp))
        if not gallery:
            body.append("<p class='muted'>no heatmaps: the grid has no localizers or no finished cell</p>")
        for caption, path in gallery:
            if path.is_file():
                body.append(f"<figure><img alt='{html.escape(path.stem)}' src='{_png_data_uri(path.read_bytes())}'>"
                            f"<figcaption>{html.escape(caption)}<br>{html.escape(path.stem)}</figcaption></figure>")
            else:
                body.append(f"<p class='muted'>{html.escape(caption)}</p>")
    body.append("</div>")
    return html_page(f"cxrbench report: {grid_name}", "\n".join(body))
