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
    _score_pairs,
    heatmaps_to_boxes,
    localization_metrics,
    tune_policy,
)
from .data import BatchLoader, PreparedSplit
from .interfaces import Classifier, Localizer
from .locmetrics.bootstrap import bootstrap_max_accuracy, bootstrap_mean
from .locmetrics.maxboxacc import maxboxacc, maxboxacc_v2
from .locmetrics.peaks import map_peaks
from .locmetrics.pointing import pointing_game
from .locmetrics.pxap import pxap
from .maskscoring import MaskColumns, MaskSink, score_masks, tune_masks
from .options import options_to_dict, parse_options


@dataclasses.dataclass
class LocalizationRun:
    """Heatmaps (on the host, for the boxed pairs only) and what is needed to score them."""

    maps: np.ndarray  # P x S x S float32
    pair_rows: np.ndarray  # P, row of the image in the split
    pair_classes: np.ndarray  # P, class index
    true_boxes: list[np.ndarray]  # P arrays of T x 4
    peaks: np.ndarray  # P x 2 (x, y); NaN where the map has no peak
    ms_per_image: float
    n_images: int
    peak_valid: np.ndarray | None = None  # P, False for constant / NaN maps
    scale: np.ndarray | None = None  # P x 2, original image pixels per map pixel (x, y)
    patients: np.ndarray | None = None  # P, the patient of each pair's image
    all_maps: np.ndarray | None = None  # images x K' x S x S float16 (``keep_all``): every boxed class
    image_rows: np.ndarray | None = None  # the images of ``all_maps`` (rows of the split)
    map_classes: tuple[int, ...] = ()  # the classes of ``all_maps``


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
    keep_all: bool = False,
    mask_sink: MaskSink | None = None,
) -> LocalizationRun:
    """Run ``localizer`` over the boxed images of ``data`` for every boxed class at once.

    With ``keep_all`` the maps of every boxed class of every image are kept too (float16),
    for ``localization.save_maps``. With ``mask_sink`` the images with masks are explained
    too (every annotated class, in the same localizer call) and each annotated pair's map
    is handed to the sink, which counts it against its mask at the mask's resolution and
    keeps only the counts (memory stays at one full-size mask).
    """
    rows, classes, true = boxed_pairs(data, max_images)
    size = data.size
    mask_rows, mask_classes = _mask_pairs(data, max_images) if mask_sink is not None else (rows[:0], classes[:0])
    if len(rows) == 0 and len(mask_rows) == 0:
        return LocalizationRun(np.zeros((0, size, size), np.float32), rows, classes, true,
                               np.zeros((0, 2)), float("nan"), 0)
    boxed_images = np.unique(rows)
    image_rows = np.union1d(boxed_images, mask_rows).astype(np.int64)
    wanted = sorted(set(classes.tolist()) | set(mask_classes.tolist()))
    grid_hw = feature_grid(model, data, device)
    class_pos = {c: i for i, c in enumerate(wanted)}
    maps_out = np.zeros((len(rows), size, size), dtype=np.float32)
    all_maps = np.zeros((len(image_rows), len(wanted), size, size), dtype=np.float16) if keep_all else None
    loader = BatchLoader(data, batch_size, device, indices=image_rows)
    masks = data.split.masks
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
            if len(pair_idx):
                selected = renormalise(maps[local_n, local_k].float())  # pairs x S x S, still on the device
                maps_out[pair_idx] = selected.cpu().numpy()
            if all_maps is not None:
                at = np.searchsorted(image_rows, batch_rows)
                all_maps[at] = renormalise(maps.float()).cpu().numpy().astype(np.float16)
            if mask_sink is not None:
                _send_masks(mask_sink, model, x, maps, batch_rows, mask_rows, mask_classes, class_pos, masks, device)
    finally:
        model.train(was_training)
        if mask_sink is not None:
            mask_sink.flush()
    ms = 1000.0 * elapsed / max(len(image_rows), 1)
    found = map_peaks(maps_out, grid_hw)
    sizes = np.asarray(data.source_sizes, dtype=np.float64)[rows]  # (height, width) of each pair's image
    scale = np.column_stack([sizes[:, 1] / size, sizes[:, 0] / size]) if len(rows) else np.zeros((0, 2))
    patients = np.asarray(data.split.patient_ids, dtype=str)[rows]
    return LocalizationRun(maps_out, rows, classes, true, found.xy, ms, len(image_rows), found.valid, scale, patients,
                           all_maps, image_rows, tuple(wanted))


