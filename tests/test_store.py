import sqlite3
from pathlib import Path

import pytest
from helpers import store_records

from cxrbench.errors import UsageError
from cxrbench.records import CellAxes, CellResult, LocalizerResult
from cxrbench.store import ResultsStore


def result(cell_id, status="ok", locs=("cam",)):
    return CellResult(
        cell_id=cell_id, grid="g", axes=CellAxes("toy", "tiny", "avg", 0),
        config={"seed": 0}, status=status, error=None if status == "ok" else "RuntimeError: boom",
        traceback=None if status == "ok" else "Traceback ...", metrics={"auroc_mean": 0.75, "nan": float("nan")},
        info={"parameters": 10}, started_at=1.0, finished_at=2.0,
        localizations=tuple(LocalizerResult(key=f"k{n}", name=n, metrics={"iou_mean": 0.5}) for n in locs),
    )


def test_write_and_read_records(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.register_grid("g", {"name": "g"}, ["c1", "c2"])
        store.write_result("g", result("c1", locs=("cam", "gradcam")))
        store.write_result("g", result("c2", status="failed", locs=()))
        records = store_records(store, "g")
        assert [(r["cell_id"], r["localizer"]) for r in records] == [("c1", "cam"), ("c1", "gradcam"), ("c2", None)]
        assert records[0]["metrics"] == {"auroc_mean": 0.75, "nan": None, "iou_mean": 0.5}
        back = store.cell("c1")
        assert back == result("c1", locs=("cam", "gradcam")).replace(metrics=back.metrics)  # the same record back
        assert back.metrics["auroc_mean"] == 0.75 and back.metrics["nan"] != back.metrics["nan"]  # NaN stays NaN
        assert CellResult.from_json(back.to_json()) == back
        assert store.statuses() == {"c1": "ok", "c2": "failed"}
        assert store.cell("c2").traceback == "Traceback ..."
        assert store.localizer_statuses("c1") == {"kcam": "ok", "kgradcam": "ok"}
        assert store.grids() == ["g"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with ResultsStore(tmp_path) as store:
        bad = result("c1").replace(metrics={"auroc_mean": "not a number"})  # a plugin's malformed result
        with pytest.raises(ValueError, match="must be a number"):
            store.write_result("g", bad)
        with pytest.raises(ValueError, match="takes a CellResult"):
            store.write_result("g", {"cell_id": "c1", "metrics": "not a mapping"})
        assert store.statuses() == {}
        assert store_records(store) == []


def test_rewrite_replaces(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.write_result("g", result("c1", status="failed", locs=()))
        store.write_result("g", result("c1"))
        assert store.statuses() == {"c1": "ok"}
        assert len(store_records(store, "g")) == 1


def test_lock_refuses_a_second_run(tmp_path):
    first = ResultsStore(tmp_path)
    first.acquire_lock()
    second = ResultsStore(tmp_path)
    with pytest.raises(UsageError, match="in use by another cxrbench run"):
        second.acquire_lock()
    first.close()
    second.acquire_lock()
    second.close()


def test_not_a_database(tmp_path):
    (tmp_path / "cxrbench.sqlite").write_text("this is not sqlite" * 100)
    with pytest.raises(UsageError, match="not a cxrbench results database"):
        ResultsStore(tmp_path)
    assert sqlite3  # the standard library driver is all we need


def test_a_store_written_before_typed_records_opens_and_reads(tmp_path):
    """Stores of earlier versions lack the provenance / warnings / traceback columns: added in place."""
    old_schema = """
    CREATE TABLE cells (cell_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, backbone TEXT NOT NULL, head TEXT NOT NULL,
        seed INTEGER NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL, error TEXT, traceback TEXT,
        metrics TEXT NOT NULL DEFAULT '{}', info TEXT NOT NULL DEFAULT '{}', started_at REAL, finished_at REAL);
    CREATE TABLE grid_cells (grid TEXT NOT NULL, cell_id TEXT NOT NULL, position INTEGER NOT NULL,
        PRIMARY KEY (grid, cell_id));
    CREATE TABLE localizations (cell_id TEXT NOT NULL, localizer_key TEXT NOT NULL, localizer TEXT NOT NULL,
        status TEXT NOT NULL, error TEXT, metrics TEXT NOT NULL DEFAULT '{}', settings TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (cell_id, localizer_key));
    CREATE TABLE grids (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at REAL NOT NULL);
    INSERT INTO cells VALUES ('c1', 'toy', 'tiny', 'avg', 0, '{}', 'ok', NULL, NULL, '{"auroc_mean": 0.7}',
        '{}', 1.0, 2.0);
    INSERT INTO grid_cells VALUES ('g', 'c1', 0);
    INSERT INTO localizations VALUES ('c1', 'k1', 'cam', 'failed', 'boom', '{}', '{"traceback": "tb"}');
    """
    conn = sqlite3.connect(tmp_path / "cxrbench.sqlite")
    conn.executescript(old_schema)
    conn.commit()
    conn.close()
    with ResultsStore(tmp_path) as store:
        cell = store.cell("c1")
        assert cell.metrics == {"auroc_mean": 0.7} and cell.grid == "g"
        (loc,) = cell.localizations
        assert (loc.name, loc.status, loc.error, loc.traceback) == ("cam", "failed", "boom", "tb")
        assert cell.provenance.cutoff == "youden"  # what every older cell used
        store.write_result("g", result("c2"))  # and it takes new records
        assert set(store.statuses()) == {"c1", "c2"}


def test_resolve_cell_id_prefixes(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.write_result("g", result("abc123"))
        store.write_result("g", result("abd456"))
        assert store.resolve("abc") == "abc123"
        with pytest.raises(UsageError, match="2 cells match 'ab'"):
            store.resolve("ab")
        with pytest.raises(UsageError, match="no cells match 'zz'"):
            store.resolve("zz")


def test_the_store_uses_a_rollback_journal_on_network_filesystems(tmp_path, monkeypatch):
    from cxrbench.store import ResultsStore, filesystem_type, journal_mode_for

    mounts = ("/dev/sda1 / ext4 rw 0 0\n"
              "server:/export /mnt/shared nfs4 rw 0 0\n"
              "//nas/share /mnt/my\\040nas cifs rw 0 0\n")
    assert filesystem_type(Path("/mnt/shared/results"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/my nas/r"), mounts) == "cifs"
    assert filesystem_type(Path("/mnt/sharedness"), mounts) == "ext4"  # a prefix of a name is not a mount
    import cxrbench.store as store_module

    monkeypatch.setattr(store_module, "filesystem_type", lambda path: "nfs4")
    assert journal_mode_for(tmp_path) == "DELETE"
    with ResultsStore(tmp_path / "on-nfs") as store:
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    monkeypatch.setattr(store_module, "filesystem_type", lambda path: "ext4")
    assert journal_mode_for(tmp_path) == "WAL"
    monkeypatch.setenv("CXRBENCH_SQLITE_JOURNAL", "delete")
    assert journal_mode_for(tmp_path) == "DELETE"
