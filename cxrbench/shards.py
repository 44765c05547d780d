"""Split a grid's cells into N shards, so that any scheduler can run a grid piecewise.

``cxrbench run --grid G --shard I/N`` runs only the cells of shard I; each shard writes
its own results directory and ``cxrbench merge`` puts them together. A cell's shard is
decided by a digest of its id alone, so the partition never depends on the grid's order,
on which cells are finished, or on the machine: every cell is in exactly one shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from typing import Any

from .errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def shard_of(cell_id: str, count: int) -> int:
    """The shard (1 to ``count``) that ``cell_id`` belongs to."""
    digest = hashlib.sha256(cell_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based).

    Attributes:
        index: which shard, from 1 to ``count``.
        count: how many shards the grid is split into.

    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: I must be between 1 and N")

    @classmethod
    def parse(cls, text: str, option: str = "--shard") -> Shard:
        """``"I/N"`` -> a shard.

        Raises:
            UsageError: one line, for anything but two whole numbers with 1 <= I <= N.

        """
        match = _SHARD.match(text)
        if match is None:
            raise UsageError(f"{option}: expected I/N (shard I of N, e.g. 2/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 1 <= index <= count:
            raise UsageError(f"{option}: shard {index}/{count} does not exist (I/N needs 1 <= I <= N, e.g. 2/4)")
        return cls(index, count)

    def contains(self, cell_id: str) -> bool:
        """Whether ``cell_id`` is in this shard."""
        return shard_of(cell_id, self.count) == self.index

    def select(self, cells: Iterable[Any]) -> list[Any]:
        """The cells (anything with a ``cell_id``) of this shard, in their given order."""
        return [cell for cell in cells if self.contains(cell.cell_id)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
