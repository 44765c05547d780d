"""Cross-dataset evaluation in the grid (``evaluate_on:``): scored on other datasets, never retrained."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

import cxrbench
from cxrbench.config import parse_grid
from cxrbench.crosseval import MappedLocalizer
from cxrbench.data import load_split
from cxrbench.driver import run_grid
from cxrbench.errors import ConfigError
from cxrbench.grid import expand
from cxrbench.interfaces import Classifier, Split
from cxrbench.manager import build_plugin_manager
from cxrbench.pipeline import open_dataset
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from cxrbench.synonyms import ClassMatch
from tests.conftest import builtin_plugins, cli_with
from tests.plugins.toy import ToyDataset, ToyOptions


@dataclasses.dataclass(frozen=True)
class RenamedOptions(ToyOptions):
    classes: tuple[str, ...] = ("Blob", "Bar")


class RenamedToy(ToyDataset):
    """The toy data under other class names (a second 'hospital' with its own label spellings)."""

    NAME = "toy_renamed"
    Options = RenamedOptions

    def __init__(self, options, context):
        super().__init__(options, context)
        self.classes = list(options.classes)


class MergedToy(ToyDataset):
    """One class, 'Nodule/Mass': present where either toy finding is (as VinDr grades NIH's two)."""

    NAME = "toy_merged"

    def __init__(self, options, context):
        super().__init__(options, context)
        self.classes = ["Nodule/Mass"]

    def split(self, name):
        s = super().split(name)
        boxes = s.boxes.assign(class_index=0) if not s.boxes.empty else s.boxes
        return Split(ids=s.ids, patient_ids=s.patient_ids, labels=s.labels.max(axis=1, keepdims=True),
                     boxes=boxes, image_sizes=s.image_sizes)


class EmptyTestToy(ToyDataset):
    """A target whose test images are all missing (a partial download)."""

    NAME = "toy_no_test"

    def split(self, name):
        s = super().split(name)
        return s.subset(np.zeros(0, dtype=int)) if name == "test" else s


class TargetsPlugin:
    @cxrbench.hookimpl
    def cxrbench_register_datasets(self):
        return [RenamedToy, MergedToy, EmptyTestToy]


@pytest.fixture
def pm():
    from tests.plugins import toy

    return build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy), ("targets", TargetsPlugin())],
                                entry_points=False)


@pytest.fixture
def registry(pm):
    return Registry.from_plugin_manager(pm)


SOURCE = {"name": "toy", "options": {"num_images": 48, "image_size": 32}}
RENAMED = {"name": "toy_renamed", "options": {"num_images": 32, "image_size": 32, "seed": 1,
                                              "classes": ["blob", "Stripe"]}}
BASE = {"name": "xds", "seeds": [0], "datasets": [SOURCE], "backbones": [{"name": "tiny", "options": {"width": 4}}],
        "heads": ["avg"], "localizers": ["cam"], "train": {"epochs": 1, "batch_size": 16, "lr": 0.01},
        "evaluation": {"bootstrap": 20}}


def grid_dict(*targets):
    out = copy.deepcopy(BASE)
    if targets:
        out["evaluate_on"] = [copy.deepcopy(t) for t in targets]
    return out


def scores_of(store, cell_id, target_spec, registry):
    """The cell's probabilities on a target's test split, computed here from its best.pt."""
    cell = store.cell(cell_id)
    spec = registry.create("dataset", target_spec, "t")
    dataset = open_dataset(spec)
    source_classes = cell.info["classes"]
    model = Classifier.build(registry.create("backbone", BASE["backbones"][0], "b"),
                             registry.create("head", "avg", "h"), source_classes)
    model.load_state_dict(torch.load(store.artifacts(cell_id).best, weights_only=True)["model"])
    model.eval()
    test = load_split(dataset, "test", cell.info["input_size"])
    x = (torch.as_tensor(np.asarray(test.images), dtype=torch.float32)[:, None] / 255 - 0.449) / 0.226
    with torch.no_grad():
        probs = torch.sigmoid(model(x)).numpy()
    return probs, np.asarray(test.split.labels)


