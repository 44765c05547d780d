"""NIH ChestX-ray14 as published: label table, box table, official split lists."""

from __future__ import annotations

import cxrbench

from .dataset import NIHChestXray14

__all__ = ["NIHChestXray14", "cxrbench_register_datasets"]


@cxrbench.hookimpl
def cxrbench_register_datasets() -> list[type]:
    """Register the ``nih`` dataset."""
    return [NIHChestXray14]
