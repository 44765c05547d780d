"""The ``vindr`` dataset: VinDr-CXR in its Kaggle or its PhysioNet layout, DICOM images.

``root`` is one of (``layout: auto`` tells them apart by ``annotations/``)::

    Kaggle (VinBigData challenge)            PhysioNet (v1.0.0)
      train.csv                                annotations/annotations_{train,test}.csv
      train/<image_id>.dicom                   annotations/image_labels_{train,test}.csv
                                               train/<image_id>.dicom
                                               test/<image_id>.dicom

Splits: **Kaggle** (the challenge's test images have no labels): every image of
``train.csv`` goes to ``test`` (``test_fraction``, 0.2: about the 3,000 images of the
official test set), ``val`` (``val_fraction``, 0.1) or ``train`` by
:func:`cxrbench.api.hashed_split` of its id with ``split_seed``, a deterministic draw
that depends on the id alone (not on which images are present). **PhysioNet**: ``test`` is
the official test set (the consensus of 5 radiologists), ``val`` the ``val_fraction`` of
the training images drawn the same way, ``train`` the rest. ``boxes`` is ``test`` under the
name localization reads by default; ``val`` has its boxes too (``localization.tune``
tunes on them). VinDr-CXR publishes no patient ids, so each image is its own patient (for
the split and the bootstrap).

Labels and boxes combine the training images' three readings by the ``labels`` and
``readers`` rules of :mod:`cxrbench_vindr.consensus`. Boxes are in the DICOM's own pixels
(the tables' coordinates, clipped to the image's ``Rows`` x ``Columns`` read from its header).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from cxrbench.api import (
    BOX_COLUMNS,
    DatasetContext,
    FileDataset,
    FileLayout,
    Split,
    UsageError,
    empty_boxes,
    hashed_split,
    image_size,
)

from .consensus import LabelRule, ReaderRule, combine_boxes, vote_labels
from .tables import (
    GLOBAL_LABELS,
    KAGGLE14,
    LOCAL22,
    Readings,
    class_key,
    read_annotations,
    read_image_labels,
    readings_from_annotations,
    readings_from_labels,
    unknown_classes,
)

__all__ = ["CLASS_PRESETS", "VinDrCXR", "resolve_classes"]

CLASS_PRESETS: dict[str, tuple[str, ...]] = {"kaggle14": KAGGLE14, "local22": LOCAL22}
DICOM_SUFFIXES = (".dicom", ".dcm")
PHYSIONET_TABLES = {
    "annotations_train": "annotations/annotations_train.csv",
    "annotations_test": "annotations/annotations_test.csv",
    "image_labels_train": "annotations/image_labels_train.csv",
    "image_labels_test": "annotations/image_labels_test.csv",
}
Layout = Literal["auto", "kaggle", "physionet"]
_KNOWN = {class_key(c): c for c in (*LOCAL22, *GLOBAL_LABELS)}


def _spelling(name: str) -> str:
    """``name`` in VinDr-CXR's spelling when it is one of its findings (any case), else unchanged."""
    return _KNOWN.get(class_key(name), name)


