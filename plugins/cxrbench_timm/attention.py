"""Attention modules applied to a backbone's feature map (the seed project's options).

Each module maps ``N x C x h x w`` to a tensor of the same shape, so it can sit between
a network's last feature layer and the pooling head without changing either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_KINDS = ("none", "se", "spatial", "fpa")
"""Values of the backbone option ``attention``."""


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al. 2018): rescale each channel by a gate in (0, 1).

    The gate is ``sigmoid(W2 relu(W1 mean_space(x)))``: a bottleneck MLP on the
    spatially averaged features, so channels that matter for the whole image are
    emphasised everywhere.

    Args:
        channels: C of the feature map.
        reduction: bottleneck ratio of the MLP.

    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(gate))))
        return x * gate


class SpatialSelfAttention(nn.Module):
    """Non-local spatial self-attention: every location attends to every other one.

    ``y = x + gamma * V softmax(Q^T K)`` with 1x1 convolutions for the query, key (both
    with C/8 channels) and value (C channels). ``gamma`` starts at 0, so the module is
    the identity at initialisation and a pretrained network's features are unchanged
    until training makes use of the attention.

    Args:
        channels: C of the feature map.
        reduction: channel reduction of the query and key projections.

    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2)  # N x C' x L
        k = self.key(x).flatten(2)  # N x C' x L
        v = self.value(x).flatten(2)  # N x C x L
        attn = torch.softmax(torch.einsum("ncl,ncm->nlm", q, k), dim=-1)  # rows: query location
        out = torch.einsum("ncm,nlm->ncl", v, attn).reshape(n, c, h, w)
        return x + self.gamma * out


class _ConvRelu(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2), nn.ReLU())


def _resize(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FeaturePyramidAttention(nn.Module):
    """Feature pyramid attention (after Li et al. 2018, Pyramid Attention Network).

    A one-channel spatial attention map is built at three scales (7x7, 5x5 and 3x3
    convolutions, each halving the resolution), merged coarse to fine by upsampling
    and adding, and multiplies a 1x1-projected copy of the features; a global
    context vector (average pool, 1x1 conv) is added back everywhere:
    ``y = relu(conv1x1(x)) * pyramid(x) + relu(conv1x1(mean_space(x)))``.

    No normalisation layers are used: feature maps here are small (2x2 on tiny
    inputs) and batch statistics over a 1x1 map would fail for batches of one.

    Args:
        channels: C of the feature map.

    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mid = _ConvRelu(channels, channels, 1)
        self.context = _ConvRelu(channels, channels, 1)
        self.down = nn.ModuleList(
            [_ConvRelu(channels, 1, 7, stride=2), _ConvRelu(1, 1, 5, stride=2), _ConvRelu(1, 1, 3, stride=2)]
        )
        self.refine = nn.ModuleList([_ConvRelu(1, 1, 7), _ConvRelu(1, 1, 5), _ConvRelu(1, 1, 3)])

    def forward(self, x: Tensor) -> Tensor:
        levels = []
        y = x
        for down, refine in zip(self.down, self.refine, strict=True):
            y = down(y)
            levels.append(refine(y))
        # Merge coarse to fine: each level is upsampled to the next finer one and added.
        merged = levels[-1]
        for finer in reversed(levels[:-1]):
            merged = finer + _resize(merged, finer)
        pyramid = _resize(merged, x)
        context = self.context(x.mean(dim=(2, 3), keepdim=True))
        return self.mid(x) * pyramid + context


def build_attention(kind: str, channels: int) -> nn.Module:
    """The attention module for the option value ``kind`` (``none`` gives the identity).

    Args:
        kind: one of :data:`ATTENTION_KINDS`.
        channels: C of the feature map.

    Raises:
        ValueError: for an unknown kind (options validation normally catches it first).

    """
    if kind == "none":
        return nn.Identity()
    if kind == "se":
        return SqueezeExcitation(channels)
    if kind == "spatial":
        return SpatialSelfAttention(channels)
    if kind == "fpa":
        return FeaturePyramidAttention(channels)
    raise ValueError(f"unknown attention {kind!r}; valid: {', '.join(ATTENTION_KINDS)}")
