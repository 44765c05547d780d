"""Turn raw class maps into heatmaps: normalise per map, then upsample once.

Normalising on the feature grid before resizing is what the seed project and the
``grad-cam`` package do; it is also the cheap order (``K x h x w`` values instead of
``K x H x W``), and interpolation keeps values inside [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_FLAT_TOLERANCE = 16.0
"""A map whose range is within this many machine epsilons of its magnitude is constant."""


def _is_flat(low: Tensor, high: Tensor) -> Tensor:
    """Where a map's range is rounding noise (or zero): those maps become all zeros."""
    eps = torch.finfo(low.dtype).eps
    scale = torch.maximum(low.abs(), high.abs())
    return (high - low) <= _FLAT_TOLERANCE * eps * scale


def normalize_maps(maps: Tensor, mode: str) -> Tensor:
    """Scale each map of ``N x K x h x w`` to [0, 1], vectorised over maps.

    Args:
        maps: raw maps (any real float dtype).
        mode: ``minmax`` ((x - min) / (max - min)), ``max`` (max(x, 0) / max) or
            ``none`` (values kept, clipped to [0, 1]).

    Returns:
        Maps in [0, 1] of the same shape and dtype; constant maps (and maps whose
        maximum is not positive, for ``max``) are all zeros, never NaN.

    """
    if mode == "none":
        return maps.clamp(0.0, 1.0)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    # A constant map says nothing about where the finding is: it becomes all zeros.
    flat = _is_flat(low, high)
    if mode == "minmax":
        out = (maps - low) / torch.where(flat, torch.ones_like(high), high - low)
    elif mode == "max":
        flat = flat | (high <= 0)
        out = maps.clamp_min(0.0) / torch.where(flat, torch.ones_like(high), high)
    else:
        raise ValueError(f"unknown normalisation {mode!r}")
    return torch.where(flat, torch.zeros_like(out), out).clamp_(0.0, 1.0)


def upsample_maps(maps: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize ``N x K x h x w`` maps to ``N x K x H x W`` in one interpolation call."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode == "bilinear":
        out = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        # Interpolation is a convex combination; the clamp only removes rounding.
        return out.clamp_(0.0, 1.0)
    if mode == "nearest":
        return F.interpolate(maps, size=size, mode="nearest")
    raise ValueError(f"unknown upsampling mode {mode!r}")


def finish_maps(raw: Tensor, size: tuple[int, int], normalize: str, upsample: str) -> Tensor:
    """Normalise raw maps per map, then upsample them to ``size``, as float maps."""
    if raw.dtype not in (torch.float32, torch.float64):
        raw = raw.float()  # half precision has too little range for a safe min-max
    with torch.no_grad():
        return upsample_maps(normalize_maps(raw.detach(), normalize), size, upsample)
