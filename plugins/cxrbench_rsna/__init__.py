"""RSNA Pneumonia Detection Challenge (2018): ``stage_2_train_labels.csv`` and its DICOM images."""

from __future__ import annotations

import cxrbench

from .dataset import RsnaPneumonia

__all__ = ["RsnaPneumonia", "cxrbench_register_datasets"]


@cxrbench.hookimpl
def cxrbench_register_datasets() -> list[type]:
    """Register the ``rsna_pneumonia`` dataset."""
    return [RsnaPneumonia]
