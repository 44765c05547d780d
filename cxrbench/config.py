"""Grid YAML -> a validated, typed :class:`GridSpec`.

Everything is resolved before anything trains: component names against the registry,
each component's ``options`` against its ``Options`` dataclass, training settings against
:class:`TrainSpec`. Every error is one :class:`~cxrbench.errors.ConfigError` line that
starts with the YAML path (``backbones[1]: unknown backbone 'densnet121'; ...``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, join_key
from .options import parse_options
from .registry import ComponentSpec, Registry, parse_threshold, with_short_labels

GRID_KEYS = {
    "name": "grid name; results are grouped by it",
    "description": "free text shown in reports",
    "seeds": "list of integer seeds; each is its own cell",
    "datasets": "list of dataset names or {name, options}",
    "backbones": "list of backbone names (any timm model) or {name, options}",
    "heads": "list of pooling head names or {name, options}",
    "localizers": "list of localizer names or {name, options, threshold}",
    "evaluate_on": "list of datasets (as in datasets:) each trained cell is also scored on, without retraining",
    "train": "training settings (epochs, batch_size, lr, ...)",
    "evaluation": "evaluation settings (bootstrap, ...)",
    "localization": "heatmap-to-box settings (threshold policy, tuning, ...)",
    "executor": "executor name or {name, options}",
    "exclude": "list of partial combinations to drop, e.g. {backbone: densenet121, head: max}",
    "prepare": "true (default): 'run' decodes every image once into the shared uint8 cache first",
}

AXES = ("dataset", "backbone", "head", "seed")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Training settings shared by every cell of a grid (the ``train:`` block).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: learning rate (the seed project used 1e-4 with Adam).
        optimizer: ``adam`` (seed), ``adamw`` or ``sgd`` (momentum 0.9, nesterov).
        weight_decay: L2 / decoupled weight decay.
        schedule: ``none``, ``cosine`` (to 0 over all epochs) or ``step``.
        step_size: epochs between decays for ``step``.
        step_gamma: decay factor for ``step``.
        loss: ``bce`` or ``weighted_bce`` (ChestX-ray8's W-CEL: positives weighted by
            (|P|+|N|)/|P|, negatives by (|P|+|N|)/|N|, counted over each batch's known labels).
        image_size: square model input size; None = the dataset's native size, else 224.
        flip: random horizontal flip (the seed project's augmentation; note it moves the
            heart to the other side).
        affine_degrees: max rotation of a small random affine (0 = off).
        affine_scale: max relative scale change of that affine (0 = off).
        affine_translate: max translation as a fraction of the size (0 = off).
        brightness: max relative brightness jitter (0 = off).
        contrast: max relative contrast jitter (0 = off).
        select_best: keep the epoch with the best validation mean AUROC (else the last).
        early_stopping: stop after this many epochs without improvement (None = never).
        amp: mixed precision; None = on when training on CUDA.
        channels_last: channels-last memory format; None = on when on CUDA.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        eval_batch_size: batch size for prediction and localization (None = 2 x batch_size).
        num_workers: decoding threads when images come from files (no prepared cache);
            None = the CPU count, at most 8. Speed only: not part of a cell's id.
        max_steps_per_epoch: cap on steps per epoch (None = the whole split); for smoke tests.
        max_eval_images: smoke runs: score at most this many images of every split but
            ``train`` (validation each epoch, test, localization), the first ones of each
            split (None = all). Pair it with ``max_steps_per_epoch``.
        threads: torch CPU threads of the cell, whatever the executor (None = the
            executor's: every core in-process, CPU count / workers in ``process``). CPU
            results are bit-identical only under the same threads, device, dtype and
            versions (recorded in each result's environment), so set it to compare
            executors number for number.

    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["none", "cosine", "step"] = "none"
    step_size: int = 10
    step_gamma: float = 0.1
    loss: Literal["bce", "weighted_bce"] = "bce"
    image_size: int | None = None
    flip: bool = False
    affine_degrees: float = 0.0
    affine_scale: float = 0.0
    affine_translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    select_best: bool = True
    early_stopping: int | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int | None = None
    num_workers: int | None = None
    max_steps_per_epoch: int | None = None
    max_eval_images: int | None = None
    threads: int | None = None

    def validate(self) -> None:
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ValueError(f"max_eval_images must be at least 1 (or null), got {self.max_eval_images}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (or null), got {self.threads}")
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("lr must be positive")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.step_size < 1:
            raise ValueError(f"step_size must be at least 1 epoch, got {self.step_size}")
        if not self.step_gamma > 0:
            raise ValueError(f"step_gamma must be positive, got {self.step_gamma}")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError("image_size must be at least 16")
        # Negative magnitudes would be mirrored silently; the upper bounds keep the affine scale
        # and the contrast factor (1 -/+ the value) positive and translations on the image.
        for name in ("affine_degrees", "brightness"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.affine_scale < 1:
            raise ValueError(f"affine_scale must be in [0, 1), got {self.affine_scale}")
        for name in ("affine_translate", "contrast"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ValueError("early_stopping must be a positive number of epochs or null")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be at least 1 (or null), got {self.eval_batch_size}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be at least 1 (or null), got {self.max_steps_per_epoch}")


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
    """Classification evaluation settings (the ``evaluation:`` block).

    Attributes:
        bootstrap: bootstrap replicates for AUROC confidence intervals (0 = none);
            patients are resampled, not images.
        ci: confidence level of the intervals.
        bootstrap_seed: seed of the resampling (same resamples for every cell, so cells
            can be compared pairwise).
        cutoff: the per-class classification cut-off rule, chosen on validation and
            applied to test: ``youden`` (maximise Youden's J = TPR - FPR) or ``seed`` (the
            seed project's point where TPR is closest to 1 - FPR).

    """

    bootstrap: int = 1000
    ci: float = 0.95
    bootstrap_seed: int = 0
    cutoff: Literal["youden", "seed"] = "youden"

    def validate(self) -> None:
        if self.bootstrap < 0:
            raise ValueError("bootstrap must be >= 0")
        if self.bootstrap_seed < 0:
            raise ValueError(f"bootstrap_seed must be >= 0, got {self.bootstrap_seed}")
        if not 0 < self.ci < 1:
            raise ValueError("ci must be between 0 and 1")


CHEXLOCALIZE_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""cheXlocalize's heatmap thresholds (``tune_heatmap_threshold.py``: ``np.arange(0.2, .8, .1)``)."""
CHEXLOCALIZE_CUTOFFS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""cheXlocalize's probability cut-offs (``tune_probability_threshold.py``: ``np.arange(0, .9, .1)``)."""


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """How maps are scored against pixel masks (``localization.masks``), where the split has them.

    The definitions follow cheXlocalize (Saporta et al. 2022); see docs/metrics.md, "Masks".

    Attributes:
        threshold: how a map (resized to the mask's size, min-max normalised) becomes a
            mask: ``{policy: otsu}`` (cheXlocalize's default), ``{policy: fraction,
            fraction: 0.5}`` (foreground where the map is above the fraction) or ``{policy:
            seed, ...}``, as ``localization.threshold``.
        tune: choose each class's fraction on the tuning part's masks (the ``val`` masks
            when the dataset has them), from ``tune_grid``, maximising mIoU over true
            positives (cheXlocalize's ``tune_heatmap_threshold.py``); replaces ``threshold``.
        tune_grid: candidate fractions for ``tune``.
        gate: probability gating (cheXlocalize's ``tune_probability_threshold.py``): a map
            is kept only when the model's probability of the class is above a per-class
            cut-off chosen on the tuning part (from ``gate_grid``, maximising mIoU over all
            annotated pairs); below it the predicted mask is empty.
        gate_grid: candidate cut-offs for ``gate``.
        true_pos_only: mIoU over the pairs where both the predicted and the true mask are
            non-empty (cheXlocalize's default); False also counts a non-empty map on an
            image without the finding (IoU 0) and an empty map on one with it.

    """

    threshold: dict | None = None
    tune: bool = False
    tune_grid: tuple[float, ...] = CHEXLOCALIZE_FRACTIONS
    gate: bool = False
    gate_grid: tuple[float, ...] = CHEXLOCALIZE_CUTOFFS
    true_pos_only: bool = True

    def validate(self) -> None:
        for name, grid, low, high in (("tune_grid", self.tune_grid, 0.0, 1.0), ("gate_grid", self.gate_grid, 0.0, 1.0)):
            if not grid:
                raise ValueError(f"{name} must list at least one value")
            if any(not (low <= float(v) < high) for v in grid):
                raise ValueError(f"{name} values must be in [{low:g}, {high:g}), got {list(grid)}")

    @property
    def policy(self) -> dict:
        """The binarisation as a validated threshold mapping (``{policy: otsu}`` by default)."""
        return dict(self.threshold) if self.threshold else {"policy": "otsu"}


@dataclasses.dataclass(frozen=True)
class MprtSpec:
    """The model-parameter randomisation test (``localization.sanity.mprt``; Adebayo et al. 2018).

    Attributes:
        images: explain the first this many scored images (those with boxes or masks).
        bound: the localizer passes (``mprt_pass`` 1) when its maps' Spearman correlation with
            the fully randomised model's maps is below this.
        seed: seed of the randomised weights (per block, so a block gets the same weights in
            the cascade and on its own).
        cascade: randomise the blocks cumulatively from the head downwards.
        independent: randomise each block on its own, the rest trained.

    """

    images: int = 32
    bound: float = 0.5
    seed: int = 0
    cascade: bool = True
    independent: bool = True

    def validate(self) -> None:
        if self.images < 1:
            raise ValueError(f"images must be at least 1, got {self.images}")
        if not -1.0 <= self.bound <= 1.0:
            raise ValueError(f"bound must be a rank correlation in [-1, 1], got {self.bound}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not (self.cascade or self.independent):
            raise ValueError("cascade and independent are both false: nothing would be randomised")


@dataclasses.dataclass(frozen=True)
class RandomLogitSpec:
    """The random-logit test (``localization.sanity.random_logit``; Sixt et al. 2020).

    Attributes:
        images: explain the first this many scored images (the MPRT's sample when both run).
        seed: seed of the random other class of each image.

    """

    images: int = 32
    seed: int = 0

    def validate(self) -> None:
        if self.images < 1:
            raise ValueError(f"images must be at least 1, got {self.images}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclasses.dataclass(frozen=True)
class DeletionSpec:
    """A deletion curve (``localization.sanity.deletion``; Petsiuk et al. 2018, RISE).

    Attributes:
        steps: the most salient ``i / steps`` of the pixels are replaced, ``i = 0 .. steps``.
        baseline: what replaces them: ``mean`` (a constant image at the scored images' mean
            pixel), ``blur`` (a Gaussian blur of the image) or ``zero`` (0 after normalisation,
            ImageNet's grey mean; RISE's ``torch.zeros_like`` on normalised inputs).
        sigma: the blur's standard deviation in pixels at the model's input size (RISE: 5).
        max_pairs: score at most this many (image, class) pairs, the first in row order
            (None = every scored pair).

    """

    steps: int = 20
    baseline: Literal["mean", "blur", "zero"] = "mean"
    sigma: float = 5.0
    max_pairs: int | None = None

    def validate(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a positive number of pixels, got {self.sigma}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1 (or null for all), got {self.max_pairs}")


@dataclasses.dataclass(frozen=True)
class InsertionSpec(DeletionSpec):
    """An insertion curve (``localization.sanity.insertion``; Petsiuk et al. 2018, RISE).

    The most salient pixels are revealed on the baseline, a blurred copy of the image by
    default (RISE's insertion substrate); the options are :class:`DeletionSpec`'s.
    """

    baseline: Literal["mean", "blur", "zero"] = "blur"


@dataclasses.dataclass(frozen=True)
class SanitySpec:
    """Faithfulness and sanity checks of every localizer (``localization.sanity``), all off by default.

    Each key is ``true`` (its defaults), ``false`` / absent (off) or a mapping of its options;
    docs/metrics.md, "Sanity and faithfulness", defines every number.

    Attributes:
        mprt: the model-parameter randomisation test (:class:`MprtSpec`).
        random_logit: the random-logit test (:class:`RandomLogitSpec`).
        deletion: the deletion curve (:class:`DeletionSpec`).
        insertion: the insertion curve (:class:`InsertionSpec`).

    """

    mprt: MprtSpec | None = None
    random_logit: RandomLogitSpec | None = None
    deletion: DeletionSpec | None = None
    insertion: InsertionSpec | None = None

    @property
    def active(self) -> bool:
        """Whether any check runs."""
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))


SANITY_CHECKS: dict[str, type] = {"mprt": MprtSpec, "random_logit": RandomLogitSpec, "deletion": DeletionSpec,
                                  "insertion": InsertionSpec}
"""The keys of ``localization.sanity`` and the options of each."""


@dataclasses.dataclass(frozen=True)
class LocalizationSpec:
    """Localization evaluation settings (the ``localization:`` block).

    Attributes:
        split: the dataset split whose boxes are scored.
        threshold: heatmap-to-box policy for every localizer (a localizer entry's own
            ``threshold`` wins; None = each localizer's default, e.g. the seed's rule).
        tune: tune the threshold on held-out boxes, never on the scored ones: the ``val``
            boxes when the dataset has them, else the pinned tuning part of the boxed split
            (``tune_fraction``, see :mod:`cxrbench.tuning`); the chosen values are stored
            with results. Where there are no boxes to tune on it is an error, never a no-op.
        tune_fraction: where ``val`` has no boxes, the fraction of the boxed split's
            patients held out (patient-disjoint, stratified by class, pinned) for tuning;
            the rest is scored, whether or not anything is tuned. 0 = score every boxed image
            (and no tuning).
        tune_seed: seed of that held-out part.
        hit_tolerance: pointing-game tolerance (Zhang et al. 2016): a hit when the map's
            peak is within this Euclidean distance of a true box, in ORIGINAL image pixels
            (the reference's 15 by default).
        box_thresholds: score-map thresholds of the MaxBoxAcc / MaxBoxAccV2 sweeps
            (Choe et al. 2020: 100 by default, 1,000 for their fine curves).
        save_maps: write each localizer's scored maps to ``cells/<cell>/maps/<key>.npz``.
        max_images: score at most this many boxed images (None = all).
        save_overlays: PNG overlays saved per localizer for this many boxed images.
        masks: mask scoring settings (:class:`MaskSpec`), used where the scored split has
            pixel masks (e.g. ``chexlocalize``); ignored otherwise.
        sanity: faithfulness and sanity checks of every localizer (:class:`SanitySpec`):
            MPRT, random logit, deletion and insertion curves; all off by default.

    """

    split: str = "boxes"
    threshold: dict | None = None
    tune: bool = False
    tune_fraction: float = 0.2
    tune_seed: int = 0
    hit_tolerance: float = 15.0
    box_thresholds: int = 100
    max_images: int | None = None
    save_overlays: int = 0
    save_maps: bool = False
    masks: Any = None
    sanity: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.masks, MaskSpec):
            object.__setattr__(self, "masks", parse_mask_spec(self.masks, "localization.masks"))
        if not isinstance(self.sanity, SanitySpec):
            object.__setattr__(self, "sanity", parse_sanity_spec(self.sanity, "localization.sanity"))

    def validate(self) -> None:
        if not self.split:
            raise ValueError("split must name a dataset split, e.g. boxes")
        if not 0 <= self.tune_fraction < 1:
            raise ValueError(f"tune_fraction must be in [0, 1), got {self.tune_fraction}")
        if self.tune_seed < 0:
            raise ValueError(f"tune_seed must be >= 0, got {self.tune_seed}")
        if self.tune and self.tune_fraction == 0:
            raise ValueError("tune: true needs boxes held out for tuning: keep tune_fraction > 0 "
                             "(or use a dataset whose val split has boxes)")
        if not self.hit_tolerance >= 0 or self.hit_tolerance == float("inf"):  # NaN fails both
            raise ValueError(f"hit_tolerance must be a finite number >= 0 pixels, got {self.hit_tolerance}")
        if not 2 <= self.box_thresholds <= 10_000:
            raise ValueError(f"box_thresholds must be between 2 and 10000, got {self.box_thresholds}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be at least 1 (or null for all), got {self.max_images}")
        if self.save_overlays < 0:
            raise ValueError(f"save_overlays must be >= 0, got {self.save_overlays}")


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A validated grid: everything a run needs, nothing left to look up."""

    name: str
    seeds: tuple[int, ...]
    datasets: tuple[ComponentSpec, ...]
    backbones: tuple[ComponentSpec, ...]
    heads: tuple[ComponentSpec, ...]
    localizers: tuple[ComponentSpec, ...]
    train: TrainSpec
    evaluation: EvaluationSpec
    localization: LocalizationSpec
    executor: ComponentSpec
    exclude: tuple[dict[str, Any], ...] = ()
    description: str = ""
    source: str | None = None
    prepare: bool = True
    evaluate_on: tuple[ComponentSpec, ...] = ()
    """Cross-dataset targets: each trained cell is also scored on their test splits (never part of a cell id)."""


MAX_GRID_NODES = 100_000
"""The most values a grid document may expand to (aliases counted as often as they are used)."""


class GridLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                        key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def expanded_size(document: Any, limit: int = MAX_GRID_NODES) -> int:
    """How many values ``document`` holds with every alias expanded (stops counting past ``limit``).

    Aliases share objects, so the loaded document is small even when its expansion is not
    (a 0.9 KB "billion laughs" grid expands to 9^8 values); counting per object id keeps this
    cheap and iterative (no recursion limit).
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(document, False)]
    while stack:
        value, expanded = stack.pop()
        children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        if id(value) in sizes:
            continue
        if not children:
            sizes[id(value)] = 1
        elif expanded:
            sizes[id(value)] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
        else:
            stack.append((value, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(document)]


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely; errors are one line naming the file.

    Refused with one line: duplicate keys, documents that expand past
    :data:`MAX_GRID_NODES` values (YAML alias bombs), nesting too deep to parse, and
    text that is not UTF-8.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "no such grid file", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"not UTF-8 text (byte {exc.start})", source=str(path)) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read grid file: {exc.strerror}", source=str(path)) from None
    try:
        document = yaml.load(text, Loader=GridLoader)  # noqa: S506 - GridLoader is a SafeLoader
    except RecursionError:
        raise ConfigError("", "nesting too deep to be a grid", source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("", f"invalid YAML: {where}{problem}", source=str(path)) from None
    if expanded_size(document) > MAX_GRID_NODES:
        raise ConfigError("", f"the grid expands to more than {MAX_GRID_NODES:,} values (YAML aliases?)",
                          source=str(path))
    return document


def _axis(registry: Registry, raw: dict, key: str, kind: str, *, required: bool = True, **kw: Any) -> tuple:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(key, f"missing; list at least one {kind}")
        return ()
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of {kind}s, got {value!r}")
    if required and not value:
        raise ConfigError(key, f"empty; list at least one {kind}")
    specs = tuple(registry.create(kind, entry, f"{key}[{i}]", **kw) for i, entry in enumerate(value))
    seen: dict[tuple, int] = {}
    for i, spec in enumerate(specs):
        ident = (spec.name, repr(spec.key()))
        if ident in seen:
            raise ConfigError(f"{key}[{i}]", f"duplicate of {key}[{seen[ident]}]")
        seen[ident] = i
    labelled = with_short_labels(specs)
    first: dict[str, int] = {}
    for i, spec in enumerate(labelled):
        if spec.display in first:
            raise ConfigError(f"{key}[{i}].label", f"label {spec.display!r} is also {key}[{first[spec.display]}]'s; "
                              "give each entry its own label")
        first[spec.display] = i
    return labelled


def parse_grid(raw: Any, registry: Registry, *, source: str | None = None) -> GridSpec:
    """Validate a grid mapping (as read from YAML) into a :class:`GridSpec`.

    Args:
        raw: the YAML document.
        registry: the component registry to resolve names against.
        source: the file name, for messages.

    Raises:
        ConfigError: the first problem found, with its YAML path.

    """
    try:
        return _parse_grid(raw, registry, source)
    except ConfigError as exc:
        if source and exc.source is None:
            raise ConfigError(exc.path, exc.message, source=source) from None
        raise


def _parse_grid(raw: Any, registry: Registry, source: str | None) -> GridSpec:
    if raw is None:
        raise ConfigError("", "the grid file is empty")
    if not isinstance(raw, dict):
        raise ConfigError("", f"a grid must be a mapping of keys ({', '.join(GRID_KEYS)}), got {type(raw).__name__}")
    for key in raw:
        if key not in GRID_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), list(GRID_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(join_key("", key), f"unknown key{hint} (valid keys: {', '.join(GRID_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError("name", f"expected a grid name of letters, digits, '_', '-', '.', got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", "expected text")

    seeds_raw = raw.get("seeds", [0])
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        seeds_raw = [seeds_raw]
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise ConfigError("seeds", f"expected a non-empty list of integers, got {seeds_raw!r}")
    for i, seed in enumerate(seeds_raw):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ConfigError(f"seeds[{i}]", f"expected an integer from 0 to 2**32 - 1, got {seed!r}")
    if len(set(seeds_raw)) != len(seeds_raw):
        raise ConfigError("seeds", "duplicate seeds")

    datasets = _axis(registry, raw, "datasets", "dataset")
    backbones = _axis(registry, raw, "backbones", "backbone")
    heads = _axis(registry, raw, "heads", "head")
    localizers = _axis(registry, raw, "localizers", "localizer", required=False, allow_threshold=True)
    evaluate_on = _axis(registry, raw, "evaluate_on", "dataset", required=False)

    train = parse_options(TrainSpec, raw.get("train"), "train", "train")
    evaluation = parse_options(EvaluationSpec, raw.get("evaluation"), "evaluation", "evaluation")
    localization = parse_options(LocalizationSpec, raw.get("localization"), "localization", "localization")
    if localization.threshold is not None:
        localization = dataclasses.replace(
            localization, threshold=parse_threshold(localization.threshold, "localization.threshold")
        )
    localization = dataclasses.replace(localization, masks=parse_mask_spec(localization.masks, "localization.masks"),
                                       sanity=parse_sanity_spec(localization.sanity, "localization.sanity"))

    executor_raw = raw.get("executor", "local")
    executor = registry.create("executor", executor_raw, "executor")

    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list):
        raise ConfigError("exclude", f"expected a list of mappings, got {exclude!r}")
    axis_names = {
        "dataset": {s.name for s in datasets},
        "backbone": {s.name for s in backbones},
        "head": {s.name for s in heads},
        "seed": set(seeds_raw),
    }
    for i, rule in enumerate(exclude):
        if not isinstance(rule, dict) or not rule:
            raise ConfigError(f"exclude[{i}]", "expected a mapping such as {backbone: densenet121, head: max}")
        for axis, value in rule.items():
            if axis not in AXES:
                raise ConfigError(join_key(f"exclude[{i}]", axis), f"unknown axis; valid: {', '.join(AXES)}")
            if isinstance(value, (list, dict)) or value not in axis_names[axis]:
                raise ConfigError(
                    f"exclude[{i}].{axis}",
                    f"{value!r} is not in the grid's {axis}s "
                    f"({', '.join(map(str, sorted(axis_names[axis], key=str)))})",
                )
    prepare = raw.get("prepare", True)
    if not isinstance(prepare, bool):
        raise ConfigError("prepare", f"expected true or false, got {prepare!r}")
    return GridSpec(
        name=name,
        description=description,
        prepare=prepare,
        seeds=tuple(seeds_raw),
        datasets=datasets,
        backbones=backbones,
        heads=heads,
        localizers=localizers,
        train=train,
        evaluation=evaluation,
        localization=localization,
        executor=executor,
        exclude=tuple(exclude),
        source=source,
        evaluate_on=evaluate_on,
    )


def parse_mask_spec(raw: Any, path: str) -> MaskSpec:
    """A validated ``localization.masks`` block (all defaults when absent)."""
    if isinstance(raw, MaskSpec):
        return raw
    spec = parse_options(MaskSpec, raw, path, "localization.masks")
    if spec.threshold is not None:
        spec = dataclasses.replace(spec, threshold=parse_threshold(spec.threshold, join_key(path, "threshold")))
    return spec


def parse_sanity_spec(raw: Any, path: str) -> SanitySpec:
    """A validated ``localization.sanity`` block (every check off when absent).

    Each key takes ``true`` (the check with its defaults), ``false`` or null (off), or a
    mapping of the check's options; anything else, and unknown keys, are one-line errors
    naming the YAML path.
    """
    if isinstance(raw, SanitySpec):
        return raw
    if raw is None:
        return SanitySpec()
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping such as {{mprt: true, deletion: {{steps: 20}}}}, got {raw!r}")
    checks: dict[str, Any] = {}
    for key, value in raw.items():
        where = join_key(path, key)
        if key not in SANITY_CHECKS:
            import difflib

            close = difflib.get_close_matches(str(key), list(SANITY_CHECKS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(where, f"unknown check{hint} (valid: {', '.join(SANITY_CHECKS)})")
        if value is True:
            checks[key] = SANITY_CHECKS[key]()
        elif value is False or value is None:
            checks[key] = None
        elif isinstance(value, dict):
            checks[key] = parse_options(SANITY_CHECKS[key], value, where, where)
        else:
            raise ConfigError(where, f"expected true, false or a mapping of options, got {value!r}")
    return SanitySpec(**checks)


def load_grid(path: str | Path, registry: Registry) -> GridSpec:
    """Read and validate a grid file."""
    return parse_grid(load_yaml(path), registry, source=str(path))
