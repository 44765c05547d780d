"""What a run and its tables call each choice: short labels, the grid's own ``label:``, the run plan line."""

from __future__ import annotations

import copy

import pytest

from cxrbench.config import parse_grid
from cxrbench.driver import RunPlan, run_grid
from cxrbench.errors import ConfigError
from cxrbench.grid import expand
from cxrbench.registry import short_labels
from cxrbench.reporting.rows import LeaderboardRow
from cxrbench.reporting.tables import speed_caveat
from cxrbench.store import ResultsStore


def _grid(tiny_grid_dict, toy_registry, **changes):
    raw = copy.deepcopy(tiny_grid_dict)
    raw.update(changes)
    return parse_grid(raw, toy_registry)


def test_a_name_used_once_is_shown_alone_and_shared_names_show_only_what_differs(tiny_grid_dict, toy_registry):
    grid = _grid(tiny_grid_dict, toy_registry, datasets=[
        {"name": "toy", "options": {"num_images": 64, "image_size": 48}},
        {"name": "toy", "options": {"num_images": 96, "image_size": 48}},
    ], backbones=[{"name": "tiny", "options": {"width": 4}}])
    assert [d.label() for d in grid.datasets] == ["toy[num_images=64]", "toy[num_images=96]"]  # not image_size
    assert [b.label() for b in grid.backbones] == ["tiny"]  # one backbone: its options are in the config
    assert [d.full_label() for d in grid.datasets][0] == "toy[image_size=48,num_images=64]"
    assert short_labels(grid.heads) == ["avg", "max"]


def test_a_grid_label_names_the_choice_without_changing_its_id(tiny_grid_dict, toy_registry):
    plain = _grid(tiny_grid_dict, toy_registry)
    raw = copy.deepcopy(tiny_grid_dict)
    raw["datasets"][0]["label"] = "toy-64"
    labelled = parse_grid(raw, toy_registry)
    assert labelled.datasets[0].label() == "toy-64"
    ids = [c.cell_id for c in expand(plain, lambda ds: "fp")]
    assert [c.cell_id for c in expand(labelled, lambda ds: "fp")] == ids  # a label is display only


def test_relabelled_grid_shows_finished_cells_under_the_new_label(toy_pm, tiny_grid_dict, toy_registry, tmp_path):
    tiny_grid_dict["heads"] = ["avg"]
    tiny_grid_dict["localizers"] = []
    with ResultsStore(tmp_path / "r") as store:
        run_grid(_grid(tiny_grid_dict, toy_registry), toy_pm, store)
        assert [c.axes.dataset for c in store.cells()] == ["toy"]
        tiny_grid_dict["datasets"][0]["label"] = "my toy"
        summary = run_grid(_grid(tiny_grid_dict, toy_registry), toy_pm, store)
        assert summary.skipped == 1  # nothing reran
        assert [c.axes.dataset for c in store.cells()] == ["my toy"]


@pytest.mark.parametrize(("label", "fragment"), [
    ("", "expected a short text label"),
    (3, "expected a short text label"),
    ("x" * 41, "at most 40 characters"),
    ("two\nlines", "one printable line"),
])
def test_bad_labels_are_config_errors_with_their_path(tiny_grid_dict, toy_registry, label, fragment):
    raw = copy.deepcopy(tiny_grid_dict)
    raw["datasets"][0]["label"] = label
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_grid(raw, toy_registry)
    assert "datasets[0].label" in str(info.value)


def test_two_entries_may_not_share_a_label(tiny_grid_dict, toy_registry):
    raw = copy.deepcopy(tiny_grid_dict)
    raw["heads"] = [{"name": "avg", "label": "pool"}, {"name": "max", "label": "pool"}]
    with pytest.raises(ConfigError, match=r"heads\[1\]\.label.*also heads\[0\]"):
        parse_grid(raw, toy_registry)


def test_run_plan_sentence_separates_training_from_localizer_only_work():
    assert RunPlan(3, 3, 0, 0, 0).sentence() == "3 cells: 3 to train, 0 done"
    assert RunPlan(3, 2, 0, 0, 1, to_resume=1).sentence() == "3 cells: 2 to train (1 resuming), 1 done"
    assert RunPlan(6, 0, 6, 6, 0).sentence() == \
        "6 cells: 0 to train, 6 localizer runs on 6 trained cells (no retraining), 0 done"
    assert RunPlan(1, 0, 1, 1, 0).sentence() == \
        "1 cell: 0 to train, 1 localizer run on 1 trained cell (no retraining), 0 done"


def _row(backbone: str, speed: float) -> LeaderboardRow:
    return LeaderboardRow(kind="cell", cell_id=f"{backbone}{speed}", grid="g", dataset="d", backbone=backbone,
                          head="avg", localizer=None, seed=0, status="ok", info={"train_images_per_s": speed})


def test_speed_caveat_only_when_one_backbone_varies_several_fold():
    assert speed_caveat([_row("resnet18", 100), _row("resnet18", 150), _row("vit", 20)]) is None
    note = speed_caveat([_row("resnet10t", 19), _row("resnet10t", 251), _row("vit", 20), _row("vit", 30)])
    assert note is not None and "resnet10t trained at 19-251 img/s" in note and "benchmarks/" in note


def test_dry_run_counts_a_cell_with_a_last_checkpoint_as_resuming(run_cli, tiny_grid_dict, tmp_path):
    import yaml

    tiny_grid_dict["heads"] = ["avg"]
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    out = run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--dry-run").output
    assert "1 cell: 1 to train, 0 done" in out
    cell_id = next(line.split()[3] for line in out.splitlines() if line.startswith("│ 1 "))
    with ResultsStore(tmp_path / "r") as store:  # an interrupted run: its cell folder holds last.pt
        store.cell_dir(cell_id).mkdir(parents=True, exist_ok=True)
        (store.cell_dir(cell_id) / "last.pt").write_bytes(b"x")
    out = run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--dry-run").output
    assert "1 cell: 1 to train (1 resuming), 0 done" in out, out


def test_tables_footnote_each_dataset_label_and_json_has_the_full_choice(run_cli, tiny_grid_dict, tmp_path):
    import json

    import yaml

    tiny_grid_dict.update(heads=["avg"], localizers=[])
    tiny_grid_dict["datasets"][0]["label"] = "toy-64"
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    assert run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--no-progress").exit_code == 0
    board = run_cli("leaderboard", "--results", tmp_path / "r").output
    assert "dataset toy-64 = toy {" in board and "num_images: 64" in board
    (record,) = json.loads(run_cli("leaderboard", "--results", tmp_path / "r", "--format", "json").output)
    assert record["dataset"] == "toy-64"
    assert record["components"]["dataset"]["name"] == "toy"
    assert record["components"]["dataset"]["options"]["num_images"] == 64
    assert record["components"]["backbone"] == {"name": "tiny", "options": {"width": 4}}
    csv = run_cli("leaderboard", "--results", tmp_path / "r", "--format", "csv").output
    assert "options.dataset.num_images" in csv.splitlines()[0]
