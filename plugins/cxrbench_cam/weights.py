"""Maps read straight off the classifier: CAM (head weights) and PCAM (head logit maps)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .base import MapLocalizer
from .options import MapOptions, PcamOptions

if TYPE_CHECKING:
    from cxrbench.api import Classifier


def _class_weights(model: Classifier) -> tuple[Tensor, Tensor] | None:
    getter = getattr(getattr(model, "head", None), "class_weights", None)
    return getter() if callable(getter) else None


class CAM(MapLocalizer):
    """CAM (Zhou et al., 2016): sum_c W_kc A_c, the linear head's weights on the feature map.

    One forward, no backward; no ReLU (min-max normalisation keeps the whole range),
    the bias is left out (a constant shift). Zhou, Khosla, Lapedriza, Oliva,
    Torralba. "Learning Deep Features for Discriminative Localization", CVPR 2016.
    """

    NAME = "cam"
    Options: ClassVar[type] = MapOptions

    def unsupported_reason(self, model: Classifier) -> str | None:
        if _class_weights(model) is None:
            return f"head {type(model.head).__name__} has no linear class weights (class_weights() is None)"
        return None

    def raw_maps(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        with torch.no_grad():
            _, fmap, _ = model.forward_maps(images)
            weight, _bias = _class_weights(model)
            if weight.shape[1] != fmap.shape[1]:
                raise ValueError(f"head weights have {weight.shape[1]} channels, the feature map {fmap.shape[1]}")
            index = torch.as_tensor(classes, dtype=torch.long, device=weight.device)
            selected = weight.index_select(0, index).to(fmap.dtype)
            return torch.einsum("kc,nchw->nkhw", selected, fmap)


class PCAM(MapLocalizer):
    """PCAM maps (Ye et al., 2020): sigmoid(logit map_k), the PCAM head's own probability maps.

    The logit map is the head's 1x1 classifier applied at every feature location.
    Ye, Xu, Cheng, Qin, Zhou. "Weakly Supervised Lesion Localization With Probabilistic-CAM
    Pooling", arXiv:2005.14480, 2020.
    """

    NAME = "pcam"
    Options: ClassVar[type] = PcamOptions
    THRESHOLD: ClassVar[dict[str, Any]] = {"policy": "seed", "factor": 1.95, "high": 0.6}

    def unsupported_reason(self, model: Classifier) -> str | None:
        head = getattr(model, "head", None)
        if not getattr(head, "YIELDS_LOGIT_MAP", False):
            return f"head {type(head).__name__} yields no logit map (YIELDS_LOGIT_MAP is False)"
        return None

    def raw_maps(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        with torch.no_grad():
            _, _, logit_map = model.forward_maps(images)
            if logit_map is None:
                raise ValueError(f"head {type(model.head).__name__} returned no logit map")
            index = torch.as_tensor(classes, dtype=torch.long, device=logit_map.device)
            return torch.sigmoid(logit_map.index_select(1, index))