def test_ids_unchanged_and_metrics_match_an_independent_computation(pm, registry, tmp_path):
    plain, with_target = parse_grid(grid_dict(), registry), parse_grid(grid_dict(RENAMED), registry)
    ids = [c.cell_id for c in expand(plain, lambda s: "fp")]
    assert ids == [c.cell_id for c in expand(with_target, lambda s: "fp")]  # a target is not part of a cell id
    with ResultsStore(tmp_path / "r") as store:
        summary = run_grid(with_target, pm, store)
        assert (summary.ok, summary.failed, summary.transfers_failed) == (1, 0, 0)
        (cell,) = store.cells("xds")
        (transfer,) = cell.transfers
        assert transfer.ok and transfer.target == "toy_renamed"
        # only 'blob' is shared ('Stripe' is no finding of the model's); scored on the target's test split
        assert set(k.split("/", 1)[1] for k in transfer.metrics if k.startswith("auroc/")) == {"blob"}
        assert transfer.settings["unscored_target_classes"] == ["Stripe"]
        probs, labels = scores_of(store, cell.cell_id, RENAMED, registry)
        expected = roc_auc_score(labels[:, 0], probs[:, 0])  # model class 0 'Blob' -> target class 0 'blob'
        assert transfer.metrics["auroc/blob"] == pytest.approx(expected, abs=1e-6)
        assert transfer.metrics["auroc_mean"] == pytest.approx(expected, abs=1e-6)
        low, high = transfer.metrics["auroc_ci_low"], transfer.metrics["auroc_ci_high"]
        assert low <= high and np.isfinite(low)
        saved = np.load(store.cell_dir(cell.cell_id) / "transfers" / f"{transfer.key}.npz")
        np.testing.assert_allclose(saved["scores"][:, 0], probs[:, 0], atol=1e-5)
        # the target's boxes are scored with the cell's localizer, on the target's class names
        (loc,) = transfer.localizations
        assert loc.ok and loc.name == "cam" and "hit_rate/blob" in loc.metrics and loc.metrics["loc_images"] > 0
        # the cell's own record keeps its own classes: the target's scores live in their own row
        assert {k for k in cell.metrics if k.startswith("auroc/")} == {"auroc/Blob", "auroc/Bar"}


def test_adding_a_target_to_a_finished_grid_trains_nothing(pm, registry, tmp_path):
    results = tmp_path / "r"
    with ResultsStore(results) as store:
        run_grid(parse_grid(grid_dict(), registry), pm, store)
        (cell,) = store.cells("xds")
        best = store.artifacts(cell.cell_id).best
        mtime, metrics = best.stat().st_mtime_ns, dict(cell.metrics)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid_dict(RENAMED)))
    with cli_with(pm) as invoke:
        dry = invoke("run", "--grid", path, "--results", results, "--dry-run")
        assert "1 cell: 0 to train, 1 trained cell to evaluate (no retraining), 1 cross-dataset evaluation, 0 done" \
            in " ".join(dry.output.split())
        assert "on toy_renamed" in dry.output
        done = invoke("run", "--grid", path, "--results", results, "--no-progress")
        assert done.exit_code == 0, done.output
        assert "Cross-dataset" in done.output and "toy -> toy_renamed" in done.output
    with ResultsStore(results) as store:
        (after,) = store.cells("xds")
        assert best.stat().st_mtime_ns == mtime and dict(after.metrics) == metrics  # no retraining
        assert [t.status for t in after.transfers] == ["ok"]
        again = run_grid(parse_grid(grid_dict(RENAMED), registry), pm, store)
        assert (again.ok, again.skipped) == (0, 1)  # nothing left to do


