"""The metric catalogue: every stored key is declared, and docs/metrics.md shows the current catalogue."""

from pathlib import Path

import pytest

from cxrbench import catalogue

REPO = Path(__file__).resolve().parents[1]


def test_docs_table_is_generated_from_the_catalogue():
    text = (REPO / "docs" / "metrics.md").read_text()
    start, end = text.index("<!-- catalogue:start -->\n"), text.index("<!-- catalogue:end -->")
    assert text[start + len("<!-- catalogue:start -->\n"):end] == catalogue.markdown_table(), \
        "docs/metrics.md is out of date: paste `python -m cxrbench.catalogue` between the markers"


@pytest.mark.parametrize("key, label, higher", [
    ("auroc_mean", "AUROC", True), ("auroc/Effusion", "Effusion", True), ("acc_iou@0.3", "Acc@IoU0.3", True),
    ("afp_iou@0.5", "AFP@IoU0.5", False), ("loc_ms_per_image", "ms/img", False), ("iou>0.25", "IoU>0.25", True),
    ("hit_rate/Mass", "Mass", True), ("parameters", "params", False),
])
def test_lookup_of_summaries_classes_and_families(key, label, higher):
    assert catalogue.lookup(key) is not None
    assert catalogue.label(key) == label
    assert catalogue.higher_is_better(key) is higher


def test_unknown_keys_are_not_declared():
    assert catalogue.lookup("nonsense") is None and catalogue.lookup("acc_iou@x") is None
    assert catalogue.higher_is_better("plugin_column")  # undeclared: larger first


def test_every_key_a_cell_produces_is_declared(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    from cxrbench.config import parse_grid
    from cxrbench.driver import run_grid
    from cxrbench.store import ResultsStore

    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        (cell,) = store.cells(grid.name)
    keys = [*cell.metrics, *cell.localizations[0].metrics]
    undeclared = sorted(k for k in keys if catalogue.lookup(k) is None)
    assert undeclared == []


def test_table_keys_follow_catalogue_order_and_table_thresholds():
    available = ["hit_rate", "acc_iou@0.5", "acc_iou@0.1", "acc_iou@0.2", "iou_mean", "iou/Mass"]
    assert catalogue.table_keys("localization", available) == ["iou_mean", "acc_iou@0.1", "acc_iou@0.5", "hit_rate"]
    assert catalogue.table_keys("localization", available, compact=True) == ["iou_mean", "hit_rate"]
    assert "acc_iou@0.2" in catalogue.table_keys("localization", available, every_threshold=True)
