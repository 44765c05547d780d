"""Pooling heads: global pooling -> dropout -> linear classifier, and PCAM.

Every head here ends in one linear classifier (weight ``K x C``, bias ``K``), exposed
by ``class_weights()`` so that CAM can form class maps as a single einsum of those
weights with the feature map.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.api import PoolingHead


@dataclasses.dataclass(frozen=True)
class HeadOptions:
    """Options shared by every head.

    Attributes:
        dropout: dropout probability on the pooled features (the seed project used 0.5).

    """

    dropout: float = 0.0

    def validate(self) -> None:
        """Check the dropout probability."""
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class LseOptions(HeadOptions):
    """Options of the log-sum-exp head.

    Attributes:
        gamma: sharpness; small values approach average pooling, large ones max pooling.

    """

    gamma: float = 10.0

    def validate(self) -> None:
        """Check dropout and gamma."""
        super().validate()
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ValueError(f"gamma must be a positive number, got {self.gamma}")


class LinearPoolingHead(PoolingHead):
    """Base of the heads here: ``logits = W dropout(pool(fmap)) + b``.

    Subclasses implement :meth:`pool` (``N x C x h x w`` -> ``N x C``).
    """

    Options: ClassVar[type] = HeadOptions

    def __init__(self, num_features: int, num_classes: int, options: Any = None) -> None:
        options = options if options is not None else self.Options()
        super().__init__(num_features, num_classes, options)
        self.dropout = nn.Dropout(options.dropout)
        self.classifier = nn.Linear(num_features, num_classes)

    def pool(self, fmap: Tensor) -> Tensor:
        """``N x C x h x w`` -> ``N x C`` pooled features."""
        raise NotImplementedError

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.classifier(self.dropout(self.pool(fmap))), None

    def class_weights(self) -> tuple[Tensor, Tensor]:
        """(weight ``K x C``, bias ``K``) of the linear classifier."""
        return self.classifier.weight, self.classifier.bias


class AvgHead(LinearPoolingHead):
    """Global average pooling: ``z_c = mean_{ij} x_cij``.

    Being linear, it commutes with the classifier: the logit equals the spatial mean of
    the CAM class map ``W x + b``, which is what makes CAM exact for this head.
    """

    NAME = "avg"

    def pool(self, fmap: Tensor) -> Tensor:
        return fmap.mean(dim=(2, 3))


class MaxHead(LinearPoolingHead):
    """Global max pooling: ``z_c = max_{ij} x_cij`` (each channel's strongest response)."""

    NAME = "max"

    def pool(self, fmap: Tensor) -> Tensor:
        return fmap.amax(dim=(2, 3))


class AvgMaxHead(LinearPoolingHead):
    """Average of average and max pooling: ``z_c = (mean_{ij} x_cij + max_{ij} x_cij) / 2``.

    The same combination as timm's ``avgmax`` global pool.
    """

    NAME = "avgmax"

    def pool(self, fmap: Tensor) -> Tensor:
        return 0.5 * (fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3)))


class LseHead(LinearPoolingHead):
    """Log-sum-exp pooling: ``z_c = m_c + log(mean_{ij} exp(gamma (x_cij - m_c))) / gamma``.

    ``m_c`` is the spatial max. Tends to average pooling as ``gamma -> 0`` and to max
    pooling as ``gamma -> inf``. Subtracting ``m_c`` before scaling keeps every
    exponent <= 0 (one of them exactly 0), so no overflow and no log of zero occur for
    any gamma or dtype.
    """

    NAME = "lse"
    Options: ClassVar[type] = LseOptions

    def pool(self, fmap: Tensor) -> Tensor:
        flat = fmap.flatten(2)
        peak = flat.amax(dim=-1, keepdim=True)
        # The value does not depend on the shift (it cancels), so detaching it is exact
        # and spares autograd the max's tie-breaking gradient.
        peak = peak.detach()
        scaled = self.options.gamma * (flat - peak)
        spread = torch.logsumexp(scaled, dim=-1) - math.log(flat.shape[-1])
        return peak.squeeze(-1) + spread / self.options.gamma


class PcamHead(LinearPoolingHead):
    """Probabilistic CAM pooling (Ye et al. 2020), one 1x1 classifier per class.

    The classifier applied at every location gives the logit map ``s_k = W_k x + b_k``
    (``N x K x h x w``). With ``p_k = sigmoid(s_k)`` the pooling weights are
    ``w_k = p_k / sum_ij p_k``; class k pools its own feature ``z_k = sum_ij w_k x``
    (``N x K x C``), and its logit is the same classifier applied to it,
    ``W_k dropout(z_k) + b_k``. The logit map is returned as the localization map.
    The weights are computed as ``softmax_ij(log sigmoid(s_k))``, the same quantity
    without underflow to 0/0 when every ``p`` is tiny.
    """

    NAME = "pcam"
    YIELDS_LOGIT_MAP: ClassVar[bool] = True

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor]:
        weight, bias = self.class_weights()
        logit_map = torch.einsum("kc,nchw->nkhw", weight, fmap) + bias[:, None, None]
        pool_weights = torch.softmax(F.logsigmoid(logit_map).flatten(2), dim=-1)  # N x K x hw
        pooled = torch.einsum("nkl,ncl->nkc", pool_weights, fmap.flatten(2))
        logits = torch.einsum("nkc,kc->nk", self.dropout(pooled), weight) + bias
        return logits, logit_map


HEADS: tuple[type[LinearPoolingHead], ...] = (AvgHead, MaxHead, AvgMaxHead, LseHead, PcamHead)
"""Every head this plugin registers."""
