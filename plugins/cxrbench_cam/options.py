"""Option blocks shared by the localizers of this plugin."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class MapOptions:
    """Post-processing options every localizer here takes.

    Attributes:
        upsample: how maps are resized from the feature grid to the image size.
        normalize: ``minmax`` maps each map to [0, 1] by its own min and max; ``max``
            divides by the map's maximum (negative values, from methods without a
            ReLU, are clipped to 0). A constant map becomes all zeros.

    """

    upsample: Literal["bilinear", "nearest"] = "bilinear"
    normalize: Literal["minmax", "max"] = "minmax"


@dataclasses.dataclass(frozen=True)
class LayerOptions(MapOptions):
    """Options of localizers that read a layer's activations.

    Attributes:
        target_layer: dotted module path inside the classifier (e.g.
            ``backbone.features.denseblock4``); None uses the model's
            ``default_target_layer``, the backbone's feature map.

    """

    target_layer: str | None = None


@dataclasses.dataclass(frozen=True)
class PcamOptions:
    """Options of the PCAM localizer.

    Attributes:
        upsample: how maps are resized to the image size.
        normalize: ``minmax`` / ``max`` as for the other localizers (the seed
            normalised every map before thresholding), or ``none`` to keep the head's
            probabilities sigmoid(logit map) as they are.

    """

    upsample: Literal["bilinear", "nearest"] = "bilinear"
    normalize: Literal["minmax", "max", "none"] = "minmax"


@dataclasses.dataclass(frozen=True)
class ScoreOptions(LayerOptions):
    """Options of Score-CAM.

    Attributes:
        batch_size: masked images per forward pass (one per feature channel).

    """

    batch_size: int = 64

    def validate(self) -> None:
        """Reject a non-positive batch size."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