def resolve_classes(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    """The findings a ``classes`` option selects, in VinDr-CXR's spelling.

    Args:
        spec: ``kaggle14`` (the challenge's 14 boxed findings), ``local22`` (the PhysioNet
            release's 22 local labels) or a list of local and global labels (any case).

    Raises:
        ValueError: starting with ``classes``, for an unknown preset or finding, a repeated
            one or an empty list.

    """
    if isinstance(spec, str):
        if spec in CLASS_PRESETS:
            return CLASS_PRESETS[spec]
        raise ValueError(f"classes must be 'kaggle14', 'local22' or a list of findings, got {spec!r}")
    names = tuple(_spelling(str(c)) for c in spec)
    if not names:
        raise ValueError("classes is an empty list")
    unknown = [n for n in names if class_key(n) not in _KNOWN]
    if unknown:
        raise ValueError(f"classes names finding(s) VinDr-CXR does not label {unknown}; "
                         f"valid: {', '.join((*LOCAL22, *GLOBAL_LABELS))}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes lists a finding twice: {list(spec)}")
    return names


@dataclasses.dataclass(frozen=True)
class VinDrOptions:
    """Options of the ``vindr`` dataset.

    Attributes:
        root: the release folder (``train.csv`` and ``train/``, or ``annotations/``,
            ``train/`` and ``test/``).
        layout: ``auto`` (PhysioNet when ``annotations/`` is there, else Kaggle), ``kaggle``
            or ``physionet``.
        classes: ``kaggle14`` (default; both layouts), ``local22`` (PhysioNet only) or a list
            of findings (global labels, e.g. ``Pneumonia``, PhysioNet only: they have no boxes).
        labels: image labels from the readers' votes: ``majority`` (2 of 3) or ``any``.
        readers: boxes: ``consensus`` (fused by WBF, kept when 2 of 3 readers drew them) or
            ``all`` (every reader's box).
        fusion_iou: the IoU above which a box joins a cluster (``readers: consensus``).
        test_fraction: Kaggle layout: fraction of the images held out as ``test``.
        val_fraction: fraction of the images held out as ``val`` (of all of them in the
            Kaggle layout, of the training images in the PhysioNet one).
        split_seed: seed of the hashed split.
        follow_symlinks: follow links that lead outside ``root`` (refused by default).

    """

    root: str
    layout: Layout = "auto"
    classes: str | tuple[str, ...] = "kaggle14"
    labels: LabelRule = "majority"
    readers: ReaderRule = "consensus"
    fusion_iou: float = 0.5
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    follow_symlinks: bool = False

    def __post_init__(self) -> None:
        # Stored in VinDr's spelling, so any case gives the same options (and cell ids);
        # unknown names are left for validate() to name.
        if isinstance(self.classes, list | tuple):
            object.__setattr__(self, "classes", tuple(_spelling(str(c)) for c in self.classes))

    def validate(self) -> None:
        """Check the classes, the fractions and the fusion threshold."""
        resolve_classes(self.classes)
        if not 0.0 < self.fusion_iou < 1.0:
            raise ValueError(f"fusion_iou must be in (0, 1), got {self.fusion_iou}")
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError(f"test_fraction + val_fraction must be below 1, got "
                             f"{self.test_fraction} + {self.val_fraction}")


class VinDrCXR(FileDataset):
    """VinDr-CXR: 15,000 training images read by 3 radiologists each, boxes of 14 (22) findings.

    Splits: ``train``, ``val``, ``test`` and ``boxes`` (= ``test``); see the module docstring
    for which images each holds in the Kaggle and PhysioNet layouts.
    """

    NAME = "vindr"
    HAS_BOXES: ClassVar[bool] = True
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test", "boxes")
    Options = VinDrOptions

    layout: Literal["kaggle", "physionet"]
    """The layout found under ``root``."""

    def __init__(self, options: VinDrOptions, context: DatasetContext | None = None) -> None:
        super().__init__(options, context)
        self.classes = list(resolve_classes(options.classes))
        if self.layout == "kaggle":
            beyond = [c for c in self.classes if c not in KAGGLE14]
            if beyond:
                raise UsageError(f"vindr: the Kaggle layout ({self.root}/train.csv) labels only the 14 challenge "
                                 f"findings; {', '.join(beyond)} need the PhysioNet layout")

    # ------------------------------------------------------------------ files

    def locate(self, root: Path) -> FileLayout:
        """``train.csv`` (Kaggle) or the four ``annotations/`` tables (PhysioNet)."""
        layout = self.options.layout
        if layout == "auto":
            layout = "physionet" if (root / "annotations").is_dir() else "kaggle"
        self.layout = layout
        if layout == "kaggle":
            tables = {"train": root / "train.csv"}
        else:
            tables = {key: root / rel for key, rel in PHYSIONET_TABLES.items()}
        missing = [str(path.relative_to(root)) for path in tables.values() if not path.is_file()]
        if missing:
            raise UsageError(f"vindr: missing under {root} ({layout} layout): {', '.join(missing)}")
        return FileLayout(root=root, tables=tables)

    def _index_images(self, folder: str) -> dict[str, str]:
        """Image id -> path of every DICOM under ``root/folder`` (``<id>.dicom`` or ``<id>.dcm``)."""
        found = self.find_images([folder], suffixes=DICOM_SUFFIXES)
        index: dict[str, str] = {}
        for relative, path in sorted(found.items()):
            name = relative.rsplit("/", 1)[-1]
            index.setdefault(name[: name.rfind(".")], path)
        return index

    # ------------------------------------------------------------------ loading

    def _readings(self) -> dict[str, Readings]:
        """The readings of each published part: ``train`` (and, PhysioNet, ``test``)."""
        classes = tuple(self.classes)
        if self.layout == "kaggle":
            table = read_annotations(self.tables["train"])
            self._warn_unknown(table, self.tables["train"])
            return {"train": readings_from_annotations(table, classes)}
        out = {}
        for part in ("train", "test"):
            boxes = read_annotations(self.tables[f"annotations_{part}"])
            self._warn_unknown(boxes, self.tables[f"annotations_{part}"])
            labels_path = self.tables[f"image_labels_{part}"]
            out[part] = readings_from_labels(read_image_labels(labels_path), boxes, classes, labels_path,
                                             consensus=part == "test")
        return out

    def _warn_unknown(self, table: pd.DataFrame, path: Path) -> None:
        unknown = unknown_classes(table["class_name"])
        if unknown:
            self.context.warn(f"vindr: {path.name} has boxes of classes VinDr-CXR does not define, left out: "
                              f"{', '.join(map(repr, unknown[:5]))}")

    def build(self) -> dict[str, tuple[Split, list[str]]]:
        """``train`` / ``val`` / ``test`` / ``boxes`` of the images present."""
        opts = self.options
        readings = self._readings()
        parts: dict[str, tuple[Readings, np.ndarray, dict[str, str]]] = {}  # split -> readings, rows, images
        train = readings["train"]
        images = self._index_images("train")
        if self.layout == "kaggle":
            assigned = hashed_split(train.image_ids, {"test": opts.test_fraction, "val": opts.val_fraction},
                                    opts.split_seed)
            for name in ("train", "val", "test"):
                parts[name] = (train, np.flatnonzero(assigned == name), images)
        else:
            assigned = hashed_split(train.image_ids, {"val": opts.val_fraction}, opts.split_seed)
            for name in ("train", "val"):
                parts[name] = (train, np.flatnonzero(assigned == name), images)
            test = readings["test"]
            parts["test"] = (test, np.arange(len(test.image_ids)), self._index_images("test"))

        listed = present = 0
        built: dict[str, tuple[Split, list[str]]] = {}
        for name, (reading, rows, index) in parts.items():
            paths = np.array([index.get(str(i)) for i in reading.image_ids[rows]], dtype=object)
            listed += len(rows)
            rows, paths = rows[pd.notna(paths)], paths[pd.notna(paths)]
            present += len(rows)
            built[name] = self._split(reading, rows, paths.tolist(), boxed=name != "train")
        folders = "train" if self.layout == "kaggle" else "train and test"
        self.report_missing(listed, present, "images", searched=f"{self.root} ({folders})")
        built["boxes"] = built["test"]
        return built

    def _split(self, reading: Readings, rows: np.ndarray, paths: list[str], *, boxed: bool) -> tuple[Split, list[str]]:
        """The records of ``rows`` of ``reading``; with ``boxed``, their boxes and header sizes."""
        opts = self.options
        labels = vote_labels(reading.votes[rows], reading.readers[rows], opts.labels)
        ids = [str(i) for i in reading.image_ids[rows]]
        split = Split(ids=ids, patient_ids=list(ids), labels=np.ascontiguousarray(labels, dtype=np.float32))
        if not boxed:
            return split, paths
        new_row = np.full(len(reading.image_ids), -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        boxes = reading.boxes[new_row[reading.boxes["image"].to_numpy()] >= 0]
        boxes = boxes.assign(image=new_row[boxes["image"].to_numpy()])
        chosen = combine_boxes(boxes, reading.readers[rows], labels, opts.readers, opts.fusion_iou)
        sizes = np.array([image_size(self.absolute(p)) for p in paths], dtype=np.int64).reshape(-1, 2)
        split.image_sizes = sizes
        split.boxes = _clipped(chosen, sizes)
        return split, paths


def _clipped(boxes: pd.DataFrame, sizes: np.ndarray) -> pd.DataFrame:
    """x0, y0, x1, y1 boxes as the split's ``x, y, w, h`` table, clipped to each image (empty ones dropped)."""
    if boxes.empty:
        return empty_boxes()
    rows = boxes["image"].to_numpy()
    height, width = sizes[rows, 0].astype(np.float64), sizes[rows, 1].astype(np.float64)
    x0 = np.clip(boxes["x0"].to_numpy(), 0, width)
    x1 = np.clip(boxes["x1"].to_numpy(), 0, width)
    y0 = np.clip(boxes["y0"].to_numpy(), 0, height)
    y1 = np.clip(boxes["y1"].to_numpy(), 0, height)
    keep = (x1 > x0) & (y1 > y0)
    table = pd.DataFrame({"index": rows, "class_index": boxes["class_index"].to_numpy(), "x": x0, "y": y0,
                          "w": x1 - x0, "h": y1 - y0}, columns=list(BOX_COLUMNS))
    return table[keep].reset_index(drop=True).astype({"index": "int64", "class_index": "int64"})
