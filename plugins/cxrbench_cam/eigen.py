"""Eigen-CAM: the first principal component of a layer's activations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .base import MapLocalizer
from .capture import forward_capture
from .options import LayerOptions

if TYPE_CHECKING:
    from cxrbench.api import Classifier


def principal_projection(activation: Tensor) -> Tensor:
    """Project each location's channel vector on the first principal direction.

    Args:
        activation: ``N x C x h x w``.

    Returns:
        ``N x h x w`` projections of the centred activations on the first right
        singular vector v, with v's sign chosen so that sum(v) >= 0 (the component
        points towards stronger activation, which SVD alone leaves arbitrary).

    """
    n, c, h, w = activation.shape
    x = activation.reshape(n, c, h * w).transpose(1, 2)  # N x hw x C
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:, 0, :]  # N x C
    sign = torch.where(v.sum(dim=-1) < 0, -1.0, 1.0).to(v.dtype)
    projection = torch.einsum("npc,nc->np", x, v * sign[:, None])
    return projection.reshape(n, h, w)


class EigenCAM(MapLocalizer):
    """Eigen-CAM (Muhammad & Yeasin, 2020): ReLU(A_centred v1), v1 the first principal direction.

    Class-independent: the same map is returned for every requested class. The sign
    of v1 is fixed so that sum(v1) >= 0. Muhammad, Yeasin. "Eigen-CAM: Class Activation
    Map using Principal Components", IJCNN 2020.
    """

    NAME = "eigencam"
    Options: ClassVar[type] = LayerOptions

    def raw_maps(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        _, activation = forward_capture(model, images, self.options.target_layer, track_grad=False)
        with torch.no_grad():
            projection = principal_projection(activation).clamp_min_(0.0)
            return projection[:, None].expand(-1, len(classes), -1, -1)
