import re

import pytest
import yaml

from cxrbench.config import TrainSpec, load_grid, parse_grid
from cxrbench.errors import ConfigError


def test_valid_grid(toy_registry, tiny_grid_dict):
    grid = parse_grid(tiny_grid_dict, toy_registry)
    assert grid.name == "tiny"
    assert [h.name for h in grid.heads] == ["avg", "max"]
    assert grid.datasets[0].options.num_images == 64
    assert grid.train == TrainSpec(epochs=2, batch_size=16, lr=0.01)
    assert grid.executor.name == "local"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda g: g["backbones"].append("densnet121"),
         "backbones[1]: unknown backbone 'densnet121'; did you mean 'densenet121'?"),
        (lambda g: g.update(heads=[]), "heads: empty; list at least one head"),
        (lambda g: g.pop("datasets"), "datasets: missing; list at least one dataset"),
        (lambda g: g.update(seeds=[0, "one"]), "seeds[1]: expected an integer from 0 to 2**32 - 1, got 'one'"),
        (lambda g: g.update(trian={}), "trian: unknown key; did you mean 'train'?"),
        (lambda g: g["train"].update(epochs="3"), "train.epochs: expected an integer, got '3'"),
        (lambda g: g["train"].update(optimizer="adagrad"), "train.optimizer: expected one of"),
        (lambda g: g["train"].update(epochs=0), "train.epochs: epochs must be at least 1"),
        (lambda g: g["train"].update(lr=float("inf")), "train.lr: lr must be positive"),
        (lambda g: g["train"].update(weight_decay=-0.1), "train.weight_decay: weight_decay must be >= 0"),
        (lambda g: g["train"].update(schedule="step", step_size=0), "train.step_size: step_size must be at least 1"),
        (lambda g: g["train"].update(step_gamma=0), "train.step_gamma: step_gamma must be positive"),
        (lambda g: g["train"].update(affine_degrees=-5), "train.affine_degrees: affine_degrees must be 0 or more"),
        (lambda g: g["train"].update(affine_scale=1), "train.affine_scale: affine_scale must be in [0, 1)"),
        (lambda g: g["train"].update(affine_translate=-0.1), "train.affine_translate: affine_translate must be in"),
        (lambda g: g["train"].update(brightness=-0.2), "train.brightness: brightness must be 0 or more"),
        (lambda g: g["train"].update(contrast=1.5), "train.contrast: contrast must be in [0, 1]"),
        (lambda g: g["train"].update(eval_batch_size=0), "train.eval_batch_size: eval_batch_size must be at least 1"),
        (lambda g: g["train"].update(num_workers=0), "train.num_workers: num_workers must be at least 1"),
        (lambda g: g["train"].update(max_steps_per_epoch=0), "train.max_steps_per_epoch: max_steps_per_epoch must"),
        (lambda g: g.update(evaluation={"bootstrap_seed": -1}), "evaluation.bootstrap_seed: bootstrap_seed must be"),
        (lambda g: g["datasets"][0]["options"].update(bogus=1), "datasets[0].options.bogus: unknown option"),
        (lambda g: g.update(heads=["avg", "avg"]), "heads[1]: duplicate of heads[0]"),
        (lambda g: g.update(exclude=[{"backbone": "resnet50"}]), "exclude[0].backbone: 'resnet50' is not in"),
        (lambda g: g.update(exclude=[{"optimizer": "x"}]), "exclude[0].optimizer: unknown axis"),
        (lambda g: g.update(localizers=[{"name": "cam", "threshold": {"policy": "magic"}}]),
         "localizers[0].threshold.policy: expected one of"),
        (lambda g: g.update(executor={"name": "local", "options": {"workers": 2}}),
         "executor.options.workers: unknown option"),
        (lambda g: g.update(name="has space"), "name: expected a grid name"),
        (lambda g: g.update(backbones=[{"options": {}}]), "backbones[0]: a backbone entry needs a 'name'"),
        (lambda g: g.update(backbones=[{"name": "tiny", "opts": {}}]), "backbones[0].opts: unknown key"),
        (lambda g: g.update(backbones=[3]), "backbones[0]: expected a backbone name"),
    ],
)
def test_errors_name_the_yaml_path(toy_registry, tiny_grid_dict, mutate, expected):
    mutate(tiny_grid_dict)
    with pytest.raises(ConfigError) as info:
        parse_grid(tiny_grid_dict, toy_registry)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_file_errors(toy_registry, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML: line \d+"):
        load_grid(bad, toy_registry)
    with pytest.raises(ConfigError, match="no such grid file"):
        load_grid(tmp_path / "missing.yaml", toy_registry)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: the grid file is empty"):
        load_grid(empty, toy_registry)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a grid must be a mapping"):
        load_grid(listy, toy_registry)


def test_yaml_is_loaded_safely(toy_registry, tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_grid(evil, toy_registry)


def test_quickstart_grid_validates():
    from pathlib import Path

    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry

    registry = Registry.from_plugin_manager(build_plugin_manager())
    grid = load_grid(Path(__file__).resolve().parents[1] / "grids" / "quickstart.yaml", registry)
    assert grid.name == "quickstart"
    assert yaml  # imported for safe_load elsewhere


@pytest.mark.parametrize("block, message", [
    ({"hit_tolerance": -1}, "localization.hit_tolerance: hit_tolerance must be a finite number >= 0"),
    ({"hit_tolerance": float("nan")}, "localization.hit_tolerance: hit_tolerance must be a finite number >= 0"),
    ({"box_thresholds": 1}, "localization.box_thresholds: box_thresholds must be between 2 and 10000"),
    ({"tune": True, "tune_fraction": 0}, "localization: tune: true needs boxes held out"),
    ({"max_images": 0}, "localization.max_images: max_images must be at least 1"),
    ({"save_overlays": -2}, "localization.save_overlays: save_overlays must be >= 0"),
])
def test_localization_block_is_validated(toy_registry, tiny_grid_dict, block, message):
    tiny_grid_dict["localization"] = block
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_grid(tiny_grid_dict, toy_registry)


def test_readme_grid_reference_and_pcam_recipe_validate():
    """The README's grid reference (and its PCAM recipe dropped into it) are grids that validate."""
    from pathlib import Path

    from cxrbench.grid import expand
    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry

    registry = Registry.from_plugin_manager(build_plugin_manager())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)]
    reference = next(b for b in blocks if "datasets" in b)
    grid = parse_grid(reference, registry)
    assert len(expand(grid, lambda spec: "")) == 15  # 1 x 2 x 3 x 3 seeds, minus densenet121 + max
    recipe = next(b for b in blocks if b.get("heads") == ["pcam"])
    grid = parse_grid({**reference, **recipe, "exclude": []}, registry)
    assert [(s.name, s.cls.YIELDS_LOGIT_MAP) for s in grid.heads] == [("pcam", True)]
    assert [s.name for s in grid.backbones] == ["densenet121"]
