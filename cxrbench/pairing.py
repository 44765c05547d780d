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
