"""Where a cell's files live: the one place that names them.

Every cell has a folder under the results directory (``cells/<cell_id>/``) holding its
resolved configuration, its checkpoints, its test predictions and its pictures. Files are
written to a temporary name and renamed into place, so a crash never leaves half a file
under a final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DB_NAME = "cxrbench.sqlite"
TRANSFERS_FOLDER = "transfers"
"""``cells/<cell>/transfers/<key>.npz``: the cell's scores of each ``evaluate_on:`` target's test split."""
"""The results database inside a results directory."""

CELLS_FOLDER = "cells"


@dataclasses.dataclass(frozen=True)
class CellArtifacts:
    """The files of one cell.

    Attributes:
        folder: ``<results>/cells/<cell_id>``.

    """

    folder: Path

    @classmethod
    def of(cls, results_root: str | Path, cell_id: str) -> CellArtifacts:
        return cls(Path(results_root) / CELLS_FOLDER / cell_id)

    @property
    def config(self) -> Path:
        """The resolved configuration (JSON) the cell's id is the digest of."""
        return self.folder / "config.json"

    @property
    def best(self) -> Path:
        """The selected model's weights (``torch.load(..., weights_only=True)``)."""
        return self.folder / "best.pt"

    @property
    def last(self) -> Path:
        """Resume state of an unfinished training run."""
        return self.folder / "last.pt"

    @property
    def predictions(self) -> Path:
        """Test-split scores: arrays ``ids``, ``patient_ids``, ``labels``, ``scores``, ``classes``."""
        return self.folder / "predictions.npz"

    @property
    def covariates(self) -> Path:
        """Per-image covariates of the scored splits, for subgroups (:mod:`cxrbench.covariates`)."""
        return self.folder / "covariates.npz"

    def transfer_scores(self, key: str) -> Path:
        """A cross-dataset evaluation's scores on its target's test split (``evaluate_on:``)."""
        return self.folder / TRANSFERS_FOLDER / f"{key}.npz"

    def transfer_covariates(self, key: str) -> Path:
        """The covariates of the images a cross-dataset evaluation scored (roles ``test`` and ``localization``)."""
        return self.folder / TRANSFERS_FOLDER / f"{key}.covariates.npz"

    def transfer_pair_scores(self, key: str, localizer_key: str) -> Path:
        """Per-pair localization scores of one localizer on a cross-dataset evaluation's target."""
        return self.folder / TRANSFERS_FOLDER / f"{key}.pairs" / f"{localizer_key}.npz"

    def overlays(self, localizer: str) -> Path:
        """Folder of the overlay PNGs of one localizer."""
        return self.folder / "overlays" / localizer

    @property
    def overlays_root(self) -> Path:
        return self.folder / "overlays"

    @property
    def heatmaps(self) -> Path:
        """Default folder of ``cxrbench heatmap`` pictures."""
        return self.folder / "heatmaps"

    def maps(self, localizer_key: str) -> Path:
        """Saved localizer maps of the scored split (``localization.save_maps``)."""
        return self.folder / "maps" / f"{localizer_key}.npz"

    def pair_scores(self, localizer_key: str) -> Path:
        """Per-pair localization scores (for paired comparisons of two localizers on this cell)."""
        return self.folder / "pairs" / f"{localizer_key}.npz"

    def ensure(self) -> CellArtifacts:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON (NaN as null) to ``path`` through a temporary file."""
    from .records import json_safe

    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(json_safe(payload), sort_keys=True, default=str))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_npz_atomic(path: Path, **arrays: Any) -> None:
    """``np.savez_compressed`` to ``path`` through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_torch_atomic(payload: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        # a full disk or an interrupt must not leave a half-written checkpoint behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A cell's saved test predictions (``predictions.npz``), checked.

    Attributes:
        ids: image id of each row (``N``).
        patient_ids: patient of each row (``N``).
        labels: ``N x K`` float, NaN = unknown.
        scores: ``N x K`` float.
        classes: class names (``K``).

    """

    ids: np.ndarray
    patient_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    classes: tuple[str, ...]


def load_predictions(path: Path, warn: Callable[[str], None] | None = None) -> Predictions | None:
    """Read a ``predictions.npz`` without unpickling anything; None when it cannot be used.

    An unreadable file (object arrays, which would need pickle; truncated; missing arrays;
    shapes that disagree) is "no predictions for that cell": ``warn`` gets one line naming
    the file, and the caller goes on without it.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("ids", "patient_ids", "labels", "scores", "classes")}
        labels = np.asarray(arrays["labels"], dtype=np.float64)
        scores = np.asarray(arrays["scores"], dtype=np.float64)
        n = labels.shape[0] if labels.ndim == 2 else -1
        if labels.ndim != 2 or scores.shape != labels.shape or arrays["ids"].shape != (n,) \
                or arrays["patient_ids"].shape != (n,) or arrays["classes"].shape != (labels.shape[1],):
            raise ValueError(f"arrays of disagreeing shapes (labels {labels.shape}, scores {scores.shape})")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        if warn is not None:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warn(f"{path}: unreadable predictions ({reason[:200]}); the cell is shown without them")
        return None
    return Predictions(ids=arrays["ids"], patient_ids=arrays["patient_ids"], labels=labels, scores=scores,
                       classes=tuple(str(c) for c in arrays["classes"]))
