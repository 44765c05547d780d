"""Write the phantom in CheXlocalize's published layout, with a CheXpert training release beside it.

Under ``root``::

    CheXpert/val/patientN/studyN/view1_frontal.jpg       the phantom's val images
    CheXpert/test/patientN/studyN/view1_frontal.jpg      the phantom's test images
    CheXpert/{val,test}_labels.csv                       CheXpert's header; Path CheXpert-v1.0/{valid,test}/...
    CheXlocalize/gt_segmentations_{val,test}.json        COCO RLE of every image x all 10 pathologies
    CheXlocalize/gt_annotations_{val,test}.json          outer contours of the same masks (drawn findings only)
    CheXpert-v1.0-small/train.csv, valid.csv, train/, valid/   the phantom's train images; valid = the val images

As in the real release, CheXlocalize's validation images are CheXpert's ``valid`` images
(same files, same ids) and its test images are in no CheXpert table. A pathology's mask is
the union of the lesions of every phantom finding whose CheXpert columns
(:data:`~cxrbench_phantom.export.CHEXPERT_MAP`) include it, so a mask is non-empty exactly
when the label is positive; pathologies the phantom never draws (Edema, Support Devices)
have empty masks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cxrbench_chexlocalize.tables import CHEXLOCALIZE_PATHOLOGIES, CHEXPERT_TO_CHEXLOCALIZE, ChexlocalizeImageId

from cxrbench.api import encode_coco_rle

from .dataset import generator_for
from .export import (
    CHEXPERT_COLUMNS,
    CHEXPERT_MAP,
    CHEXPERT_ROOT,
    JPEG_PARAMS,
    Progress,
    chexpert_labels,
    chexpert_row,
    chexpert_study,
    phantom_options,
    write_chexpert_layout,
    write_csv,
    write_image,
)
from .generator import PhantomGenerator

CHEXLOCALIZE_PARTS = {"train": "train", "val": "valid"}
"""Phantom split -> CheXpert release folder: the release's ``valid`` is CheXlocalize's val (as published)."""
LABEL_PREFIX = {"val": "CheXpert-v1.0/valid", "test": "CheXpert-v1.0/test"}
"""How each labels table's ``Path`` column starts."""

__all__ = ["image_id_of", "mask_polygons", "pathology_masks", "write_chexlocalize_layout"]


def image_id_of(gen: PhantomGenerator, i: int) -> ChexlocalizeImageId:
    """CheXlocalize's id of image ``i``: ``patientNNNNN_studyN_view1_frontal``, the release's numbering."""
    patient, study = chexpert_study(gen.cohort, i).split("/")
    return ChexlocalizeImageId(patient, study, "view1_frontal")


def pathology_masks(gen: PhantomGenerator, i: int) -> dict[str, np.ndarray]:
    """Every CheXlocalize pathology's mask of image ``i`` (uint8 0/1, empty where not drawn)."""
    size = gen.image_size
    out = {name: np.zeros((size, size), np.uint8) for name in CHEXLOCALIZE_PATHOLOGIES}
    for finding, mask in gen.masks(i):
        for column in CHEXPERT_MAP[finding]:
            pathology = CHEXPERT_TO_CHEXLOCALIZE.get(column)
            if pathology is not None:  # e.g. Pneumonia: a CheXpert label CheXlocalize does not localize
                out[pathology] |= mask
    return out


