"""What an executor hands a worker: one cell to run, with every setting it needs.

Tasks are frozen and picklable, so they cross process and Ray boundaries as they are.
Paths in a task are absolute (made so by the driver), so a task means the same thing on
every node.
"""

from __future__ import annotations

import dataclasses

from .config import EvaluationSpec, LocalizationSpec, TrainSpec
from .grid import Cell
from .registry import ComponentSpec


@dataclasses.dataclass(frozen=True)
class LocalizerTask:
    """One localizer to evaluate on a cell.

    Attributes:
        key: the localizer choice's stable key (``cxrbench.grid.localizer_key``).
        spec: the resolved localizer choice.

    """

    key: str
    spec: ComponentSpec


@dataclasses.dataclass(frozen=True)
class TransferTask:
    """One other dataset to score a trained cell on (``evaluate_on:``), without retraining.

    Attributes:
        key: the evaluation's stable key (``cxrbench.crosseval.transfer_key``).
        target: the resolved target dataset choice.
        source: the cell's dataset label, for the ``source -> target`` name.
        localizers: the localizers scored on the target's boxes or masks (the cell's, all of
            them: a new target is explained by every localizer the cell has).

    """

    key: str
    target: ComponentSpec
    source: str
    localizers: tuple[LocalizerTask, ...] = ()

    @property
    def label(self) -> str:
        """``source -> target`` (``nih -> vindr``)."""
        return f"{self.source} -> {self.target.label()}"


@dataclasses.dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to run one cell.

    Attributes:
        cell: the cell.
        localizers: localizers to evaluate (only the missing ones on a resumed cell).
        train: training settings.
        evaluation: classification evaluation settings.
        localization: localization settings.
        cell_dir: the cell's artifact folder (absolute).
        cache_root: prepared-image cache root, or None.
        retrain: False when the cell is finished and only localizers are missing (the
            saved checkpoint is loaded instead of training).
        executor: the name of the executor running the task (recorded in the environment).
        force: retrain even when a finished training of this exact cell is on disk
            (``--force``); otherwise a cell whose training finished but whose evaluation
            was interrupted resumes from its ``best.pt`` and only re-evaluates.
        transfers: other datasets to score the trained model on (``evaluate_on:``; only the
            missing ones on a finished cell), after its own evaluation.

    """

    cell: Cell
    localizers: tuple[LocalizerTask, ...]
    train: TrainSpec
    evaluation: EvaluationSpec
    localization: LocalizationSpec
    cell_dir: str
    cache_root: str | None = None
    retrain: bool = True
    executor: str = "local"
    force: bool = False
    transfers: tuple[TransferTask, ...] = ()

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id
