"""CheXlocalize ground-truth tables read into typed records (no pixels are decoded).

CheXlocalize (Saporta et al., "Benchmarking saliency methods for chest X-ray
interpretation", Nat. Mach. Intell. 2022; code ``rajpurkarlab/cheXlocalize``) gives
radiologists' segmentations of 10 pathologies on CheXpert validation and test images.
The published layout, relative to the dataset root::

    CheXlocalize/gt_segmentations_{val,test}.json   COCO RLE masks, every image x all 10 pathologies
    CheXlocalize/gt_annotations_{val,test}.json     the radiologists' polygons, drawn findings only
    CheXpert/{val,test}/patientN/studyN/viewN_frontal.jpg
    CheXpert/{val,test}_labels.csv                  CheXpert labels, ``Path`` = ``CheXpert-v1.0/valid/...``

``gt_segmentations`` is ``{image_id: {pathology: {"size": [h, w], "counts": str}}}`` and
``gt_annotations`` is ``{image_id: {"img_size": [h, w], pathology: [[[x, y], ...], ...]}}``;
the segmentations are the annotations rasterised (see :mod:`cxrbench.masks`). Image ids
are ``patient64541_study1_view1_frontal``. Each mask stays encoded in a
:class:`cxrbench.api.MaskRef` until a dataset asks for its pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Literal

from cxrbench.api import MaskDecodeError, MaskRef, UsageError, one_line, safe_join

__all__ = [
    "CHEXLOCALIZE_PATHOLOGIES",
    "CHEXLOCALIZE_TO_CHEXPERT",
    "CHEXPERT_TO_CHEXLOCALIZE",
    "SPLITS",
    "ChexlocalizeImageId",
    "ChexlocalizeLayout",
    "LabelRow",
    "MaskRecord",
    "Split",
    "from_chexpert_name",
    "index_masks",
    "read_annotations",
    "read_labels_csv",
    "read_segmentations",
    "to_chexpert_name",
]

CHEXLOCALIZE_PATHOLOGIES: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Airspace Opacity",
    "Edema",
    "Consolidation",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Support Devices",
)
"""The 10 localized pathologies, in the order of cheXlocalize's ``LOCALIZATION_TASKS``."""

CHEXLOCALIZE_TO_CHEXPERT: Mapping[str, str] = types.MappingProxyType(
    {name: ("Lung Opacity" if name == "Airspace Opacity" else name) for name in CHEXLOCALIZE_PATHOLOGIES}
)
"""CheXlocalize name -> CheXpert column. Only one differs: CheXpert's ``Lung Opacity``
is called ``Airspace Opacity`` (the other nine are CheXpert's own column names)."""

CHEXPERT_TO_CHEXLOCALIZE: Mapping[str, str] = types.MappingProxyType(
    {chexpert: name for name, chexpert in CHEXLOCALIZE_TO_CHEXPERT.items()}
)

Split = Literal["val", "test"]
SPLITS: tuple[str, ...] = ("val", "test")

# Where each split's images and label paths live. The ``test`` label prefix follows the
# CheXpert test-set release (``test/patientN/...``); only ``val`` was checked on a real file.
_IMAGE_FOLDER = {"val": "CheXpert/val", "test": "CheXpert/test"}
_LABEL_PREFIX = {"val": "CheXpert-v1.0/valid", "test": "test"}

_PATIENT, _STUDY, _VIEW = r"patient\d+", r"study\d+", r"view\d+_(?:frontal|lateral)"
_PART_RES = (re.compile(_PATIENT), re.compile(_STUDY), re.compile(_VIEW))
_ID_RE = re.compile(rf"({_PATIENT})_({_STUDY})_({_VIEW})")
_PATH_TAIL_RE = re.compile(rf"(?:^|/)({_PATIENT})/({_STUDY})/({_VIEW})\.jpg$")
_META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_LABEL_VALUES = {1.0, 0.0, -1.0}


def to_chexpert_name(pathology: str) -> str:
    """The CheXpert column of a CheXlocalize pathology (``Airspace Opacity`` -> ``Lung Opacity``).

    Raises:
        ValueError: for a name that is not one of the 10 pathologies.

    """
    try:
        return CHEXLOCALIZE_TO_CHEXPERT[pathology]
    except KeyError:
        raise ValueError(
            f"unknown CheXlocalize pathology {pathology!r}; valid: {', '.join(CHEXLOCALIZE_PATHOLOGIES)}"
        ) from None


