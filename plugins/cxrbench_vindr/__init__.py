"""VinDr-CXR (Nguyen et al., Sci. Data 2022) in its Kaggle and PhysioNet layouts."""

from __future__ import annotations

import cxrbench

from .dataset import VinDrCXR

__all__ = ["VinDrCXR", "cxrbench_register_datasets"]


@cxrbench.hookimpl
def cxrbench_register_datasets() -> list[type]:
    """Register the ``vindr`` dataset."""
    return [VinDrCXR]
