"""Write the phantom as SIIM-ACR Pneumothorax Segmentation: ``train-rle.csv`` and the challenge's DICOM tree.

The challenge's layout (SIIM-ACR, Kaggle 2019), as the ``siim`` dataset reads it::

    train-rle.csv                                          ImageId, EncodedPixels
    dicom-images-train/<study>/<series>/<ImageId>.dcm      8-bit grey DICOM, PatientID set

The phantom is drawn with Pneumothorax only. Each image's mask is the phantom's lesion
mask at ``image_size``, enlarged to the release's 1024 x 1024 by nearest neighbour
(``INTER_NEAREST_EXACT``; shrinking it back the same way gives the phantom's mask
exactly, and enlarging keeps its 8-connected regions apart and whole), and it is written
as the release writes it: **one row per 8-connected region**, each in the challenge's
relative run-length format (:func:`cxrbench.masks.mask_to_siim_rle`), so images with
several rows exist (the phantom's pneumothorax rim is often split by the heart or thinned
to pieces); an image without one has one ``-1`` row. ``ImageId`` and the study and series
folders are DICOM UIDs (the folders are the file's own ``StudyInstanceUID`` and
``SeriesInstanceUID``); ``PatientID`` is one UUID per phantom patient, so a patient's
follow-up images share it and the dataset's patient-level split keeps them together. By
default 70% of the images are negative (the release: 78%).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pydicom
from cxrbench_siim.tables import EMPTY, MASK_SIZE, RLE_FILE

from cxrbench.masks import mask_to_siim_rle

from .dataset import generator_for
from .dicom_export import phantom_uid, uuid_id, write_grey_dicom
from .export import Progress, phantom_options, write_csv
from .generator import PhantomGenerator

__all__ = ["FINDING", "IMAGES_FOLDER", "RLE_HEADER", "pneumothorax_mask", "siim_image_id", "write_siim_layout"]

FINDING = "Pneumothorax"
IMAGES_FOLDER = "dicom-images-train"
RLE_HEADER = "ImageId, EncodedPixels"
"""The release's header, the space before the second name included."""


def siim_image_id(seed: int, phantom_id: str) -> str:
    """The exported ``ImageId`` (the file's SOPInstanceUID) of phantom image ``phantom_id``."""
    return phantom_uid(seed, "siim-image", phantom_id)


def pneumothorax_mask(gen: PhantomGenerator, i: int) -> np.ndarray:
    """Image ``i``'s pneumothorax mask at ``image_size`` (uint8 0/1; the union of its lesions)."""
    out = np.zeros((gen.image_size, gen.image_size), np.uint8)
    for finding, mask in gen.masks(i):
        if finding == FINDING:
            out |= mask
    return out


def region_rles(mask: np.ndarray) -> list[str]:
    """One SIIM-ACR RLE per 8-connected region of ``mask`` (already at the release's size), in label order."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [mask_to_siim_rle(labels == k) for k in range(1, count)]


def write_siim_layout(
    root: str | os.PathLike,
    *,
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    difficulty: float = 0.3,
    no_finding_fraction: float = 0.7,
    progress: Progress | None = None,
) -> Path:
    """Write the phantom as SIIM-ACR Pneumothorax's training images and ``train-rle.csv``.

    Args:
        root: output folder (the ``siim`` dataset's ``root``).
        num_images: number of images.
        image_size: side of the written DICOM images, at most 1024 (the masks' size).
        seed: phantom seed.
        difficulty: lesion conspicuity, 0 (obvious) to 1 (near noise).
        no_finding_fraction: share of images without a pneumothorax.
        progress: optional ``progress(done, total)`` callback.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: for an out-of-range option (the message names it).

    """
    if image_size > MASK_SIZE:
        raise ValueError(f"image_size must be at most {MASK_SIZE} for the siim layout (its masks are "
                         f"{MASK_SIZE} px), got {image_size}")
    options = phantom_options(num_images=num_images, image_size=image_size, seed=seed, difficulty=difficulty,
                              classes=(FINDING,), no_finding_fraction=no_finding_fraction)
    gen = generator_for(options)
    cohort = gen.cohort
    root = Path(root)
    images = root / IMAGES_FOLDER
    images.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    for i in range(len(gen)):
        phantom_id = cohort.image_id(i)
        image_id = siim_image_id(seed, phantom_id)
        patient = uuid_id(seed, "siim-patient", f"{int(cohort.patient[i]):08d}")
        # Written beside the tree first: its folders are UIDs that write_dicom puts in the header.
        staged = images / f"{image_id}.dcm.tmp"
        write_grey_dicom(staged, gen.image(i), patient_id=patient, sop_instance_uid=image_id)
        header = pydicom.dcmread(staged, stop_before_pixels=True)
        target = images / str(header.StudyInstanceUID) / str(header.SeriesInstanceUID) / f"{image_id}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        mask = cv2.resize(pneumothorax_mask(gen, i), (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_NEAREST_EXACT)
        rows += [[image_id, rle] for rle in region_rles(mask) or [EMPTY]]
        if progress is not None:
            progress(i + 1, len(gen))
    write_csv(root / RLE_FILE, RLE_HEADER, rows)
    return root
