import sqlite3

import pytest

from cxrbench.errors import UsageError
from cxrbench.store import ResultsStore


def result(cell_id, status="ok", locs=("cam",)):
    return {
        "cell_id": cell_id, "axes": {"dataset": "toy", "backbone": "tiny", "head": "avg", "seed": 0},
        "config": {"seed": 0}, "status": status, "error": None if status == "ok" else "RuntimeError: boom",
        "traceback": None if status == "ok" else "Traceback ...", "metrics": {"auroc_mean": 0.75, "nan": float("nan")},
        "info": {"parameters": 10}, "started_at": 1.0, "finished_at": 2.0,
        "localizations": [{"key": f"k{n}", "name": n, "status": "ok", "metrics": {"iou_mean": 0.5}, "settings": {}}
                          for n in locs],
    }


def test_write_and_read_records(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.register_grid("g", {"name": "g"}, ["c1", "c2"])
        store.write_result("g", result("c1", locs=("cam", "gradcam")))
        store.write_result("g", result("c2", status="failed", locs=()))
        records = store.records("g")
        assert [(r["cell_id"], r["localizer"]) for r in records] == [("c1", "cam"), ("c1", "gradcam"), ("c2", None)]
        assert records[0]["metrics"] == {"auroc_mean": 0.75, "nan": None, "iou_mean": 0.5}
        assert store.statuses() == {"c1": "ok", "c2": "failed"}
        assert store.cell("c2")["traceback"] == "Traceback ..."
        assert store.localizer_keys("c1") == {"kcam": "ok", "kgradcam": "ok"}
        assert store.grids() == ["g"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with ResultsStore(tmp_path) as store:
        bad = result("c1")
        bad["localizations"].append({"key": "x"})  # missing fields: the insert fails mid-transaction
        with pytest.raises(KeyError):
            store.write_result("g", bad)
        assert store.statuses() == {}
        assert store.records() == []


def test_rewrite_replaces(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.write_result("g", result("c1", status="failed", locs=()))
        store.write_result("g", result("c1"))
        assert store.statuses() == {"c1": "ok"}
        assert len(store.records("g")) == 1


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
