"""Write the phantom to disk in the published layouts of NIH ChestX-ray14 and CheXpert.

The files are what the real loaders read, so the loaders can be tested end to end
without the real data (CheXlocalize's layout: :mod:`.chexlocalize_export`). Image ids,
patients and the patient-disjoint split are the phantom dataset's own: an NIH export
with the same options holds exactly the images of ``PhantomDataset`` (train + val in
``train_val_list.txt``, test in ``test_list.txt``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np

from .cohort import CLASSES, Cohort
from .dataset import Options, generator_for

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each image is written."""

NIH_ORIGINAL_SIZE = 1024
"""Every NIH ChestX-ray14 image is distributed at 1024 x 1024; boxes are in those pixels."""
NIH_PIXEL_SPACING = 0.168
NIH_DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NIH_BOX_LABEL = {"Infiltration": "Infiltrate"}
"""NIH spells one finding differently in its box table."""

CHEXPERT_ROOT = "CheXpert-v1.0-small"
CHEXPERT_COLUMNS = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip
CHEXPERT_FINDINGS = CHEXPERT_COLUMNS[6:]
CHEXPERT_MAP: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis", "Lung Opacity"),
    "Cardiomegaly": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "Effusion": ("Pleural Effusion",),
    "Infiltration": ("Lung Opacity",),
    "Mass": ("Lung Lesion", "Lung Opacity"),
    "Nodule": ("Lung Lesion", "Lung Opacity"),
    "Pneumonia": ("Pneumonia", "Consolidation", "Lung Opacity"),
    "Pneumothorax": ("Pneumothorax",),
}
"""Phantom finding -> the CheXpert columns its labeler would mark (CheXpert's hierarchy:
consolidation, atelectasis and lung lesions are lung opacities)."""
DEFAULT_CHEXPERT_PARTS = {"train": "train", "val": "train", "test": "valid"}
"""Phantom split -> CheXpert release folder: the phantom's test images are the release's ``valid``."""
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 92]
"""How every exported JPEG is encoded."""


def phantom_options(**kwargs: object) -> Options:
    """The phantom's options from an exporter's arguments, validated (ValueError names the option)."""
    options = Options(**kwargs)  # type: ignore[arg-type]
    options.validate()
    return options


def write_csv(path: Path, header: str, rows: Iterable[Iterable[object]]) -> None:
    """Write a CSV whose header is given verbatim, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(header + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    os.replace(tmp, path)


def write_image(path: Path, image: np.ndarray, params: list[int]) -> None:
    """Encode ``image`` to ``path`` with OpenCV's ``params`` (OSError when it cannot)."""
    if not cv2.imwrite(str(path), image, params):
        raise OSError(f"could not write {path}")


