"""Merge results directories into one (``cxrbench merge``): shards run anywhere, one store in the end.

Every cell record of each source store (with its localizer rows) comes into the
destination together with its artifact folder (checkpoints, predictions, maps), and every
grid with its spec and its members, in grid order. The rules, so merging is safe to
repeat and never loses a good result:

* a cell the destination lacks is added;
* the destination's ``ok`` record stays, unless the source's is ``ok`` and newer (it
  finished later);
* a failed record never replaces an ``ok`` one; a failed destination record is replaced by
  the source's ``ok`` one, or by a newer failed one;
* a grid known to both with different specs is refused, before anything is written.

Each cell is atomic: its folder is copied beside the destination's under a temporary name,
and renamed into place inside the store transaction that writes its record, so a crash
leaves either the old cell or the new one, never half of each.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .errors import UsageError
from .records import CellResult
from .store import ResultsStore

Action = Literal["added", "replaced", "kept"]

IGNORED_SPEC_KEYS = frozenset({"source"})
"""Grid-spec keys that say where a grid was read from, not what it is (shards run from other checkouts)."""


@dataclasses.dataclass(frozen=True)
class CellMerge:
    """What happened to one source cell.

    Attributes:
        cell_id: the cell.
        source: the source results directory.
        action: ``added`` (new to the destination), ``replaced`` (the source's record won) or
            ``kept`` (the destination's record stays).
        status: the source record's status.
        reason: why, in a few words.
        label: the cell's ``dataset / backbone / head / seed`` line.

    """

    cell_id: str
    source: str
    action: Action
    status: str
    reason: str
    label: str


@dataclasses.dataclass
class MergeReport:
    """What a merge did, source by source.

    Attributes:
        cells: one entry per source cell, in merge order.
        grids: per source, the grids new to the destination.

    """

    cells: list[CellMerge] = dataclasses.field(default_factory=list)
    grids: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def counts(self, source: str | None = None) -> dict[str, int]:
        """``{action: number of cells}`` (of one source, or of all)."""
        out = {"added": 0, "replaced": 0, "kept": 0}
        for cell in self.cells:
            if source is None or cell.source == source:
                out[cell.action] += 1
        return out


def decide(current: CellResult | None, incoming: CellResult) -> tuple[Action, str]:
    """Whether the source's record of a cell replaces the destination's, and why."""
    if current is None:
        return "added", "new"
    newer = (incoming.finished_at or 0.0) > (current.finished_at or 0.0)
    if current.ok:
        if not incoming.ok:
            return "kept", "a failed record never replaces an ok one"
        return ("replaced", "newer ok record") if newer else ("kept", "already ok, not older")
    if incoming.ok:
        return "replaced", "ok replaces failed"
    return ("replaced", "newer failed record") if newer else ("kept", "already failed, not older")


def _comparable(spec: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (spec or {}).items() if k not in IGNORED_SPEC_KEYS}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``"train.epochs: 2 vs 3"``: the first key (in sorted order) where two specs differ."""
    fa, fb = _flatten(a), _flatten(b)
    missing = object()
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb:
            def show(v: Any) -> str:
                text = "(absent)" if v is missing else repr(v)
                return text if len(text) <= 60 else text[:57] + "..."

            return f"{key}: {show(va)} vs {show(vb)}"
    return "no difference"


def check_grids(dest: ResultsStore, sources: Sequence[ResultsStore]) -> None:
    """Refuse, in one line, grids of the same name whose specs differ (nothing is written).

    Raises:
        UsageError: naming the grid, the two stores and the first setting that differs.

    """
    known: dict[str, tuple[str, dict[str, Any]]] = {
        name: (str(dest.root), _comparable(dest.grid_spec(name))) for name in dest.grids()}
    for src in sources:
        for name in src.grids():
            spec = _comparable(src.grid_spec(name))
            if name not in known:
                known[name] = (str(src.root), spec)
                continue
            where, other = known[name]
            if other != spec:
                raise UsageError(f"cannot merge {src.root}: grid {name!r} differs from the one in {where} "
                                 f"({first_difference(other, spec)}); merge only results of the same grid")


class _StagedFolder:
    """A cell's artifact folder copied beside its destination, renamed into place on demand."""

    def __init__(self, source: Path, final: Path) -> None:
        tag = uuid.uuid4().hex[:12]
        self.final = final
        self.staging = final.with_name(f".{final.name}.merge-{tag}")
        self.old = final.with_name(f".{final.name}.old-{tag}")
        self._moved_in = False
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, self.staging, symlinks=True)

    def swap(self) -> None:
        """Put the copy in place (called inside the record's transaction)."""
        if self.final.exists():
            os.replace(self.final, self.old)
        os.replace(self.staging, self.final)
        self._moved_in = True

    def undo(self) -> None:
        """The record was not written: put the destination's folder back, drop the copy."""
        if self._moved_in and self.final.exists():
            os.replace(self.final, self.staging)
        if self.old.exists():
            os.replace(self.old, self.final)
        shutil.rmtree(self.staging, ignore_errors=True)

    def finish(self) -> None:
        """The record is committed: the replaced folder can go."""
        shutil.rmtree(self.old, ignore_errors=True)


def _label(cell: CellResult) -> str:
    a = cell.axes
    return f"{a.dataset} / {a.backbone} / {a.head} / seed {a.seed}"


def _copy_cell(dest: ResultsStore, src: ResultsStore, record: CellResult) -> None:
    """Write ``record`` and bring its artifact folder, in one transaction.

    Grid memberships are not touched here: they came with the grids, so a cell the source
    files under no grid stays under none.
    """
    folder = src.cell_dir(record.cell_id)
    # a record without a folder (a 'cxrbench score' row) keeps whatever the destination has
    staged = _StagedFolder(folder, dest.cell_dir(record.cell_id)) if folder.is_dir() else None
    try:
        dest.write_result(None, record, replace_localizations=True,
                          before_commit=staged.swap if staged is not None else None)
    except BaseException:
        if staged is not None:
            staged.undo()
        raise
    if staged is not None:
        staged.finish()


def merge_results(dest: ResultsStore, sources: Sequence[ResultsStore]) -> MergeReport:
    """Merge every source store into ``dest`` (see the module docstring for the rules).

    Args:
        dest: the destination store (its run lock should be held).
        sources: the stores to read, in order; a cell in several of them is decided
            against the destination as each one arrives.

    Returns:
        The :class:`MergeReport`.

    Raises:
        UsageError: a grid with the same name and a different spec (nothing is written).

    """
    check_grids(dest, sources)
    report = MergeReport()
    for src in sources:
        source = str(src.root)
        report.grids[source] = []
        for name in src.grids():
            is_new = name not in dest.grids()
            dest.add_grid_members(name, src.grid_spec(name), src.grid_cell_ids(name))
            if is_new:
                report.grids[source].append(name)
        for record in src.cells():
            action, reason = decide(dest.cell(record.cell_id), record)
            if action != "kept":
                _copy_cell(dest, src, record)
            report.cells.append(CellMerge(record.cell_id, source, action, record.status, reason, _label(record)))
    return report