def from_chexpert_name(finding: str) -> str:
    """The CheXlocalize pathology of a CheXpert column (``Lung Opacity`` -> ``Airspace Opacity``).

    Raises:
        ValueError: for a CheXpert finding CheXlocalize does not localize (e.g. ``Pneumonia``).

    """
    try:
        return CHEXPERT_TO_CHEXLOCALIZE[finding]
    except KeyError:
        raise ValueError(
            f"CheXpert finding {finding!r} is not localized by CheXlocalize; "
            f"localized: {', '.join(CHEXPERT_TO_CHEXLOCALIZE)}"
        ) from None


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"CheXlocalize split must be 'val' or 'test', got {split!r}")
    return split


# --------------------------------------------------------------------------- image ids and paths


@dataclasses.dataclass(frozen=True)
class ChexlocalizeImageId:
    """An image id ``patient64541_study1_view1_frontal`` split into its path parts.

    The parts are checked against ``patient<digits>``, ``study<digits>`` and
    ``view<digits>_{frontal,lateral}``, so a path built from them never holds ``..`` or a
    separator.
    """

    patient: str
    study: str
    view: str

    def __post_init__(self) -> None:
        parts = (self.patient, self.study, self.view)
        if not all(isinstance(part, str) and rx.fullmatch(part) for rx, part in zip(_PART_RES, parts, strict=True)):
            raise ValueError(f"not a CheXlocalize image id: {self.patient!r}, {self.study!r}, {self.view!r}")

    @classmethod
    def parse(cls, text: str) -> ChexlocalizeImageId:
        """Parse ``patient64541_study1_view1_frontal``.

        Raises:
            ValueError: naming the text, when it is not of that form.

        """
        match = _ID_RE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"not a CheXlocalize image id (patientN_studyN_viewN_frontal): {one_line(str(text))!r}")
        return cls(*match.groups())

    @classmethod
    def from_labels_path(cls, path: str) -> ChexlocalizeImageId:
        """The id of a labels-table ``Path`` (any prefix, e.g. ``CheXpert-v1.0/valid/patient64541/...``).

        Raises:
            ValueError: when the path does not end in ``patientN/studyN/viewN_<view>.jpg``.

        """
        match = _PATH_TAIL_RE.search(path) if isinstance(path, str) else None
        if match is None:
            raise ValueError(f"not a CheXpert image path (.../patientN/studyN/viewN_frontal.jpg): {path!r}")
        return cls(*match.groups())

    def __str__(self) -> str:
        return f"{self.patient}_{self.study}_{self.view}"

    def image_relpath(self, split: Split) -> PurePosixPath:
        """The image file relative to the dataset root: ``CheXpert/val/patient64541/study1/view1_frontal.jpg``."""
        return PurePosixPath(_IMAGE_FOLDER[_check_split(split)], self.patient, self.study, f"{self.view}.jpg")

    def labels_path(self, split: Split) -> str:
        """The image's ``Path`` in ``CheXpert/<split>_labels.csv``: ``CheXpert-v1.0/valid/patient64541/...``."""
        return f"{_LABEL_PREFIX[_check_split(split)]}/{self.patient}/{self.study}/{self.view}.jpg"


