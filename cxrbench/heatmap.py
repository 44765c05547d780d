"""Rebuild a finished cell (data + trained model) and draw its localizers' heatmaps.

Used by ``cxrbench heatmap`` and by the HTML report's gallery. Nothing is retrained: the
cell's ``best.pt`` is loaded (``weights_only=True``) into the model its stored config
describes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .errors import UsageError
from .options import parse_options
from .registry import ComponentSpec


def load_cell(store: Any, registry: Any, cell_id: str, device: torch.device | None = None) -> tuple[Any, Any, Any]:
    """(dataset, trained classifier in eval mode, stored CellResult) of a finished cell."""
    from .config import TrainSpec
    from .interfaces import Classifier
    from .pipeline import input_size, open_dataset

    cell = store.cell(store.resolve(cell_id))
    if cell.status != "ok":
        raise UsageError(f"cell {cell.cell_id} did not finish ok ({cell.error})")
    checkpoint = store.artifacts(cell.cell_id).best
    if not checkpoint.exists():
        raise UsageError(f"cell {cell.cell_id} has no checkpoint at {checkpoint}")
    config = cell.config
    dataset = open_dataset(registry.create("dataset", config["dataset"], "dataset"))
    model = Classifier.build(registry.create("backbone", config["backbone"], "backbone"),
                             registry.create("head", config["head"], "head"), list(dataset.classes))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    device = device or torch.device("cpu")
    model.to(device).eval()
    train = parse_options(TrainSpec, config.get("train", {}), "train", "train")
    model.input_size = input_size(train, dataset)  # remembered for rendering
    return dataset, model, cell


def scored_policy(store: Any, cell_id: str, spec: ComponentSpec) -> dict[str, Any] | None:
    """The threshold policy a cell's stored localization row used for ``spec``, or None.

    Rows are matched by localizer key (name, options and effective threshold, with the
    default threshold of the grid that scored the row), so a tuned value is found too.
    """
    from .config import LocalizationSpec
    from .grid import localizer_key
    from .options import options_to_dict

    cell = store.cell(cell_id)
    if cell is None:
        return None
    grids = store.grids_of().get(cell_id, [])
    for loc in cell.localizations:
        policy = loc.settings.get("policy")
        if not loc.ok or not policy:
            continue
        for grid in grids:
            stored = (store.grid_spec(grid) or {}).get("localization") or {}
            block = options_to_dict(parse_options(LocalizationSpec, stored, "localization", "localization"))
            if loc.key == localizer_key(spec, stored.get("threshold"), block):
                return policy
    return None


def render_heatmaps(
    store: Any,
    registry: Any,
    cell_id: str,
    localizers: list[ComponentSpec],
    out_dir: Path,
    *,
    split: str = "boxes",
    images: list[str] | None = None,
    count: int = 4,
    threshold: dict | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Draw, per image and class with a box, the X-ray with each localizer's heatmap.

    A localizer that cannot explain the cell's model (its ``unsupported_reason``), or fails
    while computing its maps, is skipped with one ``warn`` line giving the reason; the
    others are drawn. Only when none can be drawn is it an error.

    Args:
        store: the results store.
        registry: the component registry.
        cell_id: a finished cell (a unique prefix is enough).
        localizers: localizer choices to draw.
        out_dir: where PNG files go (created).
        split: the split to draw from.
        images: image ids to draw (default: the first ``count`` boxed images).
        count: how many images when ``images`` is not given.
        threshold: heatmap-to-box policy override. Default: the policy the cell's stored
            localization row for that localizer used (tuned values included), so the green
            boxes are the ones that were scored; else the localizer's own default.
        warn: receives one line per skipped localizer.

    Returns:
        The PNG files written: ``<image>_<class>_<localizer>.png``.

    """
    from .boxes import ThresholdPolicy, heatmap_to_boxes
    from .data import load_split
    from .localization import compute_maps, resolve_policy
    from .overlays import render_overlay, safe_name

    dataset, model, cell = load_cell(store, registry, cell_id)
    if split not in dataset.split_names:
        raise UsageError(f"dataset '{dataset.NAME}' has no split {split!r} (splits: {', '.join(dataset.split_names)})")
    data = load_split(dataset, split, model.input_size)
    if images:
        known = {str(i): n for n, i in enumerate(data.split.ids)}
        missing = [i for i in images if i not in known]
        if missing:
            raise UsageError(f"image {missing[0]!r} is not in split {split!r} of {dataset.NAME}")
        keep = {known[i] for i in images}
        boxed = set(data.boxes["index"].tolist())
        unboxed = [i for i in images if known[i] not in boxed]
        if unboxed:
            raise UsageError(f"image {unboxed[0]!r} has no boxes in split {split!r} of {dataset.NAME}")
    else:
        keep = set(np.unique(data.boxes["index"].to_numpy())[:count].tolist()) if not data.boxes.empty else set()
    if not keep:
        raise UsageError(f"no boxed images to draw in split {split!r}")
    data.boxes = data.boxes[data.boxes["index"].isin(keep)]
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // data.size)
    written: list[Path] = []
    classes = list(dataset.classes)
    skipped: list[str] = []
    for spec in localizers:
        localizer = spec.cls(spec.options)
        reason = localizer.unsupported_reason(model)
        if reason:
            skipped.append(f"localizer '{spec.name}' cannot explain cell {cell.cell_id}: {reason}")
            continue
        if threshold:
            policy = parse_options(ThresholdPolicy, threshold, "threshold", f"localizer '{spec.name}'")
        else:
            scored = scored_policy(store, cell.cell_id, spec)
            policy = (parse_options(ThresholdPolicy, scored, "threshold", f"localizer '{spec.name}'") if scored
                      else resolve_policy(spec.cls, spec.threshold, None))
        try:
            run = compute_maps(model, localizer, data, batch_size=8, device=torch.device("cpu"))
        except Exception as exc:  # that localizer's failure, not the other localizers'
            skipped.append(f"localizer '{spec.name}' failed on cell {cell.cell_id}: {type(exc).__name__}: "
                           f"{str(exc).strip()[:200]}")
            continue
        for p in range(len(run.pair_rows)):
            row = int(run.pair_rows[p])
            cls = classes[int(run.pair_classes[p])]
            picture = render_overlay(np.asarray(data.images[row]), run.maps[p], run.true_boxes[p],
                                     heatmap_to_boxes(run.maps[p], policy), title=f"{cls} / {spec.name}", scale=scale)
            path = out_dir / f"{safe_name(str(data.split.ids[row]))}_{safe_name(cls)}_{safe_name(spec.name)}.png"
            cv2.imwrite(str(path), picture)
            written.append(path)
    if skipped and not written:
        raise UsageError(skipped[0] if len(skipped) == 1 else
                         f"none of the {len(skipped)} localizers can be drawn ({skipped[0]})")
    for line in skipped:
        if warn is not None:
            warn(f"{line}; skipped")
    return written
