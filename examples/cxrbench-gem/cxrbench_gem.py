"""A third-party cxrbench plugin: the generalised-mean (GeM) pooling head."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import cxrbench
from cxrbench.api import PoolingHead


@dataclasses.dataclass(frozen=True)
class GeMOptions:
    p: float = 3.0  # 1 = average pooling, large p approaches max pooling
    learn_p: bool = True

    def validate(self) -> None:
        if self.p < 1:
            raise ValueError("p must be >= 1")


class GeMHead(PoolingHead):
    """Generalised-mean pooling: z_c = (mean_ij max(x_cij, eps)^p)^(1/p), then a linear layer."""

    NAME = "gem"
    Options = GeMOptions

    def __init__(self, num_features: int, num_classes: int, options: GeMOptions) -> None:
        super().__init__(num_features, num_classes, options)
        self.p = nn.Parameter(torch.tensor(options.p), requires_grad=options.learn_p)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, None]:
        pooled = fmap.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return self.fc(pooled), None

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc.weight, self.fc.bias  # a linear classifier: CAM applies


@cxrbench.hookimpl
def cxrbench_register_pooling_heads():
    return GeMHead
