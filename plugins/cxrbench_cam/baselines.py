"""Baselines a localizer must beat: a random map (the floor every number is read against)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .base import MapLocalizer
from .options import MapOptions

if TYPE_CHECKING:
    from cxrbench.api import Classifier


@dataclasses.dataclass(frozen=True)
class RandomOptions(MapOptions):
    """Options of the random baseline.

    Attributes:
        seed: the noise seed; with the same images the maps are the same on every run.
        grid: side of the noise grid, upsampled like a CAM (7 = a ResNet at 224 px).

    """

    seed: int = 0
    grid: int = 7

    def validate(self) -> None:
        if self.grid < 1:
            raise ValueError(f"grid must be at least 1, got {self.grid}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


class RandomMap(MapLocalizer):
    """Random baseline: uniform noise on a coarse grid, upsampled as a CAM is; ignores the model.

    Any localizer worth reporting scores clearly above it; its pointing-game hit rate is
    about the fraction of the image the boxes cover. The noise of an image depends only on
    the seed and the image's pixels, so runs are reproducible and every localizer of a
    cell is compared with the same random maps.
    """

    NAME = "random"
    Options: ClassVar[type] = RandomOptions

    def raw_maps(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        n, k, g = images.shape[0], len(classes), self.options.grid
        out = torch.empty((n, k, g, g), dtype=torch.float32)
        # per image, a seed from the seed option and the image's pixel sum: independent of batching
        sums = images.detach().float().flatten(1).sum(dim=1).cpu().tolist()
        for i, total in enumerate(sums):
            generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + int(abs(total) * 1000) % 2**31)
            out[i] = torch.rand((k, g, g), generator=generator)
        return out.to(images.device)
