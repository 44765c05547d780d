"""Impossible head / localizer pairs are known before training: warned once, never evaluated."""

from __future__ import annotations

import yaml

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.pairing import impossible_pairs
from cxrbench.store import ResultsStore


def test_the_pcam_localizer_needs_a_logit_map_head(toy_registry):
    heads = [toy_registry.create("head", h) for h in ("avg", "lse", "pcam")]
    localizers = [toy_registry.create("localizer", name, allow_threshold=True) for name in ("cam", "gradcam", "pcam")]
    pairs = impossible_pairs(heads, localizers)
    assert {(p.head, p.localizer) for p in pairs} == {("avg", "pcam"), ("lse", "pcam")}
    assert "yields no logit map" in pairs[0].line()


def test_validate_and_dry_run_warn_and_run_skips_the_pair(run_cli, toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    tiny_grid_dict.update(heads=["avg", "pcam"], localizers=["cam", "pcam"])
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid_dict))
    validated = run_cli("validate", grid_file)
    assert validated.exit_code == 0
    warnings = [line for line in validated.output.splitlines() if "cannot explain" in line]
    assert len(warnings) == 1 and "'pcam' cannot explain head 'avg'" in warnings[0]
    dry = run_cli("run", "--grid", grid_file, "--results", tmp_path / "r", "--dry-run")
    assert "cannot explain head 'avg'" in dry.output
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path / "r") as store:
        summary = run_grid(grid, toy_pm, store)
        cells = {c.axes.head: c for c in store.cells(grid.name)}
    assert summary.localizers_failed == 0  # no failed row for a pair known to be impossible
    assert [loc.name for loc in cells["avg"].localizations] == ["cam"]
    assert sorted(loc.name for loc in cells["pcam"].localizations) == ["cam", "pcam"]


def test_a_dataset_without_boxes_is_warned_about_and_gets_no_localizer_tasks(tiny_grid_dict, tmp_path):
    from cxrbench.config import parse_grid
    from cxrbench.driver import plan_tasks
    from cxrbench.grid import expand
    from cxrbench.manager import build_plugin_manager
    from cxrbench.pairing import unlocalizable_datasets
    from cxrbench.registry import Registry
    from cxrbench.store import ResultsStore

    registry = Registry.from_plugin_manager(build_plugin_manager())
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"], backbones=["resnet18"])
    tiny_grid_dict["datasets"] = [{"name": "chexpert", "options": {"root": str(tmp_path)}},
                                  {"name": "phantom", "options": {"num_images": 40, "image_size": 32}}]
    grid = parse_grid(tiny_grid_dict, registry)
    (found,) = unlocalizable_datasets(grid.datasets, "boxes")  # CheXpert has no boxes; the phantom has
    assert found.line() == ("dataset 'chexpert' has no 'boxes' split (no boxes or masks): localizers are not "
                            "evaluated on its cells")
    assert [d.dataset for d in unlocalizable_datasets(grid.datasets, "nowhere")] == ["chexpert", "phantom"]
    # the run plans no localizer for the CheXpert cell (no failed row, no exit 1 forever), cam for the phantom's
    with ResultsStore(tmp_path / "r") as store:
        tasks, _ = plan_tasks(grid, expand(grid, lambda spec: "fp"), store)
    planned = {t.cell.dataset.name: [lt.spec.name for lt in t.localizers] for t in tasks}
    assert planned == {"chexpert": [], "phantom": ["cam"]}
