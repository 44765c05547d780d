"""Every setting of the grid's typed blocks is read by the code that runs a cell (none is dead).

The specs are replaced by subclasses that record which fields are read while a cell runs
through the real pipeline; reads by generic serialisers (``dataclasses.asdict`` when the
settings are recorded as provenance) do not count, since they consume nothing.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest

from cxrbench.config import EvaluationSpec, LocalizationSpec, TrainSpec, parse_grid
from cxrbench.driver import plan_tasks
from cxrbench.events import CellReporter, RunEvents
from cxrbench.grid import expand
from cxrbench.manager import set_plugin_manager
from cxrbench.pipeline import run_cell_core
from cxrbench.store import ResultsStore

SERIALISERS = {"asdict", "_asdict_inner", "options_to_dict", "astuple", "__repr__", "__eq__", "__hash__",
               "_id_block", "cell_config"}


def recording(spec, seen: set[str]):
    """A copy of ``spec`` whose class notes every field read (outside serialisers) in ``seen``."""
    cls = type(spec)
    names = {f.name for f in dataclasses.fields(cls)}

    class Recording(cls):
        def __getattribute__(self, name):
            if name in names and sys._getframe(1).f_code.co_name not in SERIALISERS:
                seen.add(f"{cls.__name__}.{name}")
            return object.__getattribute__(self, name)

    Recording.__name__ = Recording.__qualname__ = cls.__name__
    return Recording(**{f.name: object.__getattribute__(spec, f.name) for f in dataclasses.fields(cls)})


def run_recorded(grid, store, seen):
    cells = expand(grid, lambda spec: "fp")
    (task, *_), _ = plan_tasks(grid, cells, store)
    task = dataclasses.replace(task, train=recording(task.train, seen), evaluation=recording(task.evaluation, seen),
                               localization=recording(task.localization, seen))
    result = run_cell_core(task, CellReporter(RunEvents(), task.cell_id))
    assert result.ok
    return result


def test_every_field_of_every_spec_is_read_by_the_cell_pipeline(tiny_grid_dict, tmp_path):
    import cxrbench_phantom

    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry
    from tests.conftest import builtin_plugins
    from tests.plugins import toy

    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("phantom", cxrbench_phantom), ("toy", toy)],
                              entry_points=False)
    toy_registry = Registry.from_plugin_manager(pm)
    set_plugin_manager(pm)
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    seen: set[str] = set()
    configs = [
        # every branch that reads a setting: a step schedule, early stopping, tuning, overlays, caps
        {"train": {"epochs": 2, "batch_size": 16, "schedule": "step", "step_size": 1, "step_gamma": 0.5,
                   "early_stopping": 1, "max_steps_per_epoch": 1, "eval_batch_size": 8, "flip": True,
                   "affine_degrees": 5, "affine_scale": 0.05, "affine_translate": 0.05, "brightness": 0.1,
                   "contrast": 0.1, "num_workers": 1, "image_size": 32, "loss": "weighted_bce"},
         "evaluation": {"bootstrap": 20, "ci": 0.8, "cutoff": "seed"},
         "localization": {"tune": True, "max_images": 4, "save_overlays": 1, "hit_tolerance": 1,
                          "threshold": {"policy": "fraction", "fraction": 0.5}}},
        {"train": {"epochs": 1, "batch_size": 16, "select_best": False, "optimizer": "sgd", "weight_decay": 1e-4,
                   "amp": False, "channels_last": False, "device": "cpu", "lr": 1e-3}},
        # a dataset whose val split has no boxes: the pinned held-out tuning part
        {"datasets": [{"name": "phantom", "options": {"num_images": 60, "image_size": 32,
                                                      "classes": ["Cardiomegaly", "Effusion"]}}],
         "train": {"epochs": 1, "batch_size": 16},
         "localization": {"tune": True, "tune_fraction": 0.3, "tune_seed": 1, "save_maps": True,
                          "box_thresholds": 20}},
    ]
    for i, extra in enumerate(configs):
        grid = parse_grid({**tiny_grid_dict, **extra, "name": f"spec{i}"}, toy_registry)
        with ResultsStore(tmp_path / f"r{i}") as store:
            result = run_recorded(grid, store, seen)
        assert result.provenance.evaluation["ci"] == grid.evaluation.ci  # recorded as read
    fields = {f"{cls.__name__}.{f.name}" for cls in (TrainSpec, EvaluationSpec, LocalizationSpec)
              for f in dataclasses.fields(cls)}
    assert sorted(fields - seen) == []


def test_the_recorder_notices_an_unread_field():
    seen: set[str] = set()
    spec = recording(EvaluationSpec(), seen)
    assert spec.ci == 0.95 and seen == {"EvaluationSpec.ci"}
    dataclasses.asdict(spec)  # a serialiser reads everything: not a consumer
    assert seen == {"EvaluationSpec.ci"}


@pytest.mark.parametrize("level, label", [(0.8, "80% CI"), (0.95, "95% CI")])
def test_ci_level_reaches_the_intervals_and_the_tables(run_cli, tmp_path, tiny_grid_dict, level, label):
    import json

    import yaml

    tiny_grid_dict.update(heads=["avg"], localizers=[], evaluation={"bootstrap": 200, "ci": level})
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    table = run_cli("leaderboard", "--results", results)
    assert label in table.output
    (row,) = json.loads(run_cli("leaderboard", "--results", results, "--format", "json").output)
    assert row["provenance"]["evaluation"]["ci"] == level
    assert row["provenance"]["cutoff"] == "youden" and row["provenance"]["resampling_unit"] == "patient"
    assert row["provenance"]["environment"]["torch"] and row["provenance"]["environment"]["threads"] >= 1
    width = row["metrics"]["auroc_ci_high"] - row["metrics"]["auroc_ci_low"]
    tmp_path.joinpath(f"width-{level}").write_text(str(width))


def test_a_narrower_ci_level_gives_narrower_intervals(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    from cxrbench.driver import run_grid

    widths = {}
    for level in (0.8, 0.95):
        tiny_grid_dict.update(heads=["avg"], localizers=[], evaluation={"bootstrap": 300, "ci": level},
                              name=f"ci{int(level * 100)}")
        grid = parse_grid(tiny_grid_dict, toy_registry)
        with ResultsStore(tmp_path / "r") as store:
            run_grid(grid, toy_pm, store)
            (cell,) = store.cells(grid.name)
        widths[level] = cell.metrics["auroc_ci_high"] - cell.metrics["auroc_ci_low"]
        assert cell.metrics["auroc_ci_low"] <= cell.metrics["auroc_mean"] <= cell.metrics["auroc_ci_high"]
    assert 0 < widths[0.8] < widths[0.95]
