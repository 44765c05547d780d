"""Score a localizer on a split with boxes: heatmaps -> boxes -> IoU / IoBB / hit rate.

A localizer never retrains the model: it explains the trained cell's classifier. All
requested classes are computed in one call per batch; only the maps of (image, class)
pairs that have a true box are copied to the host, once per batch.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boxes import (
    LocalizationPair,
    ThresholdPolicy,
    heatmap_peaks,
    heatmaps_to_boxes,
    localization_metrics,
    tune_policy,
)
from .data import BatchLoader, PreparedSplit
from .interfaces import Classifier, Localizer
from .options import options_to_dict, parse_options


@dataclasses.dataclass
class LocalizationRun:
    """Heatmaps (on the host, for the boxed pairs only) and what is needed to score them."""

    maps: np.ndarray  # P x S x S float32
    pair_rows: np.ndarray  # P, row of the image in the split
    pair_classes: np.ndarray  # P, class index
    true_boxes: list[np.ndarray]  # P arrays of T x 4
    peaks: np.ndarray  # P x 2 (x, y)
    ms_per_image: float
    n_images: int


def boxed_pairs(data: PreparedSplit, max_images: int | None = None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The (image row, class) pairs that have true boxes, and their boxes (x, y, w, h).

    Returns:
        ``rows`` (P,), ``classes`` (P,), and one ``T x 4`` array per pair.

    """
    boxes = data.boxes
    if boxes.empty:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    rows_all = np.unique(boxes["index"].to_numpy())
    if max_images is not None:
        rows_all = rows_all[:max_images]
        boxes = boxes[boxes["index"].isin(rows_all)]
    # keys and boxes from one pass over the groups, so they can never come out in different orders
    groups = list(boxes.groupby(["index", "class_index"], sort=True))
    rows = np.array([int(key[0]) for key, _ in groups], dtype=np.int64)
    classes = np.array([int(key[1]) for key, _ in groups], dtype=np.int64)
    true = [g[["x", "y", "w", "h"]].to_numpy(dtype=np.float64) for _, g in groups]
    return rows, classes, true


def compute_maps(
    model: Classifier,
    localizer: Localizer,
    data: PreparedSplit,
    *,
    batch_size: int,
    device: torch.device,
    max_images: int | None = None,
) -> LocalizationRun:
    """Run ``localizer`` over the boxed images of ``data`` for every boxed class at once."""
    rows, classes, true = boxed_pairs(data, max_images)
    size = data.size
    if len(rows) == 0:
        return LocalizationRun(np.zeros((0, size, size), np.float32), rows, classes, true,
                               np.zeros((0, 2)), float("nan"), 0)
    image_rows = np.unique(rows)
    wanted = sorted(set(classes.tolist()))
    class_pos = {c: i for i, c in enumerate(wanted)}
    maps_out = np.zeros((len(rows), size, size), dtype=np.float32)
    peaks = np.zeros((len(rows), 2), dtype=np.float64)
    loader = BatchLoader(data, batch_size, device, indices=image_rows)
    elapsed = 0.0
    was_training = model.training
    model.eval()
    try:
        for x, _y, batch_rows in loader:
            in_batch = np.isin(rows, batch_rows)
            pair_idx = np.flatnonzero(in_batch)
            local_n = torch.as_tensor(np.searchsorted(batch_rows, rows[pair_idx]), device=device)
            local_k = torch.as_tensor([class_pos[int(c)] for c in classes[pair_idx]], device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            maps = localizer(model, x, wanted)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed += time.perf_counter() - t0
            selected = maps[local_n, local_k].float()  # pairs x S x S, still on the device
            maps_out[pair_idx] = selected.cpu().numpy()
            peaks[pair_idx] = heatmap_peaks(maps_out[pair_idx])
    finally:
        model.train(was_training)
    ms = 1000.0 * elapsed / max(len(image_rows), 1)
    return LocalizationRun(maps_out, rows, classes, true, peaks, ms, len(image_rows))


def score(run: LocalizationRun, policy: ThresholdPolicy, class_names: list[str],
          hit_tolerance: float) -> dict[str, float]:
    """Turn the maps of a run into boxes with ``policy`` and score them."""
    predicted = heatmaps_to_boxes(run.maps, policy) if len(run.pair_rows) else []
    pairs = [
        LocalizationPair(
            class_index=int(run.pair_classes[i]),
            true_boxes=run.true_boxes[i],
            pred_boxes=predicted[i],
            peak_xy=(float(run.peaks[i, 0]), float(run.peaks[i, 1])),
        )
        for i in range(len(run.pair_rows))
    ]
    return localization_metrics(pairs, class_names, hit_tolerance=hit_tolerance)


def resolve_policy(localizer_cls: type, spec_threshold: dict | None, grid_threshold: dict | None) -> ThresholdPolicy:
    """The threshold policy for a localizer: its grid entry, else the grid's, else its default."""
    raw = spec_threshold or grid_threshold or dict(getattr(localizer_cls, "THRESHOLD", {}) or {})
    return parse_options(ThresholdPolicy, raw, "threshold", f"localizer '{localizer_cls.NAME}'")


def evaluate(
    model: Classifier,
    localizer: Localizer,
    boxed: PreparedSplit,
    class_names: list[str],
    policy: ThresholdPolicy,
    *,
    batch_size: int,
    device: torch.device,
    hit_tolerance: float = 0.0,
    max_images: int | None = None,
    tune_on: PreparedSplit | None = None,
    overlay_dir: Path | None = None,
    overlays: int = 0,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Localization metrics of one localizer and the settings that produced them.

    Args:
        model: the trained classifier.
        localizer: the localizer instance.
        boxed: the split whose boxes are scored (never used for tuning).
        class_names: the model's classes.
        policy: heatmap-to-box policy (the starting point when tuning).
        batch_size: images per localizer call.
        device: the model's device.
        hit_tolerance: pointing-game slack in pixels.
        max_images: score at most this many boxed images.
        tune_on: a VALIDATION split with boxes; when given, the policy's parameter is
            tuned on it and the tuned policy is applied to ``boxed``.
        overlay_dir: where to save overlay PNGs (None = none).
        overlays: how many boxed images to draw.

    Returns:
        (metrics, settings): settings holds the policy actually used and how it was chosen.

    """
    settings: dict[str, Any] = {"policy": options_to_dict(policy), "tuned": False}
    if tune_on is not None and tune_on.boxes.empty:
        # say why the stored policy is the untuned one (e.g. NIH and the phantom box only their test images)
        settings["tune_skipped"] = f"split '{tune_on.name}' has no boxes"
    elif tune_on is not None:
        val_run = compute_maps(model, localizer, tune_on, batch_size=batch_size, device=device)
        policy, table = tune_policy(
            [val_run.maps[i] for i in range(len(val_run.pair_rows))],
            val_run.true_boxes,
            val_run.pair_classes.tolist(),
            policy,
        )
        settings = {"policy": options_to_dict(policy), "tuned": True, "tuned_on": tune_on.name,
                    "tuning": table if isinstance(table, (list, dict)) else str(table)}
    run = compute_maps(model, localizer, boxed, batch_size=batch_size, device=device, max_images=max_images)
    metrics = score(run, policy, class_names, hit_tolerance)
    metrics["loc_ms_per_image"] = run.ms_per_image
    metrics["loc_images"] = float(run.n_images)
    if overlay_dir is not None and overlays > 0 and run.n_images:
        from .overlays import save_overlays

        save_overlays(boxed, run, policy, class_names, overlay_dir, limit=overlays)
    return metrics, settings
