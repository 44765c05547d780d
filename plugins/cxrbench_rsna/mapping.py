"""The organisers' mapping from RSNA Pneumonia images to NIH ChestX-ray14 images.

The RSNA Pneumonia Detection Challenge images are NIH ChestX-ray14 images (Shih et al.,
Radiology: AI 2019, e180041). RSNA published which is which in
``pneumonia-challenge-dataset-mappings_2018.json``, linked from the challenge's page on
rsna.org: a JSON list of one object per challenge image, ``subset_img_id`` the
challenge's ``patientId`` and ``img_id`` the NIH ``Image Index`` (``00000001_000.png``).
Those two fields are what public code reading the file relies on (NIH's own conversion
script reads ``subset_img_id`` and ``img_id``); other fields are not read. ``orig_img_id``
is accepted in place of ``img_id`` (named so in some descriptions; not confirmed in a copy
of the file). The NIH patient is the ``Image Index``'s first eight digits (NIH names its
files ``<Patient ID:08d>_<follow-up:03d>.png``).

Put the file in the dataset's root; the overlap audit (``cxrbench.overlap``) then matches
RSNA images to NIH images by these names instead of by perceptual hashes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxrbench.api import UsageError

__all__ = ["MAPPING_FILE", "nih_patient", "read_mapping"]

MAPPING_FILE = "pneumonia-challenge-dataset-mappings_2018.json"
_NIH_NAME = re.compile(r"(\d{8})_\d{3}\.png")


def nih_patient(image_index: str) -> str | None:
    """The NIH ``Patient ID`` (8 digits) of an ``Image Index``, or None for a name not of NIH's form."""
    found = _NIH_NAME.fullmatch(image_index)
    return found.group(1) if found else None


def read_mapping(path: Path) -> dict[str, str]:
    """``patientId`` -> NIH ``Image Index`` from the organisers' mapping file.

    Raises:
        UsageError: one line naming the file: not JSON, not a list of objects, an entry
            without ``subset_img_id`` or ``img_id``, or one ``patientId`` mapped to two images.

    """
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable JSON file ({type(exc).__name__})") from None
    if not isinstance(entries, list):
        raise UsageError(f"{path}: expected a JSON list of objects with subset_img_id and img_id")
    out: dict[str, str] = {}
    for number, entry in enumerate(entries):
        image = entry.get("img_id", entry.get("orig_img_id")) if isinstance(entry, dict) else None
        subset = entry.get("subset_img_id") if isinstance(entry, dict) else None
        if not isinstance(subset, str) or not isinstance(image, str):
            raise UsageError(f"{path}: entry {number} has no subset_img_id and img_id strings")
        image = image.strip().rsplit("/", 1)[-1]
        if not image.lower().endswith(".png"):
            image += ".png"  # the NIH Image Index always carries its suffix
        if out.setdefault(subset.strip(), image) != image:
            raise UsageError(f"{path}: patientId {subset!r} is mapped to both {out[subset.strip()]!r} and {image!r}")
    return out
