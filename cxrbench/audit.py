"""``cxrbench audit --grid``: the overlap audit of every cross-dataset pair, before anything trains.

``run`` audits each (trained dataset, ``evaluate_on:`` target) pair when it scores a
transfer (:mod:`cxrbench.overlap`): the target's images that are training images of the
source, or of its training patients, leave the scoring. ``audit`` gives the same counts
up front, from the same :class:`~cxrbench.overlap.TransferAudit`, so a user sees how much of
an "external" test set is not external before spending a GPU day. It scores the target's
``test`` split and, where the target has boxes or masks there, its localization split,
in full (a smoke run's ``max_eval_images`` cap applies to ``run`` only).

Comparing by names (a published mapping) reads the tables only. Comparing by perceptual
hash needs every image: from the cache where ``prepare`` stored its hashes, otherwise
decoded at the grid's input size, as ``run`` would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UsageError
from .overlap import SplitOverlap, TransferAudit


@dataclasses.dataclass(frozen=True)
class PairAudit:
    """What the audit found for one (trained dataset, target) pair.

    Attributes:
        source: the trained dataset's label.
        target: the target's label.
        splits: one result per scored target split (empty when the pair is skipped).
        skipped: why the pair is never scored (no shared class), else None.

    """

    source: str
    target: str
    splits: tuple[SplitOverlap, ...] = ()
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "skipped": self.skipped,
                "splits": [s.to_json() for s in self.splits]}


@dataclasses.dataclass(frozen=True)
class _Listed:
    """A target split by its table only: all a comparison by names reads."""

    split: Any


def scored_splits(target: Any, localization_split: str) -> list[str]:
    """The target splits a transfer scores: ``test``, and the localization split where it has boxes or masks."""
    names = ["test"] if "test" in target.split_names else []
    if localization_split in target.split_names and localization_split not in names:
        split = target.split(localization_split)
        if not split.boxes.empty or split.masks:
            names.append(localization_split)
    return names


def audit_grid(grid: Any, cache_root: Path | None, *, workers: int | None = None,
               warn: Callable[[str], None] | None = None,
               on_split: Callable[[str], None] | None = None) -> list[PairAudit]:
    """Audit every (dataset, target) pair of ``grid``.

    Args:
        grid: the parsed grid.
        cache_root: the cache (hashes are read from it, or stored there).
        workers: decoding threads where a split must be decoded.
        warn: where dataset warnings go.
        on_split: called with ``source -> target split`` before each split is audited (progress).

    Returns:
        One :class:`PairAudit` per pair, in grid order.

    Raises:
        UsageError: a dataset or target cannot be opened (one line naming its YAML path).

    """
    from .crosseval import no_match_reason, no_test_reason
    from .data import load_split
    from .pipeline import input_size, open_dataset, shared_datasets

    say = warn or (lambda message: None)

    def opened(spec: Any) -> Any:
        try:
            return open_dataset(spec, cache_root, say)
        except UsageError as exc:  # one line naming the grid entry
            raise UsageError(f"{spec.path}: {exc}") from None

    out: list[PairAudit] = []
    with shared_datasets():
        targets = [(spec, opened(spec)) for spec in grid.evaluate_on]
        for source_spec in grid.datasets:
            source = opened(source_spec)
            size = input_size(grid.train, source)
            for target_spec, target in targets:
                pair = (source_spec.label(), target_spec.label())
                reason = no_test_reason(target, target_spec) or no_match_reason(list(source.classes),
                                                                                list(target.classes))
                if reason is not None:
                    out.append(PairAudit(*pair, skipped=reason))
                    continue
                audit = TransferAudit(source, pair[0], target, pair[1], size, cache_root, workers)
                for split_name in scored_splits(target, grid.localization.split):
                    if on_split is not None:
                        on_split(f"{pair[0]} -> {pair[1]} {split_name}")
                    data = _Listed(target.split(split_name)) if audit.by_mapping(split_name) else \
                        load_split(target, split_name, size, cache_root=cache_root, workers=workers)
                    audit.check(split_name, data)
                out.append(PairAudit(*pair, splits=tuple(audit.results)))
    return out
