"""One end-to-end grid cell on each real dataset loader, on files the phantom laid out on disk.

The phantom writes itself in the published NIH ChestX-ray14 and CheXpert layouts; the
``nih`` and ``chexpert`` plugins read those files exactly as they would read the real
releases, and a cell (timm ``resnet10t``, one epoch, small images) must finish with finite
AUROC and, on NIH, localization metrics on the boxed split. The second NIH run goes
through ``cxrbench prepare`` first and must read no original image during the run.
"""

from __future__ import annotations

import math

import cxrbench_chexpert
import cxrbench_nih
import numpy as np
import pytest
from cxrbench_phantom.export import write_chexpert_layout, write_nih_layout
from helpers import store_records

from cxrbench.config import parse_grid
from cxrbench.data import prepare_split
from cxrbench.driver import run_grid
from cxrbench.manager import build_plugin_manager
from cxrbench.pipeline import input_size
from cxrbench.pipeline import open_dataset as build_dataset
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore

# Two findings the phantom draws often, so that the 20% test split holds both labels of each.
CLASSES = ("Cardiomegaly", "Effusion")
SIZE = 64


@pytest.fixture(scope="module")
def pm():
    import cxrbench_cam
    import cxrbench_executors
    import cxrbench_heads
    import cxrbench_timm

    plugins = [("executors", cxrbench_executors), ("heads", cxrbench_heads), ("cam", cxrbench_cam),
               ("timm", cxrbench_timm), ("nih", cxrbench_nih), ("chexpert", cxrbench_chexpert)]
    return build_plugin_manager(plugins=plugins, entry_points=False)


@pytest.fixture(scope="module")
def registry(pm):
    return Registry.from_plugin_manager(pm)


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory):
    return write_nih_layout(tmp_path_factory.mktemp("nih"), num_images=90, image_size=SIZE, seed=11,
                            classes=CLASSES, difficulty=0.1)


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory):
    return write_chexpert_layout(tmp_path_factory.mktemp("chexpert"), num_images=90, image_size=SIZE, seed=12,
                                 classes=CLASSES, uncertain_rate=0.2, difficulty=0.1)


def grid(name: str, dataset: dict) -> dict:
    return {
        "name": name,
        "seeds": [0],
        "datasets": [dataset],
        "backbones": [{"name": "resnet10t", "options": {"pretrained": False}}],
        "heads": ["avg"],
        "localizers": ["cam"],
        "train": {"epochs": 1, "batch_size": 16, "image_size": SIZE, "lr": 0.001},
        "evaluation": {"bootstrap": 20},
    }


def run_one(pm, registry, grid_dict, results, cache_root=None):
    spec = parse_grid(grid_dict, registry)
    with ResultsStore(results) as store:
        summary = run_grid(spec, pm, store, cache_root=str(cache_root) if cache_root else None)
        records = store_records(store, spec.name)
    assert (summary.ok, summary.failed) == (1, 0), records[0]["error"] if records else summary
    assert len(records) == 1 and records[0]["status"] == "ok"
    return records[0]


def assert_finite_auroc(metrics: dict, classes: list[str]) -> None:
    assert math.isfinite(metrics["auroc_mean"]) and 0.0 <= metrics["auroc_mean"] <= 1.0
    for name in classes:
        assert math.isfinite(metrics[f"auroc/{name}"]), name


