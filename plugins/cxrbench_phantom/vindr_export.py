"""Write the phantom as VinDr-CXR's Kaggle challenge release: ``train.csv`` and ``train/<image_id>.dicom``.

The layout of the VinBigData Chest X-ray Abnormalities Detection challenge (Kaggle 2021;
Nguyen et al., "VinDr-CXR", Sci. Data 2022), as the ``vindr`` dataset reads it::

    train.csv                   image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
    train/<image_id>.dicom      8-bit grey DICOM, a seeded quarter of them MONOCHROME1

**Readers.** Every image is read by 3 distinct radiologists drawn (seeded, per image) from
the release's ``R1`` .. ``R17``. Each reader marks every finding of the image and draws
one box per lesion; an image without findings gets one ``No finding`` row (``class_id``
14, empty coordinates) per reader, as in the release. So ``labels: majority`` (and
``any``) give exactly the phantom's findings.

**Box jitter.** Reader boxes are the lesion's tight box (``x_min = x``, ``x_max = x + w``,
in the DICOM's own pixels) with each coordinate moved: readers 1 and 2 by independent
uniform offsets in ``[-BOX_JITTER, BOX_JITTER]`` times the box's width (x) or height (y),
reader 3 by minus their sum, so the three offsets of every coordinate sum to zero. Where
one of them would leave the image, the coordinate's three offsets are shrunk together
until none does (a reader draws inside the image). An offset is at most ``2 *
BOX_JITTER`` = 8% of the side, so the readers' boxes overlap well above the default
``fusion_iou`` (0.5) and ``readers: consensus`` (WBF with equal weights: the mean of a
cluster's boxes) gives back the phantom's box up to rounding, while ``readers: all``
keeps the three jittered boxes.

**Classes.** Phantom findings are written in VinDr-CXR's spelling, found with
:func:`cxrbench.synonyms.shared_classes` against the challenge's 14 findings
(:data:`VINDR_CLASS`): Effusion -> ``Pleural effusion``, Nodule and Mass ->
``Nodule/Mass`` (one box per lesion), Atelectasis, Cardiomegaly, Infiltration and
Pneumothorax as they are. Pneumonia has no challenge finding (VinDr-CXR labels it only
globally, without boxes, in the PhysioNet release), so by default the phantom is drawn
without it (:data:`DEFAULT_CLASSES`): every drawn lesion then has its rows and a ``No
finding`` image truly has none.

The phantom's own train / val / test split is not written: the Kaggle release has
labels for its training images only, and the ``vindr`` dataset splits them by a hash of
the image id. Image ids are 32 hex digits (:func:`~.dicom_export.hex_id`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from cxrbench_vindr.tables import KAGGLE14, NO_FINDING

from cxrbench.synonyms import shared_classes

from .cohort import CLASSES
from .dataset import generator_for
from .dicom_export import hex_id, write_grey_dicom
from .export import Progress, phantom_options, write_csv

__all__ = [
    "BOX_JITTER",
    "DEFAULT_CLASSES",
    "TRAIN_HEADER",
    "VINDR_CLASS",
    "reader_boxes",
    "vindr_image_id",
    "write_vindr_layout",
]

TRAIN_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
READERS = tuple(f"R{k}" for k in range(1, 18))
"""The release's 17 radiologist ids."""
READERS_PER_IMAGE = 3
BOX_JITTER = 0.04
"""Readers 1 and 2 move each box coordinate by up to this fraction of the box's side."""
MONOCHROME1_FRACTION = 0.25
"""Share of the images stored MONOCHROME1 (inverted), as some VinDr-CXR files are."""
NO_FINDING_CLASS_ID = len(KAGGLE14)
STREAM_VINDR = 0x51D
"""Seed-sequence tag of the readers' stream, apart from the phantom's own streams."""


def _class_map() -> dict[str, str]:
    """Phantom finding -> its VinDr-CXR challenge spelling, where it has one."""
    out: dict[str, str] = {}
    for match in shared_classes(list(CLASSES), list(KAGGLE14)):
        for name in match.source_names:
            out[name] = match.target_name
    return out


VINDR_CLASS: dict[str, str] = _class_map()
"""Phantom finding -> VinDr-CXR challenge class (Pneumonia has none)."""
DEFAULT_CLASSES: tuple[str, ...] = tuple(c for c in CLASSES if c in VINDR_CLASS)
"""The phantom findings drawn by default: those with a challenge class."""


