"""The ``chexlocalize`` dataset: CheXpert validation and test images with radiologists' masks.

``root`` is the folder of a CheXlocalize download (Saporta et al., Nat. Mach. Intell.
2022)::

    CheXlocalize/gt_segmentations_{val,test}.json   COCO RLE masks (read by default)
    CheXlocalize/gt_annotations_{val,test}.json     polygons (``masks: annotations``)
    CheXpert/{val,test}_labels.csv
    CheXpert/{val,test}/patientN/studyN/viewN_frontal.jpg

Splits: ``val`` and ``test`` are CheXlocalize's (labels from the labels tables, one mask
per image and class, kept encoded); ``boxes`` is ``test`` under the name a grid's
localization step reads by default, its boxes those of the masks' connected regions. The
masks of ``val`` are the ones thresholds are tuned on. CheXlocalize has no training
images: ``chexpert_root`` names a CheXpert release whose whole ``train.csv`` becomes the
``train`` split, read by the ``chexpert`` dataset's own code (its ``valid.csv`` images are
CheXlocalize's val images, so none of them is trained on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from cxrbench_chexpert import CheXpert
from cxrbench_chexpert.labels import apply_policy, resolve_uncertain

from cxrbench.api import DatasetContext, FileDataset, FileLayout, MaskRef, Split, UsageError

from .classes import chexpert_spelling, resolve_classes
from .tables import (
    CHEXPERT_TO_CHEXLOCALIZE,
    SPLITS,
    ChexlocalizeImageId,
    ChexlocalizeLayout,
    LabelRow,
    MaskRecord,
    from_chexpert_name,
    index_masks,
    read_annotations,
    read_labels_csv,
    read_segmentations,
)

MaskSource = Literal["segmentations", "annotations"]
MASK_SOURCES: tuple[str, ...] = ("segmentations", "annotations")

__all__ = ["MASK_SOURCES", "Chexlocalize", "SplitTables"]


@dataclasses.dataclass(frozen=True)
class SplitTables:
    """The two tables of one CheXlocalize split found on disk.

    Attributes:
        masks: the mask JSON read.
        source: which kind it is (``segmentations``: COCO RLE; ``annotations``: polygons).
        labels: the labels CSV.

    """

    masks: Path
    source: MaskSource
    labels: Path


@dataclasses.dataclass(frozen=True)
class ChexlocalizeOptions:
    """Options of the ``chexlocalize`` dataset.

    Attributes:
        root: the folder holding ``CheXlocalize/`` and ``CheXpert/``.
        masks: ``segmentations`` (the COCO RLE JSON) or ``annotations`` (the polygon
            JSON, rasterised as CheXlocalize does); when the chosen file of a split is
            missing and the other is there, the other is read, with one warning.
        classes: ``all10`` (the 10 localized pathologies), ``competition5`` or a list
            (CheXpert or CheXlocalize spelling); always named as CheXpert names them.
        chexpert_root: a CheXpert release (the folder the ``chexpert`` dataset reads)
            whose train.csv gives the ``train`` split; without it there is none.
        uncertain: what uncertain (-1) labels become, as in the ``chexpert`` dataset
            (``ignore``, ``zeros``, ``ones``, ``seed`` or ``{finding: policy}``); blank
            labels are 0.
        follow_symlinks: follow links that lead outside ``root`` (and ``chexpert_root``).

    """

    root: str
    masks: MaskSource = "segmentations"
    classes: str | tuple[str, ...] = "all10"
    chexpert_root: str | None = None
    uncertain: str | dict = "ignore"
    follow_symlinks: bool = False

    def __post_init__(self) -> None:
        # Stored in CheXpert spelling, so both spellings give the same options (and cell ids).
        if isinstance(self.classes, list | tuple):
            object.__setattr__(self, "classes", tuple(chexpert_spelling(str(c)) for c in self.classes))
        if isinstance(self.uncertain, Mapping):
            object.__setattr__(self, "uncertain", {chexpert_spelling(str(k)): v for k, v in self.uncertain.items()})

    def validate(self) -> None:
        """Check the mask source, the classes, the uncertain policy and chexpert_root."""
        if self.masks not in MASK_SOURCES:
            raise ValueError(f"masks must be 'segmentations' or 'annotations', got {self.masks!r}")
        resolve_uncertain(self.uncertain, resolve_classes(self.classes))
        if self.chexpert_root is not None and not str(self.chexpert_root).strip():
            raise ValueError(f"chexpert_root must name a CheXpert release folder, got {self.chexpert_root!r}")


class Chexlocalize(FileDataset):
    """CheXlocalize: radiologists' masks of 10 pathologies on CheXpert val (234) and test (668) images.

    Splits: ``val`` and ``test`` (CheXlocalize's), ``boxes`` (= ``test``; boxes of the
    masks' regions) and, with ``chexpert_root``, ``train`` (a CheXpert train.csv).
    """

    NAME = "chexlocalize"
    HAS_BOXES: ClassVar[bool] = True
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test", "boxes")
    NEUTRAL_OPTIONS: ClassVar[frozenset[str]] = FileDataset.NEUTRAL_OPTIONS | {"chexpert_root"}
    """``chexpert_root`` is a path: the train release's own fingerprint stands for it."""
    Options = ChexlocalizeOptions

    tables_of: dict[str, SplitTables | None]
    """The tables of each CheXlocalize split, None for a split not on disk."""

    def __init__(self, options: ChexlocalizeOptions, context: DatasetContext | None = None) -> None:
        super().__init__(options, context)
        self.classes = list(resolve_classes(options.classes))
        # other spellings of the classes, for files written with CheXlocalize's names (cxrbench score)
        self.class_aliases = {CHEXPERT_TO_CHEXLOCALIZE[c]: c for c in self.classes if c in CHEXPERT_TO_CHEXLOCALIZE}
        self._uncertain = resolve_uncertain(options.uncertain, tuple(self.classes))
        self._train = self._open_train_release() if options.chexpert_root is not None else None

    # ------------------------------------------------------------------ files

    def locate(self, root: Path) -> FileLayout:
        """Each split's mask JSON (the chosen kind, else the other) and labels CSV."""
        layout = ChexlocalizeLayout(root)
        chosen: MaskSource = self.options.masks
        other: MaskSource = "annotations" if chosen == "segmentations" else "segmentations"
        self.tables_of, tables, fallbacks = {}, {}, []
        for split in SPLITS:
            json_of = {"segmentations": layout.segmentations_json(split), "annotations": layout.annotations_json(split)}
            source = chosen if json_of[chosen].is_file() or not json_of[other].is_file() else other
            if source != chosen:
                fallbacks.append(json_of[other].name)
            masks, labels = json_of[source], layout.labels_csv(split)
            missing = [str(p.relative_to(root)) for p in (masks, labels) if not p.is_file()]
            if len(missing) == 2:
                self.tables_of[split] = None  # not downloaded: the split is empty (warned when built)
                continue
            if missing:
                raise UsageError(f"chexlocalize: {split} split: missing under {root}: {missing[0]}")
            self.tables_of[split] = SplitTables(masks=masks, source=source, labels=labels)
            tables[f"{split}_masks"], tables[f"{split}_labels"] = masks, labels
        if not tables:
            raise UsageError(
                f"chexlocalize: no CheXlocalize tables under {root}: expected CheXlocalize/gt_segmentations_val.json "
                "(or gt_annotations_val.json) with CheXpert/val_labels.csv, or the same for test"
            )
        if fallbacks:
            self.context.warn(f"chexlocalize: masks: no {chosen} file for a split; reading {', '.join(fallbacks)} "
                              f"instead")
        return FileLayout(root=root, tables=tables)

    def _open_train_release(self) -> CheXpert:
        """The ``chexpert`` dataset on ``chexpert_root``, all of train.csv in its ``train`` split."""
        opts = self.options
        options = CheXpert.Options(
            root=str(opts.chexpert_root), classes=tuple(self.classes), uncertain=opts.uncertain, frontal_only=True,
            val_fraction=0.0, follow_symlinks=opts.follow_symlinks,
        )  # fmt: skip
        try:
            return CheXpert(options, self.context)
        except UsageError as exc:
            raise UsageError(f"chexlocalize: chexpert_root: {exc}") from None

    def _train_release(self) -> CheXpert:
        if self._train is None:
            raise UsageError(
                "chexlocalize: no train split: CheXlocalize has only val and test images; set chexpert_root "
                "to a CheXpert release (the folder the chexpert dataset reads) to train on its train.csv"
            )
        return self._train

    # ------------------------------------------------------------------ loading

    def build(self) -> dict[str, tuple[Split, list[str]]]:
        """``val`` and ``test`` of the images in each mask JSON with a labels row and a file; ``boxes`` = ``test``."""
        # Image files are only looked up among those one walk found, so no JSON id can
        # lead outside the root.
        found = self.find_images([f"CheXpert/{split}" for split in SPLITS], suffixes=(".jpg",))
        built: dict[str, tuple[Split, list[str]]] = {}
        listed = present = 0
        notes: list[str] = []
        for split in SPLITS:
            tables = self.tables_of[split]
            if tables is None:
                also = " and boxes splits are" if split == "test" else " split is"
                notes.append(f"no {split} tables under {self.root} (CheXlocalize/gt_{self.options.masks}_{split}.json, "
                             f"CheXpert/{split}_labels.csv): the {split}{also} empty")
                built[split] = (self._split([], {}, {}), [])
                continue
            records = self._read_masks(tables)
            rows = {row.image_id: row for row in read_labels_csv(tables.labels)}
            image_ids = list(dict.fromkeys(record.image_id for record in records))
            unlabelled = [image_id for image_id in image_ids if image_id not in rows]
            if unlabelled:
                notes.append(f"{len(unlabelled):,} images of {tables.masks.name} have no row in {tables.labels.name} "
                             f"(e.g. {unlabelled[0]}); skipped")
            kept, paths = [], []
            for image_id in image_ids:
                if image_id not in rows:
                    continue
                listed += 1
                path = found.get(str(ChexlocalizeImageId.parse(image_id).image_relpath(split)))
                if path is not None:
                    kept.append(image_id)
                    paths.append(path)
            present += len(kept)
            built[split] = (self._split(kept, rows, index_masks(records)), paths)
        built["boxes"] = built["test"]  # the same records (and so the same boxes, derived once)
        self.report_missing(listed, present, "images", notes=notes)
        return built

    def _read_masks(self, tables: SplitTables) -> tuple[MaskRecord, ...]:
        """Every (image, pathology) mask of a split's JSON, encoded; a finding not drawn is an empty mask."""
        if tables.source == "segmentations":
            return read_segmentations(tables.masks)
        return read_annotations(tables.masks, all_pathologies=True)

    def _split(self, image_ids: Sequence[str], rows: Mapping[str, LabelRow],
               masks: Mapping[tuple[str, str], MaskRef]) -> Split:
        """The records of ``image_ids``: labels under the uncertain policy, one mask per image and class."""
        classes = tuple(self.classes)
        pathologies = [from_chexpert_name(name) for name in classes]
        raw = np.array([[rows[i].labels[c] for c in classes] for i in image_ids], np.float32).reshape(-1, len(classes))
        refs = {(r, c): masks[(image_id, pathology)]
                for r, image_id in enumerate(image_ids) for c, pathology in enumerate(pathologies)}
        # Every pathology of an image has the image's size (the tables check it): take the first.
        sizes = np.array([masks[(i, pathologies[0])].size for i in image_ids], np.int64).reshape(-1, 2)
        return Split(
            ids=list(image_ids),
            patient_ids=[ChexlocalizeImageId.parse(i).patient for i in image_ids],
            labels=apply_policy(raw, classes, self._uncertain),
            image_sizes=sizes,
            masks=refs,
        )

    # ------------------------------------------------------------------ contract

    @property
    def split_names(self) -> tuple[str, ...]:
        """Every split served: ``train`` only with ``chexpert_root``."""
        names = super().split_names
        return names if self._train is not None else tuple(n for n in names if n != "train")

    def split(self, name: str) -> Split:
        """Records of split ``name``; ``train`` comes from the CheXpert release."""
        if name == "train":
            return self._train_release().split("train")
        return super().split(name)

    def image_path(self, split: str, index: int) -> str:
        """The file of image ``index`` of ``split`` (under ``chexpert_root`` for ``train``)."""
        if split == "train":
            return self._train_release().image_path("train", index)
        return super().image_path(split, index)

    def fingerprint(self) -> str:
        """The CheXlocalize files' fingerprint, then the training release's (when there is one)."""
        own = super().fingerprint()
        return own if self._train is None else f"{own}|train:{self._train.fingerprint()}"

    def data_version(self) -> str:
        """The CheXlocalize files' content version, then the training release's (when there is one)."""
        own = super().data_version()
        return own if self._train is None else f"{own}|train:{self._train.data_version()}"