def test_nih_cell_on_the_phantom_layout(pm, registry, nih_root, tmp_path, monkeypatch):
    options = {"root": str(nih_root), "classes": list(CLASSES), "val_fraction": 0.15}
    grid_dict = grid("nih-phantom", {"name": "nih", "options": options})
    record = run_one(pm, registry, grid_dict, tmp_path / "results")
    assert record["dataset"] == "nih" and record["localizer"] == "cam"  # the grid's only dataset: its name
    metrics = record["metrics"]
    assert_finite_auroc(metrics, list(CLASSES))
    for key in ("iou_mean", "iobb_mean", "hit_rate"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, key

    # Same cell on a prepared cache: the run reads no original image, the numbers are the same.
    cache = tmp_path / "cache"
    spec = parse_grid(grid_dict, registry)
    dataset = build_dataset(spec.datasets[0], cache)
    for split in dataset.split_names:
        assert not prepare_split(dataset, split, input_size(spec.train, dataset), cache).failed
    reads = []
    original = cxrbench_nih.NIHChestXray14.read_image
    monkeypatch.setattr(cxrbench_nih.NIHChestXray14, "read_image",
                        lambda self, split, index: reads.append(index) or original(self, split, index))
    cached = run_one(pm, registry, grid_dict, tmp_path / "results-cached", cache_root=cache)
    assert reads == []
    for key in ("auroc_mean", "iou_mean", "hit_rate"):
        assert cached["metrics"][key] == pytest.approx(metrics[key], abs=1e-6), key


def test_chexpert_cell_on_the_phantom_layout(pm, registry, chexpert_root, tmp_path):
    options = {"root": str(chexpert_root), "classes": ["Cardiomegaly", "Pleural Effusion"], "uncertain": "ones",
               "val_fraction": 0.15}
    record = run_one(pm, registry, grid("chexpert-phantom", {"name": "chexpert", "options": options}),
                     tmp_path / "results")
    assert record["dataset"] == "chexpert"
    assert_finite_auroc(record["metrics"], ["Cardiomegaly", "Pleural Effusion"])
    # The test split is valid.csv: the phantom's test images, none of them uncertain.
    predictions = np.load(next((tmp_path / "results" / "cells").iterdir()) / "predictions.npz")
    labels = predictions["labels"]
    assert labels.shape[1] == 2 and np.isin(labels, [0.0, 1.0]).all()
    assert (labels == 1).any(axis=0).all() and (labels == 0).any(axis=0).all()


def test_moving_a_dataset_keeps_its_cell_ids(tmp_path):
    """Cell ids follow the data's fingerprint, not the folder it is mounted at."""
    import shutil

    from cxrbench_phantom.export import write_nih_layout

    from cxrbench.config import parse_grid
    from cxrbench.driver import fingerprint_datasets
    from cxrbench.grid import expand
    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry

    first = write_nih_layout(tmp_path / "a" / "nih", num_images=12, image_size=32, seed=1)
    moved = tmp_path / "b" / "elsewhere"
    shutil.copytree(first, moved)
    registry = Registry.from_plugin_manager(build_plugin_manager())
    ids = []
    for root in (first, moved):
        grid = parse_grid({"name": "g", "datasets": [{"name": "nih", "options": {"root": str(root)}}],
                           "backbones": ["resnet18"], "heads": ["avg"]}, registry)
        ids.append(expand(grid, fingerprint_datasets(None, lambda m: None))[0].cell_id)
    assert ids[0] == ids[1]
    (moved / "Data_Entry_2017_v2020.csv").write_text((moved / "Data_Entry_2017_v2020.csv").read_text() + "\n")
    grid = parse_grid({"name": "g", "datasets": [{"name": "nih", "options": {"root": str(moved)}}],
                       "backbones": ["resnet18"], "heads": ["avg"]}, registry)
    assert expand(grid, fingerprint_datasets(None, lambda m: None))[0].cell_id != ids[0]  # other data, other id


def test_a_run_builds_each_dataset_once_and_every_cell_still_gets_its_warnings(toy_pm, toy_registry, tiny_grid_dict,
                                                                                tmp_path, monkeypatch):
    from cxrbench.config import parse_grid
    from cxrbench.driver import run_grid
    from cxrbench.pipeline import open_dataset, shared_datasets
    from cxrbench.store import ResultsStore
    from tests.plugins import toy

    built = []
    real_init = toy.ToyDataset.__init__

    def counting_init(self, options, context):
        real_init(self, options, context)
        built.append(1)
        context.warn("toy scanned")

    monkeypatch.setattr(toy.ToyDataset, "__init__", counting_init)
    spec = toy_registry.create("dataset", "toy")
    seen: list[str] = []
    with shared_datasets():
        first = open_dataset(spec, None, seen.append)
        assert open_dataset(spec, None, seen.append) is first
    assert open_dataset(spec) is not first  # the sharing ends with the block
    assert seen == ["toy scanned", "toy scanned"]  # the second opener heard it too
    built.clear()
    tiny_grid_dict.update(heads=["avg", "max"], localizers=[])
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        cells = store.cells(grid.name)
    assert len(cells) == 2 and len(built) == 1  # fingerprinting and both cells share one build
    assert all("toy scanned" in c.warnings for c in cells)
