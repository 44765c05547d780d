"""``cxrbench report``: ONE self-contained HTML file (images inlined, no network needed).

Sections: the grid, the leaderboards (with the significance of the top row), ROC curves
per class for the best cells (matplotlib), and a gallery of heatmap overlays with the
true box (red) and predicted boxes (green).
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


def roc_figure(predictions: Path, title: str) -> bytes:
    """ROC curves of every class of one cell, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import auroc, roc_curve_points

    data = np.load(predictions)
    labels, scores, classes = data["labels"], data["scores"], [str(c) for c in data["classes"]]
    values = auroc(labels, scores)
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=90)
    for k, points in enumerate(roc_curve_points(labels, scores)):
        if points is None:
            continue
        fpr, tpr = points[0], points[1]
        ax.plot(fpr, tpr, lw=1.3, label=f"{classes[k]} ({values[k]:.3f})")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _gallery_images(store: Any, registry: Any, grid_name: str, records: list[dict[str, Any]], count: int,
                    workdir: Path) -> list[tuple[str, Path]]:
    """Saved overlays of the grid's cells, or freshly drawn ones for the best cell."""
    found: list[tuple[str, Path]] = []
    for r in records:
        folder = store.cell_dir(r["cell_id"]) / "overlays"
        if folder.is_dir():
            found += [(f"{r['backbone']} / {r['head']} / {p.parent.name}", p) for p in sorted(folder.glob("*/*.png"))]
    if found:
        return found[: count * 4]
    spec = store.grid_spec(grid_name) or {}
    ranked = sort_records([r for r in records if r["status"] == "ok"])
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
    body.append("<h2>ROC curves</h2><div>")
    ranked = sort_records(list({r["cell_id"]: r for r in records if r["status"] == "ok"}.values()))
    for r in ranked[:roc_cells]:
        predictions = store.cell_dir(r["cell_id"]) / "predictions.npz"
        if predictions.exists():
            title = f"{r['backbone']} / {r['head']} / seed {r['seed']}"
            body.append(f"<figure><img alt='ROC {html.escape(title)}' "
                        f"src='{_png_data_uri(roc_figure(predictions, title))}'></figure>")
    body.append("</div><h2>Heatmaps</h2><p class='muted'>true box red, predicted boxes green</p>"
                "<div class='gallery'>")
    with tempfile.TemporaryDirectory() as tmp:
        for caption, path in _gallery_images(store, registry, grid_name, records, gallery_images, Path(tmp)):
            if path.is_file():
                body.append(f"<figure><img alt='{html.escape(path.stem)}' src='{_png_data_uri(path.read_bytes())}'>"
                            f"<figcaption>{html.escape(caption)}<br>{html.escape(path.stem)}</figcaption></figure>")
            else:
                body.append(f"<p class='muted'>{html.escape(caption)}</p>")
    body.append("</div>")
    return html_page(f"cxrbench report: {grid_name}", "\n".join(body))
