"""The component contracts every plugin implements.

A grid cell picks ONE dataset, backbone, pooling head and localizer set by name; the
classes below are what those names resolve to. Each is small and checkable, and none of
them branches on architecture families: timm's uniform model contract made that
unnecessary.

Every component class has:

* ``NAME``: the name a grid uses (lower case, no spaces).
* ``Options``: a frozen dataclass holding its options and their defaults. A component
  sees only its own block; unknown keys are errors.
* optionally ``matches(name)``: a classmethod for families of names (e.g. every timm
  model name) that a single class serves. Explicit ``NAME`` matches win.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import Tensor, nn

from .options import NoOptions

BOX_COLUMNS = ("index", "class_index", "x", "y", "w", "h")
"""Columns of a split's box table: row of the image in the split, class, x/y/w/h in pixels."""


def empty_boxes() -> pd.DataFrame:
    """An empty box table with the right columns and dtypes."""
    return pd.DataFrame(
        {
            "index": pd.Series(dtype="int64"),
            "class_index": pd.Series(dtype="int64"),
            "x": pd.Series(dtype="float64"),
            "y": pd.Series(dtype="float64"),
            "w": pd.Series(dtype="float64"),
            "h": pd.Series(dtype="float64"),
        }
    )


class Component:
    """Mixin for everything a plugin registers: a name, an options dataclass."""

    NAME: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    @classmethod
    def matches(cls, name: str) -> bool:
        """Whether this class also serves ``name`` (families such as all timm models).

        Args:
            name: a name from the grid that no component registered explicitly.

        Returns:
            True when this class can be built for ``name``.

        """
        return False

    @classmethod
    def describe(cls) -> str:
        """One line for ``cxrbench list``: the first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


# --------------------------------------------------------------------------- datasets


@dataclasses.dataclass
class Split:
    """One named split of a dataset: records and labels, no pixels.

    Attributes:
        ids: one id per image (file name or generated id), unique within the split.
        patient_ids: the patient of each image (for patient-level bootstrap and splits).
        labels: ``N x K`` float32, 1 = present, 0 = absent, NaN = unknown / ignored.
        boxes: table with columns ``BOX_COLUMNS``; ``index`` is the image's row in this
            split and x/y/w/h are in the image's own pixel space (as ``read_image``
            returns it). Empty for splits without boxes.
        image_sizes: optional ``N x 2`` int array of (height, width) of each image as
            ``read_image`` returns it, when known without decoding. Used to scale boxes.
        masks: pixel ground truth, ``{(row, class_index): MaskRef}`` (:mod:`cxrbench.masks`,
            kept encoded and decoded one at a time). A key means the pair was annotated: an
            empty mask is a known negative (CheXlocalize stores one for every absent
            finding), a missing key is unknown. Masks are in their own pixel space
            (``MaskRef.size``, normally the image's); mask metrics resize each map to it.
            When ``boxes`` is empty, the boxes of the masks' connected regions become the
            split's boxes (``boxes_from_masks`` is then True), so every box metric also
            runs on a masks-only dataset.
        covariates: optional per-image covariates for subgroup analysis (``cxrbench
            leaderboard --by``), a ``pandas.DataFrame`` with one row per image in the order
            of ``ids``. Standard column names: ``sex`` (``"F"`` / ``"M"``), ``age`` (years,
            float), ``view`` (``"PA"``, ``"AP"``, ``"LAT"``, ...); missing values are NaN
            (numeric) or None / ``""`` (text). Datasets may add their own columns (e.g.
            CheXpert's ``frontal_lateral``); names must be Python identifiers.
            :func:`cxrbench.covariates.covariate_frame` builds one.

    """

    ids: Sequence[str]
    patient_ids: Sequence[str]
    labels: np.ndarray
    boxes: pd.DataFrame = dataclasses.field(default_factory=empty_boxes)
    image_sizes: np.ndarray | None = None
    masks: Mapping[tuple[int, int], Any] = dataclasses.field(default_factory=dict)
    boxes_from_masks: bool = False
    covariates: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> Split:
        """The records of ``rows`` (in that order), boxes and masks re-indexed to the new rows."""
        rows = np.asarray(rows, dtype=np.int64)
        new_index = {int(r): i for i, r in enumerate(rows)}
        boxes = self.boxes[self.boxes["index"].isin(new_index)].copy()
        boxes["index"] = boxes["index"].map(new_index).astype("int64")
        masks = {(new_index[r], c): ref for (r, c), ref in self.masks.items() if r in new_index}
        return Split(ids=[self.ids[r] for r in rows], patient_ids=[self.patient_ids[r] for r in rows],
                     labels=self.labels[rows], boxes=boxes.reset_index(drop=True),
                     image_sizes=self.image_sizes[rows] if self.image_sizes is not None else None,
                     masks=masks, boxes_from_masks=self.boxes_from_masks,
                     covariates=self.covariates.iloc[rows].reset_index(drop=True)
                     if self.covariates is not None else None)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.patient_ids) != n or self.labels.shape[0] != n:
            raise ValueError(
                f"split has {n} ids, {len(self.patient_ids)} patient ids, {self.labels.shape[0]} label rows"
            )
        if self.covariates is not None:
            from .covariates import check_covariates

            check_covariates(self.covariates, n)
        if self.masks:
            k = self.labels.shape[1] if self.labels.ndim == 2 else 0
            bad = [key for key in self.masks if not (0 <= key[0] < n and 0 <= key[1] < k)]
            if bad:
                raise ValueError(f"split masks: key {bad[0]} is outside the split's {n} rows x {k} classes")
            if self.boxes.empty:
                from .masks import boxes_from_masks

                self.boxes = boxes_from_masks(self.masks, self.image_sizes)
                self.boxes_from_masks = True

    @property
    def mask_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, classes)`` of the annotated pairs, sorted by row then class."""
        if not self.masks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = np.array(sorted(self.masks), dtype=np.int64).reshape(-1, 2)
        return keys[:, 0], keys[:, 1]


@dataclasses.dataclass
class DatasetContext:
    """What the host hands a dataset when building it.

    Attributes:
        cache_dir: folder for prepared (decoded, resized) images, or None.
        warn: call with one line to warn the user (printed once, not raised).

    """

    cache_dir: Path | None = None
    warn: Callable[[str], None] = lambda message: None


class Dataset(Component, abc.ABC):
    """A labelled chest X-ray collection with named splits.

    Subclasses set ``classes`` (finding names, aligned by name across datasets) in
    ``__init__`` and implement ``split`` and ``read_image``. Splits are named
    ``train``, ``val``, ``test`` and, when ``HAS_BOXES``, ``boxes``.
    """

    HAS_BOXES: ClassVar[bool] = False
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    classes: list[str]
    native_size: int | None = None
    """Preferred square model input size, when the data has one (e.g. the phantom)."""
    class_aliases: dict[str, str] = {}
    """Other spellings of class names -> the dataset's name (e.g. CheXlocalize's "Airspace
    Opacity" -> "Lung Opacity"), accepted where users name classes (``cxrbench score``)."""

    def __init__(self, options: Any, context: DatasetContext) -> None:
        self.options = options
        self.context = context

    @property
    def split_names(self) -> tuple[str, ...]:
        """Every split this dataset serves."""
        return self.SPLITS + (("boxes",) if self.HAS_BOXES and "boxes" not in self.SPLITS else ())

    @abc.abstractmethod
    def split(self, name: str) -> Split:
        """Return the records of split ``name`` (cheap to call twice: cache inside)."""

    @abc.abstractmethod
    def read_image(self, split: str, index: int) -> np.ndarray:
        """Decode image ``index`` of ``split`` as a 2-D grey array (uint8 or uint16).

        Must be safe to call from several threads at once.
        """

    def tuning_population(self, split: str) -> Any:
        """The published boxed images a tuning part of ``split`` is drawn from, or None.

        Datasets whose validation images have no boxes score localization on a pinned,
        patient-disjoint part of the boxed split and tune on the rest
        (:mod:`cxrbench.tuning`). By default that part is drawn from the boxed images
        present; a dataset with a published box list (NIH's ``BBox_List_2017.csv``)
        returns a :class:`cxrbench.tuning.TuningPopulation` of the whole list, so every
        machine draws the same part whatever images it has.
        """
        return None

    def fingerprint(self) -> str:
        """A string that changes whenever the data changes (options, file listing).

        The default covers the options only; datasets reading files should add a digest
        of what they read (names and sizes), so that a cell id follows its data.
        """
        from .options import options_to_dict

        return f"{self.NAME}:{sorted(options_to_dict(self.options).items())}"

    def data_version(self) -> str:
        """A string that changes whenever the data's content changes (default: :meth:`fingerprint`).

        A finished cell records the version of the data it was computed on; when the version
        changes under the same cell id (a relabelled table, swapped images of the same size)
        the cell is *stale*: ``run --dry-run`` counts it and ``run --rerun-stale`` retrains it.
        Generated data is a pure function of its options, so the default suffices there;
        :class:`cxrbench.filedataset.FileDataset` digests its files' content
        (:mod:`cxrbench.dataversion`).
        """
        return self.fingerprint()


# --------------------------------------------------------------------------- models


class Backbone(Component, nn.Module):
    """A feature extractor: normalised grey images in, an unpooled feature map out.

    The host builds it as ``cls(options, name=grid_name)``: ``name`` is the name the grid
    used, which differs from ``NAME`` for classes that serve a family (``matches``).

    Attributes set by subclasses:
        num_features: channels C of the feature map.
        in_chans: channels the first layer expects (1 or 3). The host always feeds
            ``N x 1 x H x W``; a 3-channel backbone expands it as a view, never a copy.
        target_layer: dotted module path, relative to the backbone, of the layer a
            gradient localizer hooks by default (its output is the feature map).
    """

    num_features: int
    in_chans: int = 1
    target_layer: str = "feature_map"

    def __init__(self, options: Any, name: str | None = None) -> None:
        nn.Module.__init__(self)
        self.options = options
        self.name = name or self.NAME

    @abc.abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """``N x 1 x H x W`` normalised images -> ``N x C x h x w`` feature map."""

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


class PoolingHead(Component, nn.Module):
    """Feature map -> class logits (and, for some heads, per-class logit maps).

    Subclasses set ``YIELDS_LOGIT_MAP`` to True when ``forward`` returns a logit map.
    """

    YIELDS_LOGIT_MAP: ClassVar[bool] = False

    def __init__(self, num_features: int, num_classes: int, options: Any) -> None:
        nn.Module.__init__(self)
        self.options = options
        self.num_features = num_features
        self.num_classes = num_classes

    @abc.abstractmethod
    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor | None]:
        """``N x C x h x w`` -> (logits ``N x K``, logit map ``N x K x h x w`` or None)."""

    def class_weights(self) -> tuple[Tensor, Tensor] | None:
        """The linear classifier as (weight ``K x C``, bias ``K``), for CAM; None if not linear."""
        return None


class Localizer(Component, abc.ABC):
    """Turns a trained classifier into per-class heatmaps, for all classes in one call.

    Class attributes:
        THRESHOLD: default heatmap-to-box rule for this localizer's maps, as the
            options of ``cxrbench.boxes.ThresholdPolicy`` (the seed used factor 1.7666 /
            high 0.7666 for CAM-style maps and 1.95 / 0.6 for PCAM maps).
    """

    THRESHOLD: ClassVar[dict[str, Any]] = {"policy": "seed", "factor": 1.7666, "high": 0.7666}

    def __init__(self, options: Any) -> None:
        self.options = options

    def unsupported_reason(self, model: Classifier) -> str | None:
        """Why this localizer cannot explain ``model`` (e.g. no logit map), or None."""
        return None

    @abc.abstractmethod
    def __call__(self, model: Classifier, images: Tensor, classes: Sequence[int]) -> Tensor:
        """Heatmaps for every requested class at once.

        Args:
            model: the trained classifier; must be left exactly as found (mode, hooks,
                ``requires_grad`` flags, parameters).
            images: ``N x 1 x H x W`` normalised images on the model's device.
            classes: class indices to explain.

        Returns:
            ``N x len(classes) x H x W`` float maps in [0, 1], on the model's device.

        """


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

    @classmethod
    def build(cls, backbone: Any, head: Any, classes: Sequence[str]) -> Classifier:
        """Backbone + pooling head for ``classes``, from their component specs (``spec.build``)."""
        net = backbone.build()
        return cls(net, head.build(net.num_features, len(classes)), list(classes))

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


# --------------------------------------------------------------------------- executors


class Executor(Component, abc.ABC):
    """Runs cell tasks and hands each result back to the single writer of the store.

    The contract, for every executor:

    * ``run`` calls ``on_result`` exactly once per task, in THIS process, with a
      :class:`cxrbench.records.CellResult` (a worker that dies yields a failed result made
      with ``cxrbench.api.failed_result``; it never ends the run).
    * Each task runs as ``cxrbench.api.execute_cell(task, events)``, which never raises for
      a failing cell, wherever it runs (a worker process, a Ray task, a Slurm job).
    * ``events`` (a :class:`cxrbench.events.RunEvents`) receives ``cell_started`` when a
      task begins, and every ``progress`` and ``warning`` of the cells: an executor whose
      cells run elsewhere relays them to this process (``cxrbench.events.QueueEvents``
      and ``Event.deliver`` do it through any queue).
    * ``KeyboardInterrupt`` stops the run: cancel what is queued, end the workers, re-raise.
    """

    def __init__(self, options: Any) -> None:
        self.options = options

    @abc.abstractmethod
    def run(self, tasks: Sequence[Any], on_result: Callable[[Any], None], events: Any) -> None:
        """Run every task; call ``on_result`` in this process once per task, as results arrive.

        Args:
            tasks: picklable :class:`cxrbench.tasks.CellTask` objects.
            on_result: the store writer, called with each task's ``CellResult``.
            events: the run's :class:`cxrbench.events.RunEvents`.

        """


COMPONENT_KINDS: dict[str, type] = {
    "dataset": Dataset,
    "backbone": Backbone,
    "head": PoolingHead,
    "localizer": Localizer,
    "executor": Executor,
}
"""Registry kinds and the base class each component of that kind must subclass."""
