"""The template every localizer here follows: raw maps, then normalise and upsample."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cxrbench.api import Localizer

from .capture import eval_mode
from .postprocess import finish_maps

if TYPE_CHECKING:
    from cxrbench.api import Classifier


def check_classes(classes: Sequence[int], num_classes: int | None) -> list[int]:
    """The class indices as a list, each checked against the model's class count."""
    out = [int(c) for c in classes]
    if not out:
        raise ValueError("no classes requested")
    if num_classes is not None:
        bad = [c for c in out if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"class indices {bad} out of range for a model with {num_classes} classes")
    return out


class MapLocalizer(Localizer):
    """A localizer defined by its raw maps on the feature grid.

    Subclasses implement :meth:`raw_maps`; ``__call__`` runs it in eval mode (restoring
    every module's mode afterwards), normalises each map and upsamples all of them to
    the image size in one interpolation.
    """

    @abc.abstractmethod
    def raw_maps(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        """``N x K x h x w`` maps before normalisation (after the method's ReLU, if any).

        Called with the model already in eval mode; exposed for tests and analysis.
        """

    def __call__(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        classes = check_classes(classes, getattr(getattr(model, "head", None), "num_classes", None))
        reason = self.unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"localizer {self.NAME!r} cannot explain this model: {reason}")
        # inference_mode(False): a caller inside inference_mode must not stop the
        # gradient methods; the forward itself still runs without autograd.
        with torch.inference_mode(False), eval_mode(model):
            raw = self.raw_maps(model, images, classes)
        return finish_maps(raw, tuple(images.shape[-2:]), self.options.normalize, self.options.upsample)