def write_nih_layout(
    root: str | os.PathLike,
    *,
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    difficulty: float = 0.3,
    classes: tuple[str, ...] | None = None,
    no_finding_fraction: float = 0.3,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    progress: Progress | None = None,
) -> Path:
    """Write the phantom as NIH ChestX-ray14 is published.

    Layout under ``root``: ``images/<id>.png`` (8-bit grey, ``image_size`` square, like a
    user's downscaled copy), ``Data_Entry_2017_v2020.csv``, ``BBox_List_2017.csv`` (boxes
    of every lesion of the test images that have findings, in ORIGINAL 1024 x 1024
    pixels, ``Infiltrate`` spelled as NIH does), ``train_val_list.txt`` and
    ``test_list.txt`` (patient-disjoint).

    Args:
        root: output folder (created; existing files of the same names are replaced).
        num_images: number of images.
        image_size: side of the written PNGs.
        seed: phantom seed.
        difficulty: lesion conspicuity, 0 (obvious) to 1 (near noise).
        classes: findings that may occur (default all eight).
        no_finding_fraction: share of images without findings.
        val_fraction: share of images counted as validation (listed in train_val).
        test_fraction: share of images in ``test_list.txt``.
        progress: optional ``progress(done, total)`` callback.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: for an out-of-range option (the message names it).

    """
    options = phantom_options(
        num_images=num_images, image_size=image_size, seed=seed, difficulty=difficulty, classes=classes,
        no_finding_fraction=no_finding_fraction, val_fraction=val_fraction, test_fraction=test_fraction,
    )  # fmt: skip
    gen = generator_for(options)
    cohort = gen.cohort
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"{cohort.image_id(i)}.png" for i in range(len(gen))]
    scale = NIH_ORIGINAL_SIZE / image_size

    entries, boxes = [], []
    for i, name in enumerate(names):
        findings = gen.findings(i)
        write_image(root / "images" / name, gen.image(i), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        entries.append(
            [name, "|".join(findings) or "No Finding", int(cohort.follow_up[i]), int(cohort.patient[i]),
             int(cohort.age[i]), cohort.sex[i], cohort.view[i], NIH_ORIGINAL_SIZE, NIH_ORIGINAL_SIZE,
             NIH_PIXEL_SPACING, NIH_PIXEL_SPACING]
        )  # fmt: skip
        if cohort.split[i] == "test" and findings:
            for finding, x, y, w, h in gen.boxes(i):
                label = NIH_BOX_LABEL.get(finding, finding)
                boxes.append([name, label, x * scale, y * scale, w * scale, h * scale])
        if progress is not None:
            progress(i + 1, len(names))

    write_csv(root / "Data_Entry_2017_v2020.csv", NIH_DATA_ENTRY_HEADER, entries)
    write_csv(root / "BBox_List_2017.csv", NIH_BBOX_HEADER, boxes)
    test = cohort.split == "test"
    for file, keep in (("train_val_list.txt", ~test), ("test_list.txt", test)):
        (root / file).write_text("".join(f"{n}\n" for n, k in zip(names, keep, strict=True) if k))
    return root


def chexpert_study(cohort: Cohort, i: int) -> str:
    """``patientNNNNN/studyN`` of image ``i``: each follow-up image of a patient is a study."""
    return f"patient{int(cohort.patient[i]):05d}/study{int(cohort.follow_up[i]) + 1}"


def chexpert_row(cohort: Cohort, i: int, path: str, cells: Mapping[str, str]) -> list[str]:
    """The cells of image ``i``'s row of a CheXpert labels table, in :data:`CHEXPERT_COLUMNS` order.

    Args:
        cohort: the phantom's cohort.
        i: the image.
        path: the ``Path`` cell.
        cells: the label cells (:func:`chexpert_labels`).

    """
    record = {
        "Path": path,
        "Sex": "Male" if cohort.sex[i] == "M" else "Female",
        "Age": str(int(cohort.age[i])),
        "Frontal/Lateral": "Frontal",
        "AP/PA": str(cohort.view[i]),
        **cells,
    }
    return [record[c] for c in CHEXPERT_COLUMNS]


def chexpert_labels(
    findings: tuple[str, ...], *, train: bool, uncertain_rate: float, rng: np.random.Generator
) -> dict[str, str]:
    """The CheXpert label cells of one image, as written in the CSV.

    In ``valid.csv`` every finding column is ``1.0`` or ``0.0``. In ``train.csv``, as
    the CheXpert labeler writes them: a present finding is ``1.0``, or ``-1.0``
    (uncertain) with probability ``uncertain_rate``; an absent one is mostly blank (not
    mentioned), sometimes ``0.0`` (explicitly negative) and, at a quarter of that
    rate, ``-1.0`` (a hedged mention of something that is not there).

    Args:
        findings: the phantom findings of the image.
        train: a ``train.csv`` row (else ``valid.csv``).
        uncertain_rate: probability that a present finding is reported as uncertain.
        rng: the stream for the report's noise.

    Returns:
        ``{column: cell text}`` for ``No Finding`` and every finding column.

    """
    positive = {col for f in findings for col in CHEXPERT_MAP[f]}
    cells = {"No Finding": "1.0" if not findings else ("" if train else "0.0")}
    draws = rng.random((len(CHEXPERT_FINDINGS), 2))
    for column, (u_uncertain, u_negative) in zip(CHEXPERT_FINDINGS, draws, strict=True):
        if not train:
            cells[column] = "1.0" if column in positive else "0.0"
        elif column in positive:
            cells[column] = "-1.0" if u_uncertain < uncertain_rate else "1.0"
        elif u_uncertain < uncertain_rate / 4:
            cells[column] = "-1.0"
        else:
            cells[column] = "0.0" if u_negative < 0.3 else ""
    return cells


def write_chexpert_layout(
    root: str | os.PathLike,
    *,
    num_images: int,
    image_size: int = 320,
    seed: int = 0,
    uncertain_rate: float = 0.1,
    difficulty: float = 0.3,
    classes: tuple[str, ...] | None = None,
    no_finding_fraction: float = 0.3,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    progress: Progress | None = None,
    parts: Mapping[str, str] | None = None,
) -> Path:
    """Write the phantom as CheXpert-v1.0-small is published.

    Layout under ``root``: ``CheXpert-v1.0-small/train.csv`` and ``valid.csv`` (the real
    header; labels ``1.0`` / ``0.0`` / ``-1.0`` / blank, no uncertain labels in valid)
    and JPEGs at ``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/view1_frontal.jpg``.
    By default the phantom's train and val images go to ``train``, its test images to
    ``valid`` (``parts`` says otherwise); each follow-up image of a patient is a study.
    Findings map to CheXpert columns by :data:`CHEXPERT_MAP`; Edema, Pleural Other,
    Fracture and Support Devices never occur.

    Args:
        root: output folder (the one that will hold ``CheXpert-v1.0-small``).
        num_images: number of images.
        image_size: side of the written JPEGs.
        seed: phantom seed (also seeds the label noise).
        uncertain_rate: probability that a present finding is labelled ``-1.0`` in train.
        difficulty: lesion conspicuity, 0 (obvious) to 1 (near noise).
        classes: findings that may occur (default all eight).
        no_finding_fraction: share of images without findings.
        val_fraction: share of the phantom's images in its val split (written to train).
        test_fraction: share of images written to ``valid``.
        progress: optional ``progress(done, total)`` callback.
        parts: phantom split -> release folder (``train`` or ``valid``) it is written
            to; splits left out are not written. Default: train and val to ``train``,
            test to ``valid``.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: for an out-of-range option (the message names it).

    """
    parts = dict(DEFAULT_CHEXPERT_PARTS if parts is None else parts)
    if set(parts.values()) - {"train", "valid"}:
        raise ValueError(f"parts must map phantom splits to 'train' or 'valid', got {parts}")
    if not 0.0 <= uncertain_rate <= 1.0:
        raise ValueError(f"uncertain_rate must be between 0 and 1, got {uncertain_rate}")
    options = phantom_options(
        num_images=num_images, image_size=image_size, seed=seed, difficulty=difficulty, classes=classes,
        no_finding_fraction=no_finding_fraction, val_fraction=val_fraction, test_fraction=test_fraction,
    )  # fmt: skip
    gen = generator_for(options)
    cohort = gen.cohort
    root = Path(root)
    base = root / CHEXPERT_ROOT
    rows: dict[str, list[list[str]]] = {"train": [], "valid": []}
    label_rng = np.random.default_rng([seed, 0xC4E])
    for i in range(len(gen)):
        part = parts.get(str(cohort.split[i]))
        if part is not None:
            rel = f"{part}/{chexpert_study(cohort, i)}/view1_frontal.jpg"
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            write_image(base / rel, gen.image(i), JPEG_PARAMS)
            cells = chexpert_labels(gen.findings(i), train=part == "train", uncertain_rate=uncertain_rate,
                                    rng=label_rng)
            rows[part].append(chexpert_row(cohort, i, f"{CHEXPERT_ROOT}/{rel}", cells))
        if progress is not None:
            progress(i + 1, len(gen))
    for part, part_rows in rows.items():
        write_csv(base / f"{part}.csv", ",".join(CHEXPERT_COLUMNS), part_rows)
    return root


__all__ = [
    "CHEXPERT_MAP",
    "CLASSES",
    "chexpert_labels",
    "chexpert_row",
    "chexpert_study",
    "phantom_options",
    "write_chexpert_layout",
    "write_csv",
    "write_image",
    "write_nih_layout",
]
