"""Crash safety: SIGKILL mid-grid keeps finished cells once; a killed cell resumes from its epoch."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from cxrbench.config import TrainSpec
from cxrbench.data import load_split
from cxrbench.interfaces import Classifier
from cxrbench.pipeline import open_dataset as build_dataset
from cxrbench.training import train_model
from tests.conftest import REPO


def finished_cells(db):
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return dict(conn.execute("SELECT cell_id, finished_at FROM cells").fetchall())
    except sqlite3.OperationalError:
        return {}


@pytest.mark.slow
def test_sigkill_mid_grid_then_resume(tmp_path, tiny_grid_dict):
    tiny_grid_dict["seeds"] = [0, 1]
    tiny_grid_dict["localizers"] = ["cam"]
    tiny_grid_dict["train"]["epochs"] = 3
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    env = dict(os.environ, CXRBENCH_PLUGINS="tests.plugins.toy", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "from cxrbench.cli import main; main()", "run", "--grid", str(grid),
           "--results", str(results), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = results / "cxrbench.sqlite"
    deadline = time.time() + 240
    while time.time() < deadline and len(finished_cells(db)) < 1 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = finished_cells(db)
    assert 1 <= len(before) < 4, "the kill should land mid-grid"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = finished_cells(db)
    assert len(after) == 4
    for cell_id, finished_at in before.items():
        assert after[cell_id] == finished_at  # kept, not rerun
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM localizations").fetchone()[0] == 4
        assert conn.execute("SELECT COUNT(DISTINCT cell_id) FROM cells").fetchone()[0] == 4
    assert f"{len(before)} already done" in done.stdout


class Killed(Exception):
    pass


def test_killed_cell_resumes_from_its_last_epoch(toy_registry, tmp_path):
    from cxrbench.config import ComponentSpec
    from cxrbench.options import parse_options

    def spec(kind, name, options):
        cls = toy_registry.get(kind, name)
        return ComponentSpec(kind, name, cls, parse_options(cls.Options, options, "x", name))

    dataset = build_dataset(spec("dataset", "toy", {"num_images": 64}))
    train = load_split(dataset, "train", 32)
    val = load_split(dataset, "val", 32)
    settings = TrainSpec(epochs=3, batch_size=8, lr=0.01, schedule="cosine")

    def fresh():
        torch.manual_seed(0)
        return Classifier.build(spec("backbone", "tiny", {"width": 4}), spec("head", "avg", {}), dataset.classes)

    reference = fresh()
    train_model(reference, train, val, settings, seed=0, device=torch.device("cpu"))

    model = fresh()

    def die_in_epoch_3(progress):
        if progress.phase == "train" and progress.epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        train_model(model, train, val, settings, seed=0, device=torch.device("cpu"), checkpoint_dir=tmp_path,
                    progress=die_in_epoch_3)
    assert (tmp_path / "last.pt").exists()
    resumed = fresh()  # a new process would start from scratch weights
    outcome = train_model(resumed, train, val, settings, seed=0, device=torch.device("cpu"), checkpoint_dir=tmp_path)
    assert outcome.resumed_from_epoch == 2
    assert [h["epoch"] for h in outcome.history] == [1, 2, 3]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert np.isfinite(outcome.history[-1]["loss"])