def _mask_pairs(data: PreparedSplit, max_images: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The annotated (row, class) pairs of ``data``, on its first ``max_images`` annotated images."""
    rows, classes = data.split.mask_pairs
    if max_images is not None and len(rows):
        keep = np.isin(rows, np.unique(rows)[:max_images])
        rows, classes = rows[keep], classes[keep]
    return rows, classes


def _send_masks(sink: MaskSink, model: Classifier, x: torch.Tensor, maps: torch.Tensor, batch_rows: np.ndarray,
                mask_rows: np.ndarray, mask_classes: np.ndarray, class_pos: dict[int, int], masks: Any,
                device: torch.device) -> None:
    """Hand one batch's annotated maps (and, for gating, the model's probabilities) to the sink."""
    here = np.flatnonzero(np.isin(mask_rows, batch_rows))
    if not len(here):
        return
    local_n = np.searchsorted(batch_rows, mask_rows[here])
    local_k = np.array([class_pos[int(c)] for c in mask_classes[here]], dtype=np.int64)
    # Maps go to the host as they are: the sink resizes each one to its mask and normalises
    # it there (min-max after resizing, as cheXlocalize), so nothing is normalised twice.
    chosen = maps[torch.as_tensor(local_n, device=device), torch.as_tensor(local_k, device=device)]
    host_maps = chosen.float().cpu().numpy()
    probs = None
    if sink.wants_probabilities:
        with torch.no_grad():
            logits = model(x).float()
        probs = torch.sigmoid(logits).cpu().numpy()[local_n, mask_classes[here]]
    refs = [masks[(int(r), int(c))] for r, c in zip(mask_rows[here], mask_classes[here], strict=True)]
    sink.submit(mask_rows[here], mask_classes[here], host_maps, refs, probs)


def save_maps(path: Path, run: LocalizationRun, data: PreparedSplit, class_names: list[str]) -> None:
    """Write a run's maps in the documented ``.npz`` format (README, "Saved maps").

    Arrays: ``maps`` (N x K x S x S float16, the normalised maps that were scored: every
    image with a box or a mask, every class with one), ``ids`` (N), ``classes`` (K), and
    the scored boxes in the same S x S pixel space: ``box_index`` (M, row into ``ids``),
    ``box_class`` (M, index into ``classes``), ``box_xywh`` (M x 4). ``cxrbench score``
    reads the same file.
    """
    from .artifacts import save_npz_atomic

    if run.all_maps is None or run.image_rows is None:
        raise ValueError("save_maps needs a run computed with keep_all=True")
    position = {int(r): i for i, r in enumerate(run.image_rows)}
    class_position = {c: i for i, c in enumerate(run.map_classes)}
    index, klass, xywh = [], [], []
    for row, c, boxes in zip(run.pair_rows, run.pair_classes, run.true_boxes, strict=True):
        for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            index.append(position[int(row)])
            klass.append(class_position[int(c)])
            xywh.append(box)
    save_npz_atomic(path, maps=run.all_maps, ids=np.asarray([str(data.split.ids[r]) for r in run.image_rows]),
                    classes=np.asarray([class_names[c] for c in run.map_classes]),
                    box_index=np.asarray(index, dtype=np.int64), box_class=np.asarray(klass, dtype=np.int64),
                    box_xywh=np.asarray(xywh, dtype=np.float64).reshape(-1, 4))


def renormalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each ``S x S`` map (a constant map becomes zeros, NaN stays NaN).

    Upsampling moves a map's extremes (an interior cell's maximum is about 0.97 after
    3x3 -> 96 px), so a fraction-of-max threshold would not mean what it says without this.
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), maps - low)


def feature_grid(model: Classifier, data: PreparedSplit, device: torch.device) -> tuple[int, int] | None:
    """``(h, w)`` of the model's feature map at this split's input size (the maps' raw grid)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not len(data):
        return None
    size = data.size
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            fmap = backbone.forward_features(torch.zeros((1, 1, size, size), device=device))
        finally:
            model.train(was_training)
    return (int(fmap.shape[-2]), int(fmap.shape[-1])) if fmap.ndim == 4 else None


def score(run: LocalizationRun, policy: ThresholdPolicy, class_names: list[str], hit_tolerance: float, *,
          box_thresholds: int = 100, n_boot: int = 0, boot_seed: int = 0,
          ci: float = 0.95) -> tuple[dict[str, float], dict[str, Any]]:
    """Every localization metric of a run's maps, and the choices the threshold-free ones made.

    * Boxes from ``policy``: IoU / IoBB / Wang's accuracy and cxrbench's AFP (``boxes``).
    * Pointing game (Zhang et al. 2016): hit when the peak is within ``hit_tolerance``
      ORIGINAL-image pixels of a true box; ``hit_rate`` is the mean over classes, maps
      without a peak (constant, NaN) are misses and counted in ``no_peak_maps``.
    * MaxBoxAcc and MaxBoxAccV2 (Choe et al. 2020) over ``box_thresholds`` thresholds, and
      PxAP (pixel average precision, the true boxes rasterised as masks).
    * With ``n_boot``: patient-level percentile bootstrap intervals (level ``ci``) of IoU,
      hit rate and MaxBoxAccV2 (``<key>_ci_low`` / ``<key>_ci_high``).

    Returns:
        (metrics, extra settings: the best thresholds of MaxBoxAcc / MaxBoxAccV2).

    """
    n = len(run.pair_rows)
    valid = run.peak_valid if run.peak_valid is not None else np.isfinite(run.peaks).all(axis=1)
    predicted = heatmaps_to_boxes(run.maps, policy) if n else []
    pairs = [
        LocalizationPair(class_index=int(run.pair_classes[i]), true_boxes=run.true_boxes[i], pred_boxes=predicted[i],
                         peak_xy=(float(run.peaks[i, 0]), float(run.peaks[i, 1])))
        for i in range(n)
    ]
    metrics = localization_metrics(pairs, class_names)
    k = len(class_names)
    pg = pointing_game(run.peaks, run.true_boxes, run.pair_classes, valid=valid, scale=run.scale,
                       tolerance=hit_tolerance, n_classes=k)
    metrics["hit_rate"] = pg.hit_rate
    metrics["hit_rate_pairs"] = pg.pair_hit_rate
    metrics["no_peak_maps"] = float(pg.n_no_peak)
    for c, name in enumerate(class_names):
        metrics[f"hit_rate/{name}"] = float(pg.class_hit_rate[c])
    extra: dict[str, Any] = {}
    if n:
        v1 = maxboxacc(run.maps, run.true_boxes, run.pair_classes, n_thresholds=box_thresholds, n_classes=k)
        v2 = maxboxacc_v2(run.maps, run.true_boxes, run.pair_classes, n_thresholds=box_thresholds, n_classes=k)
        metrics["maxboxacc"] = v1.value
        metrics["maxboxacc_v2"] = v2.value
        for delta, value in zip(v2.deltas, v2.max_accuracy, strict=True):
            metrics[f"maxboxacc_v2@{delta:g}"] = float(value)
        ap = pxap(run.maps, run.pair_classes, true_boxes=run.true_boxes, n_thresholds=box_thresholds, n_classes=k)
        metrics["pxap"] = float(ap.ap)
        for c, name in enumerate(class_names):
            metrics[f"maxboxacc/{name}"] = float(v1.class_value[c])
            metrics[f"maxboxacc_v2/{name}"] = float(v2.class_value[c])
            metrics[f"pxap/{name}"] = float(ap.class_ap[c])
        extra = {"maxboxacc_threshold": float(v1.best_threshold[0]),
                 "maxboxacc_v2_thresholds": {f"{d:g}": float(t) for d, t in zip(v2.deltas, v2.best_threshold,
                                                                                 strict=True)},
                 "box_thresholds": box_thresholds}
        best_iou = _score_pairs(pairs, 0.0).best_iou
        extra["_pair_scores"] = {"patients": np.asarray(run.patients, dtype=str), "classes": run.pair_classes,
                                 "rows": run.pair_rows, "best_iou": best_iou, "hits": pg.hits,
                                 "correct": v2.correct()}
        if n_boot > 0:
            metrics.update(localization_intervals(run, best_iou, pg.hits, v2.correct(), n_boot=n_boot,
                                                  seed=boot_seed, ci=ci, n_classes=k))
    return metrics, extra


def localization_intervals(run: LocalizationRun, best_iou: np.ndarray, hits: np.ndarray, correct: np.ndarray, *,
                           n_boot: int, seed: int, ci: float, n_classes: int) -> dict[str, float]:
    """Patient-level percentile bootstrap intervals of ``iou_mean``, ``hit_rate`` and ``maxboxacc_v2``.

    Each statistic is recomputed per replicate exactly as it is reported
    (:mod:`cxrbench.locmetrics.bootstrap`): the mean IoU over pairs, the pointing game's mean
    over classes, and MaxBoxAccV2 with its thresholds chosen again in every replicate.
    """
    intervals = {
        "iou_mean": bootstrap_mean(best_iou, run.patients, n_boot=n_boot, seed=seed, ci=ci),
        "hit_rate": bootstrap_mean(hits, run.patients, classes=run.pair_classes, n_boot=n_boot, seed=seed, ci=ci),
        "maxboxacc_v2": bootstrap_max_accuracy(correct, run.patients, n_boot=n_boot, seed=seed, ci=ci),
    }
    out: dict[str, float] = {}
    for key, interval in intervals.items():
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(interval.low), float(interval.high)
    return out


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
    box_thresholds: int = 100,
    n_boot: int = 0,
    boot_seed: int = 0,
    ci: float = 0.95,
    maps_path: Path | None = None,
    pair_scores_path: Path | None = None,
    masks: Any = None,
    mask_tune_on: PreparedSplit | None = None,
    sanity: Any = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
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
        hit_tolerance: pointing-game tolerance in original-image pixels (Euclidean).
        max_images: score at most this many boxed images.
        tune_on: a VALIDATION split with boxes; when given, the policy's parameter is
            tuned on it and the tuned policy is applied to ``boxed``.
        overlay_dir: where to save overlay PNGs (None = none).
        overlays: how many boxed images to draw.
        box_thresholds: thresholds of the MaxBoxAcc sweeps.
        n_boot: bootstrap replicates of the localization intervals (0 = none).
        boot_seed: their seed.
        ci: their level.
        maps_path: where to save the scored maps (None = not saved).
        pair_scores_path: where to save the per-pair scores (best IoU, hit, MaxBoxAccV2
            correctness) used by paired comparisons of localizers.
        masks: the ``localization.masks`` settings; where ``boxed`` has masks, the mask
            metrics (:mod:`cxrbench.maskscoring`) are computed in the same localizer pass.
        mask_tune_on: the part whose masks tune the per-class thresholds / cut-offs (needed
            when ``masks.tune`` or ``masks.gate``).
        sanity: the ``localization.sanity`` settings (:class:`cxrbench.config.SanitySpec`);
            the checks it switches on (:mod:`cxrbench.sanity`) run on the scored maps and add
            their metrics to the same row and their stages and curves to ``settings["sanity"]``.
        autocast_dtype: the cell's autocast dtype, for the sanity checks' forward passes.
        channels_last: the cell's memory format, for the sanity checks' forward passes.

    Returns:
        (metrics, settings): settings holds the policy actually used and how it was chosen.

    """
    settings: dict[str, Any] = {"policy": options_to_dict(policy), "tuned": False}
    if tune_on is not None and tune_on.boxes.empty:
        raise ValueError(f"localization.tune: split '{tune_on.name}' has no boxes to tune on")
    scored_masks = masks is not None and bool(boxed.split.masks)
    columns = MaskColumns.of(masks) if scored_masks else None
    mask_tuning = None
    if scored_masks and (masks.tune or masks.gate):
        if mask_tune_on is None or not mask_tune_on.split.masks:
            where = f"'{mask_tune_on.name}'" if mask_tune_on is not None else "the tuning part"
            raise ValueError(f"localization.masks: tune/gate need masks to tune on, and {where} has none")
        val_sink = MaskSink(len(class_names), columns, probabilities=masks.gate)
        val_run = compute_maps(model, localizer, mask_tune_on, batch_size=batch_size, device=device,
                               mask_sink=val_sink)
        mask_tuning = tune_masks(val_sink.counts(), columns, masks, len(class_names), mask_tune_on.name)
        if tune_on is not mask_tune_on:
            val_run = None
    else:
        val_run = None
    if tune_on is not None:
        if val_run is None:
            val_run = compute_maps(model, localizer, tune_on, batch_size=batch_size, device=device)
        policy, table = tune_policy(
            [val_run.maps[i] for i in range(len(val_run.pair_rows))],
            val_run.true_boxes,
            val_run.pair_classes.tolist(),
            policy,
        )
        settings = {"policy": options_to_dict(policy), "tuned": True, "tuned_on": tune_on.name,
                    "tuning": table if isinstance(table, (list, dict)) else str(table)}
    sink = MaskSink(len(class_names), columns, probabilities=masks.gate) if scored_masks else None
    run = compute_maps(model, localizer, boxed, batch_size=batch_size, device=device, max_images=max_images,
                       keep_all=maps_path is not None, mask_sink=sink)
    metrics, extra = score(run, policy, class_names, hit_tolerance, box_thresholds=box_thresholds, n_boot=n_boot,
                           boot_seed=boot_seed, ci=ci)
    if sink is not None:
        mask_metrics, mask_settings = score_masks(
            sink.counts(), class_names, masks, columns, patients=np.asarray(boxed.split.patient_ids, dtype=str),
            hit_tolerance=hit_tolerance, tuning=mask_tuning, n_boot=n_boot, boot_seed=boot_seed, ci=ci)
        metrics.update(mask_metrics)
        settings["masks"] = mask_settings
        settings["boxes_from_masks"] = bool(boxed.split.boxes_from_masks)
    pair_scores = extra.pop("_pair_scores", None)
    settings.update(extra)
    if pair_scores_path is not None and pair_scores is not None:
        from .artifacts import save_npz_atomic

        ids = np.asarray([str(boxed.split.ids[r]) for r in pair_scores.pop("rows")])
        save_npz_atomic(pair_scores_path, ids=ids, **pair_scores)
    if maps_path is not None:
        save_maps(maps_path, run, boxed, class_names)
    metrics["loc_ms_per_image"] = run.ms_per_image
    metrics["loc_images"] = float(run.n_images)
    if sanity is not None and sanity.active:
        from .sanity import evaluate_sanity

        sanity_metrics, settings["sanity"] = evaluate_sanity(
            model, localizer, boxed, run, class_names, sanity, batch_size=batch_size, device=device,
            dtype=autocast_dtype, channels_last=channels_last, n_boot=n_boot, boot_seed=boot_seed, ci=ci)
        metrics.update(sanity_metrics)
    if overlay_dir is not None and overlays > 0 and run.n_images:
        from .overlays import save_overlays

        save_overlays(boxed, run, policy, class_names, overlay_dir, limit=overlays)
    return metrics, settings
