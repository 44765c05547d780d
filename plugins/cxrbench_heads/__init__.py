"""cxrbench plugin: pooling heads ``avg``, ``max``, ``avgmax``, ``lse`` and ``pcam``.

Each head pools the backbone's feature map, applies dropout and one linear classifier;
``pcam`` pools per class with weights from its own logit map, which it also returns.
"""

from __future__ import annotations

import cxrbench

from .pooling import (
    HEADS,
    AvgHead,
    AvgMaxHead,
    HeadOptions,
    LinearPoolingHead,
    LseHead,
    LseOptions,
    MaxHead,
    PcamHead,
)

__all__ = [
    "HEADS",
    "AvgHead",
    "AvgMaxHead",
    "HeadOptions",
    "LinearPoolingHead",
    "LseHead",
    "LseOptions",
    "MaxHead",
    "PcamHead",
]


@cxrbench.hookimpl
def cxrbench_register_pooling_heads() -> list[type[LinearPoolingHead]]:
    """Every pooling head of this plugin."""
    return list(HEADS)
