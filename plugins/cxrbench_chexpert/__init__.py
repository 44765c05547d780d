"""CheXpert (v1.0 and v1.0-small) as published: train.csv and valid.csv."""

from __future__ import annotations

import cxrbench

from .dataset import CheXpert

__all__ = ["CheXpert", "cxrbench_register_datasets"]


@cxrbench.hookimpl
def cxrbench_register_datasets() -> list[type]:
    """Register the ``chexpert`` dataset."""
    return [CheXpert]
