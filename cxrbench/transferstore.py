"""The ``transfers`` table of the results store: cross-dataset evaluations of trained cells.

One row per (cell, transfer key) (:mod:`cxrbench.crosseval`), next to the cell's own row,
never in it: a failed target evaluation is its own failed row and leaves the cell's record
untouched. The table is created with the others (``CREATE TABLE IF NOT EXISTS``, so an
older store gains it when it is next opened for writing); a read-only store from before
it reads as having no transfers.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from .records import TransferResult, json_safe

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    cell_id TEXT NOT NULL,
    transfer_key TEXT NOT NULL,
    target TEXT NOT NULL,
    target_name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    error TEXT,
    traceback TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    localizations TEXT NOT NULL DEFAULT '[]',
    settings TEXT NOT NULL DEFAULT '{}',
    finished_at REAL,
    PRIMARY KEY (cell_id, transfer_key)
);
"""


def _dumps(value: object) -> str:
    return json.dumps(json_safe(value), sort_keys=True, default=str)


def has_table(conn: sqlite3.Connection) -> bool:
    """Whether the store has the table (a read-only store written before it has not)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'transfers'").fetchone() \
        is not None


def write(conn: sqlite3.Connection, cell_id: str, transfers: Sequence[TransferResult], *, replace: bool) -> None:
    """Write a cell's transfer rows inside the caller's transaction.

    Args:
        conn: the store's connection, in a transaction.
        cell_id: the cell.
        transfers: its rows evaluated in this run (others are kept).
        replace: drop the cell's earlier rows first (a retrained model makes them stale).

    """
    if replace:
        conn.execute("DELETE FROM transfers WHERE cell_id = ?", (cell_id,))
    conn.executemany(
        """INSERT OR REPLACE INTO transfers(cell_id, transfer_key, target, target_name, status, error, traceback,
           metrics, localizations, settings, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [(cell_id, t.key, t.target, t.target_name, t.status, t.error, t.traceback, _dumps(t.metrics),
          _dumps([loc.to_json() for loc in t.localizations]), _dumps(t.settings), t.finished_at)
         for t in transfers])


def read(conn: sqlite3.Connection, cell_ids: Iterable[str] | None = None) -> dict[str, list[TransferResult]]:
    """``{cell_id: [TransferResult, ...]}`` (all cells when ``cell_ids`` is None), by target then finish time."""
    if not has_table(conn):
        return {}
    wanted = set(cell_ids) if cell_ids is not None else None
    out: dict[str, list[TransferResult]] = {}
    query = ("SELECT cell_id, transfer_key, target, target_name, status, error, traceback, metrics, localizations, "
             "settings, finished_at FROM transfers ORDER BY target, finished_at, transfer_key")
    for cid, key, target, name, status, error, tb, metrics, locs, settings, finished in conn.execute(query):
        if wanted is not None and cid not in wanted:
            continue
        out.setdefault(cid, []).append(TransferResult.from_json({
            "key": key, "target": target, "target_name": name, "status": status, "error": error, "traceback": tb,
            "metrics": json.loads(metrics), "localizations": json.loads(locs), "settings": json.loads(settings),
            "finished_at": finished}))
    return out


def statuses(conn: sqlite3.Connection, cell_id: str) -> dict[str, str]:
    """``{transfer_key: status}`` of one cell."""
    if not has_table(conn):
        return {}
    return dict(conn.execute("SELECT transfer_key, status FROM transfers WHERE cell_id = ?", (cell_id,)).fetchall())
