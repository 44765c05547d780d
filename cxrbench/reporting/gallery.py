"""The report's heatmap gallery: overlays of the best cell's localizers, each with its own scores.

For a few boxed images of one finished cell, every localizer of the grid draws its map
(:func:`cxrbench.overlays.render_overlay`: true box red, predicted boxes green) and the
map is scored with the leaderboard's definitions (as :func:`cxrbench.localization.score`
does, with the threshold policy the stored row used and the grid's pointing-game
tolerance): the model's probability for the class, the best IoU of a predicted box with a
true box (0 without a predicted box) and whether the peak hit a true box. A localizer that
cannot draw (it failed at run time, or cannot explain this model) is listed with its
reason instead of aborting the gallery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import one_line


@dataclasses.dataclass(frozen=True)
class MapScores:
    """How one map did on its (image, class) pair.

    Attributes:
        probability: the classifier's sigmoid output for the class on the image.
        iou: best IoU of a predicted box with a true box (0 without a predicted box).
        hit: the map's peak is within the grid's ``hit_tolerance`` of a true box.

    """

    probability: float
    iou: float
    hit: bool


@dataclasses.dataclass(frozen=True)
class GalleryItem:
    """One overlay: which image, class and localizer, the PNG, and its scores."""

    image_id: str
    class_name: str
    localizer: str
    png: bytes
    scores: MapScores | None = None


@dataclasses.dataclass(frozen=True)
class Gallery:
    """What the gallery shows for one cell: overlays, and the localizers it could not draw."""

    cell_id: str
    items: tuple[GalleryItem, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (localizer, one-line reason)


def _probabilities(model: Any, data: Any, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Sigmoid outputs of ``model`` for the split rows ``rows`` (row -> K probabilities)."""
    from ..data import BatchLoader

    out: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for x, _y, batch_rows in BatchLoader(data, 8, torch.device("cpu"), indices=np.unique(rows)):
            probs = torch.sigmoid(model(x).float()).numpy()
            out.update({int(r): p for r, p in zip(batch_rows, probs, strict=True)})
    return out


def best_iou(predicted: np.ndarray, true: np.ndarray) -> float:
    """The best IoU of any predicted box with any true box; 0 without a predicted box (as the leaderboard)."""
    from ..boxes import iou_matrix

    overlaps = iou_matrix(predicted, true)
    return float(overlaps.max()) if overlaps.size else 0.0


def _hits(run: Any, tolerance: float, n_classes: int) -> np.ndarray:
    """Per pair, whether the map's peak is within ``tolerance`` original pixels of a true box."""
    from ..locmetrics.pointing import pointing_game

    valid = run.peak_valid if run.peak_valid is not None else np.isfinite(run.peaks).all(axis=1)
    return pointing_game(run.peaks, run.true_boxes, run.pair_classes, valid=valid, scale=run.scale,
                         tolerance=tolerance, n_classes=n_classes).hits


def draw_gallery(store: Any, registry: Any, cell_id: str, localizer_entries: Sequence[Any], *,
                 count: int = 3, split: str = "boxes") -> Gallery:
    """Overlays of the first ``count`` boxed images of ``split`` for every localizer entry.

    Args:
        store: the results store.
        registry: the component registry.
        cell_id: a finished cell.
        localizer_entries: the grid's ``localizers:`` entries.
        count: images to draw (every boxed class of each).
        split: the split to draw from.

    Returns:
        The gallery; localizers that could not be drawn are in ``skipped`` with their reason.

    """
    from ..boxes import ThresholdPolicy, heatmap_to_boxes
    from ..data import load_split
    from ..heatmap import load_cell, scored_policy
    from ..localization import compute_maps, resolve_policy
    from ..options import parse_options
    from ..overlays import render_overlay

    dataset, model, cell = load_cell(store, registry, cell_id)
    spec = store.grid_spec(cell.grid) or {}
    tolerance = float((spec.get("localization") or {}).get("hit_tolerance", 15.0))
    if split not in dataset.split_names:
        return Gallery(cell.cell_id, skipped=(("*", f"dataset has no split {split!r}"),))
    data = load_split(dataset, split, model.input_size)
    keep = np.unique(data.boxes["index"].to_numpy())[:count] if not data.boxes.empty else []
    if not len(keep):
        return Gallery(cell.cell_id, skipped=(("*", f"no boxed images in split {split!r}"),))
    data.boxes = data.boxes[data.boxes["index"].isin(keep)]
    classes = list(dataset.classes)
    scale = max(1, 256 // data.size)
    probabilities: dict[int, np.ndarray] | None = None
    items: list[GalleryItem] = []
    skipped: list[tuple[str, str]] = []
    for i, entry in enumerate(localizer_entries):
        name = entry if isinstance(entry, str) else str(entry.get("name"))
        try:
            choice = registry.create("localizer", entry, f"localizers[{i}]", allow_threshold=True)
            stored = cell.localizer(choice.name)
            if stored is not None and not stored.ok:
                skipped.append((choice.name, f"failed on this cell: {stored.error}"))
                continue
            localizer = choice.cls(choice.options)
            reason = localizer.unsupported_reason(model)
            if reason:
                skipped.append((choice.name, reason))
                continue
            scored = scored_policy(store, cell.cell_id, choice)
            policy = (parse_options(ThresholdPolicy, scored, "threshold", f"localizer '{choice.name}'") if scored
                      else resolve_policy(choice.cls, choice.threshold, None))
            run = compute_maps(model, localizer, data, batch_size=8, device=torch.device("cpu"))
            if probabilities is None:
                probabilities = _probabilities(model, data, run.pair_rows)
            hits = _hits(run, tolerance, len(classes))
            for p in range(len(run.pair_rows)):
                row, k = int(run.pair_rows[p]), int(run.pair_classes[p])
                predicted = heatmap_to_boxes(run.maps[p], policy)
                picture = render_overlay(np.asarray(data.images[row]), run.maps[p], run.true_boxes[p], predicted,
                                         scale=scale)
                ok, png = cv2.imencode(".png", picture)
                scores = MapScores(probability=float(probabilities[row][k]), iou=best_iou(predicted, run.true_boxes[p]),
                                   hit=bool(hits[p]))
                if ok:
                    items.append(GalleryItem(str(data.split.ids[row]), classes[k], choice.name, png.tobytes(), scores))
        except Exception as exc:  # one localizer that cannot draw must not take the others' pictures with it
            skipped.append((name, one_line(f"{type(exc).__name__}: {exc}")[:300]))
    # one row per (image, class), the localizers side by side
    order: dict[tuple[str, str], int] = {}
    for n, it in enumerate(items):
        order.setdefault((it.image_id, it.class_name), n)
    items.sort(key=lambda it: order[(it.image_id, it.class_name)])
    return Gallery(cell.cell_id, tuple(items), tuple(skipped))
