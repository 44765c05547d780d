"""Reading the SIIM-ACR Pneumothorax mask table, every row of an image kept.

``train-rle.csv`` (SIIM-ACR Pneumothorax Segmentation, Kaggle 2019) has the header
``ImageId, EncodedPixels`` (a space before the second name) and one row per separate
pneumothorax region of an image: ``-1`` for an image without one, otherwise the region's
mask of the 1024 x 1024 image in the challenge's relative run-length format
(``mask_functions.py``, decoded by :func:`cxrbench.masks.siim_rle_to_mask`). An image
with several regions has several rows, and all of them are its mask: torchxrayvision's
``SIIM_Pneumothorax_Dataset`` keeps only the last row of an image (a dict keyed by
ImageId), which loses regions on 624 of the 2,669 positive images of the release.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from cxrbench.api import UsageError, one_line

__all__ = ["EMPTY", "MASK_SIZE", "RLE_FILE", "SiimMasks", "read_rle_table"]

RLE_FILE = "train-rle.csv"
MASK_SIZE = 1024
"""Every released image and mask is 1024 x 1024."""
EMPTY = "-1"
_ID, _RLE = "ImageId", "EncodedPixels"


@dataclasses.dataclass(frozen=True)
class SiimMasks:
    """Every image of the table with all its RLE rows.

    Attributes:
        rows: ImageId -> its RLE strings in table order (``("-1",)`` for a negative image).

    """

    rows: dict[str, tuple[str, ...]]

    def is_positive(self, image_id: str) -> bool:
        return any(rle != EMPTY for rle in self.rows[image_id])

    @property
    def positives(self) -> int:
        return sum(self.is_positive(i) for i in self.rows)


def read_rle_table(path: Path) -> SiimMasks:
    """Read ``train-rle.csv`` (header names with or without the leading space).

    Raises:
        UsageError: one line naming the file and line: a missing column, an empty id or
            cell, or an image listed both as ``-1`` and with a region.

    """
    rows: dict[str, list[str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, skipinitialspace=True)
            header = [h.strip() for h in next(reader, [])]
            if _ID not in header or _RLE not in header:
                raise UsageError(f"siim: {path.name} must have the columns ImageId, EncodedPixels; got "
                                 f"{one_line(', '.join(header))[:120]}")
            id_col, rle_col = header.index(_ID), header.index(_RLE)
            for line, record in enumerate(reader, start=2):
                if not record:
                    continue
                if len(record) <= max(id_col, rle_col):
                    raise UsageError(f"siim: {path.name} line {line}: expected ImageId, EncodedPixels")
                image_id, rle = record[id_col].strip(), record[rle_col].strip()
                if not image_id or not rle:
                    raise UsageError(f"siim: {path.name} line {line}: empty ImageId or EncodedPixels (use -1 for none)")
                rows.setdefault(image_id, []).append(rle)
    except OSError as exc:
        raise UsageError(f"siim: cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"siim: cannot read {path}: {one_line(str(exc))}") from None
    for image_id, rles in rows.items():
        if EMPTY in rles and len(rles) > 1:
            raise UsageError(f"siim: {path.name}: image {one_line(image_id)} has both a -1 row and region rows")
    return SiimMasks({image_id: tuple(rles) for image_id, rles in rows.items()})
