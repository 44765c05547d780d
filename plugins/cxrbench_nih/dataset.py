"""The ``nih`` dataset: NIH ChestX-ray14 laid out as NIH publishes it.

Root layout (either image layout, as extracted from the release's tar parts)::

    root/
      Data_Entry_2017_v2020.csv   (or Data_Entry_2017.csv)
      BBox_List_2017.csv
      train_val_list.txt
      test_list.txt
      images/*.png                (or images_001/images/*.png ... images_012/images/*.png)

Only the images present are used (a partial download works, with one warning), and
boxes are scaled from the released 1024 px PNGs to each file's actual size on disk, so images
shrunk once to 256 or 512 px keep correct boxes.

``labels: google2019`` swaps the label set for the adjudicated expert labels of Majkowska et
al. (Radiology 2020), ``google2019_nih-chest-xray-labels.csv`` in the root (see
:class:`NIHChestXray14` for the rule).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from cxrbench.api import (
    BOX_COLUMNS,
    ClassMatch,
    DatasetContext,
    FileDataset,
    FileLayout,
    OverlapKeys,
    Split,
    TuningPopulation,
    UsageError,
    empty_boxes,
    image_size,
    patient_split,
    shared_classes,
)

from .tables import (
    GOOGLE2019_CLASSES,
    GOOGLE2019_NAMES,
    NIH8,
    NIH14,
    NO_FINDING,
    RELEASE_SIZE,
    entry_covariates,
    finding_matrix,
    harmonise,
    read_bbox_list,
    read_data_entry,
    read_google2019,
    read_name_list,
)

CLASS_PRESETS = {"nih8": NIH8, "nih14": NIH14}
BINARY_CLASSES = ("Abnormal",)
DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_IMAGE_FOLDER = re.compile(r"images_\d+")


def resolve_classes(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    """The finding names selected by a ``classes`` option.

    Args:
        spec: ``"nih8"``, ``"nih14"`` or a list of NIH finding names (``Infiltrate`` is
            accepted for ``Infiltration``).

    Raises:
        ValueError: for an unknown preset, an unknown or repeated name, or an empty list.

    """
    if isinstance(spec, str):
        if spec in CLASS_PRESETS:
            return CLASS_PRESETS[spec]
        raise ValueError(f"classes must be 'nih8', 'nih14' or a list of NIH findings, got {spec!r}")
    names = tuple(harmonise(str(name)) for name in spec)
    if not names:
        raise ValueError("classes is an empty list")
    unknown = [name for name in names if name not in NIH14]
    if unknown:
        raise ValueError(f"unknown NIH finding(s) {unknown}; valid: {', '.join(NIH14)}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes lists a finding twice: {list(names)}")
    return names


@dataclasses.dataclass(frozen=True)
class Google2019Mapping:
    """How NIH's labels and boxes become the expert classes (see :func:`google2019_mapping`).

    Attributes:
        matches: one :class:`cxrbench.api.ClassMatch` per expert class NIH can give.
        boxes: NIH box label -> expert class.

    """

    matches: tuple[ClassMatch, ...]
    boxes: Mapping[str, str]


def google2019_mapping() -> Google2019Mapping:
    """How NIH's 14 labels give the expert classes on images Google did not label.

    Through :func:`cxrbench.api.shared_classes` (the synonyms table): ``Pneumothorax`` is
    NIH's; ``Nodule or mass`` is NIH's ``Nodule`` OR ``Mass`` (the maximum of the two 0/1
    labels); ``Fracture`` and ``Airspace opacity`` have no NIH label and are NaN (unknown,
    masked out of the loss). NIH's ``Consolidation`` / ``Infiltration`` / ``Pneumonia`` are
    not turned into airspace opacity: no published mapping says their union is that finding,
    and images with none of them (e.g. with edema or atelectasis) would become false
    negatives.

    """
    matches = tuple(shared_classes(NIH14, GOOGLE2019_CLASSES))
    return Google2019Mapping(matches, {s: m.target_name for m in matches for s in m.source_names})


class NIHChestXray14(FileDataset):
    """NIH ChestX-ray14: 14 findings, official test list, 880 images with boxes.

    Splits: ``train`` and ``val`` (patient-disjoint parts of the official train/val
    list), ``test`` (the official test list) and ``boxes`` (the images of
    ``BBox_List_2017.csv``, boxes in each file's own pixels).

    With ``labels: google2019`` (Majkowska et al., Radiology 2020) the classes are the four
    adjudicated findings ``Fracture``, ``Pneumothorax``, ``Airspace opacity`` and ``Nodule
    or mass``; ``test`` is Google's test set (1,962 images of the official test list), ``val``
    its validation set (2,414 images of the train/val list), and ``train`` the rest of the
    train/val list without any patient of Google's table (so ``val`` is patient-disjoint;
    ``val_fraction`` is unused). An image Google labelled has its expert labels; any other
    (``train``, most of ``boxes``) has its NIH labels mapped by :func:`google2019_mapping`
    (Fracture and Airspace opacity unknown). ``boxes`` keeps NIH's boxes of the mapped
    findings (Pneumothorax; Nodule and Mass as Nodule or mass).
    """

    NAME = "nih"
    HAS_BOXES: ClassVar[bool] = True
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test", "boxes")
    ID_NEUTRAL_DEFAULTS: ClassVar[dict[str, Any]] = {"labels": "nih"}
    """``labels`` came after results stores existed: at ``nih`` it stays out of fingerprints
    and cell ids, so existing cells keep their ids."""

    @dataclasses.dataclass(frozen=True)
    class Options:
        """Options of the ``nih`` dataset.

        Attributes:
            root: folder holding the tables and ``images/`` (or ``images_NNN/images/``).
            classes: ``nih8`` (the 8 boxed findings), ``nih14`` or a list of findings.
            task: ``multilabel`` (one output per class) or ``binary`` (one output,
                ``Abnormal``: any finding vs ``No Finding``, as in the seed; ``classes``
                is then unused).
            views: keep ``all`` images, or only ``PA`` or ``AP`` views.
            labels: ``nih`` (the released labels) or ``google2019`` (the expert labels of
                Majkowska et al. 2020 for 4 findings, from
                ``google2019_nih-chest-xray-labels.csv``; ``classes`` and ``task`` are then
                fixed, ``val_fraction`` unused).
            val_fraction: fraction of the train/val list's patients held out as ``val``.
            split_seed: seed of that patient-level split.
            follow_symlinks: follow links that lead outside ``root`` (refused by default).

        """

        root: str
        classes: str | tuple[str, ...] = "nih8"
        task: Literal["multilabel", "binary"] = "multilabel"
        views: Literal["all", "PA", "AP"] = "all"
        val_fraction: float = 0.1
        split_seed: int = 0
        follow_symlinks: bool = False
        labels: Literal["nih", "google2019"] = "nih"

        def validate(self) -> None:
            """Check the class list, the validation fraction and the label set."""
            resolve_classes(self.classes)
            if not 0.0 <= self.val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
            if self.labels == "google2019" and (self.task != "multilabel" or self.classes != "nih8"):
                raise ValueError("labels google2019 has its own 4 classes (Fracture, Pneumothorax, Airspace "
                                 "opacity, Nodule or mass): leave classes and task unset")

    def __init__(self, options: Options, context: DatasetContext | None = None) -> None:
        super().__init__(options, context)
        if options.labels == "google2019":
            self.classes = list(GOOGLE2019_CLASSES)
        else:
            self.classes = list(BINARY_CLASSES if options.task == "binary" else resolve_classes(options.classes))

    # ------------------------------------------------------------------ files

    def locate(self, root: Path) -> FileLayout:
        """The four release tables, directly under ``root``."""
        entry = next((root / n for n in DATA_ENTRY_NAMES if (root / n).is_file()), None)
        wanted = {
            "data_entry": entry,
            "bbox": root / "BBox_List_2017.csv",
            "train_val": root / "train_val_list.txt",
            "test": root / "test_list.txt",
        }
        missing = [
            " or ".join(DATA_ENTRY_NAMES) if key == "data_entry" else path.name
            for key, path in wanted.items()
            if path is None or not path.is_file()
        ]
        if self.options.labels == "google2019":
            # only then a table of the layout: the default fingerprint stays what it always was
            wanted["google2019"] = next((root / n for n in GOOGLE2019_NAMES if (root / n).is_file()), None)
            if wanted["google2019"] is None:
                missing.append(f"{GOOGLE2019_NAMES[0]} (labels: google2019)")
        if missing:
            raise UsageError(f"nih: missing under {root}: {', '.join(missing)}")
        return FileLayout(root=root, tables={key: path for key, path in wanted.items() if path is not None})

    def listing_name(self, relative: str) -> str:
        """Images enter the fingerprint by file name alone, as the tables name them."""
        return relative.rsplit("/", 1)[-1]

    def overlap_keys(self, split_name: str) -> OverlapKeys:
        """A split's images by their ``Image Index`` and patients by ``Patient ID``, in the ``nih`` namespace.

        Datasets built from NIH images that publish the NIH names (RSNA Pneumonia with its
        organisers' mapping) are audited against these names (:mod:`cxrbench.overlap`).
        """
        split = self.split(split_name)
        return OverlapKeys("nih", tuple(split.ids), tuple(split.patient_ids), "NIH Image Index")

    def _index_images(self) -> dict[str, str]:
        """File name -> path of every PNG in ``images/`` and ``images_NNN/images/``."""
        folders = ["images"]
        with os.scandir(self.root) as entries:
            folders += sorted(e.name + "/images" for e in entries if _IMAGE_FOLDER.fullmatch(e.name))
        return self.find_images(folders, suffixes=(".png",), by_name=True)

    # ------------------------------------------------------------------ loading

    def build(self) -> dict[str, tuple[Split, list[str]]]:
        """The four splits of the images present; the boxed split's boxes in file pixels."""
        opts = self.options
        entry = read_data_entry(self.tables["data_entry"])
        lists = {
            "train_val": read_name_list(self.tables["train_val"]),
            "test": read_name_list(self.tables["test"]),
        }
        bbox = read_bbox_list(self.tables["bbox"])
        google = read_google2019(self.tables["google2019"]) if opts.labels == "google2019" else None
        # Table names are only looked up in this index of the files found under the
        # root, so no table entry can point elsewhere.
        index = self._index_images()
        if not index:
            raise UsageError(f"nih: no PNG images under {self.root}/images or {self.root}/images_NNN/images")

        names = entry["name"].to_numpy(dtype=object)
        patients = entry["patient"].to_numpy()
        paths = entry["name"].map(index).to_numpy(dtype=object)
        present = pd.notna(paths)
        wanted = np.ones(len(entry), dtype=bool)
        if opts.views != "all":
            wanted = entry["view"].to_numpy() == opts.views
        position = pd.Index(names)
        if google is not None:
            labels = self._google2019_labels(entry, google, position)
        elif opts.task == "binary":
            labels = (entry["findings"].to_numpy() != NO_FINDING).astype(np.float32)[:, None]
        else:
            labels = finding_matrix(entry["findings"], tuple(self.classes))

        box_names = pd.unique(bbox["name"].to_numpy(dtype=object))
        listed_rows = {
            "train_val": position.get_indexer(lists["train_val"]),
            "test": position.get_indexer(lists["test"]),
            "boxes": position.get_indexer(box_names),
        }
        if google is not None:
            # Google's sets replace the official test list and the seeded val draw
            listed_rows["google2019"] = position.get_indexer(google["name"].to_numpy(dtype=object))
            lists = {"train_val": lists["train_val"], "google2019": google["name"].to_numpy(dtype=object)}
        self._warn_missing(listed_rows, lists, box_names, wanted, present)

        tv_rows = listed_rows["train_val"][listed_rows["train_val"] >= 0]
        boxes_table = bbox
        if google is None:
            val_patients = patient_split(patients[tv_rows], opts.val_fraction, opts.split_seed)
            is_val = np.isin(patients[tv_rows], val_patients)
            rows = {"train": tv_rows[~is_val], "val": tv_rows[is_val],
                    "test": listed_rows["test"][listed_rows["test"] >= 0]}
        else:
            g_rows, sets = listed_rows["google2019"], google["set"].to_numpy(dtype=object)
            google_patients = np.union1d(google["patient"].to_numpy(), patients[g_rows[g_rows >= 0]])
            rows = {"train": tv_rows[~np.isin(patients[tv_rows], google_patients)],
                    "val": g_rows[(sets == "val") & (g_rows >= 0)],
                    "test": g_rows[(sets == "test") & (g_rows >= 0)]}
            box_of = google2019_mapping().boxes  # NIH box label -> expert class
            boxes_table = bbox[bbox["label"].isin(box_of)].assign(label=lambda b: b["label"].map(box_of))
        rows["boxes"] = listed_rows["boxes"][listed_rows["boxes"] >= 0]
        usable = present & wanted
        rows = {name: r[usable[r]] for name, r in rows.items()}

        covariates = entry_covariates(entry)
        built = {
            name: (
                Split(
                    ids=names[r].tolist(),
                    patient_ids=[f"{p:08d}" for p in patients[r].tolist()],
                    labels=np.ascontiguousarray(labels[r], dtype=np.float32),
                    covariates=covariates.iloc[r].reset_index(drop=True),
                ),
                paths[r].tolist(),
            )
            for name, r in rows.items()
        }
        self._attach_boxes(*built["boxes"], boxes_table)
        # stratified by NIH's own box labels whatever the label set: the same pinned tuning part
        self._population = self._box_population(bbox, entry)
        return built

    @staticmethod
    def _google2019_labels(entry: pd.DataFrame, google: pd.DataFrame, position: pd.Index) -> np.ndarray:
        """``N x 4`` labels of every Data_Entry row: Google's where it labelled the image, else NIH's mapped."""
        nih = finding_matrix(entry["findings"], NIH14)
        labels = np.full((len(entry), len(GOOGLE2019_CLASSES)), np.nan, dtype=np.float32)
        for match in google2019_mapping().matches:
            labels[:, match.target] = match.scores(nih)
        rows = position.get_indexer(google["name"].to_numpy(dtype=object))
        known = rows >= 0
        labels[rows[known]] = google[list(GOOGLE2019_CLASSES)].to_numpy(dtype=np.float32)[known]
        return labels

    @staticmethod
    def _box_population(bbox: pd.DataFrame, entry: pd.DataFrame) -> TuningPopulation:
        """Every image of ``BBox_List_2017.csv`` with its patient and box labels (present or not)."""
        patient_of = dict(zip(entry["name"], entry["patient"], strict=True))
        labels = bbox.groupby("name", sort=True)["label"].apply(tuple)
        ids = tuple(str(n) for n in labels.index)
        # a box image missing from Data_Entry cannot happen in the release; its name's prefix is the patient
        patients = tuple(f"{int(patient_of.get(n, n[:8])):08d}" for n in ids)
        return TuningPopulation(ids, patients, tuple(labels.tolist()))

    def tuning_population(self, split: str) -> TuningPopulation | None:
        """The whole published box list, so the tuning part is the same on every machine."""
        if split != "boxes":
            return None
        self.split("boxes")  # builds the tables once
        return self._population

    def _warn_missing(
        self,
        listed_rows: dict[str, np.ndarray],
        lists: dict[str, np.ndarray],
        box_names: np.ndarray,
        wanted: np.ndarray,
        present: np.ndarray,
    ) -> None:
        """One warning line for a partial download; an error when nothing is there."""
        is_listed = np.zeros(len(wanted), dtype=bool)
        unlabelled: list[np.ndarray] = []
        for key, names in (*lists.items(), ("boxes", box_names)):
            r = listed_rows[key]
            is_listed[r[r >= 0]] = True
            unlabelled.append(names[r < 0])
        n_unlabelled = len(pd.unique(np.concatenate(unlabelled)))
        table = self.tables["data_entry"].name
        views = self.options.views
        self.report_missing(
            int((is_listed & wanted).sum()),
            int((is_listed & wanted & present).sum()),
            "images" if views == "all" else f"{views}-view images",
            searched=f"{self.root}/images (or images_NNN/images)",
            notes=[f"{n_unlabelled:,} listed images have no row in {table}"] if n_unlabelled else [],
        )

    def _attach_boxes(self, split: Split, paths: list[str], bbox: pd.DataFrame) -> None:
        """Scale the boxes of the boxed split from released-PNG pixels to each file's size.

        The size on disk is read from each file's header, as users often shrink the
        images once (to 512 or 256 px) before training.
        """
        sizes = np.array([image_size(self.absolute(p)) for p in paths], dtype=np.int64).reshape(-1, 2)
        split.image_sizes = sizes
        where = pd.Index(split.ids).get_indexer(bbox["name"].to_numpy(dtype=object))
        if self.options.task == "binary":
            class_index = np.zeros(len(bbox), dtype=np.int64)
        else:
            class_index = pd.Index(self.classes).get_indexer(bbox["label"].to_numpy(dtype=object))
        use = (where >= 0) & (class_index >= 0)
        if not use.any():
            split.boxes = empty_boxes()
            return
        where, class_index, boxes = where[use], class_index[use], bbox[use]
        sx = sizes[where, 1] / RELEASE_SIZE
        sy = sizes[where, 0] / RELEASE_SIZE
        split.boxes = pd.DataFrame(
            {
                "index": where.astype(np.int64),
                "class_index": class_index.astype(np.int64),
                "x": boxes["x"].to_numpy() * sx,
                "y": boxes["y"].to_numpy() * sy,
                "w": boxes["w"].to_numpy() * sx,
                "h": boxes["h"].to_numpy() * sy,
            },
            columns=list(BOX_COLUMNS),
        )
