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
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from cxrbench.errors import UsageError
from cxrbench.imageio import image_size, read_grey, scan_files
from cxrbench.interfaces import BOX_COLUMNS, Dataset, DatasetContext, Split, empty_boxes
from cxrbench.options import options_to_dict
from cxrbench.splits import patient_split

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


@dataclasses.dataclass
class _Loaded:
    splits: dict[str, Split]
    paths: dict[str, list[str]]


class NIHChestXray14(Dataset):
    """NIH ChestX-ray14: 14 findings, official test list, 880 images with boxes."""

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

        """

        root: str
        classes: str | tuple[str, ...] = "nih8"
        task: Literal["multilabel", "binary"] = "multilabel"
        views: Literal["all", "PA", "AP"] = "all"
        val_fraction: float = 0.1
        split_seed: int = 0

        def validate(self) -> None:
            """Check the class list and the validation fraction."""
            resolve_classes(self.classes)
            if not 0.0 <= self.val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def __init__(self, options: Options, context: DatasetContext | None = None) -> None:
        super().__init__(options, context or DatasetContext())
        options.validate()
        self.classes = list(BINARY_CLASSES if options.task == "binary" else resolve_classes(options.classes))
        self.root = Path(os.path.expanduser(options.root)).resolve()
        self._tables = self._locate_tables()
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ files

    def _locate_tables(self) -> dict[str, Path]:
        if not self.root.is_dir():
            raise UsageError(f"nih: root {self.options.root} is not a folder")
        entry = next((self.root / n for n in DATA_ENTRY_NAMES if (self.root / n).is_file()), None)
        wanted = {
            "data_entry": entry,
            "bbox": self.root / "BBox_List_2017.csv",
            "train_val": self.root / "train_val_list.txt",
            "test": self.root / "test_list.txt",
        }
        missing = [
            " or ".join(DATA_ENTRY_NAMES) if key == "data_entry" else path.name
            for key, path in wanted.items()
            if path is None or not path.is_file()
        ]
        if missing:
            raise UsageError(f"nih: missing under {self.root}: {', '.join(missing)}")
        return {key: path for key, path in wanted.items() if path is not None}

    def _index_images(self) -> dict[str, str]:
        """File name -> path of every PNG in ``images/`` and ``images_NNN/images/``."""
        folders = ["images"]
        with os.scandir(self.root) as entries:
            folders += sorted(e.name + "/images" for e in entries if _IMAGE_FOLDER.fullmatch(e.name))
        return scan_files(self.root, folders, suffixes=(".png",), by_name=True)

    # ------------------------------------------------------------------ loading

    def _load(self) -> _Loaded:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._build()
            return self._loaded

    def _build(self) -> _Loaded:
        opts = self.options
        entry = read_data_entry(self._tables["data_entry"])
        lists = {
            "train_val": read_name_list(self._tables["train_val"]),
            "test": read_name_list(self._tables["test"]),
        }
        bbox = read_bbox_list(self._tables["bbox"])
        # Table names are only looked up in this index of files found under the root
        # (links leaving it are refused), so no table entry can point elsewhere.
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

        splits: dict[str, Split] = {}
        split_paths: dict[str, list[str]] = {}
        for name, r in rows.items():
            split_paths[name] = paths[r].tolist()
            splits[name] = Split(
                ids=names[r].tolist(),
                patient_ids=[f"{p:08d}" for p in patients[r].tolist()],
                labels=np.ascontiguousarray(labels[r], dtype=np.float32),
            )
        self._attach_boxes(splits["boxes"], split_paths["boxes"], bbox)
        return _Loaded(splits=splits, paths=split_paths)

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
        n_wanted = int((is_listed & wanted).sum())
        n_missing = int((is_listed & wanted & ~present).sum())
        if n_wanted and n_missing == n_wanted:
            views = "" if self.options.views == "all" else f" {self.options.views}-view"
            raise UsageError(
                f"nih: none of the {n_wanted:,} listed{views} images is under {self.root}/images (or images_NNN/images)"
            )
        parts = []
        if n_missing:
            parts.append(
                f"{n_missing:,} of {n_wanted:,} listed images are missing under {self.root} "
                f"(partial download?); using the {n_wanted - n_missing:,} present"
            )
        if n_unlabelled:
            parts.append(f"{n_unlabelled:,} listed images have no row in {self._tables['data_entry'].name}")
        if parts:
            self.context.warn("nih: " + "; ".join(parts))

    def _attach_boxes(self, split: Split, paths: list[str], bbox: pd.DataFrame) -> None:
        """Scale the boxes of the boxed split from released-PNG pixels to each file's size.

        The size on disk is read from each file's header, as users often shrink the
        images once (to 512 or 256 px) before training.
        """
        sizes = np.array([image_size(p) for p in paths], dtype=np.int64).reshape(-1, 2)
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

    # ------------------------------------------------------------------ contract

    def split(self, name: str) -> Split:
        """Records of ``train``, ``val`` (patient-disjoint parts of the official
        train/val list), ``test`` (the official test list) or ``boxes`` (the images of
        ``BBox_List_2017.csv``, boxes in each file's own pixels).
        """
        loaded = self._load()
        if name not in loaded.splits:
            raise UsageError(f"nih has no split {name!r}; splits: {', '.join(loaded.splits)}")
        return loaded.splits[name]

    def image_path(self, split: str, index: int) -> str:
        """The file of image ``index`` of ``split``."""
        self.split(split)
        return self._load().paths[split][index]

    def read_image(self, split: str, index: int) -> np.ndarray:
        """Image ``index`` of ``split`` as a 2-D uint8 grey array (RGBA files included)."""
        return read_grey(self.image_path(split, index))

    def fingerprint(self) -> str:
        """Options plus a digest of the tables' and used images' names and byte sizes.

        ``root`` is left out: the digest identifies the data, so the same files
        mounted elsewhere give the same fingerprint (and the same cell ids).
        """
        if self._fingerprint is None:
            loaded = self._load()
            digest = hashlib.sha256()
            for path in self._tables.values():
                digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
            used = sorted({p for paths in loaded.paths.values() for p in paths})
            listing = "".join(f"{os.path.basename(p)}\t{os.stat(p).st_size}\n" for p in used)
            digest.update(listing.encode())
            chosen = {k: v for k, v in options_to_dict(self.options).items() if k != "root"}
            options = json.dumps(chosen, sort_keys=True)
            self._fingerprint = f"{self.NAME}:{options}:{digest.hexdigest()[:16]}"
        return self._fingerprint
