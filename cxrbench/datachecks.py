"""Checks every file dataset's built splits get: repeated rows, leakage between splits, impossible boxes.

:class:`cxrbench.filedataset.FileDataset` runs :func:`check_splits` once, right after
``build``, and drops what it finds, by these rules (one warning line gives the counts):

1. **Repeated rows.** A row whose id is already in the same split (e.g. a row repeated in
   CheXpert's ``train.csv``) is dropped; the first one is kept.
2. **An image in two splits.** Splits rank evaluation splits (``test``, ``boxes`` and any
   other name) first, then ``val``, then ``train``. An image (its file) listed in a split
   and in a higher-ranked one is dropped from the lower: from train / val, kept in test.
   Evaluation splits may share images (``boxes`` is part of ``test`` in NIH) and are never
   touched.
3. **A patient in two splits.** A ``train`` or ``val`` image whose patient has images in a
   higher-ranked split is dropped, so no patient is both trained on and evaluated on (the
   literature's patient-wise splits: Wang et al., CVPR 2017; Irvin et al., AAAI 2019).
4. **Impossible boxes.** A box with a non-finite coordinate, a width or height <= 0, an
   image or class index outside the split, or (where the split knows its image sizes) no
   overlap with its image is dropped; a box reaching more than half a pixel past the image's
   border is clipped to the image (it is counted; smaller overshoots, rounding, are clipped
   silently).

A split the rules leave empty is said in the same line (a cell then fails on its empty
training split, naming it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .interfaces import Split

__all__ = ["CheckReport", "CheckedSplits", "check_splits", "split_rank"]

TRAINING_SPLITS = ("val", "train")
"""Splits a model learns from or is selected on, highest rank first; every other split ranks above them."""

CLIP_TOLERANCE = 0.5
"""Pixels a box may reach past the image's border before its clipping is counted."""


