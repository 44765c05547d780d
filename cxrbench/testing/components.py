"""Tiny components to test against: a backbone, two pooling heads, a classifier and a dataset.

They are small enough for a unit test on a CPU and exact enough to check against (CAM is
exact for :class:`LinearHead`, :class:`TinyDataset`'s boxes are where its findings are
drawn). :data:`testing_plugin` registers them through the public hooks, under names that
start with ``testing_``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import hookimpl
from ..interfaces import BOX_COLUMNS, Backbone, Classifier, Dataset, DatasetContext, PoolingHead, Split, empty_boxes

__all__ = [
    "LinearHead",
    "LogitMapHead",
    "TinyBackbone",
    "TinyDataset",
    "TinyDatasetOptions",
    "TinyOptions",
    "testing_plugin",
    "tiny_classifier",
]


@dataclasses.dataclass(frozen=True)
class TinyOptions:
    """Options of :class:`TinyBackbone`.

    Attributes:
        width: channels of the feature map.
        in_chans: channels of the first convolution (1 or 3; grey input is expanded).

    """

    width: int = 8
    in_chans: int = 1

    def validate(self) -> None:
        """Reject impossible values."""
        if self.width < 1:
            raise ValueError(f"width must be at least 1, got {self.width}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")


class TinyBackbone(Backbone):
    """Two conv-BN-ReLU blocks (stride 2) and a ``feature_map`` identity: a test backbone."""

    NAME = "testing_tiny"
    Options = TinyOptions

    def __init__(self, options: TinyOptions | None = None, name: str | None = None) -> None:
        options = options if options is not None else TinyOptions()
        super().__init__(options, name=name)
        self.in_chans = options.in_chans
        self.num_features = options.width
        self.body = nn.Sequential(
            nn.Conv2d(options.in_chans, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, options.width, 3, padding=1),
            nn.BatchNorm2d(options.width),
            nn.ReLU(inplace=True),
        )
        self.feature_map = nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        if self.in_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.feature_map(self.body(x))


class LinearHead(PoolingHead):
    """Average pooling and one linear classifier (CAM is exact for it): a test head."""

    NAME = "testing_linear"

    def __init__(self, num_features: int, num_classes: int, options: Any = None) -> None:
        super().__init__(num_features, num_classes, options)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, fmap: Tensor) -> tuple[Tensor, None]:
        return self.fc(fmap.mean(dim=(-2, -1))), None

    def class_weights(self) -> tuple[Tensor, Tensor]:
        return self.fc.weight, self.fc.bias


class LogitMapHead(PoolingHead):
    """Probabilistic-CAM-style pooling with a 1x1 classifier that yields a logit map: a test head."""

    NAME = "testing_logit_map"
    YIELDS_LOGIT_MAP = True

    def __init__(self, num_features: int, num_classes: int, options: Any = None) -> None:
        super().__init__(num_features, num_classes, options)
        self.classifier = nn.Conv2d(num_features, num_classes, 1)

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor]:
        logit_map = self.classifier(fmap)
        prob = torch.sigmoid(logit_map).flatten(2)
        weights = prob / prob.sum(dim=-1, keepdim=True)
        pooled = torch.einsum("nkp,ncp->nkc", weights, fmap.flatten(2))
        logits = (pooled * self.classifier.weight.flatten(1)).sum(-1) + self.classifier.bias
        return logits, logit_map

    def class_weights(self) -> tuple[Tensor, Tensor]:
        return self.classifier.weight.flatten(1), self.classifier.bias


def tiny_classifier(head: str = "linear", *, num_classes: int = 4, width: int = 8, seed: int = 0) -> Classifier:
    """A small trained-looking classifier: :class:`TinyBackbone` + a test head, in eval mode.

    BatchNorm running statistics are randomised, so a localizer that forgets eval mode, or
    one that updates the statistics, gives different maps.

    Args:
        head: ``linear`` (:class:`LinearHead`) or ``logit_map`` (:class:`LogitMapHead`).
        num_classes: number of classes.
        width: feature channels.
        seed: initialisation seed.

    """
    heads = {"linear": LinearHead, "logit_map": LogitMapHead}
    if head not in heads:
        raise ValueError(f"head must be one of {sorted(heads)}, got {head!r}")
    torch.manual_seed(seed)
    backbone = TinyBackbone(TinyOptions(width=width))
    model = Classifier(backbone, heads[head](width, num_classes), [f"class{i}" for i in range(num_classes)])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@dataclasses.dataclass(frozen=True)
class TinyDatasetOptions:
    """Options of :class:`TinyDataset`.

    Attributes:
        num_images: images over all splits.
        image_size: side of the square images.
        seed: seed of the labels and images.

    """

    num_images: int = 24
    image_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        """Reject impossible values."""
        if self.num_images < 4:
            raise ValueError(f"num_images must be at least 4, got {self.num_images}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")


class TinyDataset(Dataset):
    """A synthetic grey dataset with three findings drawn as bright squares, with boxes.

    Splits are whole patients (two images per patient), ``boxes`` is the ``test`` images
    that have a finding. Images are a pure function of the options and the index, so
    reads are thread-safe.
    """

    NAME = "testing_tiny"
    HAS_BOXES = True
    Options = TinyDatasetOptions
    CLASSES = ("Mass", "Nodule", "Effusion")

    def __init__(self, options: TinyDatasetOptions | None = None, context: DatasetContext | None = None) -> None:
        options = options if options is not None else TinyDatasetOptions()
        super().__init__(options, context or DatasetContext())
        self.classes = list(self.CLASSES)
        self.native_size = options.image_size
        rng = np.random.default_rng(options.seed)
        n, size = options.num_images, options.image_size
        self._labels = (rng.random((n, len(self.CLASSES))) < 0.35).astype(np.float32)
        side = max(size // 6, 2)
        self._corners = rng.integers(0, size - side, size=(n, len(self.CLASSES), 2))
        self._side = side
        patients = np.arange(n) // 2
        fold = patients % 6
        test = np.flatnonzero(fold == 5)
        self._rows = {
            "train": np.flatnonzero(fold < 4),
            "val": np.flatnonzero(fold == 4),
            "test": test,
            "boxes": test[self._labels[test].any(axis=1)],
        }
        self._patients = patients

    def split(self, name: str) -> Split:
        rows = self._rows[name]
        size = self.options.image_size
        boxes = empty_boxes()
        if name == "boxes":
            records = [(r, k, *map(float, self._corners[i, k]), float(self._side), float(self._side))
                       for r, i in enumerate(rows) for k in np.flatnonzero(self._labels[i])]
            if records:
                boxes = pd.DataFrame(records, columns=list(BOX_COLUMNS)).astype(empty_boxes().dtypes.to_dict())
        return Split(
            ids=[f"tiny{i:05d}" for i in rows],
            patient_ids=[f"p{p:05d}" for p in self._patients[rows]],
            labels=self._labels[rows],
            boxes=boxes,
            image_sizes=np.full((len(rows), 2), size, dtype=np.int64),
        )

    def read_image(self, split: str, index: int) -> np.ndarray:
        i = int(self._rows[split][index])
        size = self.options.image_size
        rng = np.random.default_rng((self.options.seed, i))
        image = rng.integers(20, 60, size=(size, size), dtype=np.uint8)
        for k in np.flatnonzero(self._labels[i]):
            x, y = self._corners[i, k]
            image[y : y + self._side, x : x + self._side] = 200 + 20 * k
        return image


class _TestingPlugin:
    """Registers the tiny components (``testing_tiny`` etc.) through the public hooks."""

    @hookimpl
    def cxrbench_register_backbones(self) -> list[type]:
        return [TinyBackbone]

    @hookimpl
    def cxrbench_register_pooling_heads(self) -> list[type]:
        return [LinearHead, LogitMapHead]

    @hookimpl
    def cxrbench_register_datasets(self) -> list[type]:
        return [TinyDataset]


testing_plugin = _TestingPlugin()
"""Plugin object registering :class:`TinyBackbone`, :class:`LinearHead`, :class:`LogitMapHead`
and :class:`TinyDataset`; pass ``("testing", testing_plugin)`` to ``build_plugin_manager``."""
