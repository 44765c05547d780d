"""Localizers for cxrbench: CAM, PCAM, Grad-CAM family, Eigen-CAM, Score-CAM and a random baseline.

Every localizer returns maps for all requested classes from one call. Gradient methods
run one forward and one batched backward from the logits to the target layer only.
"""

from __future__ import annotations

import cxrbench

from .base import MapLocalizer
from .baselines import RandomMap
from .eigen import EigenCAM
from .gradient import GradCAM, GradCAMPlusPlus, GradientLocalizer, HiResCAM, LayerCAM, XGradCAM
from .score import ScoreCAM
from .weights import CAM, PCAM

LOCALIZERS = (CAM, PCAM, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, EigenCAM, ScoreCAM, RandomMap)
"""Every localizer class this plugin registers."""


@cxrbench.hookimpl
def cxrbench_register_localizers() -> list[type]:
    """Register the localizers of this plugin."""
    return list(LOCALIZERS)


__all__ = [
    "CAM",
    "LOCALIZERS",
    "PCAM",
    "RandomMap",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientLocalizer",
    "HiResCAM",
    "LayerCAM",
    "MapLocalizer",
    "ScoreCAM",
    "XGradCAM",
]
