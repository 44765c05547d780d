"""The ``siim`` dataset: SIIM-ACR Pneumothorax Segmentation, every mask row of an image combined.

Root layout: ``train-rle.csv`` directly under ``root``, and the DICOM images anywhere
below it, found by one scan by file name ``<ImageId>.dcm``: the challenge's tree
(``dicom-images-train/<study>/<series>/<ImageId>.dcm``) or flat (``<folder>/<ImageId>.dcm``);
a converted copy ``<ImageId>.png`` is read where there is no DICOM.

One class, "Pneumothorax": 1 for an image with a region, 0 for a ``-1`` row. Each image of
``val``, ``test`` and ``boxes`` has one :class:`cxrbench.api.MaskRef` holding ALL its RLE
rows (OR-ed when decoded; a ``-1`` image has an empty mask: a known negative), so the
boxes are those of the mask's connected regions. ``train`` carries labels only (its masks
would only cost decoding time).

Splits: there are no published test labels, so ``train``, ``val`` and ``test`` are a
deterministic patient-level split (:func:`cxrbench.api.hashed_split` of the patient id)
and ``boxes`` is ``test``. The patient is the DICOM header's ``PatientID`` (the ImageId
when the header has none, or for a PNG copy): one header read per image, pixels untouched
(0.4-0.8 ms a file: 5-9 s for the release's 12,047 images on a 2-core machine, once per
process), which also gives each image's size so boxes follow files stored at another size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np

from cxrbench.api import (
    IMAGE_SUFFIXES,
    DatasetContext,
    FileDataset,
    FileLayout,
    MaskRef,
    Split,
    UsageError,
    check_split_fractions,
    hashed_split,
    image_header,
)

from .tables import EMPTY, MASK_SIZE, RLE_FILE, SiimMasks, read_rle_table

__all__ = ["CLASS", "SiimOptions", "SiimPneumothorax"]

CLASS = "Pneumothorax"
_MASKED_SPLITS = ("val", "test")


@dataclasses.dataclass(frozen=True)
class SiimOptions:
    """Options of the ``siim`` dataset.

    Attributes:
        root: the folder holding ``train-rle.csv`` and, anywhere below it, the images.
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


def _stem(name: str) -> str:
    """The file name less its image suffix (ImageIds are dotted UIDs: never split at the first dot)."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


class SiimPneumothorax(FileDataset):
    """SIIM-ACR Pneumothorax: masks of every region (all RLE rows) on 12,047 DICOM images (2,669 positive).

    Splits: ``train``, ``val``, ``test`` (a seeded patient-level split, patient from the
    DICOM header) and ``boxes`` (= ``test``; boxes of the masks' regions).
    """

    NAME = "siim"
    HAS_BOXES: ClassVar[bool] = True
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test", "boxes")
    Options = SiimOptions

    def __init__(self, options: SiimOptions, context: DatasetContext | None = None) -> None:
        super().__init__(options, context)
        self.classes = [CLASS]

    # ------------------------------------------------------------------ files

    def locate(self, root: Path) -> FileLayout:
        """``train-rle.csv``, directly under ``root``."""
        table = root / RLE_FILE
        if not table.is_file():
            raise UsageError(f"siim: missing under {root}: {RLE_FILE}")
        return FileLayout(root=root, tables={"rle": table})

    def listing_name(self, relative: str) -> str:
        """Images enter the fingerprint by file name alone: the tree or a flat folder give the same cells."""
        return relative.rsplit("/", 1)[-1]

    def _index_images(self) -> dict[str, str]:
        """ImageId -> path of its image anywhere under the root (a DICOM before a copy)."""
        found = self.find_images(suffixes=IMAGE_SUFFIXES)
        index: dict[str, str] = {}
        for key in sorted(found, key=lambda k: (not k.lower().endswith((".dcm", ".dicom")), k)):
            index.setdefault(_stem(key.rsplit("/", 1)[-1]), found[key])
        return index

    # ------------------------------------------------------------------ loading

    def build(self) -> dict[str, tuple[Split, list[str]]]:
        """The three splits of the images present, ``boxes`` = ``test``; masks on val and test."""
        opts = self.options
        table = read_rle_table(self.tables["rle"])
        index = self._index_images()
        ids = [i for i in sorted(table.rows) if i in index]
        self.report_missing(len(table.rows), len(ids), "images", searched=f"{self.root} (any folder)")
        paths = [index[i] for i in ids]
        headers = [image_header(self.absolute(p)) for p in paths]
        patients = np.array([h.patient_id or i for h, i in zip(headers, ids, strict=True)], dtype=object)
        sizes = np.array([(h.height, h.width) for h in headers], dtype=np.int64).reshape(-1, 2)
        labels = np.array([table.is_positive(i) for i in ids], dtype=np.float32).reshape(-1, 1)
        assigned = hashed_split(patients, {"test": opts.test_fraction, "val": opts.val_fraction}, opts.split_seed)
        built: dict[str, tuple[Split, list[str]]] = {}
        for name in ("train", "val", "test"):
            rows = np.flatnonzero(assigned == name)
            split_ids = [ids[r] for r in rows]
            masks = self._masks(split_ids, table) if name in _MASKED_SPLITS else {}
            split = Split(ids=split_ids, patient_ids=patients[rows].tolist(), labels=labels[rows],
                          image_sizes=sizes[rows], masks=masks)
            built[name] = (split, [paths[r] for r in rows])
        built["boxes"] = built["test"]  # the same records, so the same masks and boxes
        return built

    @staticmethod
    def _masks(image_ids: list[str], table: SiimMasks) -> dict[tuple[int, int], MaskRef]:
        """One mask per image, of all its RLE rows (``-1`` images: an empty mask, a known negative)."""
        refs = {}
        for row, image_id in enumerate(image_ids):
            rles = tuple(r for r in table.rows[image_id] if r != EMPTY) or (EMPTY,)
            refs[(row, 0)] = MaskRef.from_siim_rles(image_id, CLASS, rles, MASK_SIZE, MASK_SIZE)
        return refs
