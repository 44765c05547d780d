"""What the phantom's DICOM layouts (VinDr-CXR, RSNA Pneumonia, SIIM-ACR) share: ids and 8-bit files.

Every id is a pure function of the phantom seed and the image's own phantom id
(``PPPPPPPP_FFF``), so an export is the same bytes each time and two seeds never share
an id. The images are written as uncompressed 8-bit grey DICOM (what
:func:`cxrbench.dicom.write_dicom` writes): RSNA and SIIM-ACR distribute 8-bit
re-encodings of PNGs exactly so, and :func:`cxrbench.imageio.read_grey` gives such a file
back as stored (``BitsStored`` 8, no VOI transform), so the pixels a dataset reads are the
phantom's rendered pixels. A ``MONOCHROME1`` file stores ``255 - v`` and is inverted back
on reading, so it round-trips too.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import numpy as np
from pydicom.uid import generate_uid

from cxrbench.dicom import write_dicom

__all__ = ["ID_NAMESPACE", "hex_id", "phantom_uid", "uuid_id", "write_grey_dicom"]

ID_NAMESPACE = uuid.UUID("6f1c1b3e-5d0a-4c55-9a57-63786272656e")
"""The namespace of the phantom's UUID ids (uuid5), fixed so ids never change."""


def _name(seed: int, kind: str, phantom_id: str) -> str:
    return f"cxrbench-phantom:{int(seed)}:{kind}:{phantom_id}"


def hex_id(seed: int, phantom_id: str) -> str:
    """A VinDr-CXR-style image id: 32 hex digits (md5 of the seed and the phantom id)."""
    return hashlib.md5(_name(seed, "image", phantom_id).encode(), usedforsecurity=False).hexdigest()


def uuid_id(seed: int, kind: str, phantom_id: str) -> str:
    """An RSNA-style ``patientId`` (or SIIM ``PatientID``): a UUID 5 of the seed, ``kind`` and phantom id."""
    return str(uuid.uuid5(ID_NAMESPACE, _name(seed, kind, phantom_id)))


def phantom_uid(seed: int, kind: str, phantom_id: str) -> str:
    """A DICOM UID (pydicom's root, a hash of the seed, ``kind`` and phantom id), as SIIM-ACR's ImageIds are."""
    return str(generate_uid(entropy_srcs=[_name(seed, kind, phantom_id)]))


def write_grey_dicom(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    patient_id: str | None = None,
    sop_instance_uid: str | None = None,
    monochrome1: bool = False,
    modality: str = "CR",
) -> None:
    """Write a rendered ``uint8`` image as an 8-bit DICOM file that reads back as exactly ``image``.

    Args:
        path: the file (its folder must exist).
        image: ``H x W`` uint8, bright = dense.
        patient_id: ``PatientID`` to write (none by default).
        sop_instance_uid: ``SOPInstanceUID`` (default: derived from the file name).
        monochrome1: store it ``MONOCHROME1`` (0 = white), i.e. the values ``255 - image``.
        modality: ``Modality`` (RSNA and SIIM-ACR files say ``CR``, VinDr-CXR's ``DX``).

    """
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    write_dicom(
        path,
        255 - pixels if monochrome1 else pixels,
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
        bits_stored=8,
        patient_id=patient_id,
        sop_instance_uid=sop_instance_uid,
        modality=modality,
    )
