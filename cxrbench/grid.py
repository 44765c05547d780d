"""Grid spec -> cells: the cartesian product, minus exclusions, with stable ids.

A cell is one dataset x backbone x head x seed. Its id is a digest of everything that
determines its trained model and metrics (components with options, training and
evaluation settings, seed, and the dataset's data fingerprint), so the same
configuration always has the same id and a finished cell is found again on resume.
Localizers are not part of the cell id: adding a localizer to a grid evaluates the
existing trained cells again without retraining them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable
from typing import Any

from .config import GridSpec
from .options import options_to_dict
from .registry import ComponentSpec

ID_LENGTH = 12


def stable_digest(payload: Any, length: int = ID_LENGTH) -> str:
    """Hex digest of a JSON-serialisable payload (keys sorted, so order never matters)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trainable unit of a grid."""

    grid: str
    dataset: ComponentSpec
    backbone: ComponentSpec
    head: ComponentSpec
    seed: int
    data_fingerprint: str
    cell_id: str
    config: dict[str, Any]

    @property
    def axes(self) -> dict[str, Any]:
        """Display values of the cell's axes."""
        return {
            "dataset": self.dataset.label(),
            "backbone": self.backbone.label(),
            "head": self.head.label(),
            "seed": self.seed,
        }


LOCALIZATION_PROTOCOL = 2
"""Version of the localization scoring definitions. Bumped when a definition changes (2: peaks
without border bias, constant maps without a peak, strict T(IoU) / T(IoBB), a pinned held-out
tuning part): stored localizer rows of an older protocol are evaluated again (never retrained)."""

SCORING_KEYS = ("split", "tune", "tune_fraction", "tune_seed", "hit_tolerance", "box_thresholds", "max_images")
"""The ``localization:`` settings that change a localizer's numbers (and so its key)."""


def _default_masks() -> dict[str, Any]:
    from .config import MaskSpec

    return options_to_dict(MaskSpec())


def _default_sanity() -> dict[str, Any]:
    from .config import SanitySpec

    return options_to_dict(SanitySpec())


def _plain(value: Any) -> Any:
    """JSON-like form for comparing settings (tuples and lists alike)."""
    return json.loads(json.dumps(value, default=str))


def localizer_key(spec: ComponentSpec, default_threshold: dict | None,
                  localization: dict[str, Any] | None = None) -> str:
    """Stable key of a localizer choice: name + options + effective threshold + scoring settings."""
    scoring = {k: (localization or {}).get(k) for k in SCORING_KEYS} if localization is not None else None
    masks = (localization or {}).get("masks")
    if scoring is not None and masks is not None and _plain(masks) != _plain(_default_masks()):
        scoring["masks"] = masks  # only when set: the keys of stores from before masks stay valid
    sanity = (localization or {}).get("sanity")
    if scoring is not None and sanity is not None and _plain(sanity) != _plain(_default_sanity()):
        scoring["sanity"] = sanity  # likewise: switching no check on keeps every existing key
    payload: dict[str, Any] = {"localizer": spec.key(), "threshold": spec.threshold or default_threshold}
    if scoring is not None:
        payload.update(scoring=scoring, protocol=LOCALIZATION_PROTOCOL)
    return stable_digest(payload, 10)


SPEED_ONLY_TRAIN_KEYS = frozenset({"num_workers"})

ID_NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "evaluation": {"cutoff": "youden"},
    "train": {"threads": None, "max_eval_images": None},
}
"""Settings added after results stores existed: at these values they are left out of a
cell's id, so the cells of an older store are still found (their numbers were computed
with exactly these values)."""


def _id_block(block: str, values: dict[str, Any]) -> dict[str, Any]:
    neutral = ID_NEUTRAL_DEFAULTS.get(block, {})
    return {k: v for k, v in values.items() if not (k in neutral and neutral[k] == v)}


def cell_config(grid: GridSpec, dataset: ComponentSpec, backbone: ComponentSpec, head: ComponentSpec, seed: int,
                data_fingerprint: str) -> dict[str, Any]:
    """The resolved configuration that defines a cell (and so its id)."""
    neutral = getattr(dataset.cls, "NEUTRAL_OPTIONS", frozenset())
    # options that change how files are reached, never which data is read (e.g. follow_symlinks)
    chosen = dataset.key()  # without options at their ID_NEUTRAL_DEFAULTS, as for every component
    dataset_key = {**chosen, "options": {k: v for k, v in chosen["options"].items() if k not in neutral}}
    return {
        "dataset": dataset_key,
        "data_fingerprint": data_fingerprint,
        "backbone": backbone.key(),
        "head": head.key(),
        "seed": seed,
        # decoding threads change speed, never results: a new value must not retrain finished cells
        "train": _id_block("train", {k: v for k, v in options_to_dict(grid.train).items()
                                     if k not in SPEED_ONLY_TRAIN_KEYS}),
        "evaluation": _id_block("evaluation", options_to_dict(grid.evaluation)),
    }


def _excluded(grid: GridSpec, values: dict[str, Any]) -> bool:
    return any(all(values[axis] == want for axis, want in rule.items()) for rule in grid.exclude)


def expand(grid: GridSpec, fingerprint: Callable[[ComponentSpec], str]) -> list[Cell]:
    """Expand ``grid`` into cells, in a stable order (dataset, backbone, head, seed).

    Args:
        grid: the validated grid.
        fingerprint: returns the data fingerprint of a dataset choice (called once each).

    Returns:
        The cells, excluded combinations removed.

    """
    fingerprints = {i: fingerprint(ds) for i, ds in enumerate(grid.datasets)}
    cells = []
    for (di, dataset), backbone, head, seed in itertools.product(
        enumerate(grid.datasets), grid.backbones, grid.heads, grid.seeds
    ):
        names = {"dataset": dataset.name, "backbone": backbone.name, "head": head.name, "seed": seed}
        if _excluded(grid, names):
            continue
        config = cell_config(grid, dataset, backbone, head, seed, fingerprints[di])
        cells.append(
            Cell(
                grid=grid.name,
                dataset=dataset,
                backbone=backbone,
                head=head,
                seed=seed,
                data_fingerprint=fingerprints[di],
                cell_id=stable_digest(config),
                config=config,
            )
        )
    return cells
