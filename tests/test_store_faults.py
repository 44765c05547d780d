"""Environment faults met while writing the store are one line, keep finished cells and leave no temp files.

Regressions of issue 18, item 10: a full disk gave ``internal error: OperationalError:
database or disk is full`` and left a 20.8 MB ``last.pt.tmp``; another process holding the
SQLite write lock for 75 s aborted the run with exit 3 and lost the trained cell.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from cxrbench.artifacts import save_npz_atomic, save_torch_atomic
from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.errors import UsageError
from cxrbench.store import ResultsStore


def _grid(tiny_grid_dict, toy_registry, heads=("avg",)):
    tiny_grid_dict.update(heads=list(heads), localizers=[])
    return parse_grid(tiny_grid_dict, toy_registry)


def test_a_full_disk_is_one_line_and_keeps_the_cells_already_recorded(toy_pm, toy_registry, tiny_grid_dict,
                                                                        tmp_path):
    grid = _grid(tiny_grid_dict, toy_registry, heads=("avg", "max"))
    with ResultsStore(tmp_path / "r") as store:
        first = {"n": 0}

        def fill_the_disk_after_the_first_cell(result):
            first["n"] += 1
            if first["n"] == 1:
                # SQLite's own page limit: the next write fails exactly as on a full disk (SQLITE_FULL)
                pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
                store._conn.execute(f"PRAGMA max_page_count = {pages}")

        from cxrbench.driver import RunDisplay

        class FillAfterFirst(RunDisplay):
            def cell_finished(self, result):
                fill_the_disk_after_the_first_cell(result)

        with pytest.raises(UsageError, match=r"the disk is full .*finished cells are kept") as info:
            run_grid(grid, toy_pm, store, display=FillAfterFirst())
        assert "\n" not in str(info.value)
    with ResultsStore(tmp_path / "r") as store:
        recorded = store.cells(grid.name)
        assert [c.status for c in recorded] == ["ok"]  # the cell finished before the disk filled is kept
        summary = run_grid(grid, toy_pm, store)  # space is back (a new connection): the run resumes
        assert (summary.skipped, summary.ok) == (1, 1)


def test_a_write_lock_held_briefly_is_waited_for(toy_pm, toy_registry, tiny_grid_dict, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_STORE_BUSY_S", "30")
    grid = _grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path / "r") as store:
        other = sqlite3.connect(store.db_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock for a while
        release = threading.Timer(2.0, lambda: other.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        summary = run_grid(grid, toy_pm, store)
        release.join()
        other.close()
        assert summary.ok == 1 and time.monotonic() - started >= 2.0
        assert [c.status for c in store.cells(grid.name)] == ["ok"]


def test_a_write_lock_held_too_long_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_STORE_BUSY_S", "1")
    with ResultsStore(tmp_path / "r") as store:
        other = sqlite3.connect(store.db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(UsageError, match=r"held the results store's write lock for over 1 s.*"
                                                 r"CXRBENCH_STORE_BUSY_S"):
                store.register_grid("g", {}, ["abc"])
            assert time.monotonic() - started < 10
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.register_grid("g", {}, ["abc"])  # free again: writes work
        assert store.grid_cell_ids("g") == ["abc"]


def test_failed_atomic_writes_leave_no_temporary_file(tmp_path, monkeypatch):
    import numpy as np
    import torch

    def full_disk(*args, **kwargs):
        (tmp_path / "model.pt.tmp").write_bytes(b"half")  # torch had written part of it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_torch_atomic({"x": 1}, tmp_path / "model.pt")
    def full_disk_npz(path, **arrays):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk_npz)
    with pytest.raises(OSError):
        save_npz_atomic(tmp_path / "p.npz", a=np.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_store_error_lines(tmp_path):
    from cxrbench.store import store_error

    db = tmp_path / "cxrbench.sqlite"
    assert "disk is full" in str(store_error(db, sqlite3.OperationalError("database or disk is full")))
    damaged = str(store_error(db, sqlite3.DatabaseError("database disk image is malformed")))
    assert "damaged" in damaged and ".recover" in damaged
    other = str(store_error(db, sqlite3.OperationalError("disk I/O error")))
    assert other.startswith(str(db)) and "cannot write the results store" in other and "disk I/O error" in other


def test_a_damaged_database_is_one_line_for_readers_too(run_cli, tiny_grid_dict, tmp_path):
    import yaml

    tiny_grid_dict.update(heads=["avg"], localizers=[])
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    db = results / "cxrbench.sqlite"
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")  # the file header's page size
    for start in range(page, len(data), page):  # every b-tree page after the schema: an invalid page type
        data[start] = 0xFF
    db.write_bytes(bytes(data))
    for command in (["leaderboard", "--results", results], ["show", "--results", results, "abc"]):
        result = run_cli(*command)
        assert result.exit_code == 4, (command, result.output)  # before: internal error: DatabaseError (exit 3)
        assert "internal error" not in result.output and result.output.strip().count("\n") == 0, result.output
        assert "results database" in result.output


def test_garbage_in_stored_records_is_one_line_not_an_internal_error(run_cli, tiny_grid_dict, tmp_path):
    import yaml

    tiny_grid_dict.update(heads=["avg"], localizers=[])
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    with sqlite3.connect(results / "cxrbench.sqlite") as conn:  # what a damaged page can read back as
        conn.execute("UPDATE cells SET metrics = 'not json {'")
    result = run_cli("leaderboard", "--results", results)
    assert result.exit_code == 4 and "internal error" not in result.output, result.output
    assert "stored records cannot be read" in result.output and result.output.strip().count("\n") == 0


def _open_store_at(root: str, start: float) -> str:
    """A spawned process opening the store at ``root`` once the wall clock passes ``start``."""
    import time

    while time.time() < start:
        time.sleep(0.001)
    try:
        with ResultsStore(root) as store:
            return ",".join(row[1] for row in store._conn.execute("PRAGMA table_info(cells)"))
    except Exception as exc:  # noqa: BLE001 (the test reports what any opener saw)
        return f"error: {exc}"


def test_processes_opening_one_fresh_store_at_once_all_succeed(tmp_path):
    # before: a run and a watcher opening a new store together could both add a migrated column,
    # and the second read "not a cxrbench results database (duplicate column name: provenance)"
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        for trial in range(4):
            root = str(tmp_path / f"r{trial}")
            start = time.time() + 1.5
            answers = pool.starmap(_open_store_at, [(root, start)] * 6)
            assert not [a for a in answers if a.startswith("error")], answers
            assert all("provenance" in a and "warnings" in a for a in answers), answers
