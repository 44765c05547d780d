"""Score-CAM: channel weights from the model's confidence on channel-masked images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MapLocalizer
from .capture import forward_capture
from .options import ScoreOptions
from .postprocess import normalize_maps

if TYPE_CHECKING:
    from cxrbench.api import Classifier


class ScoreCAM(MapLocalizer):
    """Score-CAM (Wang et al., 2020): ReLU(sum_c (s_k(X * M_c) - s_k(X_b)) A_c).

    M_c is channel c upsampled to the image and min-max normalised, s_k = sigmoid of
    class k's logit (the multi-label confidence), X_b the all-zero (mean grey) image.
    Needs one forward per channel and image, in batches of ``batch_size``; every class
    comes from the same forwards. Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu.
    "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
    CVPR Workshops 2020.
    """

    NAME = "scorecam"
    Options: ClassVar[type] = ScoreOptions

    def raw_maps(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        _, activation = forward_capture(model, images, self.options.target_layer, track_grad=False)
        n, c = activation.shape[:2]
        size = tuple(images.shape[-2:])
        index = torch.as_tensor(classes, dtype=torch.long, device=images.device)
        with torch.no_grad():
            baseline = torch.sigmoid(model(torch.zeros_like(images[:1]))).index_select(1, index)  # 1 x K
            scores = torch.empty(n * c, len(classes), dtype=baseline.dtype, device=images.device)
            flat = activation.reshape(n * c, 1, *activation.shape[-2:])
            step = self.options.batch_size
            for start in range(0, n * c, step):
                stop = min(start + step, n * c)
                upsampled = F.interpolate(flat[start:stop], size=size, mode="bilinear", align_corners=False)
                masks = normalize_maps(upsampled, "minmax")
                owners = torch.arange(start, stop, device=images.device) // c
                logits = model(images.index_select(0, owners) * masks)
                scores[start:stop] = torch.sigmoid(logits).index_select(1, index)
            weights = (scores - baseline).reshape(n, c, len(classes)).permute(2, 0, 1)  # K x N x C
            return torch.einsum("knc,nchw->nkhw", weights.to(activation.dtype), activation).clamp_min_(0.0)
