"""Small helpers shared by tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

from typing import Any

from cxrbench.reporting import rows_from_cells


def store_records(store: Any, grid: str | None = None) -> list[dict[str, Any]]:
    """The store's leaderboard rows in their exported JSON form (one per cell x localizer)."""
    out = []
    for row in rows_from_cells(store.cells(grid)):
        record = row.to_json()
        record["info"] = dict(row.info)  # tests also look at what exports leave out (classes, history)
        out.append(record)
    return out
