"""Mask metrics of a localizer (or of a maps file): counting in the background, tuning, scoring.

The definitions are cheXlocalize's (Saporta et al., Nat. Mach. Intell. 2022) and live in
:mod:`cxrbench.locmetrics.maskmetrics`; this module is the host's side of them:

* :class:`MaskSink` takes each batch's maps as the localizer produces them and counts them
  against their masks in one background thread (OpenCV releases the GIL), so the device
  computes the next batch meanwhile. Only counts are kept.
* :func:`tune_masks` chooses per-class thresholds and probability cut-offs on the tuning
  part's counts, never on the scored ones.
* :func:`score_masks` turns the scored part's counts into mIoU, hit rate and PxAP, with
  patient-level bootstrap intervals, and says how they were computed.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .boxes import ThresholdPolicy
from .locmetrics import maskmetrics as mm
from .locmetrics.bootstrap import bootstrap_mean
from .options import options_to_dict, parse_options

DISTANCE_WINDOW = 64.0
"""Peak-to-mask distances are measured up to this many mask pixels (a tolerance above it is refused)."""


@dataclasses.dataclass(frozen=True)
class MaskColumns:
    """The binarisations counted for every pair: the chosen policy, then the tuning fractions.

    Attributes:
        policy: the configured binarisation (column 0).
        fractions: the candidate fractions of per-class tuning (columns 1..), empty without tuning.

    """

    policy: ThresholdPolicy
    fractions: tuple[float, ...] = ()

    @classmethod
    def of(cls, spec: Any, *, tune: bool | None = None) -> MaskColumns:
        """The columns a :class:`cxrbench.config.MaskSpec` needs."""
        policy = parse_options(ThresholdPolicy, spec.policy, "localization.masks.threshold", "threshold policy")
        tuned = spec.tune if tune is None else tune
        return cls(policy, tuple(round(float(f), 6) for f in spec.tune_grid) if tuned else ())

    def policies(self) -> list[ThresholdPolicy]:
        return [self.policy] + [ThresholdPolicy(policy="fraction", fraction=f) for f in self.fractions]


class MaskSink:
    """Counts annotated maps against their masks in one background thread.

    Args:
        n_classes: classes of the model (pairs carry class indices).
        columns: the binarisations to count.
        probabilities: whether the model's probabilities are needed (gating).

    """

    def __init__(self, n_classes: int, columns: MaskColumns, *, probabilities: bool = False) -> None:
        self.columns = columns
        self.wants_probabilities = probabilities
        self._counter = mm.MaskCounter(n_classes, columns.policies(), max_distance=DISTANCE_WINDOW)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrbench-masks")
        self._pending: list[Future] = []

    def submit(self, rows: np.ndarray, classes: np.ndarray, maps: np.ndarray, refs: list[Any],
               probs: np.ndarray | None) -> None:
        """Queue one batch of pairs (maps ``P x h x w`` on the host)."""
        self._reap()
        self._pending.append(self._pool.submit(self._count, rows, classes, maps, refs, probs))
        if len(self._pending) > 2:  # bound the host memory held by queued batches
            self._pending.pop(0).result()

    def _count(self, rows, classes, maps, refs, probs) -> None:
        for i in range(len(rows)):
            self._counter.add(int(rows[i]), int(classes[i]), maps[i], refs[i],
                              None if probs is None else float(probs[i]))

    def _reap(self) -> None:
        done = [f for f in self._pending if f.done()]
        for f in done:
            f.result()  # re-raise a counting error here, in the caller's thread
        self._pending = [f for f in self._pending if not f.done()]

    def flush(self) -> None:
        """Wait for every queued batch (re-raising the first error)."""
        pending, self._pending = self._pending, []
        try:
            for f in pending:
                f.result()
        finally:
            self._pool.shutdown(wait=True)

    def counts(self) -> mm.MaskCounts:
        """The counts of every pair submitted (after :meth:`flush`)."""
        return self._counter.result()


@dataclasses.dataclass(frozen=True)
class MaskTuning:
    """What the tuning part chose, per class.

    Attributes:
        columns: the column of each class (0 = the configured policy; ``1 + i`` = fraction ``i``).
        fractions: the tuned fraction of each class (None without threshold tuning).
        cutoffs: the probability cut-off of each class (None without gating).
        tuned_on: the part tuned on (e.g. ``val``).
        pairs: annotated pairs in it.

    """

    columns: np.ndarray
    fractions: tuple[float, ...] | None
    cutoffs: tuple[float, ...] | None
    tuned_on: str
    pairs: int


def tune_masks(counts: mm.MaskCounts, columns: MaskColumns, spec: Any, n_classes: int, tuned_on: str) -> MaskTuning:
    """Per-class fractions (mIoU over true positives) and cut-offs (mIoU over all annotated pairs).

    As cheXlocalize: thresholds first (``tune_heatmap_threshold.py``, true positives only),
    then the probability cut-offs on the thresholded maps (``tune_probability_threshold.py``,
    every annotated pair). Ties go to the smaller value; a class without a usable pair keeps
    the configured policy (and no gating).
    """
    chosen = np.zeros(n_classes, dtype=np.int64)
    fractions = None
    if columns.fractions:
        picked = mm.tune_fractions(counts, list(range(1, 1 + len(columns.fractions))), default=0)
        chosen = np.asarray(picked, dtype=np.int64)
        fractions = tuple(float(columns.policies()[c].fraction) if c > 0 else float("nan") for c in chosen)
    cutoffs = None
    if spec.gate:
        if counts.probs is None:
            raise ValueError("localization.masks.gate: the model's probabilities are missing")
        cutoffs = tuple(float(c) for c in mm.tune_cutoffs(counts, chosen, grid=tuple(spec.gate_grid)))
    return MaskTuning(chosen, fractions, cutoffs, tuned_on, int(len(counts.rows)))


def score_masks(
    counts: mm.MaskCounts,
    class_names: list[str],
    spec: Any,
    columns: MaskColumns,
    *,
    patients: np.ndarray,
    hit_tolerance: float,
    tuning: MaskTuning | None = None,
    n_boot: int = 0,
    boot_seed: int = 0,
    ci: float = 0.95,
) -> tuple[dict[str, float], dict[str, Any]]:
    """mIoU, hit rate and PxAP of the scored pairs, and the settings that produced them.

    Args:
        counts: the scored part's counts.
        class_names: the model's classes (the counts' class indices).
        spec: the ``localization.masks`` settings.
        columns: the columns counted.
        patients: the patient of each split row (bootstrap unit).
        hit_tolerance: pointing-game tolerance in mask (original image) pixels.
        tuning: per-class choices made on the tuning part (None = the configured policy).
        n_boot: bootstrap replicates (0 = no intervals).
        boot_seed: their seed.
        ci: their level.

    Returns:
        ``(metrics, settings)``; metric keys are declared in :mod:`cxrbench.catalogue`.

    """
    if hit_tolerance > DISTANCE_WINDOW:
        raise ValueError(f"localization.hit_tolerance: masks are scored up to {DISTANCE_WINDOW:g} px, "
                         f"got {hit_tolerance:g}")
    k = len(class_names)
    column = tuning.columns if tuning is not None else np.zeros(k, dtype=np.int64)
    cutoffs = np.asarray(tuning.cutoffs) if tuning is not None and tuning.cutoffs is not None else None
    ious = mm.pair_ious(counts, column=column, true_pos_only=spec.true_pos_only, cutoffs=cutoffs)
    miou, class_miou = mm.mean_iou(ious, counts.classes, k)
    hit, class_hit, hits = mm.hit_rates(counts, hit_tolerance)
    ap, class_ap = mm.mask_pxap(counts)
    positive = counts.gt_area > 0
    metrics: dict[str, float] = {
        "mask_miou": float(miou), "mask_hit_rate": float(hit), "mask_pxap": float(ap),
        "mask_pairs": float(np.isfinite(ious).sum()), "mask_positive_pairs": float(positive.sum()),
        "mask_images": float(len(np.unique(counts.rows))),
    }
    for c, name in enumerate(class_names):
        if np.any(counts.classes == c):
            metrics[f"mask_miou/{name}"] = float(class_miou[c])
            metrics[f"mask_hit_rate/{name}"] = float(class_hit[c])
            metrics[f"mask_pxap/{name}"] = float(class_ap[c])
    if n_boot > 0:
        metrics.update(_intervals(counts, ious, hits, positive, patients, n_boot=n_boot, seed=boot_seed, ci=ci))
    settings: dict[str, Any] = {
        "threshold": options_to_dict(columns.policy), "true_pos_only": bool(spec.true_pos_only),
        "resize": "bilinear (half-pixel) to the mask's size, then min-max", "hit_tolerance": float(hit_tolerance),
        "hit_tolerance_unit": "mask pixels (the original image's)",
    }
    if tuning is not None:
        settings["tuned_on"] = tuning.tuned_on
        settings["tuning_pairs"] = tuning.pairs
        if tuning.fractions is not None:
            settings["fractions"] = {class_names[c]: _plain(f) for c, f in enumerate(tuning.fractions)}
        if tuning.cutoffs is not None:
            settings["cutoffs"] = {class_names[c]: _plain(f) for c, f in enumerate(tuning.cutoffs)}
    return metrics, settings


def _plain(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def _intervals(counts: mm.MaskCounts, ious: np.ndarray, hits: np.ndarray, positive: np.ndarray,
               patients: np.ndarray, *, n_boot: int, seed: int, ci: float) -> dict[str, float]:
    """Patient-level percentile intervals of mIoU (defined pairs) and mask hit rate (positive pairs)."""
    groups = np.asarray(patients, dtype=str)[counts.rows]
    out: dict[str, float] = {}
    defined = np.isfinite(ious)
    if defined.any():
        interval = bootstrap_mean(ious[defined], groups[defined], classes=counts.classes[defined], n_boot=n_boot,
                                  seed=seed, ci=ci)
        out["mask_miou_ci_low"], out["mask_miou_ci_high"] = float(interval.low), float(interval.high)
    if positive.any():
        interval = bootstrap_mean(hits[positive].astype(np.float64), groups[positive],
                                  classes=counts.classes[positive], n_boot=n_boot, seed=seed, ci=ci)
        out["mask_hit_rate_ci_low"], out["mask_hit_rate_ci_high"] = float(interval.low), float(interval.high)
    return out
