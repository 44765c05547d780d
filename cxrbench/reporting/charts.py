"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Every function takes plain values (no store, no rows) so that each figure can be tested
on hand-made numbers; :mod:`cxrbench.reporting.html` decides what goes in.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# a qualitative palette that stays apart for colour-blind readers (Okabe & Ito, 2008)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
DPI = 100
LABELLED_POINTS = 8
"""Speed-accuracy charts name every point up to this many, else only the Pareto front."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    _pyplot().close(fig)
    return buffer.getvalue()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- ROC


def roc_figures(cells: list[tuple[str, Path]]) -> list[tuple[str, bytes]]:
    """One ROC figure per class, with a curve for each cell, as PNG bytes.

    Comparing models is what a leaderboard report is for, so each class gets its own
    axes with the cells overlaid (rather than one figure per cell); the legend sits below
    the axes at a readable size, each entry with the cell's AUROC for that class.

    Args:
        cells: ``(label, predictions.npz path)`` per cell, best first.

    Returns:
        ``(class name, PNG bytes)`` per class, in the first cell's class order.

    """
    plt = _pyplot()
    from ..metrics import auroc, roc_curve_points

    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray, float]]] = {}
    from ..artifacts import load_predictions

    for label, path in cells:
        saved = load_predictions(Path(path))
        if saved is None:  # unreadable (e.g. object arrays): that cell has no curve
            continue
        labels, scores, classes = saved.labels, saved.scores, list(saved.classes)
        values = auroc(labels, scores)
        for k, points in enumerate(roc_curve_points(labels, scores)):
            entry = curves.setdefault(classes[k], [])
            if points is not None:
                entry.append((label, points[0], points[1], float(values[k])))
    figures = []
    for name, entries in curves.items():
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        for i, (label, fpr, tpr, value) in enumerate(entries):
            ax.plot(fpr, tpr, lw=1.6, color=PALETTE[i % len(PALETTE)], label=f"{label}  {value:.3f}")
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=name, xlim=(0, 1), ylim=(0, 1.01))
        ax.set_aspect("equal")
        if entries:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, title="cell  AUROC",
                      title_fontsize=8, handlelength=1.5)
        else:  # a class without both labels in the test split has no curve: say so in the figure
            ax.text(0.5, 0.5, "no positive and negative\ntest images", ha="center", va="center", fontsize=9)
        figures.append((name, _png(fig)))
    return figures


# --------------------------------------------------------------------------- speed against accuracy


@dataclasses.dataclass(frozen=True)
class TradeoffPoint:
    """One configuration in a speed-against-accuracy chart.

    Attributes:
        label: what the chart calls it.
        x: the speed figure (images per second, or milliseconds per image).
        y: the accuracy figure (mean over seeds).
        y_sd: its standard deviation over seeds (NaN or None: no error bar).

    """

    label: str
    x: float
    y: float
    y_sd: float | None = None


def pareto_front(xs: Sequence[float], ys: Sequence[float], *, x_higher: bool = True,
                 y_higher: bool = True) -> list[int]:
    """Indices of the points no other point dominates, in increasing ``x``.

    A point is dominated when another is at least as good on both axes and strictly better
    on one; "good" is larger for an axis marked ``*_higher``, else smaller. Points with a
    missing (NaN) coordinate are never on the front.
    """
    sx, sy = (1.0 if x_higher else -1.0), (1.0 if y_higher else -1.0)
    points = [(i, sx * float(x), sy * float(y)) for i, (x, y) in enumerate(zip(xs, ys, strict=True))
              if _finite(x) and _finite(y)]
    front = [i for i, x, y in points
             if not any(ox >= x and oy >= y and (ox > x or oy > y) for _, ox, oy in points)]
    return sorted(front, key=lambda i: float(xs[i]))


def tradeoff_figure(points: Sequence[TradeoffPoint], *, xlabel: str, ylabel: str, x_higher: bool = True) -> bytes:
    """A scatter of accuracy against speed, the Pareto front drawn and its points labelled.

    A benchmark user picks from the front: the best accuracy for each speed budget. The
    speed axis is logarithmic when it spans more than a factor of 10.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    xs = [p.x for p in points]
    ys = [p.y for p in points]
    front = pareto_front(xs, ys, x_higher=x_higher)
    for i, p in enumerate(points):
        on_front = i in front
        ax.errorbar(p.x, p.y, yerr=p.y_sd if _finite(p.y_sd) else None, fmt="o", ms=6 if on_front else 4.5,
                    color=PALETTE[0] if on_front else "#8a8f98", ecolor="#b8bcc4", elinewidth=1, capsize=2,
                    zorder=3 if on_front else 2)
    if front:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color=PALETTE[0], lw=1.2, zorder=1,
                label="Pareto front")
        ax.legend(loc="lower right" if x_higher else "lower left", frameon=False)
    # every point is named while that stays legible; beyond, only the front (the rest is in the tables)
    named = range(len(points)) if len(points) <= LABELLED_POINTS else front
    for i in named:
        ax.annotate(points[i].label, (xs[i], ys[i]), textcoords="offset points", xytext=(5, 4), fontsize=7.5,
                    color="#1f2328" if i in front else "#6e7781")
    finite = [x for x in xs if _finite(x) and x > 0]
    if finite and max(finite) / min(finite) > 10:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel + ("  (higher is faster)" if x_higher else "  (lower is faster)"), ylabel=ylabel)
    ax.grid(alpha=0.25)
    ax.margins(x=0.15, y=0.12)
    return _png(fig)


