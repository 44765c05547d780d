"""VinDr-CXR's published tables read into one typed record per split: who marked what, where.

VinDr-CXR (Nguyen et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's
annotations", Sci. Data 2022) has two releases of the same 15,000 training images:

* **Kaggle** (VinBigData Chest X-ray Abnormalities Detection, 2021): ``train.csv`` with
  ``image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max``, one row per box
  per radiologist (3 per image, ids ``R1``..``R17``); a reader who found nothing has one
  ``No finding`` row with empty coordinates. Boxes are x0, y0, x1, y1 in the DICOM's own
  pixels. The challenge's test images have no published labels.
* **PhysioNet** (v1.0.0): ``annotations/annotations_{train,test}.csv`` (``image_id,
  rad_id, class_name, x_min, y_min, x_max, y_max``; boxes of the 22 local labels) and
  ``annotations/image_labels_{train,test}.csv`` (``image_id``, ``rad_id``, then one 0/1
  column per finding: 22 local and 6 global labels). Training images have one row per
  reader; the 3,000 test images have the consensus of 5 radiologists, one reading per
  image (a ``rad_id`` column there, if any, is ignored).

Columns are found by name, ignoring case (``rad_ID``); class names and finding columns are
matched to :data:`KAGGLE14` / :data:`LOCAL22` / :data:`GLOBAL_LABELS` by
:func:`cxrbench.api.canonical`'s key (case, spaces and underscores ignored). The PhysioNet
column names follow the dataset's description and code that reads it; a table that spells
a needed finding otherwise is an error naming the column.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.api import UsageError, canonical

__all__ = [
    "GLOBAL_LABELS",
    "KAGGLE14",
    "LOCAL22",
    "NO_FINDING",
    "Readings",
    "class_key",
    "read_annotations",
    "read_image_labels",
    "readings_from_annotations",
    "readings_from_labels",
    "unknown_classes",
]

KAGGLE14: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
"""The 14 findings of the Kaggle challenge, in ``class_id`` order 0-13 (14 is ``No finding``)."""

LOCAL22: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
)
"""The 22 local (boxed) labels of the PhysioNet release."""

GLOBAL_LABELS: tuple[str, ...] = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other disease")
"""The PhysioNet release's global (image-level, unboxed) labels, ``No finding`` aside
(``Other disease`` is also spelled ``Other diseases``)."""

NO_FINDING = "No finding"

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def class_key(name: str) -> str:
    """How VinDr class names and columns are compared: by canonical finding (case, spaces, ``_`` ignored).

    So ``Other diseases`` (the training table's spelling) meets ``Other disease``.
    """
    return re.sub(r" ?/ ?", "/", canonical(str(name))).casefold()


@dataclasses.dataclass(frozen=True)
class Readings:
    """Every reading of one split: each image's readers, their votes per class and their boxes.

    Attributes:
        image_ids: the split's images, in first-appearance order of the table.
        readers: ``N`` int, how many radiologists read each image (1 for a published consensus).
        votes: ``N x K`` int, how many of them marked each class.
        boxes: one row per drawn box of a selected class: ``image`` (row into ``image_ids``),
            ``class_index``, ``reader`` (str), ``x0``, ``y0``, ``x1``, ``y1`` (float, the
            DICOM's pixels), in table order.

    """

    image_ids: np.ndarray
    readers: np.ndarray
    votes: np.ndarray
    boxes: pd.DataFrame

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if self.readers.shape != (n,) or self.votes.shape[0] != n:
            raise ValueError(f"readings of {n} images have {self.readers.shape} readers and {self.votes.shape} votes")


def _columns(path: Path, header: Sequence[str], wanted: Sequence[str], optional: Sequence[str] = ()) -> dict[str, str]:
    """``{wanted name: the header's spelling}``, found ignoring case; a missing wanted one is an error."""
    lowered = {str(c).strip().lower(): str(c) for c in header}
    missing = [w for w in wanted if w not in lowered]
    if missing:
        raise UsageError(f"{path}: no column(s) {', '.join(map(repr, missing))}")
    return {w: lowered[w] for w in (*wanted, *optional) if w in lowered}


def _read_csv(path: Path, **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: cannot parse: {detail}") from None


def read_annotations(path: Path) -> pd.DataFrame:
    """Read a box table: Kaggle's ``train.csv`` or PhysioNet's ``annotations_*.csv``.

    Returns:
        Columns ``image_id``, ``reader`` (``""`` when the table has no ``rad_id``),
        ``class_name`` and ``x_min``, ``y_min``, ``x_max``, ``y_max`` (float; NaN on ``No
        finding`` rows), one row per table row, in file order.

    Raises:
        UsageError: naming the file for a missing column, an unparsable coordinate, a box
            with only some coordinates, or one with ``x_max <= x_min`` or ``y_max <= y_min``.

    """
    header = _read_csv(path, nrows=0).columns
    names = _columns(path, header, ["image_id", "class_name", *BOX_COLUMNS], optional=["rad_id"])
    frame = _read_csv(path, usecols=list(names.values()), dtype=str, keep_default_na=False)
    frame = frame.rename(columns={v: k for k, v in names.items()})
    out = pd.DataFrame({"image_id": frame["image_id"].str.strip(),
                        "reader": frame["rad_id"].str.strip() if "rad_id" in frame else "",
                        "class_name": frame["class_name"].str.strip()})
    for column in BOX_COLUMNS:
        text = frame[column].str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = text[values.isna() & (text != "")]
        if len(bad):
            raise UsageError(f"{path}: {column} {bad.iloc[0]!r} is not a number")
        out[column] = values.astype("float64")
    coords = out[list(BOX_COLUMNS)].to_numpy()
    drawn = ~np.isnan(coords)
    partial = drawn.any(axis=1) & ~drawn.all(axis=1)
    if partial.any():
        raise UsageError(f"{path}: row {int(np.flatnonzero(partial)[0]) + 2} has only some of x_min, y_min, "
                         "x_max, y_max")
    inverted = drawn.all(axis=1) & ((coords[:, 2] <= coords[:, 0]) | (coords[:, 3] <= coords[:, 1]))
    if inverted.any():
        raise UsageError(f"{path}: row {int(np.flatnonzero(inverted)[0]) + 2} has x_max <= x_min or y_max <= y_min")
    return out


def read_image_labels(path: Path) -> pd.DataFrame:
    """Read PhysioNet's ``image_labels_*.csv``: ``image_id``, ``reader`` and one 0/1 column per finding.

    Returns:
        ``image_id``, ``reader`` (``""`` without a ``rad_id`` column), then every other
        column as float (named as in the file), one row per reading.

    Raises:
        UsageError: naming the file for a missing ``image_id`` or a value other than 0 / 1.

    """
    header = _read_csv(path, nrows=0).columns
    names = _columns(path, header, ["image_id"], optional=["rad_id"])
    frame = _read_csv(path, dtype=str, keep_default_na=False)
    findings = [c for c in frame.columns if c not in names.values()]
    out = pd.DataFrame({"image_id": frame[names["image_id"]].str.strip(),
                        "reader": frame[names["rad_id"]].str.strip() if "rad_id" in names else ""})
    for column in findings:
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        bad = frame[column][~values.isin([0.0, 1.0])]
        if len(bad):
            raise UsageError(f"{path}: column {column!r} must hold 0 or 1, got {bad.iloc[0]!r}")
        out[column] = values.astype("float64")
    return out


def _class_index(names: pd.Series, classes: Sequence[str]) -> np.ndarray:
    lookup = {class_key(c): k for k, c in enumerate(classes)}
    return np.array([lookup.get(class_key(n), -1) for n in names.tolist()], dtype=np.int64)


def unknown_classes(names: pd.Series) -> list[str]:
    """Class names of a box table that are not VinDr-CXR findings (nor ``No finding``), sorted."""
    known = {class_key(c) for c in (*LOCAL22, *GLOBAL_LABELS, NO_FINDING)}
    return sorted({n for n in pd.unique(names) if class_key(n) not in known})


def readings_from_annotations(table: pd.DataFrame, classes: Sequence[str]) -> Readings:
    """Kaggle ``train.csv``: a reader marks a class by any row of that class (a box).

    Readers per image are its distinct ``rad_id`` values (a reader who found nothing
    still has a ``No finding`` row); rows of classes not selected are left out.
    """
    codes, image_ids = pd.factorize(table["image_id"], sort=False)
    class_index = _class_index(table["class_name"], classes)
    reader_codes = pd.factorize(table["reader"], sort=False)[0]
    n, k = len(image_ids), len(classes)
    pairs = pd.DataFrame({"image": codes, "reader": reader_codes})
    readers = pairs.drop_duplicates().groupby("image").size().reindex(range(n), fill_value=0).to_numpy()
    votes = np.zeros((n, k), dtype=np.int64)
    chosen = class_index >= 0
    marks = pairs[chosen].assign(cls=class_index[chosen]).drop_duplicates()
    np.add.at(votes, (marks["image"].to_numpy(), marks["cls"].to_numpy()), 1)
    return Readings(np.asarray(image_ids, dtype=object), readers.astype(np.int64), votes,
                    _boxes(table, codes, class_index))


def _boxes(table: pd.DataFrame, image_codes: np.ndarray, class_index: np.ndarray) -> pd.DataFrame:
    drawn = (class_index >= 0) & table["x_min"].notna().to_numpy()
    rows = table[drawn]
    return pd.DataFrame({
        "image": image_codes[drawn].astype(np.int64),
        "class_index": class_index[drawn].astype(np.int64),
        "reader": rows["reader"].to_numpy(dtype=object),
        "x0": rows["x_min"].to_numpy(), "y0": rows["y_min"].to_numpy(),
        "x1": rows["x_max"].to_numpy(), "y1": rows["y_max"].to_numpy(),
    }).reset_index(drop=True)


def readings_from_labels(
    labels: pd.DataFrame, annotations: pd.DataFrame, classes: Sequence[str], path: Path, *, consensus: bool
) -> Readings:
    """PhysioNet: votes from ``image_labels_*.csv``, boxes from ``annotations_*.csv``.

    Args:
        labels: :func:`read_image_labels` of the split.
        annotations: :func:`read_annotations` of the split (boxes of images without a
            labels row are left out).
        classes: the selected findings.
        path: the labels file, for errors.
        consensus: the published consensus (the test set): one reading per image, a class
            marked when any of its rows marks it.

    Raises:
        UsageError: naming the file when a selected finding has no column.

    """
    column_of = {class_key(c): c for c in labels.columns if c not in ("image_id", "reader")}
    missing = [c for c in classes if class_key(c) not in column_of]
    if missing:
        raise UsageError(f"{path}: no column for finding(s) {', '.join(map(repr, missing))}")
    codes, image_ids = pd.factorize(labels["image_id"], sort=False)
    n = len(image_ids)
    marked = labels[[column_of[class_key(c)] for c in classes]].to_numpy(dtype=np.int64)
    votes = np.zeros((n, len(classes)), dtype=np.int64)
    np.add.at(votes, codes, marked)
    if consensus:
        readers = np.ones(n, dtype=np.int64)
        votes = np.minimum(votes, 1)
    else:
        reader_codes = pd.factorize(labels["reader"], sort=False)[0]
        pairs = pd.DataFrame({"image": codes, "reader": reader_codes}).drop_duplicates()
        readers = pairs.groupby("image").size().reindex(range(n), fill_value=0).to_numpy().astype(np.int64)
    image_codes = pd.Index(image_ids).get_indexer(annotations["image_id"])
    known = image_codes >= 0
    kept = annotations[known]
    boxes = _boxes(kept.reset_index(drop=True), image_codes[known], _class_index(kept["class_name"], classes))
    return Readings(np.asarray(image_ids, dtype=object), readers, votes, boxes)