def test_a_failing_target_fails_its_row_only(pm, registry, tmp_path):
    bad = {"name": "toy_renamed", "label": "broken", "options": {"num_images": 32, "fail_on_read": True}}
    path, results = tmp_path / "g.yaml", tmp_path / "r"
    path.write_text(yaml.safe_dump(grid_dict({**RENAMED, "label": "renamed"}, bad)))
    with cli_with(pm) as invoke:
        first = invoke("run", "--grid", path, "--results", results, "--no-progress")
        assert first.exit_code == 1, first.output
        again = invoke("run", "--grid", path, "--results", results, "--no-progress")
        assert again.exit_code == 1  # still failed in the store: still not a clean grid
        assert "cross-dataset evaluations of grid 'xds' are failed" in " ".join(again.output.split())
        shown = invoke("show", "--results", results, store_cell(results))
        assert "toy -> broken" in shown.output and "simulated unreadable image" in shown.output
    with ResultsStore(results, readonly=True) as store:
        (cell,) = store.cells("xds")
        assert cell.ok and cell.metrics["auroc_mean"] > 0
        by_target = {t.target: t for t in cell.transfers}
        assert by_target["renamed"].ok
        failed = by_target["broken"]
        assert failed.status == "failed" and "\n" not in failed.error and "simulated unreadable image" in failed.error


def store_cell(results):
    with ResultsStore(results, readonly=True) as store:
        return store.cells("xds")[0].cell_id


def test_leaderboard_exports_transfer_records(pm, registry, tmp_path):
    results = tmp_path / "r"
    with ResultsStore(results) as store:
        run_grid(parse_grid(grid_dict(RENAMED), registry), pm, store)
    with cli_with(pm) as invoke:
        out = invoke("leaderboard", "--results", results, "--format", "json")
        records = json.loads(out.output)
        table = invoke("leaderboard", "--results", results)
    transfers = [r for r in records if r["kind"] == "transfer"]
    cells = [r for r in records if r["kind"] == "cell"]
    assert len(cells) == 1 and len(transfers) == 1
    (row,) = transfers
    assert row["dataset"] == "toy -> toy_renamed" and row["localizer"] == "cam"
    assert row["cell_id"] == cells[0]["cell_id"] and cells[0]["dataset"] == "toy"
    assert "auroc/blob" in row["metrics"] and "hit_rate" in row["metrics"]
    assert "Cross-dataset" in table.output


def test_latex_html_and_report_give_transfers_a_table_of_their_own(pm, registry, tmp_path):
    # before: --format latex/html ranked "toy -> renamed" with the cells in the localization
    # table (bold if best), dropped it from classification, and the report had no such rows
    import re

    bad = {"name": "toy_renamed", "label": "broken", "options": {"num_images": 32, "fail_on_read": True}}
    path, results = tmp_path / "g.yaml", tmp_path / "r"
    path.write_text(yaml.safe_dump(grid_dict({**RENAMED, "label": "renamed"}, bad)))
    with cli_with(pm) as invoke:
        invoke("run", "--grid", path, "--results", results, "--no-progress")
        latex = invoke("leaderboard", "--results", results, "--format", "latex").output
        html = invoke("leaderboard", "--results", results, "--format", "html").output
        report = invoke("report", "--results", results, "--out", tmp_path / "report.html")
        assert report.exit_code == 0, report.output
    with ResultsStore(results, readonly=True) as store:
        (cell,) = store.cells("xds")
        ok = next(t for t in cell.transfers if t.target == "renamed")
    tables = latex.split(r"\begin{table}")
    own = [t for t in tables if "tab:cxrbench-cross-dataset" in t]
    assert len(own) == 1 and not any("renamed" in t or "broken" in t for t in tables if t not in own)
    rows = [line for line in own[0].splitlines() if r"$\rightarrow$" in line and "scored on" not in line]
    assert [line.split(" & ")[0] for line in rows] == [r"toy $\rightarrow$ broken", r"toy $\rightarrow$ renamed"]
    assert rows[0].split(" & ")[4] == "failed" and r"\textbf" not in own[0]
    assert rows[1].split(" & ")[4].startswith(f"{ok.metrics['auroc_mean']:.3f}")
    sections = {name: text for name, text in re.findall(r"<h2>([\w-]+)</h2>(.*?)(?=<h2>|$)", html, re.S)}
    assert set(sections) == {"Classification", "Localization", "Cross-dataset"}
    assert "renamed" not in sections["Localization"] and "toy -&gt; renamed" in sections["Cross-dataset"]
    page = (tmp_path / "report.html").read_text()
    section = re.search(r"<section id='cross-dataset'>(.*?)</section>", page, re.S).group(1)
    assert "toy -&gt; broken" in section and "simulated unreadable image" in section
    assert f"{ok.metrics['auroc_mean']:.3f}" in section
    assert "href='#cross-dataset'" in page  # in the table of contents