# --------------------------------------------------------------------------- per class


@dataclasses.dataclass(frozen=True)
class BarSeries:
    """One configuration's per-class values (means over seeds, with their spread)."""

    label: str
    values: Sequence[float]
    sds: Sequence[float] | None = None


def per_class_figure(series: Sequence[BarSeries], classes: Sequence[str], *, ylabel: str,
                     ylim: tuple[float, float] | None = (0.0, 1.0)) -> bytes:
    """Grouped bars: one group per class, one bar per configuration, error bars the spread over seeds."""
    plt = _pyplot()
    n = max(len(series), 1)
    width_in = min(12.0, max(5.0, 0.35 * n * len(classes) + 1.5))
    fig, ax = plt.subplots(figsize=(width_in, 3.4))
    step = 0.8 / n
    base = np.arange(len(classes), dtype=float)
    for i, s in enumerate(series):
        values = np.asarray([v if _finite(v) else np.nan for v in s.values], dtype=float)
        sds = None if s.sds is None else np.asarray([v if _finite(v) else 0.0 for v in s.sds], dtype=float)
        ax.bar(base - 0.4 + step * (i + 0.5), values, step * 0.92, yerr=sds, capsize=2, label=s.label,
               color=PALETTE[i % len(PALETTE)], error_kw={"elinewidth": 0.8, "ecolor": "#444"})
    ax.set_xticks(base, list(classes), rotation=30 if len(classes) > 6 else 0,
                  ha="right" if len(classes) > 6 else "center")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22 if len(classes) > 6 else -0.12), ncol=min(n, 3),
              frameon=False)
    return _png(fig)


# --------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """One cell's training history (``info["history"]``) and its kept epoch."""

    label: str
    history: Sequence[dict[str, Any]]
    best_epoch: int | None = None


def training_figure(title: str, runs: Sequence[TrainingRun]) -> bytes:
    """Training loss and validation mean AUROC per epoch, one line per run (seed), best epoch marked."""
    plt = _pyplot()
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(5.6, 2.3))
    for i, run in enumerate(runs):
        colour = PALETTE[i % len(PALETTE)]
        epochs = [h.get("epoch") for h in run.history]
        for ax, key in ((loss_ax, "loss"), (auc_ax, "val_auroc_mean")):
            values = [h.get(key) if _finite(h.get(key)) else np.nan for h in run.history]
            ax.plot(epochs, values, marker="o", ms=3, lw=1.3, color=colour, label=run.label)
            if run.best_epoch in epochs:
                at = epochs.index(run.best_epoch)
                ax.plot([run.best_epoch], [values[at]], marker="*", ms=10, color=colour, zorder=4)
    loss_ax.set(title="training loss", xlabel="epoch")
    auc_ax.set(title="validation AUROC (star: kept epoch)", xlabel="epoch")
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.25)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if runs:
        auc_ax.legend(loc="lower right", frameon=False)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- calibration


def reliability_figure(class_name: str, edges: np.ndarray, mean_predicted: np.ndarray, observed: np.ndarray,
                       counts: np.ndarray) -> bytes:
    """A reliability diagram (DeGroot & Fienberg 1983; Guo et al., ICML 2017): observed frequency
    of positives against the mean predicted probability per bin, the diagonal is perfect
    calibration; the bar under it counts the images per bin.
    """
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(3.2, 3.6), height_ratios=(3, 1), sharex=True)
    edges = np.asarray(edges, dtype=float)
    counts = np.asarray(counts, dtype=float)
    filled = counts > 0
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.plot(np.asarray(mean_predicted, float)[filled], np.asarray(observed, float)[filled], marker="o", ms=4,
            lw=1.3, color=PALETTE[0])
    ax.set(ylabel="observed positives", title=class_name, xlim=(0, 1), ylim=(0, 1.02))
    hist.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#b8bcc4", edgecolor="white")
    hist.set(xlabel="mean predicted probability", ylabel="images")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- colour bar


def colour_bar(width: int = 256, height: int = 14) -> bytes:
    """The overlays' colour scale (OpenCV's JET, as :func:`cxrbench.overlays.render_overlay` uses)."""
    import cv2

    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    ok, data = cv2.imencode(".png", cv2.applyColorMap(ramp, cv2.COLORMAP_JET))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("could not encode the colour bar")
    return data.tobytes()
