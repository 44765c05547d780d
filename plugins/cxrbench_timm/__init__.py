"""cxrbench plugin: every timm model as a backbone.

Registers :class:`TimmBackbone` (serving any timm model name, optionally prefixed
``timm/``) and one named class per backbone of the seed project (resnet18/34/50,
densenet121, efficientnet_b0 to b4).
"""

from __future__ import annotations

import cxrbench

from .backbone import NAMED_BACKBONES, SEED_BACKBONES, TimmBackbone, TimmOptions, timm_model_name

__all__ = ["NAMED_BACKBONES", "SEED_BACKBONES", "TimmBackbone", "TimmOptions", "timm_model_name"]


@cxrbench.hookimpl
def cxrbench_register_backbones() -> list[type[TimmBackbone]]:
    """The timm family class and the named seed backbones."""
    return [TimmBackbone, *NAMED_BACKBONES]
