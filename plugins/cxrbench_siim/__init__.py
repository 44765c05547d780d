"""SIIM-ACR Pneumothorax Segmentation (2019): ``train-rle.csv`` masks on DICOM images."""

from __future__ import annotations

import cxrbench

from .dataset import SiimPneumothorax

__all__ = ["SiimPneumothorax", "cxrbench_register_datasets"]


@cxrbench.hookimpl
def cxrbench_register_datasets() -> list[type]:
    """Register the ``siim`` dataset."""
    return [SiimPneumothorax]
