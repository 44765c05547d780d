"""Deletion and insertion curves (Petsiuk, Das & Saenko, BMVC 2018, "RISE"), on the device.

For one (image, class) pair and its map at the model's input size ``S x S`` (``M = S^2``
pixels): the pixels are ranked by saliency, descending, ties broken by the lower flat index
(a stable sort). At step ``i = 0 .. n`` the top ``c_i = floor(i M / n)`` pixels are replaced
by a baseline (**deletion**) or revealed on it (**insertion**: the image's pixels there, the
baseline elsewhere), and the model's probability of the pair's class, ``sigmoid(logit)``,
is read. The curve's AUC is the trapezoidal rule over the fraction of pixels, ``x_i = c_i /
M``, from 0 to 1 (RISE sums with equal spacing ``1 / n``; ``x_i`` differs from ``i / n`` only
by the rounding of ``c_i``). A map that ranks the pixels the model uses first gives a steep
deletion curve (low AUC, better) and a steep insertion curve (high AUC, better).

Baselines (normalised image space): ``mean``, a constant image at a given value (the scored
images' mean pixel, computed by the caller); ``zero``, 0, i.e. ImageNet's grey mean (what
RISE's ``torch.zeros_like`` is on normalised inputs, its deletion substrate); ``blur``, the
image under a Gaussian blur of standard deviation ``sigma`` pixels (RISE's insertion
substrate, ``gkern(11, 5)`` at 224 px: sigma 5, truncated to an 11 x 11 kernel; cxrbench
truncates at 3 sigma, so the blur is Gaussian, with replicated borders).

All steps of all pairs are one list of perturbed images, built on the device from one rank
tensor by broadcast comparisons (no loop over pixels or steps) and sent through the model
in batches of ``batch_size``, under ``torch.no_grad()`` and the caller's autocast and
memory format. The probabilities stay on the device; nothing is copied to the host here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .training import autocast

__all__ = ["Curve", "StepPlan", "auc", "curve_probabilities", "gaussian_blur", "perturbed_images", "plan_steps",
           "saliency_ranks", "to_device"]

Baseline = Literal["mean", "blur", "zero"]


@dataclasses.dataclass(frozen=True)
class Curve:
    """One curve to read per pair.

    Attributes:
        kind: ``deletion`` or ``insertion``.
        steps: ``n``: the curve has ``n + 1`` points.
        baseline: ``mean``, ``blur`` or ``zero``.
        sigma: the blur's standard deviation in pixels (``blur`` only).

    """

    kind: Literal["deletion", "insertion"]
    steps: int
    baseline: Baseline
    sigma: float = 5.0

    def counts(self, pixels: int) -> np.ndarray:
        """``c_i = floor(i M / n)``, ``i = 0 .. n``: pixels replaced (or revealed) at each step."""
        return (np.arange(self.steps + 1, dtype=np.int64) * int(pixels)) // self.steps

    def fractions(self, pixels: int) -> np.ndarray:
        """The curve's x axis, ``c_i / M``."""
        return self.counts(pixels) / float(pixels)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """``N x 1 x H x W`` images under a separable Gaussian blur, borders replicated.

    The kernel is ``scipy.ndimage.gaussian_filter``'s with ``truncate=3``: radius
    ``int(3 sigma + 0.5)``, weights ``exp(-x^2 / (2 sigma^2))`` normalised to sum 1.
    """
    radius = max(1, int(3.0 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    x = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def saliency_ranks(maps: Tensor) -> Tensor:
    """``P x S x S`` maps -> ``P x M`` rank of every pixel, 0 = most salient (stable: ties by flat index).

    NaN pixels rank last.
    """
    flat = maps.flatten(1).float().nan_to_num(nan=-math.inf)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=maps.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _baselines(images: Tensor, curves: Sequence[Curve], mean: float) -> tuple[Tensor, dict[tuple, int]]:
    """The distinct baseline images of ``images`` (``B x N x 1 x S x S``) and which curve uses which."""
    keys: dict[tuple, int] = {}
    stack = []
    for curve in curves:
        key = (curve.baseline, curve.sigma if curve.baseline == "blur" else None)
        if key in keys:
            continue
        keys[key] = len(stack)
        if curve.baseline == "blur":
            stack.append(gaussian_blur(images.float(), curve.sigma).to(images.dtype))
        elif curve.baseline == "mean":
            stack.append(torch.full_like(images, float(mean)))
        elif curve.baseline == "zero":
            stack.append(torch.zeros_like(images))
        else:
            raise ValueError(f"unknown baseline {curve.baseline!r}")
    return torch.stack(stack), keys


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Per step of a pair (``T`` of them, every curve's steps in turn): what to perturb and how."""

    counts: Tensor  # T, pixels taken from the top of the ranking
    reveal: Tensor  # T bool, insertion (the ranked pixels are the image's, the rest the baseline)
    baseline: Tensor  # T, which baseline image
    bases: Tensor  # B x N x 1 x S x S

    @property
    def steps(self) -> int:
        return int(self.counts.shape[0])


def to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """``array`` on ``device`` without a host synchronisation: pinned and non-blocking on CUDA.

    (A copy from pageable host memory makes the host wait for the device's queue first.)
    """
    host = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def plan_steps(images: Tensor, curves: Sequence[Curve], mean: float) -> StepPlan:
    """What every step of a pair does, for ``curves`` read one after the other, and the baselines of ``images``."""
    pixels = int(images[0].numel())
    bases, keys = _baselines(images, curves, mean)
    counts = np.concatenate([c.counts(pixels) for c in curves])
    reveal = np.concatenate([np.full(c.steps + 1, c.kind == "insertion") for c in curves])
    which = np.concatenate([np.full(c.steps + 1, keys[(c.baseline, c.sigma if c.baseline == "blur" else None)])
                            for c in curves]).astype(np.int64)
    device = images.device
    return StepPlan(to_device(counts, device), to_device(reveal, device), to_device(which, device), bases)


def perturbed_images(images: Tensor, ranks: Tensor, image_index: Tensor, plan: StepPlan, items: Tensor) -> Tensor:
    """The perturbed images of ``items`` (flat ``pair * T + step`` indices), ``len(items) x 1 x S x S``."""
    pair = torch.div(items, plan.steps, rounding_mode="floor")
    step = items - pair * plan.steps
    image = image_index[pair]
    chosen = ranks[pair] < plan.counts[step].unsqueeze(1)  # items x M: the top c pixels of the pair's ranking
    use_baseline = chosen != plan.reveal[step].unsqueeze(1)
    original = images[image].flatten(1)
    baseline = plan.bases[plan.baseline[step], image].flatten(1)
    return torch.where(use_baseline, baseline, original).view(-1, *images.shape[1:])


@torch.no_grad()
def curve_probabilities(model: nn.Module, images: Tensor, maps: Tensor, image_index: Tensor, classes: Tensor,
                        curves: Sequence[Curve], *, batch_size: int, dtype: torch.dtype | None = None,
                        channels_last: bool = False, mean: float = 0.0) -> list[Tensor]:
    """The probability curves of every pair, on the device.

    Args:
        model: the classifier (``images -> N x K`` logits), in the mode it should be read in.
        images: ``N x 1 x S x S`` normalised images on the model's device.
        maps: ``P x S x S`` maps of the pairs (any scale: only their ranking matters).
        image_index: ``(P,)`` long, each pair's row in ``images``.
        classes: ``(P,)`` long, each pair's class.
        curves: the curves to read (they share forward passes).
        batch_size: perturbed images per forward pass.
        dtype: autocast dtype (None: full precision).
        channels_last: feed the perturbed images channels-last.
        mean: the value of the ``mean`` baseline, in normalised units.

    Returns:
        One ``P x (steps + 1)`` float32 tensor of probabilities per curve, on the device.

    """
    if not curves:
        return []
    p = int(maps.shape[0])
    plan = plan_steps(images, curves, mean)
    ranks = saliency_ranks(maps)
    total = p * plan.steps
    out = torch.empty(total, dtype=torch.float32, device=images.device)
    for start in range(0, total, batch_size):
        items = torch.arange(start, min(start + batch_size, total), device=images.device)
        x = perturbed_images(images, ranks, image_index, plan, items)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(images.device, dtype):
            logits = model(x)
        pair = torch.div(items, plan.steps, rounding_mode="floor")
        out[items] = torch.sigmoid(logits.float()).gather(1, classes[pair].unsqueeze(1)).squeeze(1)
    table = out.view(p, plan.steps)
    return list(torch.split(table, [c.steps + 1 for c in curves], dim=1))


def auc(probabilities: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each row of ``P x (n + 1)`` probabilities over ``fractions`` (0 to 1)."""
    y = np.asarray(probabilities, dtype=np.float64)
    x = np.asarray(fractions, dtype=np.float64)
    return ((y[:, 1:] + y[:, :-1]) * np.diff(x)[None, :]).sum(axis=1) / 2.0
