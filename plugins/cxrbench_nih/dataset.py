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
"""

from __future__ import annotations

import dataclasses
import os
import re
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
    TuningPopulation,
    UsageError,
    empty_boxes,
    image_size,
    patient_split,
)

from .tables import (
    NIH8,
    NIH14,
    NO_FINDING,
    RELEASE_SIZE,
    finding_matrix,
    harmonise,
    read_bbox_list,
    read_data_entry,
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


class NIHChestXray14(FileDataset):
    """NIH ChestX-ray14: 14 findings, official test list, 880 images with boxes.

    Splits: ``train`` and ``val`` (patient-disjoint parts of the official train/val
    list), ``test`` (the official test list) and ``boxes`` (the images of
    ``BBox_List_2017.csv``, boxes in each file's own pixels).
    """

    NAME = "nih"
    HAS_BOXES: ClassVar[bool] = True
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test", "boxes")

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

        def validate(self) -> None:
            """Check the class list and the validation fraction."""
            resolve_classes(self.classes)
            if not 0.0 <= self.val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def __init__(self, options: Options, context: DatasetContext | None = None) -> None:
        super().__init__(options, context)
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
        if missing:
            raise UsageError(f"nih: missing under {root}: {', '.join(missing)}")
        return FileLayout(root=root, tables={key: path for key, path in wanted.items() if path is not None})

    def listing_name(self, relative: str) -> str:
        """Images enter the fingerprint by file name alone, as the tables name them."""
        return relative.rsplit("/", 1)[-1]

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
        if opts.task == "binary":
            labels = (entry["findings"].to_numpy() != NO_FINDING).astype(np.float32)[:, None]
        else:
            labels = finding_matrix(entry["findings"], tuple(self.classes))

        position = pd.Index(names)
        box_names = pd.unique(bbox["name"].to_numpy(dtype=object))
        listed_rows = {
            "train_val": position.get_indexer(lists["train_val"]),
            "test": position.get_indexer(lists["test"]),
            "boxes": position.get_indexer(box_names),
        }
        self._warn_missing(listed_rows, lists, box_names, wanted, present)

        tv_rows = listed_rows["train_val"][listed_rows["train_val"] >= 0]
        val_patients = patient_split(patients[tv_rows], opts.val_fraction, opts.split_seed)
        is_val = np.isin(patients[tv_rows], val_patients)
        rows = {
            "train": tv_rows[~is_val],
            "val": tv_rows[is_val],
            "test": listed_rows["test"][listed_rows["test"] >= 0],
            "boxes": listed_rows["boxes"][listed_rows["boxes"] >= 0],
        }
        usable = present & wanted
        rows = {name: r[usable[r]] for name, r in rows.items()}

        built = {
            name: (
                Split(
                    ids=names[r].tolist(),
                    patient_ids=[f"{p:08d}" for p in patients[r].tolist()],
                    labels=np.ascontiguousarray(labels[r], dtype=np.float32),
                ),
                paths[r].tolist(),
            )
            for name, r in rows.items()
        }
        self._attach_boxes(*built["boxes"], bbox)
        self._population = self._box_population(bbox, entry)
        return built

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
