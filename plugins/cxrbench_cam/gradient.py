"""Gradient-weighted class activation maps, all classes from one forward and one backward.

Notation: ``A`` the target layer's activation (``N x C x h x w``), ``g = d y_k / d A``
the gradient of class k's logit (``K x N x C x h x w``, one batched backward), sums
over ``ij`` run over the feature grid.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .base import MapLocalizer
from .capture import class_gradients, forward_capture
from .options import LayerOptions

if TYPE_CHECKING:
    from cxrbench.api import Classifier


def _weighted_sum(weights: Tensor, activation: Tensor) -> Tensor:
    """ReLU(sum_c w_kc A_c) for channel weights ``K x N x C``: ``N x K x h x w``."""
    return torch.einsum("knc,nchw->nkhw", weights, activation).clamp_min_(0.0)


class GradientLocalizer(MapLocalizer):
    """Shared machinery: capture ``A``, get ``g`` for every class, combine them."""

    Options: ClassVar[type] = LayerOptions

    def raw_maps(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        logits, activation = forward_capture(model, images, self.options.target_layer, track_grad=True)
        grads = class_gradients(logits, activation, classes)
        with torch.no_grad():
            return self.combine(activation.detach(), grads)

    @abc.abstractmethod
    def combine(self, activation: Tensor, grads: Tensor) -> Tensor:
        """``A`` (``N x C x h x w``) and ``g`` (``K x N x C x h x w``) -> ``N x K x h x w``."""


class GradCAM(GradientLocalizer):
    """Grad-CAM (Selvaraju et al., 2017): ReLU(sum_c mean_ij(g_c) A_c).

    Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra. "Grad-CAM: Visual Explanations
    from Deep Networks via Gradient-based Localization", ICCV 2017.
    """

    NAME = "gradcam"

    def combine(self, activation: Tensor, grads: Tensor) -> Tensor:
        return _weighted_sum(grads.mean(dim=(-2, -1)), activation)


class GradCAMPlusPlus(GradientLocalizer):
    """Grad-CAM++ (Chattopadhyay et al., 2018): ReLU(sum_c sum_ij(alpha_ij relu(g_ij)) A_c).

    alpha = g^2 / (2 g^2 + sum_ab(A_ab) g^3), the closed form for the score exp(y_k);
    its gradient exp(y_k) g only rescales each map by a positive constant, which
    normalisation removes, so it is left out (exp of a large logit would overflow).
    alpha is 0 where its denominator is 0. Chattopadhyay, Sarkar, Howlader,
    Balasubramanian. "Grad-CAM++: Generalized Gradient-based Visual Explanations for
    Deep Convolutional Networks", WACV 2018.
    """

    NAME = "gradcampp"

    def combine(self, activation: Tensor, grads: Tensor) -> Tensor:
        # alpha relu(g) = g^2 relu(g) / (g^2 (2 + S g)) = relu(g) / (2 + S g), S = sum_ab A_ab:
        # the same value with three element-wise passes instead of ten (g > 0 wherever
        # relu(g) is non-zero, so dividing out g^2 is exact).
        # Where g <= 0 the term is 0 whatever the denominator; using relu(g) in it too
        # keeps it at 2 there, so 0 / 0 cannot occur.
        total = activation.sum(dim=(-2, -1), keepdim=True)  # N x C x 1 x 1
        positive = grads.clamp_min(0.0)
        denominator = (positive * total).add_(2.0)
        terms = positive.div_(denominator)
        if not bool((total >= 0).all()):
            # 2 + S g = 0 with g > 0 needs S < 0: only layers with negative activations.
            zero = torch.zeros((), dtype=terms.dtype, device=terms.device)
            terms = torch.where(denominator != 0, terms, zero)
        return _weighted_sum(terms.sum(dim=(-2, -1)), activation)


class XGradCAM(GradientLocalizer):
    """XGrad-CAM (Fu et al., 2020): ReLU(sum_c sum_ij(g_ij A_ij / sum_ab A_ab) A_c).

    Channels whose activation sums to 0 get weight 0. Fu, Hu, Dong, Guo, Gao, Li.
    "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020.
    """

    NAME = "xgradcam"

    def combine(self, activation: Tensor, grads: Tensor) -> Tensor:
        total = activation.sum(dim=(-2, -1), keepdim=True)
        share = activation / torch.where(total != 0, total, torch.ones_like(total))
        weights = (grads * share).sum(dim=(-2, -1))
        return _weighted_sum(weights, activation)


class LayerCAM(GradientLocalizer):
    """LayerCAM (Jiang et al., 2021): ReLU(sum_c relu(g_c) * A_c), element-wise weights.

    Jiang, Zhang, Hou, Cheng, Wei. "LayerCAM: Exploring Hierarchical Class Activation
    Maps for Localization", IEEE TIP 2021.
    """

    NAME = "layercam"

    def combine(self, activation: Tensor, grads: Tensor) -> Tensor:
        return torch.einsum("knchw,nchw->nkhw", grads.clamp_min(0.0), activation).clamp_min_(0.0)


class HiResCAM(GradientLocalizer):
    """HiResCAM (Draelos & Carin, 2020): ReLU(sum_c g_c * A_c), element-wise products.

    With average pooling and a linear classifier it equals CAM up to the factor 1/(hw).
    Draelos, Carin. "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020.
    """

    NAME = "hirescam"

    def combine(self, activation: Tensor, grads: Tensor) -> Tensor:
        return torch.einsum("knchw,nchw->nkhw", grads, activation).clamp_min_(0.0)