def test_subgroups_of_a_cross_dataset_evaluation_are_scored_on_the_target_images(pm, registry, tmp_path):
    target = {"name": "toy_renamed", "options": {"num_images": 160, "image_size": 32, "seed": 1,
                                                 "classes": ["blob", "Stripe"]}}
    results = tmp_path / "r"
    with ResultsStore(results) as store:
        run_grid(parse_grid(grid_dict(target), registry), pm, store)
        (cell,) = store.cells("xds")
        (transfer,) = cell.transfers
        saved = np.load(store.cell_dir(cell.cell_id) / "transfers" / f"{transfer.key}.npz")
    with cli_with(pm) as invoke:
        out = invoke("leaderboard", "--results", results, "--by", "sex", "--format", "json")
        table = invoke("leaderboard", "--results", results, "--by", "sex")
    records = json.loads(out.output)
    external = [r for r in records if r["dataset"] == "toy -> toy_renamed" and r["kind"] == "subgroup"
                and r["localizer"] is None]
    assert [r["group"] for r in external] == ["F", "M"]
    female = np.asarray([(int(i[3:]) // 2) % 2 == 0 for i in saved["ids"]])  # the toy's covariate rule
    assert external[0]["n_images"] == female.sum()
    expected = roc_auc_score(saved["labels"][female, 0], saved["scores"][female, 0])
    assert external[0]["metrics"]["auroc/blob"] == pytest.approx(expected, abs=1e-6)
    assert any(r["kind"] == "gap" and r["dataset"] == "toy -> toy_renamed" for r in records)
    assert any(r["dataset"] == "toy" for r in records)  # the cell's own subgroups too
    assert "toy -> toy_renamed" in table.output
    located = [r for r in records if r["dataset"] == "toy -> toy_renamed" and r["localizer"] == "cam"
               and r["kind"] == "subgroup"]
    assert [r["group"] for r in located] == ["F", "M"] and r"boxes" in located[0]["split"]
    pairs = np.load(results / "cells" / cell.cell_id / "transfers" / f"{transfer.key}.pairs" /
                    f"{transfer.localizations[0].key}.npz")
    female_pairs = np.asarray([(int(i[3:]) // 2) % 2 == 0 for i in pairs["ids"]])
    assert located[0]["n_pairs"] == female_pairs.sum()
    assert located[0]["metrics"]["iou_mean"] == pytest.approx(pairs["best_iou"][female_pairs].mean(), abs=1e-6)


def test_merged_class_scored_by_the_parts_maximum(pm, registry, tmp_path):
    source = {"name": "toy_renamed", "options": {"num_images": 48, "image_size": 32, "classes": ["Nodule", "Mass"]}}
    merged = {"name": "toy_merged", "options": {"num_images": 32, "image_size": 32, "seed": 2}}
    grid = grid_dict(merged)
    grid["datasets"] = [source]
    with ResultsStore(tmp_path / "r") as store:
        run_grid(parse_grid(grid, registry), pm, store)
        (cell,) = store.cells("xds")
        (transfer,) = cell.transfers
        probs, labels = scores_of(store, cell.cell_id, merged, registry)
    assert transfer.ok and transfer.settings["matches"][0]["combine"] == "max"
    expected = roc_auc_score(labels[:, 0], probs.max(axis=1))
    assert transfer.metrics["auroc/Nodule/Mass"] == pytest.approx(expected, abs=1e-6)


def test_mapped_localizer_explains_the_most_probable_part():
    class Model(torch.nn.Module):
        def forward(self, x):  # image 0: class 1 more probable; image 1: class 0
            return torch.tensor([[-1.0, 2.0, 0.0], [3.0, -2.0, 0.0]])

    class Constant:
        def unsupported_reason(self, model):
            return None

        def __call__(self, model, images, classes):  # map value = the explained class index
            return torch.stack([torch.full((images.shape[0], 2, 2), float(c)) for c in classes], dim=1)

    matches = [ClassMatch("Nodule/Mass", 0, "Nodule/Mass", (0, 1), ("Nodule", "Mass"), "merge", "max"),
               ClassMatch("Effusion", 1, "Effusion", (2,), ("Effusion",), "exact", "identity")]
    maps = MappedLocalizer(Constant(), matches)(Model(), torch.zeros(2, 1, 2, 2), [0, 1])
    assert maps.shape == (2, 2, 2, 2)
    assert maps[:, 0, 0, 0].tolist() == [1.0, 0.0]  # Mass on image 0, Nodule on image 1
    assert maps[:, 1, 0, 0].tolist() == [2.0, 2.0]


def test_no_shared_class_is_a_warning_and_the_pair_is_skipped(pm, registry, tmp_path):
    unrelated = {"name": "toy_renamed", "options": {"num_images": 32, "classes": ["Foo", "Qux"]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid_dict(unrelated)))
    with cli_with(pm) as invoke:
        checked = invoke("validate", path)
        assert checked.exit_code == 0
        assert "toy -> toy_renamed: no class in common" in " ".join(checked.output.split())
    with ResultsStore(tmp_path / "r") as store:
        run_grid(parse_grid(grid_dict(unrelated), registry), pm, store)
        assert store.cells("xds")[0].transfers == ()


def test_a_target_with_an_empty_test_split_is_a_warning_and_the_pair_is_skipped(pm, registry, tmp_path):
    # before: a failed row on every cell at every run ("empty test split"), exit 1, while the
    # dataset's own warning already said its images were missing
    empty = {"name": "toy_no_test", "options": {"num_images": 32, "image_size": 32}}
    path, results = tmp_path / "g.yaml", tmp_path / "r"
    path.write_text(yaml.safe_dump(grid_dict(RENAMED, empty)))
    with cli_with(pm) as invoke:
        checked = invoke("validate", path)
        assert checked.exit_code == 0
        assert "toy -> toy_no_test: the test split of 'toy_no_test' is empty" in " ".join(checked.output.split())
        ran = invoke("run", "--grid", path, "--results", results, "--no-progress")
        assert ran.exit_code == 0, ran.output
        assert "the test split of 'toy_no_test' is empty: nothing to score; the pair is not evaluated" in \
            " ".join(ran.output.split())
        audit = json.loads(invoke("audit", "--grid", path, "--results", results, "--format", "json").output)
    with ResultsStore(results, readonly=True) as store:
        assert [t.target for t in store.cells("xds")[0].transfers] == ["toy_renamed"]
    assert [(a["target"], a["skipped"] is None) for a in audit] == [("toy_renamed", True), ("toy_no_test", False)]


def test_unknown_target_is_a_config_error(registry):
    with pytest.raises(ConfigError, match=r"evaluate_on\[0\]"):
        parse_grid(grid_dict({"name": "no_such_dataset"}), registry)


def test_a_read_only_store_without_the_table_reads(pm, registry, tmp_path):
    import sqlite3

    results = tmp_path / "r"
    with ResultsStore(results) as store:
        run_grid(parse_grid(grid_dict(), registry), pm, store)
    with sqlite3.connect(results / "cxrbench.sqlite") as conn:  # a store written before transfers existed
        conn.execute("DROP TABLE transfers")
    with ResultsStore(results, readonly=True) as store:
        (cell,) = store.cells("xds")
        assert cell.ok and cell.transfers == () and store.transfer_statuses(cell.cell_id) == {}
