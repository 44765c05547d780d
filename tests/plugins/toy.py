"""A tiny, fast test plugin: a 2-class toy dataset and a 3-layer backbone.

Used by the core's tests so they run in seconds and do not depend on the built-in
plugins' internals. It registers through the same hooks a third-party package uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from torch import nn

import cxrbench
from cxrbench.interfaces import Backbone, Dataset, Split


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    num_images: int = 96
    image_size: int = 32
    seed: int = 0
    fail_on_read: bool = False
    unreadable: tuple[int, ...] = ()  # rows (dataset-wide) whose image cannot be read
    masks: bool = False  # val / boxes give pixel masks (every image x class) instead of boxes


class ToyDataset(Dataset):
    """Bright squares ('Blob') and dark bars ('Bar') on noise, with exact boxes."""

    NAME = "toy"
    Options = ToyOptions
    HAS_BOXES = True

    def __init__(self, options, context):
        super().__init__(options, context)
        self.classes = ["Blob", "Bar"]
        self.native_size = options.image_size
        rng = np.random.default_rng(options.seed)
        n = options.num_images
        self._labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
        s = options.image_size
        self._pos = rng.integers(2, s - 12, size=(n, 2, 2))
        order = np.arange(n)
        self._splits = {"train": order[: n // 2], "val": order[n // 2 : 3 * n // 4], "test": order[3 * n // 4 :]}
        self._splits["boxes"] = self._splits["test"]

    def split(self, name):
        rows = self._splits[name]
        boxes = []
        if name in ("boxes", "val"):
            for i, r in enumerate(rows):
                for k in range(2):
                    if self._labels[r, k]:
                        x, y = self._pos[r, k]
                        w, h = (8, 8) if k == 0 else (10, 4)
                        boxes.append((i, k, float(x), float(y), float(w), float(h)))
        table = pd.DataFrame(boxes, columns=["index", "class_index", "x", "y", "w", "h"])
        if table.empty:
            from cxrbench.interfaces import empty_boxes

            table = empty_boxes()
        masks = self._masks(rows) if self.options.masks and name in ("boxes", "val") else {}
        if masks:
            from cxrbench.interfaces import empty_boxes

            table = empty_boxes()  # the host derives the boxes from the masks
        return Split(ids=[f"toy{r:04d}" for r in rows], patient_ids=[f"p{r // 2}" for r in rows],
                     labels=self._labels[rows], boxes=table,
                     image_sizes=np.full((len(rows), 2), self.options.image_size), masks=masks,
                     covariates=self.covariates(rows))

    @staticmethod
    def covariates(rows):
        """Deterministic synthetic covariates: sex by patient (``p{r // 2}``), age and view by image."""
        from cxrbench.covariates import covariate_frame

        rows = np.asarray(rows)
        return covariate_frame(len(rows), sex=np.where((rows // 2) % 2 == 0, "F", "M").tolist(),
                               age=(20 + (rows * 37) % 70).astype(float),
                               view=np.where(rows % 3 == 0, "AP", "PA").tolist())

    def _masks(self, rows):
        from cxrbench.masks import MaskRef, encode_coco_rle

        s = self.options.image_size
        out = {}
        for i, r in enumerate(rows):
            for k in range(2):
                mask = np.zeros((s, s), dtype=bool)
                if self._labels[r, k]:
                    x, y = self._pos[r, k]
                    w, h = (8, 8) if k == 0 else (10, 4)
                    mask[y : y + h, x : x + w] = True
                out[(i, k)] = MaskRef.from_coco_rle(f"toy{r:04d}", self.classes[k], encode_coco_rle(mask))
        return out

    def read_image(self, split, index):
        if self.options.fail_on_read:
            raise OSError("simulated unreadable image")
        r = self._splits[split][index]
        if int(r) in self.options.unreadable:
            raise OSError(f"toy{int(r):04d}.png: simulated unreadable image")
        s = self.options.image_size
        rng = np.random.default_rng([self.options.seed, int(r)])
        img = (rng.random((s, s)) * 60 + 60).astype(np.uint8)
        if self._labels[r, 0]:
            x, y = self._pos[r, 0]
            img[y : y + 8, x : x + 8] = 230
        if self._labels[r, 1]:
            x, y = self._pos[r, 1]
            img[y : y + 4, x : x + 10] = 5
        return img


@dataclasses.dataclass(frozen=True)
class TinyOptions:
    width: int = 8


class TinyBackbone(Backbone):
    """Three small convolutions; feature map at 1/4 resolution."""

    NAME = "tiny"
    Options = TinyOptions

    def __init__(self, options, name=None):
        super().__init__(options, name=name)
        w = options.width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )
        self.feature_map = nn.Identity()
        self.num_features = 2 * w

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(self.body(x))


class ExplodingBackbone(TinyBackbone):
    """Raises in forward: a cell that fails."""

    NAME = "exploding"

    def forward_features(self, x):
        raise RuntimeError("boom in forward")


@cxrbench.hookimpl
def cxrbench_register_datasets():
    return ToyDataset


@cxrbench.hookimpl
def cxrbench_register_backbones():
    return [TinyBackbone, ExplodingBackbone]
