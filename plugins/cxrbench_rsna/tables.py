"""Reading the RSNA Pneumonia Detection Challenge label table.

``stage_2_train_labels.csv`` (Kaggle, RSNA 2018; Shih et al., Radiology: AI 2019) has one
row per box, ``patientId,x,y,width,height,Target``: a positive image (``Target`` 1) has
one row per "Lung Opacity" box, ``x, y`` its top-left corner in the 1024 x 1024 DICOM's
pixels; a negative image (``Target`` 0) has one row with an empty box. ``patientId``
names the image (``stage_2_train_images/<patientId>.dcm``); the challenge has one image
per ``patientId``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.api import UsageError, one_line

__all__ = ["BOX_LABEL", "COLUMNS", "IMAGES_FOLDER", "LABELS_FILE", "RELEASE_SIZE", "RsnaLabels", "read_labels"]

LABELS_FILE = "stage_2_train_labels.csv"
IMAGES_FOLDER = "stage_2_train_images"
RELEASE_SIZE = 1024
"""Every released image is 1024 x 1024; the table's boxes are in those pixels."""
BOX_LABEL = "Lung Opacity"
"""The challenge's one box class (``stage_2_detailed_class_info.csv`` names it so)."""
COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
_BOX = ["x", "y", "width", "height"]


@dataclasses.dataclass(frozen=True)
class RsnaLabels:
    """The label table, one entry per image.

    Attributes:
        image_ids: every ``patientId``, sorted.
        target: ``1`` where the image has "Lung Opacity" boxes, else ``0`` (aligned with ``image_ids``).
        boxes: one row per box: ``image`` (row into ``image_ids``), ``x``, ``y``, ``w``, ``h``
            in release (1024 px) pixels.

    """

    image_ids: tuple[str, ...]
    target: np.ndarray
    boxes: pd.DataFrame

    @property
    def positives(self) -> int:
        return int(self.target.sum())


def read_labels(path: Path) -> RsnaLabels:
    """Read and check ``stage_2_train_labels.csv``.

    Raises:
        UsageError: one line naming the file: a missing column, a ``Target`` other than 0 / 1,
            a positive row without a box (or with a non-positive size), a negative row with
            one, or an image with both positive and negative rows.

    """
    name = path.name
    try:
        table = pd.read_csv(path, dtype={"patientId": str}, keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UsageError(f"rsna_pneumonia: cannot read {path}: {one_line(str(exc))}") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(f"rsna_pneumonia: {name} lacks column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
    ids = table["patientId"].astype(str).str.strip()
    if (ids == "").any() or table["patientId"].isna().any():
        raise UsageError(f"rsna_pneumonia: {name} has a row without a patientId (line {int(np.argmax(ids == '')) + 2})")
    target = pd.to_numeric(table["Target"], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UsageError(f"rsna_pneumonia: {name} line {row + 2}: Target must be 0 or 1, got "
                         f"{one_line(str(table['Target'].iloc[row]))!r}")
    box = table[_BOX].apply(pd.to_numeric, errors="coerce")
    positive = target.to_numpy() == 1
    complete = box.notna().all(axis=1).to_numpy()
    sized = (box["width"] > 0).to_numpy() & (box["height"] > 0).to_numpy()
    checks = (
        (positive & ~(complete & sized), "a Target 1 row needs a box x,y,width,height with width, height > 0"),
        (~positive & box.notna().any(axis=1).to_numpy(), "a Target 0 row must have an empty box"),
    )
    for rows, what in checks:
        if rows.any():
            row = int(np.flatnonzero(rows)[0])
            raise UsageError(f"rsna_pneumonia: {name} line {row + 2} ({ids.iloc[row]}): {what}")
    per_image = pd.DataFrame({"id": ids, "target": positive}).groupby("id", sort=True)["target"]
    mixed = per_image.nunique() > 1
    if mixed.any():
        raise UsageError(f"rsna_pneumonia: {name}: image {mixed.index[mixed.to_numpy()][0]} has both Target 0 and "
                         "Target 1 rows")
    image_ids = per_image.max().index
    where = pd.Index(image_ids).get_indexer(ids[positive])
    boxes = pd.DataFrame({
        "image": where.astype(np.int64),
        "x": box["x"].to_numpy()[positive], "y": box["y"].to_numpy()[positive],
        "w": box["width"].to_numpy()[positive], "h": box["height"].to_numpy()[positive],
    })  # fmt: skip
    return RsnaLabels(tuple(image_ids.tolist()), per_image.max().to_numpy().astype(np.int64), boxes)
