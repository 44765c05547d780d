"""Configurations averaged over their seeds, for the report: mean, spread, and what failed.

A configuration is a (dataset, backbone, head) for classification and a (dataset, backbone,
head, localizer) for localization. The means and sample standard deviations (ddof 1) come
from :func:`~cxrbench.reporting.rows.group_rows`, so they are the numbers ``cxrbench
leaderboard --over seed`` prints; what this module adds is which seeds went in and which
failed, and why, so that a configuration whose every seed failed still has a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .rows import LeaderboardRow, cell_rows, group_rows, sort_rows

CLASSIFICATION_AXES = ("dataset", "backbone", "head")
LOCALIZATION_AXES = (*CLASSIFICATION_AXES, "localizer")


@dataclasses.dataclass(frozen=True)
class SeedGroup:
    """One configuration over its seeds.

    Attributes:
        axes: the configuration's axis values (``CLASSIFICATION_AXES`` or ``LOCALIZATION_AXES``).
        mean: the group row (means in ``metrics``, sample std in ``spread``) over the seeds
            that succeeded; None when none did.
        members: every per-seed row of the configuration, by seed.
        failures: the members that failed (the cell, or the localizer on that cell).

    """

    axes: tuple
    mean: LeaderboardRow | None
    members: tuple[LeaderboardRow, ...]
    failures: tuple[LeaderboardRow, ...] = ()

    @property
    def first(self) -> LeaderboardRow:
        return self.members[0]

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.members]

    @property
    def ok_seeds(self) -> int:
        return len(self.members) - len(self.failures)

    def value(self, key: str) -> float | None:
        """The mean of ``key`` over the seeds that succeeded (None without any)."""
        return None if self.mean is None else self.mean.value(key)

    def spread(self, key: str) -> float | None:
        return None if self.mean is None else self.mean.spread.get(key)


def failure_reason(row: LeaderboardRow) -> str:
    """Why a per-seed row failed, in one line (the localizer's reason, else the cell's)."""
    if row.status != "ok":
        return f"cell failed: {row.error or 'no reason recorded'}"
    return row.localizer_error or "no reason recorded"


def _failed(row: LeaderboardRow, localization: bool) -> bool:
    return row.status != "ok" or (localization and row.localizer_status == "failed")


def _groups(members_by_key: dict[tuple, list[LeaderboardRow]], axes: Sequence[str], localization: bool,
            sort_key: str) -> list[SeedGroup]:
    ok = [r for members in members_by_key.values() for r in members if not _failed(r, localization)]
    means = {tuple(g.axis(a) for a in axes): g for g in group_rows(ok, list(axes))} if ok else {}
    groups = [SeedGroup(axes=key, mean=means.get(key), members=tuple(sorted(members, key=lambda r: str(r.seed))),
                        failures=tuple(r for r in members if _failed(r, localization)))
              for key, members in members_by_key.items()]
    order = {id(row): i for i, row in enumerate(sort_rows([g.mean for g in groups if g.mean is not None], sort_key))}
    # configurations without any successful seed come last, in their first-seen order
    return sorted(groups, key=lambda g: order.get(id(g.mean), len(order)) if g.mean is not None else len(order))


def classification_groups(rows: Sequence[LeaderboardRow], sort_key: str = "auroc_mean") -> list[SeedGroup]:
    """One group per (dataset, backbone, head), best mean first; each cell counts once."""
    by_key: dict[tuple, list[LeaderboardRow]] = {}
    for r in cell_rows([r for r in rows if r.kind == "cell"]):
        by_key.setdefault(tuple(r.axis(a) for a in CLASSIFICATION_AXES), []).append(r)
    return _groups(by_key, CLASSIFICATION_AXES, False, sort_key)


def localization_groups(rows: Sequence[LeaderboardRow], sort_key: str = "iou_mean") -> list[SeedGroup]:
    """One group per (dataset, backbone, head, localizer), best mean first; failed localizers kept.

    A cell that failed before any localizer ran has no localizer row; it still counts as a
    failed seed of each of its configuration's localizers, so ``1 of 2`` says a seed is missing.
    """
    by_key: dict[tuple, list[LeaderboardRow]] = {}
    localizers: dict[tuple, list[str]] = {}
    for r in rows:
        if r.kind == "cell" and r.localizer:
            by_key.setdefault(tuple(r.axis(a) for a in LOCALIZATION_AXES), []).append(r)
            names = localizers.setdefault(tuple(r.axis(a) for a in CLASSIFICATION_AXES), [])
            if r.localizer not in names:
                names.append(r.localizer)
    for r in rows:
        if r.kind == "cell" and r.status != "ok" and not r.localizer:
            for name in localizers.get(tuple(r.axis(a) for a in CLASSIFICATION_AXES), []):
                by_key[(*(r.axis(a) for a in CLASSIFICATION_AXES), name)].append(r.replace(localizer=name))
    return _groups(by_key, LOCALIZATION_AXES, True, sort_key)