@dataclasses.dataclass(frozen=True)
class ChexlocalizeLayout:
    """The files of a CheXlocalize download under ``root``.

    Attributes:
        root: the folder holding ``CheXlocalize/`` and ``CheXpert/``.

    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.expanduser(self.root)))

    def segmentations_json(self, split: Split) -> Path:
        """``CheXlocalize/gt_segmentations_<split>.json``."""
        return self.root / "CheXlocalize" / f"gt_segmentations_{_check_split(split)}.json"

    def annotations_json(self, split: Split) -> Path:
        """``CheXlocalize/gt_annotations_<split>.json``."""
        return self.root / "CheXlocalize" / f"gt_annotations_{_check_split(split)}.json"

    def labels_csv(self, split: Split) -> Path:
        """``CheXpert/<split>_labels.csv``."""
        return self.root / "CheXpert" / f"{_check_split(split)}_labels.csv"

    def image_path(self, image_id: str | ChexlocalizeImageId, split: Split) -> Path:
        """The resolved image file of ``image_id`` (it need not exist).

        Raises:
            ValueError: for a malformed image id.
            UsageError: when the path leads outside ``root`` (e.g. through a symbolic link).

        """
        key = image_id if isinstance(image_id, ChexlocalizeImageId) else ChexlocalizeImageId.parse(image_id)
        return safe_join(self.root, str(key.image_relpath(split)))


# --------------------------------------------------------------------------- mask tables


@dataclasses.dataclass(frozen=True)
class MaskRecord:
    """One image's mask for one pathology.

    Attributes:
        image_id: ``patient64541_study1_view1_frontal``.
        pathology: the CheXlocalize name (one of :data:`CHEXLOCALIZE_PATHOLOGIES`).
        mask: the encoded mask (``mask.image_id`` and ``mask.class_name`` repeat the two above).

    """

    image_id: str
    pathology: str
    mask: MaskRef

    @property
    def chexpert_name(self) -> str:
        """The CheXpert column of the pathology."""
        return CHEXLOCALIZE_TO_CHEXPERT[self.pathology]


def _load_json(path: str | os.PathLike[str]) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise UsageError(f"{path}: not valid JSON: nested too deeply") from None


def _images(data: object, path: object) -> Iterable[tuple[str, Mapping[str, object]]]:
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object {{image_id: {{...}}}}, got {type(data).__name__}")
    for image_id, entry in data.items():
        try:
            ChexlocalizeImageId.parse(image_id)
        except ValueError as exc:
            raise UsageError(f"{path}: {exc}") from None
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: {image_id}: expected an object of pathologies, got {type(entry).__name__}")
        yield image_id, entry


def _check_pathology(name: str, path: object, image_id: str) -> None:
    if name not in CHEXLOCALIZE_TO_CHEXPERT:
        raise UsageError(
            f"{path}: {image_id}: unknown pathology {one_line(name)!r}; valid: {', '.join(CHEXLOCALIZE_PATHOLOGIES)}"
        )


def _size_of(value: object, path: object, where: str) -> tuple[int, int]:
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise UsageError(
            f"{path}: {where}: size must be [height, width] positive integers, got {one_line(repr(value))}"
        )
    return value[0], value[1]  # type: ignore[index]


def read_segmentations(path: str | os.PathLike[str], *, require_all: bool = True) -> tuple[MaskRecord, ...]:
    """Read ``gt_segmentations_<split>.json`` (COCO RLE masks) into records, without decoding them.

    Args:
        path: the JSON file.
        require_all: refuse an image that lacks one of the 10 pathologies (the published
            files have all 10 for every image, an absent finding being an all-zero mask).

    Returns:
        One record per (image, pathology), images in file order, pathologies in
        :data:`CHEXLOCALIZE_PATHOLOGIES` order.

    Raises:
        UsageError: one line naming the file (and image and pathology) for unreadable or
            malformed JSON, an unknown pathology, a malformed size or counts, or sizes that
            differ between the pathologies of one image.

    """
    records = []
    for image_id, entry in _images(_load_json(path), path):
        size: tuple[int, int] | None = None
        for name in entry:
            _check_pathology(name, path, image_id)
        missing = [name for name in CHEXLOCALIZE_PATHOLOGIES if name not in entry]
        if require_all and missing:
            raise UsageError(f"{path}: {image_id}: no mask for {', '.join(missing)}")
        for name in CHEXLOCALIZE_PATHOLOGIES:
            if name not in entry:
                continue
            where = f"{image_id}/{name}"
            rle = entry[name]
            if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
                raise UsageError(f"{path}: {where}: expected {{'size': [h, w], 'counts': str}}")
            this = _size_of(rle["size"], path, where)
            if size is not None and this != size:
                raise UsageError(f"{path}: {where}: size {list(this)} differs from {list(size)} of the same image")
            size = this
            if not isinstance(rle["counts"], str):
                raise UsageError(f"{path}: {where}: counts must be a compressed RLE string")
            mask = MaskRef(image_id, name, "coco_rle", rle["counts"], *this)
            records.append(MaskRecord(image_id, name, mask))
    return tuple(records)


def read_annotations(path: str | os.PathLike[str], *, all_pathologies: bool = False) -> tuple[MaskRecord, ...]:
    """Read ``gt_annotations_<split>.json`` (radiologists' polygons) into records.

    Args:
        path: the JSON file.
        all_pathologies: also give a record (with no polygons: an empty mask) for each
            pathology an image's entry does not list, as cheXlocalize's
            ``annotation_to_segmentation.py`` does when it writes the segmentations.

    Returns:
        Records of the listed (or all) pathologies, images in file order, pathologies in
        :data:`CHEXLOCALIZE_PATHOLOGIES` order; each mask decodes by rasterising its polygons.

    Raises:
        UsageError: one line naming the file, image and pathology, for unreadable or
            malformed JSON, a missing or malformed ``img_size``, an unknown pathology or a
            malformed polygon.

    """
    records = []
    for image_id, entry in _images(_load_json(path), path):
        if "img_size" not in entry:
            raise UsageError(f"{path}: {image_id}: no img_size")
        h, w = _size_of(entry["img_size"], path, f"{image_id}/img_size")
        for name in entry:
            if name != "img_size":
                _check_pathology(name, path, image_id)
        for name in CHEXLOCALIZE_PATHOLOGIES:
            if name not in entry and not all_pathologies:
                continue
            polygons = entry.get(name, [])
            if not isinstance(polygons, list):
                raise UsageError(f"{path}: {image_id}/{name}: expected a list of polygons [[[x, y], ...], ...]")
            try:
                mask = MaskRef.from_polygons(image_id, name, polygons, h, w)
            except MaskDecodeError as exc:
                raise MaskDecodeError(f"{path}: {exc}") from None
            records.append(MaskRecord(image_id, name, mask))
    return tuple(records)


def index_masks(records: Iterable[MaskRecord]) -> dict[tuple[str, str], MaskRef]:
    """``{(image_id, pathology): mask}``.

    Raises:
        ValueError: when two records share an image and pathology.

    """
    index: dict[tuple[str, str], MaskRef] = {}
    for record in records:
        key = (record.image_id, record.pathology)
        if key in index:
            raise ValueError(f"two masks for {record.image_id}/{record.pathology}")
        index[key] = record.mask
    return index


# --------------------------------------------------------------------------- labels table


@dataclasses.dataclass(frozen=True)
class LabelRow:
    """One row of ``CheXpert/<split>_labels.csv``.

    Attributes:
        image_id: the CheXlocalize id of the image (from the tail of ``path``).
        path: the ``Path`` column as written (``CheXpert-v1.0/valid/patient64541/...``).
        sex / frontal_lateral / ap_pa: the ``Sex``, ``Frontal/Lateral`` and ``AP/PA`` columns.
        age: the ``Age`` column, or None when blank.
        labels: CheXpert column -> 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or
            NaN (blank), read-only, for every observation column of the table.

    """

    image_id: str
    path: str
    sex: str
    age: int | None
    frontal_lateral: str
    ap_pa: str
    labels: Mapping[str, float]

    def chexlocalize_labels(self) -> dict[str, float]:
        """The labels of the 10 localized pathologies, keyed by CheXlocalize name."""
        return {name: self.labels[CHEXLOCALIZE_TO_CHEXPERT[name]] for name in CHEXLOCALIZE_PATHOLOGIES}


def _label_value(text: str, path: object, line: int, column: str) -> float:
    if text.strip() == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.inf
    if value not in _LABEL_VALUES:
        raise UsageError(f"{path}: line {line}: {column} must be 1.0, 0.0, -1.0 or blank, got {one_line(text)!r}")
    return value


def read_labels_csv(path: str | os.PathLike[str]) -> tuple[LabelRow, ...]:
    """Read a CheXpert labels table (``CheXpert/val_labels.csv``) as CheXlocalize ships it.

    Every column after ``Path, Sex, Age, Frontal/Lateral, AP/PA`` is an observation; the
    table must hold the CheXpert columns of all 10 localized pathologies.

    Returns:
        One row per table line, in table order.

    Raises:
        UsageError: one line naming the file (and line), for a missing column, a path that
            is not ``.../patientN/studyN/viewN_<view>.jpg``, a repeated image, a label that
            is not 1.0 / 0.0 / -1.0 / blank or an age that is not an integer.

    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UsageError(f"{path}: empty file, expected a header {','.join(_META_COLUMNS)},...")
            header = [h.strip() for h in header]
            missing = [c for c in (*_META_COLUMNS, *CHEXPERT_TO_CHEXLOCALIZE) if c not in header]
            if missing:
                raise UsageError(f"{path}: no column(s) {', '.join(map(repr, missing))}")
            if len(set(header)) != len(header):
                raise UsageError(f"{path}: a column name appears twice in the header")
            position = {name: i for i, name in enumerate(header)}
            observations = [name for name in header if name not in _META_COLUMNS]
            rows, seen = [], {}
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise UsageError(f"{path}: line {line_no}: {len(row)} fields, the header has {len(header)}")
                rows.append(_label_row(row, position, observations, path, line_no, seen))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UsageError(f"{path}: cannot parse: {exc}") from None
    return tuple(rows)


def _label_row(
    row: list[str], position: dict[str, int], observations: list[str], path: object, line: int, seen: dict[str, int]
) -> LabelRow:
    image_path = row[position["Path"]]
    try:
        image_id = str(ChexlocalizeImageId.from_labels_path(image_path))
    except ValueError as exc:
        raise UsageError(f"{path}: line {line}: {one_line(str(exc))}") from None
    if image_id in seen:
        raise UsageError(f"{path}: line {line}: image {image_id} is already on line {seen[image_id]}")
    seen[image_id] = line
    age_text = row[position["Age"]].strip()
    try:
        age = int(age_text) if age_text else None
    except ValueError:
        raise UsageError(f"{path}: line {line}: Age must be an integer, got {one_line(age_text)!r}") from None
    labels = {name: _label_value(row[position[name]], path, line, name) for name in observations}
    return LabelRow(
        image_id=image_id,
        path=image_path,
        sex=row[position["Sex"]],
        age=age,
        frontal_lateral=row[position["Frontal/Lateral"]],
        ap_pa=row[position["AP/PA"]],
        labels=types.MappingProxyType(labels),
    )
