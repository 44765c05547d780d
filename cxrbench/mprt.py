"""The model-parameter randomisation test and the random-logit test, on the device.

**MPRT** (Adebayo et al., NeurIPS 2018, "Sanity checks for saliency maps"): a
localizer's maps of the trained model are compared with its maps of the same network after
its weights are randomised (:mod:`cxrbench.randomisation`), by Spearman rank correlation and
SSIM (:mod:`cxrbench.locmetrics.similarity`), per (image, class). A map that explains the
model changes when the model does; a map that merely reflects the image (an edge detector)
does not. *Cascading* stage ``s`` randomises the top ``s`` blocks (the head first);
*independent* stage ``b`` randomises block ``b`` alone. Independent stage 0 (the head alone)
is the same network as cascading stage 1 (a block's draws depend only on the seed and the
block), so it is computed once. Every stage is one localizer call per batch of images, on
one :func:`copy.deepcopy` of the model: the trained model is only read.

**Random logit** (Sixt, Granz & Landgraf, ICML 2020, "When Explanations Lie"):
per image, the map of the class with the highest predicted probability against the map of
a seeded random other class; the maps of both come from the trained maps the MPRT compares
against (localizers explain every class in one call), so the test costs no localizer call.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from .locmetrics.similarity import spearman, ssim
from .randomisation import model_blocks, randomise_block, restore_block

__all__ = ["MprtResult", "RandomLogitResult", "Stage", "mprt", "random_logit", "similarities"]

Explain = Callable[[nn.Module, Tensor], Tensor]
"""``(model, images) -> N x K x S x S`` min-max normalised maps of every class."""

_CHUNK_ELEMENTS = 1 << 22
"""Map pixels compared at once (bounds the float64 temporaries of the similarity functions)."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One randomised network and how similar its maps are to the trained network's.

    Attributes:
        kind: ``cascade`` or ``independent``.
        randomised: the blocks whose weights were redrawn, top down.
        spearman: ``N x K`` rank correlation per (image, class).
        ssim: ``N x K`` SSIM per (image, class).

    """

    kind: Literal["cascade", "independent"]
    randomised: tuple[str, ...]
    spearman: np.ndarray
    ssim: np.ndarray


@dataclasses.dataclass(frozen=True)
class MprtResult:
    """The stages of one MPRT run.

    Attributes:
        blocks: the model's blocks, top down.
        cascade: cascading stages 1..B (empty when not run).
        independent: independent stages, one per block (empty when not run).
        localizer_calls: localizer calls made, the trained maps' included.
        seconds: device-synchronised time of the randomised stages (copy, redraws, maps,
            similarities).

    """

    blocks: tuple[str, ...]
    cascade: tuple[Stage, ...]
    independent: tuple[Stage, ...]
    localizer_calls: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class RandomLogitResult:
    """Per image: the predicted class, the random other class and their maps' similarity."""

    predicted: np.ndarray
    other: np.ndarray
    spearman: np.ndarray
    ssim: np.ndarray


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def similarities(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Spearman and SSIM of ``P x S x S`` map pairs, in chunks that bound memory (on the maps' device)."""
    pixels = max(int(a[0].numel()), 1) if len(a) else 1
    step = max(1, _CHUNK_ELEMENTS // pixels)
    rho, index = [], []
    for start in range(0, len(a), step):
        x, y = a[start : start + step], b[start : start + step]
        rho.append(spearman(x, y))
        index.append(ssim(x, y))
    empty = a.new_zeros(0, dtype=torch.float64)
    return (torch.cat(rho) if rho else empty), (torch.cat(index) if index else empty)


def _compare(trained: Sequence[Tensor], randomised: nn.Module, images: Sequence[Tensor],
             explain: Explain) -> tuple[Tensor, Tensor]:
    """``N x K`` Spearman and SSIM of the trained maps against ``randomised``'s, batch by batch."""
    rho, index = [], []
    for maps, x in zip(trained, images, strict=True):
        other = explain(randomised, x)
        r, s = similarities(maps.flatten(0, 1), other.flatten(0, 1))
        rho.append(r.view(maps.shape[:2]))
        index.append(s.view(maps.shape[:2]))
    return torch.cat(rho), torch.cat(index)


def mprt(model: nn.Module, explain: Explain, images: Sequence[Tensor], trained: Sequence[Tensor], *, seed: int = 0,
         cascade: bool = True, independent: bool = True) -> MprtResult:
    """Compare the trained maps with the maps of every randomised stage of ``model``.

    Args:
        model: the trained model; only read (its copy is randomised).
        explain: the localizer as ``(model, images) -> N x K x S x S`` normalised maps.
        images: the sample, in batches on the model's device.
        trained: ``explain(model, batch)`` of each batch (computed by the caller, who may
            reuse them for the random-logit test).
        seed: seed of the redrawn weights.
        cascade: run the cascading stages.
        independent: run the independent stages.

    Returns:
        The stages, with per (image, class) similarities on the host.

    """
    device = next(iter(model.parameters())).device
    _synchronize(device)
    started = time.perf_counter()
    randomised = copy.deepcopy(model)
    blocks = model_blocks(randomised)
    calls = 0
    raw: list[tuple[str, tuple[str, ...], Tensor, Tensor]] = []
    if cascade:
        for block in blocks:
            randomise_block(block, seed)
            rho, index = _compare(trained, randomised, images, explain)
            calls += len(images)
            raw.append(("cascade", tuple(b.name for b in blocks[: block.index + 1]), rho, index))
        for block in blocks:
            restore_block(block, model)
    if independent:
        for block in blocks:
            if cascade and block.index == 0:
                # the head alone is cascading stage 1: the same weights, so the same maps
                _, _, rho, index = raw[0]
            else:
                randomise_block(block, seed)
                rho, index = _compare(trained, randomised, images, explain)
                calls += len(images)
                restore_block(block, model)
            raw.append(("independent", (block.name,), rho, index))
    del randomised
    host = [(kind, names, rho.cpu().numpy(), index.cpu().numpy()) for kind, names, rho, index in raw]
    _synchronize(device)
    seconds = time.perf_counter() - started
    stages = [Stage(kind, names, rho, index) for kind, names, rho, index in host]
    return MprtResult(blocks=tuple(b.name for b in blocks), cascade=tuple(s for s in stages if s.kind == "cascade"),
                      independent=tuple(s for s in stages if s.kind == "independent"),
                      localizer_calls=calls + len(images), seconds=seconds)


def random_logit(trained: Sequence[Tensor], probabilities: Tensor, seed: int = 0) -> RandomLogitResult:
    """The predicted class's map against a seeded random other class's, per image.

    Args:
        trained: ``N_b x K x S x S`` normalised maps of every class, per batch.
        probabilities: ``N x K`` predicted probabilities of the same images (on the maps' device).
        seed: seed of the other classes (``numpy.random.default_rng``: one uniform draw among
            the ``K - 1`` other classes per image, in image order).

    Returns:
        Per image: predicted and other class, Spearman and SSIM of their maps.

    """
    maps = torch.cat(list(trained))
    n, k = maps.shape[:2]
    if k < 2:
        raise ValueError("the random-logit test needs at least two classes")
    draws = torch.as_tensor(np.random.default_rng(seed).integers(0, k - 1, size=n), device=maps.device)
    predicted = probabilities.argmax(dim=1)
    other = draws + (draws >= predicted).long()  # uniform over the classes other than the predicted one
    rows = torch.arange(n, device=maps.device)
    rho, index = similarities(maps[rows, predicted], maps[rows, other])
    return RandomLogitResult(predicted=predicted.cpu().numpy(), other=other.cpu().numpy(),
                             spearman=rho.cpu().numpy(), ssim=index.cpu().numpy())
