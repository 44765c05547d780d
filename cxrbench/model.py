"""The classifier every cell trains: a backbone followed by a pooling head."""

from __future__ import annotations

from torch import Tensor, nn

from .interfaces import Backbone, PoolingHead

IMAGENET_GREY_MEAN = 0.449
"""Mean of ImageNet's RGB means: the grey-image equivalent used to normalise inputs."""
IMAGENET_GREY_STD = 0.226
"""Mean of ImageNet's RGB standard deviations."""


class Classifier(nn.Module):
    """``backbone`` -> feature map -> ``head`` -> logits (and optional logit maps).

    Inputs are ``N x 1 x H x W`` grey images already normalised with
    :data:`IMAGENET_GREY_MEAN` / :data:`IMAGENET_GREY_STD` (the data pipeline does it
    on the device, batch-wise).

    Attributes:
        backbone: the feature extractor.
        head: the pooling head.
        classes: class names, in logit order.

    """

    def __init__(self, backbone: Backbone, head: PoolingHead, classes: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classes = list(classes)

    @property
    def default_target_layer(self) -> str:
        """Dotted path (from this model) of the layer gradient localizers hook by default."""
        return f"backbone.{self.backbone.target_layer}"

    def forward(self, x: Tensor) -> Tensor:
        """Images -> logits ``N x K``."""
        logits, _ = self.head(self.backbone.forward_features(x))
        return logits

    def forward_maps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Images -> (logits ``N x K``, feature map ``N x C x h x w``, logit map or None)."""
        fmap = self.backbone.forward_features(x)
        logits, logit_map = self.head(fmap)
        return logits, fmap, logit_map