def split_rank(name: str) -> int:
    """0 for evaluation splits, 1 for ``val``, 2 for ``train`` (a lower rank keeps a shared image)."""
    return 1 + TRAINING_SPLITS.index(name) if name in TRAINING_SPLITS else 0


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What :func:`check_splits` dropped.

    Attributes:
        repeated: rows dropped as repeats of an earlier row of the same split.
        shared_images: rows dropped from train / val because a higher-ranked split lists the image.
        shared_images_kept_in: the split names that kept those images.
        patient_rows: train / val rows dropped because their patient is in a higher-ranked split.
        patients: how many patients that was.
        bad_boxes: boxes dropped (non-finite, non-positive size, bad index, outside the image).
        clipped_boxes: boxes clipped to their image.

    """

    repeated: int = 0
    shared_images: int = 0
    shared_images_kept_in: tuple[str, ...] = ()
    patient_rows: int = 0
    patients: int = 0
    bad_boxes: int = 0
    clipped_boxes: int = 0

    @property
    def clean(self) -> bool:
        return not (self.repeated or self.shared_images or self.patient_rows or self.bad_boxes or self.clipped_boxes)

    def line(self) -> str:
        """The counts as one clause list (empty when clean)."""
        parts = []
        if self.shared_images:
            parts.append(f"{self.shared_images:,} train/val images also listed in "
                         f"{'/'.join(self.shared_images_kept_in)} dropped (kept there)")
        if self.patient_rows:
            parts.append(f"{self.patient_rows:,} train/val images of {self.patients:,} patients who also have "
                         "images in a later split dropped")
        if self.repeated:
            parts.append(f"{self.repeated:,} repeated rows dropped (the first kept)")
        if self.bad_boxes:
            parts.append(f"{self.bad_boxes:,} boxes with a size <= 0, a bad coordinate or outside their image dropped")
        if self.clipped_boxes:
            parts.append(f"{self.clipped_boxes:,} boxes reaching past their image clipped to it")
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class CheckedSplits:
    """The splits after the checks.

    Attributes:
        splits: split name -> the kept records (boxes cleaned, rows re-indexed).
        rows: split name -> the kept rows of the split as built (to keep parallel lists aligned).
        report: what was dropped.
        emptied: splits that had rows and have none left.

    """

    splits: Mapping[str, Split]
    rows: Mapping[str, np.ndarray]
    report: CheckReport
    emptied: tuple[str, ...]


def check_splits(splits: Mapping[str, Split], keys: Mapping[str, Sequence[str]] | None = None) -> CheckedSplits:
    """Apply the module's rules to built splits.

    Args:
        splits: split name -> records as built.
        keys: split name -> what identifies each row's image across splits (a file dataset
            passes its image paths); default: the split's ids.

    Returns:
        The kept records, the kept rows and the counts.

    """
    keys = {name: np.asarray(keys[name] if keys is not None else split.ids, dtype=object)
            for name, split in splits.items()}
    keep = {name: ~pd.Index(split.ids).duplicated(keep="first") for name, split in splits.items()}
    repeated = sum(int((~k).sum()) for k in keep.values())
    order = sorted(splits, key=split_rank)

    shared, kept_in = 0, set()
    patient_rows, patients_dropped = 0, set()
    for name in (n for n in order if split_rank(n) > 0):
        above = [n for n in order if split_rank(n) < split_rank(name)]
        listed = _isin(keys[name], [keys[n][keep[n]] for n in above]) & keep[name]
        if listed.any():
            shared += int(listed.sum())
            kept_in.update(n for n in above if _isin(keys[n][keep[n]], [keys[name][listed]]).any())
            keep[name] &= ~listed
        patients = np.asarray(splits[name].patient_ids, dtype=object)
        known = pd.notna(patients) & (patients != "")  # an unknown patient overlaps no one
        above_patients = [np.asarray(splits[n].patient_ids, dtype=object)[keep[n]] for n in above]
        overlap = _isin(patients, above_patients) & keep[name] & known
        if overlap.any():
            patient_rows += int(overlap.sum())
            patients_dropped.update(patients[overlap].tolist())
            keep[name] &= ~overlap

    out: dict[str, Split] = {}
    rows: dict[str, np.ndarray] = {}
    bad = clipped = 0
    for name, split in splits.items():
        boxes, n_bad, n_clipped = _clean_boxes(split)
        bad, clipped = bad + n_bad, clipped + n_clipped
        cleaned = dataclasses.replace(split, boxes=boxes) if (n_bad or n_clipped) else split
        rows[name] = np.flatnonzero(keep[name])
        out[name] = cleaned if keep[name].all() else cleaned.subset(rows[name])
    report = CheckReport(repeated=repeated, shared_images=shared,
                         shared_images_kept_in=tuple(n for n in order if n in kept_in),
                         patient_rows=patient_rows, patients=len(patients_dropped), bad_boxes=bad,
                         clipped_boxes=clipped)
    emptied = tuple(n for n in splits if len(splits[n]) and not len(out[n]))
    return CheckedSplits(out, rows, report, emptied)


def _isin(values: np.ndarray, pools: list[np.ndarray]) -> np.ndarray:
    """Which of ``values`` are in any of ``pools`` (a boolean array)."""
    if not pools:
        return np.zeros(len(values), dtype=bool)
    return pd.Index(values).isin(np.concatenate(pools)) if len(values) else np.zeros(0, dtype=bool)


def _clean_boxes(split: Split) -> tuple[pd.DataFrame, int, int]:
    """(the split's boxes without impossible ones and clipped to their image, dropped, clipped)."""
    boxes = split.boxes
    if boxes.empty:
        return boxes, 0, 0
    x, y, w, h = (boxes[c].to_numpy(dtype=np.float64) for c in ("x", "y", "w", "h"))
    index = boxes["index"].to_numpy()
    classes = boxes["class_index"].to_numpy()
    k = split.labels.shape[1] if split.labels.ndim == 2 else 0
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0)
    good &= (index >= 0) & (index < len(split)) & (classes >= 0) & (classes < k)
    x0, y0, x1, y1 = x, y, x + w, y + h
    n_clipped = 0
    if split.image_sizes is not None and len(split):
        sizes = np.asarray(split.image_sizes, dtype=np.float64).reshape(-1, 2)
        safe = np.where(good, index, 0)
        height, width = sizes[safe, 0], sizes[safe, 1]
        good &= (x1 > 0) & (y1 > 0) & (x0 < width) & (y0 < height)
        over = np.maximum.reduce([-x0, -y0, x1 - width, y1 - height])
        n_clipped = int((good & (over > CLIP_TOLERANCE)).sum())
        x0, y0 = np.clip(x0, 0, width), np.clip(y0, 0, height)
        x1, y1 = np.clip(x1, 0, width), np.clip(y1, 0, height)
        changed = good & (over > 0)
    else:
        changed = np.zeros(len(boxes), dtype=bool)
    n_bad = int((~good).sum())
    if not n_bad and not changed.any():
        return boxes, 0, 0
    out = boxes.copy()
    # only clipped boxes get new values: x + w - x is not always w in floating point
    for column, new in (("x", x0), ("y", y0), ("w", x1 - x0), ("h", y1 - y0)):
        out[column] = np.where(changed, new, out[column].to_numpy(dtype=np.float64))
    return out[good].reset_index(drop=True), n_bad, n_clipped
