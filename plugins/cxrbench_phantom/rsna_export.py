"""Write the phantom as the RSNA Pneumonia Detection Challenge: ``stage_2_train_labels.csv`` and DICOM images.

The challenge's layout (Kaggle, RSNA 2018; Shih et al., Radiology: AI 2019), as the
``rsna_pneumonia`` dataset reads it::

    stage_2_train_labels.csv             patientId,x,y,width,height,Target
    stage_2_train_images/<patientId>.dcm 8-bit grey DICOM, PatientID = patientId

The challenge has one box class, "Lung Opacity": opacities suspicious for pneumonia. The
phantom is drawn with one finding only, by default **Pneumonia** (:data:`DEFAULT_FINDING`;
its patchy airspace consolidation is what RSNA's readers boxed), and every lesion of it
becomes one "Lung Opacity" row (``Target`` 1); an image without it has one row with an
empty box and ``Target`` 0. Another phantom finding can be chosen (``finding``), e.g.
Infiltration. As in the release, boxes are in the 1024 x 1024 pixels of the original
images (the phantom's box times ``1024 / image_size``; ``x, y`` the top-left corner),
which the dataset scales to each file's size, and ``patientId`` names one image (a UUID:
:func:`~.dicom_export.uuid_id`). The phantom's own split is not written (the dataset
splits by a hash of ``patientId``). By default 70% of the images are negative (the
release: 77%).
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrbench_rsna.tables import COLUMNS, IMAGES_FOLDER, LABELS_FILE, RELEASE_SIZE

from .dataset import generator_for
from .dicom_export import uuid_id, write_grey_dicom
from .export import Progress, phantom_options, write_csv

__all__ = ["DEFAULT_FINDING", "rsna_patient_id", "write_rsna_layout"]

DEFAULT_FINDING = "Pneumonia"
"""The phantom finding written as RSNA's "Lung Opacity"."""


def rsna_patient_id(seed: int, phantom_id: str) -> str:
    """The exported ``patientId`` of phantom image ``phantom_id`` (``PPPPPPPP_FFF``)."""
    return uuid_id(seed, "rsna", phantom_id)


def write_rsna_layout(
    root: str | os.PathLike,
    *,
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    difficulty: float = 0.3,
    finding: str = DEFAULT_FINDING,
    no_finding_fraction: float = 0.7,
    progress: Progress | None = None,
) -> Path:
    """Write the phantom as the RSNA Pneumonia Detection Challenge's labelled training images.

    Args:
        root: output folder (the ``rsna_pneumonia`` dataset's ``root``).
        num_images: number of images.
        image_size: side of the written DICOM images.
        seed: phantom seed.
        difficulty: lesion conspicuity, 0 (obvious) to 1 (near noise).
        finding: the one phantom finding drawn, written as "Lung Opacity".
        no_finding_fraction: share of images without it (``Target`` 0).
        progress: optional ``progress(done, total)`` callback.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: for an out-of-range option or an unknown finding (the message names it).

    """
    options = phantom_options(num_images=num_images, image_size=image_size, seed=seed, difficulty=difficulty,
                              classes=(finding,), no_finding_fraction=no_finding_fraction)
    gen = generator_for(options)
    root = Path(root)
    (root / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    scale = RELEASE_SIZE / image_size
    rows: list[list[object]] = []
    for i in range(len(gen)):
        patient = rsna_patient_id(seed, gen.cohort.image_id(i))
        write_grey_dicom(root / IMAGES_FOLDER / f"{patient}.dcm", gen.image(i), patient_id=patient)
        boxes = gen.boxes(i)
        rows += [[patient, x * scale, y * scale, w * scale, h * scale, 1] for _, x, y, w, h in boxes]
        if not boxes:
            rows.append([patient, "", "", "", "", 0])
        if progress is not None:
            progress(i + 1, len(gen))
    write_csv(root / LABELS_FILE, ",".join(COLUMNS), rows)
    return root