def mask_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """The outer contours of a mask as CheXlocalize polygons ``[[[x, y], ...], ...]``.

    Rasterised as CheXlocalize rasterises its annotations (filled and outlined), the
    contours give the mask back exactly unless it has holes (they are filled). A contour
    of a single pixel is written as that point twice, since a polygon needs two points.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = [[int(x), int(y)] for x, y in contour[:, 0]]
        polygons.append(points if len(points) > 1 else points * 2)
    return polygons


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def write_chexlocalize_layout(
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
) -> Path:
    """Write the phantom as CheXlocalize is published, and its train images as a CheXpert release.

    The phantom's split is kept: train images go to ``CheXpert-v1.0-small/train`` (the
    ``chexlocalize`` dataset's ``chexpert_root``), val images to CheXlocalize's val and
    to the release's ``valid``, test images to CheXlocalize's test.

    Args:
        root: output folder (the ``chexlocalize`` dataset's ``root``).
        num_images: number of images, all splits.
        image_size: side of the written JPEGs (and of the masks).
        seed: phantom seed (also seeds the label noise of train.csv).
        uncertain_rate: probability that a present finding is labelled ``-1.0`` in train.csv.
        difficulty: lesion conspicuity, 0 (obvious) to 1 (near noise).
        classes: phantom findings that may occur (default all eight).
        no_finding_fraction: share of images without findings.
        val_fraction: share of images (whole patients) in CheXlocalize's val.
        test_fraction: share of images (whole patients) in CheXlocalize's test.
        progress: optional ``progress(done, total)``; ``total`` is twice ``num_images``
            (the release, then the CheXlocalize part).

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: for an out-of-range option (the message names it).

    """
    options = phantom_options(
        num_images=num_images, image_size=image_size, seed=seed, difficulty=difficulty, classes=classes,
        no_finding_fraction=no_finding_fraction, val_fraction=val_fraction, test_fraction=test_fraction,
    )  # fmt: skip
    root = Path(root)
    total = 2 * num_images

    def release_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(done, total)

    write_chexpert_layout(
        root, num_images=num_images, image_size=image_size, seed=seed, uncertain_rate=uncertain_rate,
        difficulty=difficulty, classes=classes, no_finding_fraction=no_finding_fraction,
        val_fraction=val_fraction, test_fraction=test_fraction, progress=release_progress, parts=CHEXLOCALIZE_PARTS,
    )  # fmt: skip
    gen = generator_for(options)
    cohort = gen.cohort
    for folder in ("CheXlocalize", "CheXpert"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[list[str]]] = {"val": [], "test": []}
    segmentations: dict[str, dict[str, dict[str, Any]]] = {"val": {}, "test": {}}
    annotations: dict[str, dict[str, Any]] = {"val": {}, "test": {}}
    rng = np.random.default_rng([seed, 0xC10C])  # chexpert_labels wants a stream; train=False draws no noise
    for i in range(len(gen)):
        split = str(cohort.split[i])
        if split in rows:
            image_id = image_id_of(gen, i)
            target = root / str(image_id.image_relpath(split))
            target.parent.mkdir(parents=True, exist_ok=True)
            if split == "val":  # the release's valid image: the same file, as in the real data
                shutil.copyfile(root / CHEXPERT_ROOT / "valid" / chexpert_study(cohort, i) / target.name, target)
            else:
                write_image(target, gen.image(i), JPEG_PARAMS)
            cells = chexpert_labels(gen.findings(i), train=False, uncertain_rate=uncertain_rate, rng=rng)
            path = f"{LABEL_PREFIX[split]}/{chexpert_study(cohort, i)}/{target.name}"
            rows[split].append(chexpert_row(cohort, i, path, cells))
            masks = pathology_masks(gen, i)
            key = str(image_id)
            segmentations[split][key] = {name: encode_coco_rle(mask) for name, mask in masks.items()}
            entry: dict[str, Any] = {"img_size": [image_size, image_size]}
            entry.update({name: mask_polygons(mask) for name, mask in masks.items() if mask.any()})
            annotations[split][key] = entry
        if progress is not None:
            progress(num_images + i + 1, total)
    for split in ("val", "test"):
        write_csv(root / "CheXpert" / f"{split}_labels.csv", ",".join(CHEXPERT_COLUMNS), rows[split])
        _write_json(root / "CheXlocalize" / f"gt_segmentations_{split}.json", segmentations[split])
        _write_json(root / "CheXlocalize" / f"gt_annotations_{split}.json", annotations[split])
    return root
