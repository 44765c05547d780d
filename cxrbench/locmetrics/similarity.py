"""Similarity of two heatmaps: Spearman rank correlation and SSIM, vectorised over map pairs.

The sanity checks of saliency maps compare a map with the map of a randomised model (Adebayo
et al., NeurIPS 2018, "Sanity checks for saliency maps") or of another class (Sixt et al.,
ICML 2020, the random-logit test) by these two numbers. Both functions take ``P x H x W``
tensors (one row per pair, on any device) and return ``(P,)`` float64 values on that device,
so a stage of a sanity check is one call, with no host synchronisation.

* :func:`spearman`: Pearson correlation of the pixels' ranks, ties given their average rank
  (``scipy.stats.rankdata(method="average")``, so equal to ``scipy.stats.spearmanr`` on the
  flattened maps). scipy returns NaN when a map is constant; cxrbench defines 1.0 when both
  maps are constant (nothing tells them apart) and 0.0 when only one is (no association).
* :func:`ssim`: the structural similarity index as ``skimage.metrics.structural_similarity``
  computes it by default: a 7 x 7 uniform window, sample covariance (``N / (N - 1)``),
  ``K1 = 0.01``, ``K2 = 0.03``, the mean over the windows that lie wholly inside the image
  (skimage filters with reflection and then crops the 3-pixel border, which leaves exactly
  those), with ``data_range`` 1 for min-max normalised maps.

A map holding NaN or inf has no similarity (NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SSIM_K1", "SSIM_K2", "SSIM_WINDOW", "average_ranks", "spearman", "ssim", "standardised_ranks"]

SSIM_WINDOW = 7
"""Side of the uniform SSIM window (skimage's default ``win_size``)."""
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _flat(maps: Tensor) -> Tensor:
    if maps.ndim < 2:
        raise ValueError(f"maps must be P x H x W (or P x M), got shape {tuple(maps.shape)}")
    return maps.reshape(maps.shape[0], -1)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..M of each row of ``P x M`` values, ties given the mean of their ranks.

    One sort per row (all rows at once); a tie group's first and last sorted positions come
    from running maxima and minima of the group boundaries, so no loop visits pixels.
    """
    x = _flat(values)
    m = x.shape[1]
    sorted_values, order = torch.sort(x, dim=1, stable=True)
    position = torch.arange(m, device=x.device).expand_as(order)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, torch.zeros_like(position)).cummax(dim=1).values
    last = torch.where(ends, position, torch.full_like(position, m)).flip(1).cummin(dim=1).values.flip(1)
    mean_rank = (first + last).to(torch.float64) / 2.0 + 1.0
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def standardised_ranks(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Centred average ranks scaled to unit norm per row, and which rows are constant.

    Spearman's coefficient of two rows is the dot product of their standardised ranks; a
    sanity check compares one trained map with many randomised ones, so the trained side is
    ranked once (:func:`spearman` accepts these as ``a``).

    Returns:
        ``(P x M float64, (P,) bool)``: the standardised ranks (zeros for a constant row) and
        the constant rows.

    """
    ranks = average_ranks(maps)
    centred = ranks - ranks.mean(dim=1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    constant = (norm[:, 0] == 0)
    return centred / torch.where(norm > 0, norm, torch.ones_like(norm)), constant


def spearman(a: Tensor | tuple[Tensor, Tensor], b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of rows of ``a`` and ``b`` (ties averaged).

    Args:
        a: ``P x H x W`` maps, or their :func:`standardised_ranks` (to rank them once).
        b: ``P x H x W`` maps.

    Returns:
        ``(P,)`` float64 in [-1, 1]: 1.0 where both maps are constant, 0.0 where one is, NaN
        where either holds NaN or inf.

    """
    if isinstance(a, tuple):
        ra, const_a = a
        finite_a = torch.isfinite(ra).all(dim=1)
    else:
        finite_a = torch.isfinite(_flat(a)).all(dim=1)
        ra, const_a = standardised_ranks(a)
    flat_b = _flat(b)
    if ra.shape != flat_b.shape:
        raise ValueError(f"a and b must hold the same pairs and pixels, got {tuple(ra.shape)} and "
                         f"{tuple(flat_b.shape)}")
    rb, const_b = standardised_ranks(flat_b)
    rho = (ra * rb).sum(dim=1).clamp(-1.0, 1.0)
    rho = torch.where(const_a & const_b, torch.ones_like(rho), torch.where(const_a | const_b,
                                                                             torch.zeros_like(rho), rho))
    finite = finite_a & torch.isfinite(flat_b).all(dim=1)
    return torch.where(finite, rho, torch.full_like(rho, float("nan")))


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0, window: int = SSIM_WINDOW, k1: float = SSIM_K1,
         k2: float = SSIM_K2) -> Tensor:
    """Mean structural similarity of each pair of ``P x H x W`` maps (skimage's defaults).

    Args:
        a: ``P x H x W`` maps (min-max normalised to [0, 1] for ``data_range`` 1).
        b: ``P x H x W`` maps.
        data_range: the value range ``L`` in ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``.
        window: side of the uniform window (odd, at most the maps' sides).
        k1: skimage's ``K1``.
        k2: skimage's ``K2``.

    Returns:
        ``(P,)`` float64, the mean over the windows wholly inside the map; NaN where either map
        holds NaN or inf.

    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a and b must both be P x H x W, got {tuple(a.shape)} and {tuple(b.shape)}")
    if window % 2 == 0 or window > min(a.shape[-2:]):
        raise ValueError(f"window must be odd and at most the maps' sides {tuple(a.shape[-2:])}, got {window}")
    x = a.to(torch.float64).unsqueeze(1)
    y = b.to(torch.float64).unsqueeze(1)

    def mean(t: Tensor) -> Tensor:  # the uniform filter, valid windows only
        return F.avg_pool2d(t, window, stride=1)

    ux, uy = mean(x), mean(y)
    n = window * window
    cov_norm = n / (n - 1.0)  # skimage's use_sample_covariance=True
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return index.mean(dim=(1, 2, 3))
