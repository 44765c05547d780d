"""Combining VinDr-CXR's three independent readings: image labels by vote, boxes by fusion.

Each training image was read by 3 radiologists (Nguyen et al., Sci. Data 2022); the test
images of the PhysioNet release carry the consensus of 5, published as one reading. The
rules below apply to images with several readings and leave a single (consensus) reading
as published.

**Labels** (``labels`` option), from the number of readers who marked each finding:

* ``any``: present when at least one reader marked it;
* ``majority``: present when a strict majority of the image's readers marked it (2 of 3).

**Boxes** (``readers`` option):

* ``all``: every reader's box, as drawn (three boxes for a finding all three drew);
* ``consensus``: the boxes of one finding on one image are fused across readers by
  weighted boxes fusion (WBF; Solovyev, Wang and Gabruseva, "Weighted boxes fusion:
  Ensembling boxes from different object detection models", Image Vis. Comput. 2021;
  reference code ``ZFTurbo/Weighted-Boxes-Fusion``) with every box's confidence 1, i.e.
  each reader is one "model". Boxes are taken in a fixed order (reader id, then x0, y0,
  x1, y1, so the result does not depend on the table's row order); each joins the cluster
  whose fused box it overlaps most, when that IoU is above ``fusion_iou`` (0.5; WBF's
  strict ``>``), else starts a cluster; a cluster's fused box is the mean of its members'
  coordinates (WBF's confidence-weighted mean with equal weights), updated as members
  join. A fused box is kept when a strict majority of the image's readers (2 of 3) drew a
  member of it: WBF's averaged confidence, ``members / readers``, then exceeds 1/2. This
  is how many VinBigData challenge entries turned the three readings into one set of
  training boxes.

In both modes a box is kept only where the image label of its finding is present (so
``labels: majority`` with ``readers: all`` drops the boxes of findings only one reader
saw), so every boxed finding is a positive label.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["FusedBoxes", "LabelRule", "ReaderRule", "combine_boxes", "fuse_boxes", "vote_labels"]

LabelRule = Literal["any", "majority"]
ReaderRule = Literal["all", "consensus"]


def vote_labels(votes: np.ndarray, readers: np.ndarray, rule: LabelRule) -> np.ndarray:
    """``N x K`` float32 0/1 image labels from the readers' votes.

    Args:
        votes: ``N x K`` readers who marked each finding.
        readers: ``N`` readers of each image.
        rule: ``any`` (at least one) or ``majority`` (more than half of the image's readers).

    """
    votes = np.asarray(votes)
    if rule == "any":
        present = votes >= 1
    elif rule == "majority":
        present = 2 * votes > np.asarray(readers)[:, None]
    else:
        raise ValueError(f"labels must be 'any' or 'majority', got {rule!r}")
    return present.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FusedBoxes:
    """The clusters of one finding's boxes on one image.

    Attributes:
        boxes: ``C x 4`` fused x0, y0, x1, y1 (the mean of each cluster's members).
        support: ``C`` distinct readers with a member in each cluster.
        members: ``C`` tuples of the input rows in each cluster.

    """

    boxes: np.ndarray
    support: np.ndarray
    members: tuple[tuple[int, ...], ...]


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    ix = np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0])
    iy = np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def fuse_boxes(boxes: np.ndarray, readers: np.ndarray, iou_threshold: float = 0.5) -> FusedBoxes:
    """Weighted boxes fusion, every confidence 1, of one finding's boxes on one image.

    Args:
        boxes: ``M x 4`` x0, y0, x1, y1, in the order they are taken (see the module docstring).
        readers: ``M`` reader id of each box.
        iou_threshold: a box joins a cluster when its IoU with the cluster's fused box is
            above this.

    Returns:
        The clusters in the order they were started.

    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    members: list[list[int]] = []
    fused = np.zeros((0, 4), dtype=np.float64)
    for i, box in enumerate(boxes):
        if len(fused):
            overlap = _iou(fused, box)
            best = int(np.argmax(overlap))
            if overlap[best] > iou_threshold:
                members[best].append(i)
                fused[best] = boxes[members[best]].mean(axis=0)
                continue
        members.append([i])
        fused = np.vstack([fused, box[None, :]])
    readers = np.asarray(readers, dtype=object)
    support = np.array([len(set(readers[m].tolist())) for m in members], dtype=np.int64)
    return FusedBoxes(fused, support, tuple(tuple(m) for m in members))


def combine_boxes(
    boxes: pd.DataFrame, readers: np.ndarray, labels: np.ndarray, rule: ReaderRule, iou_threshold: float = 0.5
) -> pd.DataFrame:
    """The boxes of a split under a reader rule (see the module docstring).

    Args:
        boxes: ``image``, ``class_index``, ``reader``, ``x0``, ``y0``, ``x1``, ``y1`` (every reader's).
        readers: readers of each image.
        labels: ``N x K`` image labels (a box of an absent finding is dropped).
        rule: ``all`` or ``consensus``.
        iou_threshold: WBF's IoU threshold for ``consensus``.

    Returns:
        The same columns (``reader`` is ``"consensus"`` on fused boxes), sorted by image,
        class, then x0, y0.

    """
    columns = ["image", "class_index", "reader", "x0", "y0", "x1", "y1"]
    if rule not in ("all", "consensus"):
        raise ValueError(f"readers must be 'all' or 'consensus', got {rule!r}")
    positive = labels[boxes["image"].to_numpy(), boxes["class_index"].to_numpy()] == 1.0
    kept = boxes[positive]
    readers = np.asarray(readers)
    if rule == "consensus":
        single = readers[kept["image"].to_numpy()] <= 1  # a published consensus: kept as drawn
        several = kept[~single].sort_values(["image", "class_index", "reader", "x0", "y0", "x1", "y1"], kind="stable")
        fused_rows = []
        coords = several[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float64)
        who = several["reader"].to_numpy(dtype=object)
        keys = several[["image", "class_index"]].to_numpy(dtype=np.int64)
        # one group per (image, finding): the sorted rows where the key changes
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]) if len(keys) else np.zeros(0, int)
        stops = np.r_[starts[1:], len(keys)].astype(int) if len(keys) else starts
        for start, stop in zip(starts, stops, strict=True):
            image, class_index = (int(v) for v in keys[start])
            result = fuse_boxes(coords[start:stop], who[start:stop], iou_threshold)
            for box, support in zip(result.boxes, result.support, strict=True):
                if 2 * support > readers[image]:
                    fused_rows.append((image, class_index, "consensus", *box.tolist()))
        kept = pd.concat([kept[single][columns], pd.DataFrame(fused_rows, columns=columns)], ignore_index=True)
    out = kept[columns].sort_values(["image", "class_index", "x0", "y0"], kind="stable").reset_index(drop=True)
    return out.astype({"image": "int64", "class_index": "int64", "x0": "float64", "y0": "float64",
                       "x1": "float64", "y1": "float64"})
