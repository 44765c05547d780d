"""The ``rsna_pneumonia`` dataset: the RSNA Pneumonia Detection Challenge's labelled images.

Root layout, as the challenge distributes it (Kaggle, RSNA 2018)::

    root/
      stage_2_train_labels.csv        patientId,x,y,width,height,Target (one row per box)
      stage_2_train_images/<patientId>.dcm

One class, "Lung Opacity" (the challenge's box label): 1 for the images with boxes, 0 for
the others. The challenge's test images have no published labels, so ``train``, ``val`` and
``test`` are a deterministic patient-level split of the labelled images
(:func:`cxrbench.api.hashed_split`: ``sha256("<split_seed>:<patientId>")``, so a patient's
split never depends on which images are present); ``boxes`` is ``test`` under the name the
localization step reads by default. Every split carries its boxes, so ``val`` boxes can tune
thresholds. Boxes are scaled from the released 1024 px to each file's size on disk (read
from its header), so copies shrunk once (``<patientId>.png`` beside or instead of the
DICOM works too) keep correct boxes.

The images are NIH ChestX-ray14 images re-annotated, and the challenge's ``patientId`` is
one per image: RSNA published no link between images of one patient, so "patient-level"
here is image-level, and an NIH patient's images may fall into different splits.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from cxrbench.api import (
    BOX_COLUMNS,
    IMAGE_SUFFIXES,
    DatasetContext,
    FileDataset,
    FileLayout,
    OverlapKeys,
    Split,
    UsageError,
    check_split_fractions,
    empty_boxes,
    hashed_split,
    image_size,
    safe_join,
)

from .mapping import MAPPING_FILE, nih_patient, read_mapping
from .tables import BOX_LABEL, IMAGES_FOLDER, LABELS_FILE, RELEASE_SIZE, RsnaLabels, read_labels

__all__ = ["RsnaPneumonia", "RsnaPneumoniaOptions"]


@dataclasses.dataclass(frozen=True)
class RsnaPneumoniaOptions:
    """Options of the ``rsna_pneumonia`` dataset.

    Attributes:
        root: the folder holding ``stage_2_train_labels.csv`` and ``stage_2_train_images/``.
        val_fraction: fraction of the patients in ``val``.
        test_fraction: fraction of the patients in ``test`` (and ``boxes``).
        split_seed: seed of the patient-level split.
        follow_symlinks: follow links that lead outside ``root`` (refused by default).

    """

    root: str
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    follow_symlinks: bool = False

    def validate(self) -> None:
        """Check the split fractions."""
        check_split_fractions(self.val_fraction, self.test_fraction)


class RsnaPneumonia(FileDataset):
    """RSNA Pneumonia Detection: "Lung Opacity" boxes on 26,684 DICOM images (6,012 positive).

    Splits: ``train``, ``val``, ``test`` (a seeded patient-level split of the labelled
    images) and ``boxes`` (= ``test``); boxes in each file's own pixels.
    """

    NAME = "rsna_pneumonia"
    HAS_BOXES: ClassVar[bool] = True
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test", "boxes")
    Options = RsnaPneumoniaOptions

    def __init__(self, options: RsnaPneumoniaOptions, context: DatasetContext | None = None) -> None:
        super().__init__(options, context)
        self.classes = [BOX_LABEL]
        self._mapping: dict[str, str] | None = None
        self._mapping_lock = threading.Lock()

    # ------------------------------------------------------------------ files

    def locate(self, root: Path) -> FileLayout:
        """``stage_2_train_labels.csv``, directly under ``root``."""
        labels = root / LABELS_FILE
        if not labels.is_file():
            raise UsageError(f"rsna_pneumonia: missing under {root}: {LABELS_FILE}")
        return FileLayout(root=root, tables={"labels": labels})

    def listing_name(self, relative: str) -> str:
        """Images enter the fingerprint by file name alone, as the table names them."""
        return relative.rsplit("/", 1)[-1]

    def overlap_keys(self, split_name: str) -> OverlapKeys | None:
        """A split's NIH names from the organisers' mapping (``mapping.MAPPING_FILE`` in the root), or None.

        Without the file the overlap audit compares images by perceptual hashes; with it,
        by name, and by NIH patient too (``cxrbench.overlap``).
        """
        mapping = self._nih_mapping()
        if mapping is None:
            return None
        names = tuple(mapping.get(i) for i in self.split(split_name).ids)
        return OverlapKeys("nih", names, tuple(nih_patient(n) if n else None for n in names), MAPPING_FILE)

    def _nih_mapping(self) -> dict[str, str] | None:
        with self._mapping_lock:
            if self._mapping is None:
                path = safe_join(self.root, MAPPING_FILE)  # a link out of the root is refused
                self._mapping = read_mapping(path) if path.is_file() else {}
            return self._mapping or None

    def _index_images(self) -> dict[str, str]:
        """``patientId`` -> path of its image under ``stage_2_train_images/`` (a DICOM before a copy)."""
        found = self.find_images([IMAGES_FOLDER], suffixes=IMAGE_SUFFIXES)
        index: dict[str, str] = {}
        # .dcm first: where a converted copy sits beside the original, the original is read
        for key in sorted(found, key=lambda k: (not k.lower().endswith(".dcm"), k)):
            stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            index.setdefault(stem, found[key])
        return index

    # ------------------------------------------------------------------ loading

    def build(self) -> dict[str, tuple[Split, list[str]]]:
        """The three splits of the images present, and ``boxes`` = ``test``; boxes in file pixels."""
        opts = self.options
        labels = read_labels(self.tables["labels"])
        index = self._index_images()
        ids = np.array(labels.image_ids, dtype=object)
        paths = np.array([index.get(i) for i in labels.image_ids], dtype=object)
        present = np.array([p is not None for p in paths], dtype=bool)
        self.report_missing(len(ids), int(present.sum()), "images", searched=f"{self.root}/{IMAGES_FOLDER}")
        assigned = hashed_split(ids, {"test": opts.test_fraction, "val": opts.val_fraction}, opts.split_seed)
        built: dict[str, tuple[Split, list[str]]] = {}
        for name in ("train", "val", "test"):
            rows = np.flatnonzero(present & (assigned == name))
            split = Split(
                ids=ids[rows].tolist(),
                patient_ids=ids[rows].tolist(),  # one image per patientId in the challenge
                labels=labels.target[rows, None].astype(np.float32),
            )
            split.boxes = self._boxes(rows, labels, paths)
            built[name] = (split, paths[rows].tolist())
        built["boxes"] = built["test"]  # the same records, so the same boxes
        return built

    def _boxes(self, rows: np.ndarray, labels: RsnaLabels, paths: np.ndarray) -> pd.DataFrame:
        """The boxes of ``rows``' images, from release pixels to each file's size (read from its header)."""
        table = labels.boxes
        where = pd.Index(rows).get_indexer(table["image"].to_numpy())
        use = where >= 0
        if not use.any():
            return empty_boxes()
        where, table = where[use], table[use]
        # Only images with boxes need their size: one header read each, pixels untouched.
        size_of = {int(r): image_size(self.absolute(paths[rows[r]])) for r in np.unique(where)}
        sizes = np.array([size_of[int(r)] for r in where], dtype=np.float64).reshape(-1, 2)
        sy, sx = sizes[:, 0] / RELEASE_SIZE, sizes[:, 1] / RELEASE_SIZE
        return pd.DataFrame(
            {
                "index": where.astype(np.int64),
                "class_index": np.zeros(len(where), np.int64),
                "x": table["x"].to_numpy() * sx,
                "y": table["y"].to_numpy() * sy,
                "w": table["w"].to_numpy() * sx,
                "h": table["h"].to_numpy() * sy,
            },
            columns=list(BOX_COLUMNS),
        )