def vindr_image_id(seed: int, phantom_id: str) -> str:
    """The exported ``image_id`` of phantom image ``phantom_id`` (``PPPPPPPP_FFF``)."""
    return hex_id(seed, phantom_id)


def reader_boxes(box: tuple[float, float, float, float], size: int, rng: np.random.Generator) -> np.ndarray:
    """The three readers' ``x_min, y_min, x_max, y_max`` of one lesion box (module docstring: jitter).

    Args:
        box: the lesion's ``(x, y, w, h)`` in pixels.
        size: the image side (boxes stay within ``[0, size]``).
        rng: the image's readers' stream.

    Returns:
        ``3 x 4`` float; each column's mean is the true coordinate (to rounding).

    """
    x, y, w, h = (float(v) for v in box)
    truth = np.array([x, y, x + w, y + h])
    side = np.array([w, h, w, h])
    first = rng.uniform(-BOX_JITTER, BOX_JITTER, size=(2, 4)) * side
    offsets = np.vstack([first, -first.sum(axis=0)])
    # The largest t <= 1 with truth + t * offset inside [0, size] for all three readers.
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(offsets < 0, truth / -offsets, np.where(offsets > 0, (size - truth) / offsets, np.inf))
    shrink = np.minimum(room.min(axis=0), 1.0)
    return truth + offsets * shrink


def write_vindr_layout(
    root: str | os.PathLike,
    *,
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    difficulty: float = 0.3,
    classes: tuple[str, ...] | None = None,
    no_finding_fraction: float = 0.3,
    progress: Progress | None = None,
) -> Path:
    """Write the phantom as VinDr-CXR's Kaggle release (``train.csv``, ``train/<image_id>.dicom``).

    Args:
        root: output folder (the ``vindr`` dataset's ``root``; created, files of the same
            names replaced).
        num_images: number of images.
        image_size: side of the written DICOM images (boxes are in these pixels).
        seed: phantom seed (also seeds the readers and their jitter).
        difficulty: lesion conspicuity, 0 (obvious) to 1 (near noise).
        classes: phantom findings that may occur; each needs a challenge class
            (default :data:`DEFAULT_CLASSES`, all but Pneumonia).
        no_finding_fraction: share of images without findings.
        progress: optional ``progress(done, total)`` callback.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: for an out-of-range option or a class without a VinDr-CXR challenge
            finding (the message names it).

    """
    chosen = DEFAULT_CLASSES if classes is None else tuple(classes)
    options = phantom_options(num_images=num_images, image_size=image_size, seed=seed, difficulty=difficulty,
                              classes=chosen, no_finding_fraction=no_finding_fraction)
    beyond = [c for c in chosen if c not in VINDR_CLASS]
    if beyond:
        raise ValueError(f"classes {beyond} have no VinDr-CXR challenge finding; choose from "
                         f"{', '.join(DEFAULT_CLASSES)}")
    gen = generator_for(options)
    root = Path(root)
    (root / "train").mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    for i in range(len(gen)):
        image_id = vindr_image_id(seed, gen.cohort.image_id(i))
        rng = np.random.default_rng([seed, STREAM_VINDR, i])
        readers = [READERS[k] for k in rng.choice(len(READERS), READERS_PER_IMAGE, replace=False)]
        monochrome1 = bool(rng.random() < MONOCHROME1_FRACTION)
        write_grey_dicom(root / "train" / f"{image_id}.dicom", gen.image(i), monochrome1=monochrome1,
                         modality="DX")
        lesions = gen.boxes(i)
        drawn = {r: [] for r in readers}  # reader -> rows, so each reader's rows stay together
        for finding, *box in lesions:
            name = VINDR_CLASS[finding]
            for reader, coords in zip(readers, reader_boxes(tuple(box), image_size, rng), strict=True):
                drawn[reader].append([image_id, name, KAGGLE14.index(name), reader, *coords.tolist()])
        for reader in readers:
            rows += drawn[reader] or [[image_id, NO_FINDING, NO_FINDING_CLASS_ID, reader, "", "", "", ""]]
        if progress is not None:
            progress(i + 1, len(gen))
    write_csv(root / "train.csv", TRAIN_HEADER, rows)
    return root
