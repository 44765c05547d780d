"""CheXlocalize (Saporta et al. 2022): radiologists' masks on CheXpert validation and test images."""

from __future__ import annotations

import cxrbench

from .dataset import Chexlocalize

__all__ = ["Chexlocalize", "cxrbench_register_datasets"]


@cxrbench.hookimpl
def cxrbench_register_datasets() -> list[type]:
    """Register the ``chexlocalize`` dataset."""
    return [Chexlocalize]
