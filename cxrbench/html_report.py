"""``cxrbench report``: ONE self-contained HTML file (images inlined, no network needed).

Sections: the grid, the leaderboards (with the significance of the top row), ROC curves
per class comparing the best cells (matplotlib), and a gallery of heatmap overlays with
the true box (red) and predicted boxes (green).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .report import html_page, html_tables, significance, sort_records


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

    from .metrics import auroc, roc_curve_points

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


def _gallery_images(store: Any, registry: Any, grid_name: str, records: list[dict[str, Any]], count: int,
                    workdir: Path) -> list[tuple[str, Path]]:
    """Saved overlays of the grid's cells (best cells first), or freshly drawn ones for the best cell."""
    # one record per cell: a cell has a record per localizer, and its overlay folder holds them all
    ranked = sort_records(list({r["cell_id"]: r for r in records if r["status"] == "ok"}.values()))
    found: list[tuple[str, Path]] = []
    for r in ranked:
        folder = store.cell_dir(r["cell_id"]) / "overlays"
        if folder.is_dir():
            label = f"{r['backbone']} / {r['head']} / seed {r['seed']}"
            found += [(f"{label} / {p.parent.name}", p) for p in sorted(folder.glob("*/*.png"))]
    if found:
        return found[: count * 4]
    spec = store.grid_spec(grid_name) or {}
    if not ranked or not spec.get("localizers"):
        return []
    from .heatmap import component_from_config, render_heatmaps

    localizers = [component_from_config(registry, "localizer", entry, f"localizers[{i}]")
                  for i, entry in enumerate(spec["localizers"])]
    best = ranked[0]
    try:
        paths = render_heatmaps(store, registry, best["cell_id"], localizers, workdir, count=count)
    except Exception as exc:  # the report still renders without its gallery
        return [(f"gallery unavailable: {exc}", Path())]
    return [(f"{best['backbone']} / {best['head']}", p) for p in paths]


def build_report(store: Any, registry: Any, grid_name: str, *, roc_cells: int = 6, gallery_images: int = 3) -> str:
    """The report's HTML text for one grid."""
    records = store.records(grid_name)
    spec = store.grid_spec(grid_name) or {}
    body = []
    if spec.get("description"):
        body.append(f"<p>{html.escape(spec['description'])}</p>")
    cells = {r["cell_id"] for r in records}
    ok = {r["cell_id"] for r in records if r["status"] == "ok"}
    body.append(f"<p class='muted'>{len(cells)} cells ({len(ok)} ok) from {html.escape(str(spec.get('source')))}; "
                f"train settings: {html.escape(str(spec.get('train', {})))}</p>")
    sig = significance(records, store.root)
    if sig is not None:
        verdict = "significantly better than" if sig["significant"] else "not significantly different from"
        body.append(f"<p>Best cell <code>{sig['best']}</code> is {verdict} the runner-up <code>{sig['next']}</code>: "
                    f"mean AUROC difference {sig['diff']:.4f} (95% CI {sig['low']:.4f} to {sig['high']:.4f}, "
                    f"paired bootstrap over patients, p = {sig['p']:.3g}).</p>")
    body.append(html_tables(records))
    body.append(f"<h2>ROC curves</h2><p class='muted'>per class, the {roc_cells} best cells by mean AUROC</p><div>")
    ranked = sort_records(list({r["cell_id"]: r for r in records if r["status"] == "ok"}.values()))
    with_predictions = [(f"{r['backbone']} / {r['head']} / seed {r['seed']}",
                         store.cell_dir(r["cell_id"]) / "predictions.npz") for r in ranked[:roc_cells]]
    with_predictions = [(label, path) for label, path in with_predictions if path.exists()]
    for name, png in roc_figures(with_predictions) if with_predictions else []:
        body.append(f"<figure><img alt='ROC {html.escape(name)}' src='{_png_data_uri(png)}'>"
                    f"<figcaption>ROC {html.escape(name)}</figcaption></figure>")
    body.append("</div><h2>Heatmaps</h2><p class='muted'>true box red, predicted boxes green</p>"
                "<div class='gallery'>")
    with tempfile.TemporaryDirectory() as tmp:
        gallery = _gallery_images(store, registry, grid_name, records, gallery_images, Path(tmp))
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
