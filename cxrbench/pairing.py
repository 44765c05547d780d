"""Which (head, localizer) pairs of a grid cannot work, known before anything trains.

A localizer says what it cannot explain through ``unsupported_reason(model)``; the built-in
ones decide from the head alone (CAM needs linear class weights, the PCAM localizer a head
that yields a logit map). Each head of the grid is therefore built small, on the CPU, and
shown to each localizer inside a stand-in model that has only a ``head``. A localizer whose
check needs more than the head (it raises on the stand-in) is left to decide at run time.

Rule (README, "Grid YAML reference"): ``validate`` and ``run --dry-run`` print one warning
line per impossible pair, and ``run`` does not evaluate that localizer on cells with that
head (no failed row for a pair known to be impossible). A localizer that fails at run time
for any other reason is a failed localizer, with its reason, as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .registry import ComponentSpec

_PROBE_FEATURES, _PROBE_CLASSES = 8, 2


@dataclasses.dataclass(frozen=True)
class ImpossiblePair:
    """A head / localizer pair that a localizer declares it cannot explain."""

    head: str
    localizer: str
    reason: str

    def line(self) -> str:
        return f"localizer '{self.localizer}' cannot explain head '{self.head}': {self.reason}"


class _HeadOnly:
    """A stand-in classifier with only a head: what the localizers' checks look at."""

    def __init__(self, head: Any) -> None:
        self.head = head


def pair_key(head: ComponentSpec, localizer: ComponentSpec) -> tuple[str, str]:
    return head.label(), localizer.label()


def impossible_pairs(heads: Sequence[ComponentSpec], localizers: Sequence[ComponentSpec]) -> list[ImpossiblePair]:
    """Every (head, localizer) pair of the grid a localizer refuses, in grid order."""
    out = []
    for head in heads:
        try:
            model = _HeadOnly(head.build(_PROBE_FEATURES, _PROBE_CLASSES))
        except Exception:  # a head that cannot be built small: the cell will say why
            continue
        for localizer in localizers:
            try:
                reason = localizer.build().unsupported_reason(model)
            except Exception:  # the check needs a real model: decided at run time
                continue
            if reason:
                out.append(ImpossiblePair(head.label(), localizer.label(), str(reason)))
    return out


@dataclasses.dataclass(frozen=True)
class UnlocalizableDataset:
    """A dataset that has no split the grid's localizers could be scored on."""

    dataset: str
    split: str

    def line(self) -> str:
        return (f"dataset '{self.dataset}' has no '{self.split}' split (no boxes or masks): localizers are not "
                "evaluated on its cells")


def unlocalizable_datasets(datasets: Sequence[ComponentSpec], split: str) -> list[UnlocalizableDataset]:
    """The grid's datasets whose class declares no ``split`` (``localization.split``), in grid order.

    Decided from the class's declarations (``SPLITS`` and ``HAS_BOXES``), so nothing is
    built or read. Rule, as for head / localizer pairs: one warning line in ``validate``
    and ``run --dry-run``, and ``run`` evaluates no localizer on that dataset's cells.
    """
    from .interfaces import Dataset

    out = []
    for spec in datasets:
        if getattr(spec.cls, "split_names", None) is not Dataset.split_names:
            continue  # the class works its splits out from its options or files: decided at run time
        declared = tuple(getattr(spec.cls, "SPLITS", ())) + (("boxes",) if getattr(spec.cls, "HAS_BOXES", False)
                                                              else ())
        if declared and split not in declared:
            out.append(UnlocalizableDataset(spec.label(), split))
    return out
