"""Leaderboards, exports, grouping, filtering, significance and the HTML report.

Two stores: a real tiny grid (2 heads x 2 seeds x 2 localizers, trained once for the
module) for the formats and the report, and a synthetic one with hand-made predictions
for the paired-bootstrap significance flag.

Column headers come from the metric catalogue (``cxrbench.catalogue``): the tests look
them up with ``catalogue.label`` rather than spelling metric keys.
"""

from __future__ import annotations

import base64
import copy
import html as html_module
import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from helpers import store_records
from rich.console import Console

import cxrbench
from cxrbench import catalogue, reporting
from cxrbench import cli as cli_module
from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.manager import build_plugin_manager
from cxrbench.metrics import classification_metrics
from cxrbench.records import CellAxes, CellResult
from cxrbench.registry import Registry
from cxrbench.reporting import LeaderboardRow, Significance
from cxrbench.reporting.rows import localizer_rows
from cxrbench.store import ResultsStore
from tests.conftest import TINY_GRID, builtin_plugins, cli_with

ID_KEYS = {"cell_id", "grid", "dataset", "backbone", "head", "localizer", "seed", "status", "metrics"}


def label(key):
    """The column header the catalogue gives ``key`` (``auroc_mean`` -> ``AUROC``)."""
    return catalogue.label(key)


@pytest.fixture(scope="module")
def pm():
    from tests.plugins import toy

    return build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy)], entry_points=False)


@pytest.fixture(scope="module")
def results(pm, tmp_path_factory):
    """A results directory holding the tiny grid with two seeds (4 cells, 8 records)."""
    grid = copy.deepcopy(TINY_GRID)
    grid["seeds"] = [0, 1]
    # labels given in the grid (with brackets, which rich would read as markup if not escaped)
    grid["datasets"][0]["label"] = "toy[num_images=64]"
    grid["backbones"][0]["label"] = "tiny[width=4]"
    root = tmp_path_factory.mktemp("report") / "results"
    with ResultsStore(root) as store:
        summary = run_grid(parse_grid(grid, Registry.from_plugin_manager(pm)), pm, store)
    assert (summary.ok, summary.failed) == (4, 0)
    return root


@pytest.fixture
def run_cli(pm, monkeypatch):
    # a wide console: rich would otherwise cut the table's columns to 80 characters
    monkeypatch.setattr(cli_module, "console", Console(width=400, color_system=None))
    with cli_with(pm) as invoke:
        yield invoke


@pytest.fixture
def records(run_cli, results):
    """The ungrouped JSON records of the tiny grid."""
    result = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def rows(results):
    """The ungrouped leaderboard rows of the tiny grid, straight from the store."""
    with ResultsStore(results) as store:
        return reporting.rows_from_cells(store.cells("tiny"))


def _usage_error(result, *fragments):
    assert result.exit_code == 4, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------- formats


def test_json_records_have_ids_axes_metrics_and_speed(records):
    assert len(records) == 8  # 4 cells x 2 localizers
    assert {r["seed"] for r in records} == {0, 1} and {r["head"] for r in records} == {"avg", "max"}
    assert {r["localizer"] for r in records} == {"cam", "gradcam"}
    for r in records:
        assert set(r) >= ID_KEYS
        assert r["grid"] == "tiny" and r["status"] == "ok" and r["error"] is None
        m = r["metrics"]
        for key in ("auroc_mean", "auroc/Blob", "auroc/Bar", "auroc_ci_low", "auroc_ci_high", "iou_mean",
                    "iobb_mean", "hit_rate", "acc_iou@0.1", "acc_iobb@0.5", "loc_ms_per_image"):
            assert isinstance(m[key], float), key
        assert m["auroc_ci_low"] <= m["auroc_mean"] <= m["auroc_ci_high"]
        assert m["auroc_mean"] == pytest.approx((m["auroc/Blob"] + m["auroc/Bar"]) / 2)
        assert r["info"]["parameters"] > 0
        assert r["info"]["train_images_per_s"] > 0 and r["info"]["inference_images_per_s"] > 0
        assert "history" not in r["info"]
    # the two localizer records of a cell share its classification metrics and differ in localization
    by_cell = pd.DataFrame([{"cell_id": r["cell_id"], **r["metrics"]} for r in records]).groupby("cell_id")
    assert (by_cell["auroc_mean"].nunique() == 1).all()


def test_csv_has_every_column_and_the_json_values(run_cli, results, records):
    text = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "csv").output
    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns[:8]) == ["cell_id", "grid", "dataset", "backbone", "head", "localizer", "seed",
                                       "status"]
    for column in ("auroc_mean", "auroc/Blob", "auroc/Bar", "auroc_ci_low", "auroc_ci_high", "iou_mean", "iobb_mean",
                   "hit_rate", "loc_ms_per_image", "parameters", "train_images_per_s", "inference_images_per_s"):
        assert column in frame.columns, column
    assert len(frame) == len(records)
    for r in records:
        row = frame[(frame.cell_id == r["cell_id"]) & (frame.localizer == r["localizer"])].iloc[0]
        assert row["auroc_mean"] == pytest.approx(r["metrics"]["auroc_mean"])
        assert row["iou_mean"] == pytest.approx(r["metrics"]["iou_mean"])
        assert row["parameters"] == r["info"]["parameters"]


def test_markdown_table_rows_and_values(run_cli, results, records):
    text = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "markdown").output
    lines = text.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:7] == ["cell_id", "dataset", "backbone", "head", "localizer", "seed", "status"]
    # metric headers are the catalogue's labels (AUROC, IoU, ...); per-class columns keep their key
    for column in ("AUROC", "CI low", "CI high", "IoU", "IoBB", "Hit", "ms/img", "auroc/Blob", "params",
                   "img/s train", "img/s infer"):
        assert column in header, column
    assert [label(k) for k in ("auroc_mean", "iou_mean", "parameters")] == ["AUROC", "IoU", "params"]
    assert len(header) == len(set(header))  # no two columns share a label
    assert set(lines[1].strip("|").split("|")) == {"---"}
    assert len(lines) == 2 + len(records)
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    for r in records:
        row = next(x for x in rows if x["cell_id"] == r["cell_id"] and x["localizer"] == r["localizer"])
        assert row["AUROC"] == f"{r['metrics']['auroc_mean']:.3f}"
        assert row["IoBB"] == f"{r['metrics']['iobb_mean']:.3f}"
        assert row["auroc/Blob"] == f"{r['metrics']['auroc/Blob']:.3f}"
        assert row["backbone"] == "tiny[width=4]"


def test_markdown_parameters_are_the_exact_count(run_cli, results, records):
    lines = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "markdown").output
    lines = lines.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    for r in records:
        row = next(x for x in rows if x["cell_id"] == r["cell_id"] and x["localizer"] == r["localizer"])
        assert row["params"] == str(r["info"]["parameters"])


def test_html_export_is_self_contained_with_both_tables(run_cli, results, records):
    text = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "html").output
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert "<h2>Classification</h2>" in text and "<h2>Localization</h2>" in text
    assert not re.search(r"https?://", text)
    for r in records:
        assert r["cell_id"] in text
        assert f"{r['metrics']['auroc_mean']:.3f}" in text and f"{r['metrics']['iou_mean']:.3f}" in text
    # headers are catalogue labels; the interval is one "95% CI" column (low-high), as in the terminal
    for column in ("AUROC", "95% CI", "IoU", "IoBB", "img/s train", "img/s infer", "params", "ms/img"):
        assert re.search(f"<th[^>]*>{re.escape(column)}</th>", text), column
    for r in records:
        m = r["metrics"]
        assert re.search(f"<td[^>]*>{m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f}</td>", text)


def test_table_shows_both_leaderboards_with_speed_columns(run_cli, results, records):
    result = run_cli("leaderboard", "--results", results, "--grid", "tiny")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Classification leaderboard: tiny" in out and "Localization leaderboard: tiny" in out
    for header in ("AUROC", "95% CI", "Blob", "Bar", "img/s train", "img/s infer", "params", "IoU", "IoBB",
                   label("acc_iou@0.1"), "Hit", "ms/img"):
        assert header in out, header
    # labels with options are shown whole, not eaten as rich markup
    assert "tiny[width=4]" in out and "toy[num_images=64]" in out
    best = min(records, key=lambda r: (-r["metrics"]["auroc_mean"], r["cell_id"]))  # ties: smaller id first
    first_row = next(line for line in out.splitlines() if line.startswith("│ 1 "))
    assert best["cell_id"] in first_row
    assert f"{best['metrics']['auroc_mean']:.3f}" in first_row
    m = best["metrics"]
    assert f"{m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f}" in first_row
    assert f"{best['info']['train_images_per_s']:.1f}" in first_row
    assert f"{best['info']['inference_images_per_s']:.1f}" in first_row
    assert "Top cell" in out and "paired bootstrap" in out  # the significance line of the top row


# --------------------------------------------------------------------------- group-by


def _grouped(run_cli, results, by):
    result = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "json", "--group-by", by)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _frame(records):
    return pd.DataFrame([{**{k: r[k] for k in ("cell_id", "head", "localizer", "seed")}, **r["metrics"]}
                         for r in records])


def test_group_over_seeds_matches_pandas(run_cli, results, records):
    grouped = _grouped(run_cli, results, "dataset,backbone,head,localizer")
    assert len(grouped) == 4  # 2 heads x 2 localizers
    expected = _frame(records).groupby(["head", "localizer"])
    for g in grouped:
        assert g["kind"] == "group" and g["seed"] == "*" and g["cell_id"] == "2 cells" and g["n"] == 2
        for metric in ("auroc_mean", "auroc/Blob", "iou_mean", "iobb_mean", "hit_rate"):
            values = expected.get_group((g["head"], g["localizer"]))[metric]
            assert g["metrics"][metric] == pytest.approx(values.mean())
            assert g["spread"][metric] == pytest.approx(values.std(ddof=1))
        assert not [k for k in g["metrics"] if k.endswith("_std")]  # the spread is not mixed into the metrics
        assert g["info"]["parameters"] > 0 and g["info"]["train_images_per_s"] > 0


def test_over_seed_is_group_by_every_other_axis(run_cli, results):
    over = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "json", "--over", "seed")
    assert json.loads(over.output) == _grouped(run_cli, results, "dataset,backbone,head,localizer")
    both = run_cli("leaderboard", "--results", results, "--over", "seed", "--group-by", "head")
    assert both.exit_code == 4 and "give one of them" in both.output
    bad = run_cli("leaderboard", "--results", results, "--over", "sede")
    assert bad.exit_code == 4 and "not an axis" in bad.output


def test_group_by_seed_counts_each_cell_once_for_classification(run_cli, results, records):
    grouped = _grouped(run_cli, results, "seed")
    # one classification row per seed (its localizer cleared), and for the localization table
    # one row per (seed, localizer) rather than every localizer pooled into one number
    classification = [g for g in grouped if g["localizer"] is None]
    per_localizer = [g for g in grouped if g["localizer"] is not None]
    assert sorted(g["seed"] for g in classification) == [0, 1]
    assert sorted((g["seed"], g["localizer"]) for g in per_localizer) == [
        (0, "cam"), (0, "gradcam"), (1, "cam"), (1, "gradcam")]
    frame = _frame(records)
    cells = frame.drop_duplicates("cell_id")  # AUROC belongs to the cell, not to each localizer row
    for g in classification:
        assert g["head"] == "*" and g["n"] == 4
        auroc = cells[cells.seed == g["seed"]]["auroc_mean"]
        assert len(auroc) == 2
        assert g["metrics"]["auroc_mean"] == pytest.approx(auroc.mean())
        assert g["spread"]["auroc_mean"] == pytest.approx(auroc.std(ddof=1))
        iou = frame[frame.seed == g["seed"]]["iou_mean"]  # localization: every (cell, localizer) row
        assert len(iou) == 4
        # localization numbers are shown per localizer, never pooled into the classification row
        assert "iou_mean" not in g["metrics"] and "iou_mean" not in g["spread"]
    for g in per_localizer:
        assert g["head"] == "*" and g["n"] == 2
        auroc = cells[cells.seed == g["seed"]]["auroc_mean"]  # each cell once, as in the classification row
        assert g["metrics"]["auroc_mean"] == pytest.approx(auroc.mean())
        assert g["spread"]["auroc_mean"] == pytest.approx(auroc.std(ddof=1))
        iou = frame[(frame.seed == g["seed"]) & (frame.localizer == g["localizer"])]["iou_mean"]
        assert len(iou) == 2
        assert g["metrics"]["iou_mean"] == pytest.approx(iou.mean())
        assert g["spread"]["iou_mean"] == pytest.approx(iou.std(ddof=1))


def test_narrow_console_moves_per_class_auroc_to_its_own_table(rows):
    def render(width):
        console = Console(width=width, color_system=None, record=True)
        reporting.render_tables(console, rows, "tiny")
        return console.export_text()

    wide, narrow = render(400), render(70)
    assert "Per-class AUROC" not in wide and "Blob" in wide
    assert "Per-class AUROC: tiny" in narrow and "Blob" in narrow
    # the localization table keeps its core columns instead of cutting every one to "…"
    acc = label("acc_iou@0.1")
    assert acc in wide and acc not in narrow and "narrow terminal" in narrow
    # every shared axis (one dataset) is named once in the title instead of on every row
    assert "Classification leaderboard: tiny (dataset toy" in wide.replace("\n", " ")


def test_ci_column_names_the_level_the_cells_were_evaluated_with(rows):
    def header(rows):
        console = Console(width=400, color_system=None, record=True)
        console.print(reporting.classification_table(rows, "t"))
        return console.export_text()

    assert all(r.provenance["evaluation"]["ci"] == pytest.approx(0.95) for r in rows)
    assert "95% CI" in header(rows)
    at_80 = [r.replace(provenance={**r.provenance, "evaluation": {**r.provenance["evaluation"], "ci": 0.8}})
             for r in rows]
    assert "80% CI" in header(at_80) and "95% CI" not in header(at_80)


def test_grouped_table_shows_mean_plus_minus_std(run_cli, results, records):
    out = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--group-by", "head").output
    auroc = _frame(records).drop_duplicates("cell_id").groupby("head")["auroc_mean"]
    for head in ("avg", "max"):
        assert f"{auroc.mean()[head]:.3f}±{auroc.std(ddof=1)[head]:.3f}" in out
    assert "Top cell" not in out  # no paired bootstrap between groups of cells
    # a class's spread is shown beside its mean, not as a column of a class called "Blob_std"
    assert "Blob_std" not in out and "Bar_std" not in out
    header = next(line for line in out.splitlines() if "AUROC" in line and "Blob" in line)
    assert header.count("Blob") == 1 and header.count("Bar") == 1


def test_grouped_exports_show_the_spread_of_every_metric(run_cli, results, records):
    over = ("leaderboard", "--results", results, "--grid", "tiny", "--over", "seed")
    grouped = {(g["head"], g["localizer"]): (g["metrics"], g["spread"])
               for g in _grouped(run_cli, results, "dataset,backbone,head,localizer")}
    lines = run_cli(*over, "--format", "markdown").output.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert not [c for c in header if c.endswith("_std")]
    assert header.count("auroc/Blob") == 1
    assert len(lines) == 2 + len(grouped)
    for line in lines[2:]:
        row = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        m, spread = grouped[(row["head"], row["localizer"])]
        for key in ("auroc_mean", "iou_mean", "auroc/Blob"):
            column = key if "/" in key else label(key)
            assert row[column] == f"{m[key]:.3f}±{spread[key]:.3f}", key
    # HTML: a group's spread is written beside its mean in the same cell, not as a column of its own
    html = run_cli(*over, "--format", "html").output
    assert "_std" not in html
    for section, key in (("Classification", "auroc_mean"), ("Classification", "auroc/Blob"),
                         ("Localization", "iou_mean"), ("Localization", "hit_rate")):
        table = _html_table(html, section)
        assert table and label(key) in table[0], key
        for row in table:
            # the classification table has no localizer column: a head's AUROC is the same in
            # its cam and gradcam groups (the same cells)
            m, spread = grouped[(row["head"], row.get("localizer", "cam"))]
            assert row[label(key)] == f"{m[key]:.3f}±{spread[key]:.3f}", key


def _html_table(text, section):
    """The rows of one table of an HTML export, top to bottom, as ``{header: cell text}``."""
    table = text.split(f"<h2>{section}</h2>", 1)[1].split("</table>", 1)[0]
    header = [html_module.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    assert len(header) == len(set(header)), header  # every column once
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    return [dict(zip(header, row, strict=True)) for row in rows if row]


def _html_column(text, section, column):
    """The values of one column of an HTML export's table, top to bottom."""
    return [row[column] for row in _html_table(text, section)]


def test_html_export_follows_sort(run_cli, results, records):
    def html(*args):
        return run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "html", *args).output

    assert not catalogue.higher_is_better("loc_ms_per_image") and catalogue.higher_is_better("train_images_per_s")
    ms = [float(v) for v in _html_column(html("--sort", "loc_ms_per_image"), "Localization",
                                         label("loc_ms_per_image"))]
    assert len(ms) == len(records) and ms == sorted(ms)  # lower is better: fastest first
    speed = [float(v) for v in _html_column(html("--sort", "train_images_per_s"), "Classification",
                                            label("train_images_per_s"))]
    assert len(speed) == 4 and speed == sorted(speed, reverse=True)
    default = [float(v) for v in _html_column(html(), "Classification", label("auroc_mean"))]
    assert len(default) == 4 and default == sorted(default, reverse=True)
    iou = [float(v) for v in _html_column(html(), "Localization", label("iou_mean"))]
    assert len(iou) == len(records) and iou == sorted(iou, reverse=True)


# --------------------------------------------------------------------------- filter, sort, top


def test_filter_keeps_matching_rows(run_cli, results, records):
    out = run_cli("leaderboard", "--results", results, "--format", "json", "--filter", "head=avg",
                  "--filter", "localizer=cam")
    kept = json.loads(out.output)
    assert len(kept) == 2 and all(r["head"] == "avg" and r["localizer"] == "cam" for r in kept)
    assert {r["seed"] for r in kept} == {0, 1}
    seed = json.loads(run_cli("leaderboard", "--results", results, "--format", "json", "--filter", "seed=1").output)
    assert len(seed) == 4 and {r["seed"] for r in seed} == {1}


def _json_order(run_cli, results, *args):
    result = run_cli("leaderboard", "--results", results, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_sort_best_first_and_lower_is_better_for_times(run_cli, results):
    by_speed = [r["info"]["train_images_per_s"] for r in _json_order(run_cli, results, "--sort", "train_images_per_s")]
    assert by_speed == sorted(by_speed, reverse=True)
    by_auroc = [r["metrics"]["auroc_mean"] for r in _json_order(run_cli, results, "--sort", "auroc_mean")]
    assert by_auroc == sorted(by_auroc, reverse=True)
    # the terminal's localization table follows a per-localizer sort key, lower-is-better for times
    for key, reverse in (("iou_mean", True), ("loc_ms_per_image", False)):
        ordered = localizer_rows(reporting.rows_from_cells(_cells(results)), key)
        values = [r.metrics[key] for r in ordered]
        assert len(values) == 8 and values == sorted(values, reverse=reverse), key


def _cells(results):
    with ResultsStore(results) as store:
        return store.cells("tiny")


def test_sort_by_a_localizer_metric_orders_every_exported_row(run_cli, results):
    by_iou = [r["metrics"]["iou_mean"] for r in _json_order(run_cli, results, "--sort", "iou_mean")]
    assert by_iou == sorted(by_iou, reverse=True)
    by_ms = [r["metrics"]["loc_ms_per_image"] for r in _json_order(run_cli, results, "--sort", "loc_ms_per_image")]
    assert by_ms == sorted(by_ms)


def test_top_keeps_the_best_cells(run_cli, results, records):
    top = json.loads(run_cli("leaderboard", "--results", results, "--format", "json", "--top", "2").output)
    ranked = sorted({r["cell_id"]: r["metrics"]["auroc_mean"] for r in records}.items(), key=lambda kv: -kv[1])
    assert {r["cell_id"] for r in top} == {cid for cid, _ in ranked[:2]}
    assert len(top) == 4  # both localizer rows of each of the 2 best cells
    top_iou = json.loads(run_cli("leaderboard", "--results", results, "--format", "json", "--sort", "iou_mean",
                                 "--top", "3").output)
    assert [r["metrics"]["iou_mean"] for r in top_iou] == sorted((r["metrics"]["iou_mean"] for r in records),
                                                                 reverse=True)[:3]
    table = run_cli("leaderboard", "--results", results, "--top", "1").output
    ranks = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│ ")]
    assert ranks == ["1", "1", "2"]  # the best cell; its cam and gradcam rows


@pytest.mark.parametrize(("args", "fragments"), [
    (("--filter", "head"), ["expected AXIS=VALUE"]),
    (("--filter", "colour=red"), ["unknown axis 'colour'"]),
    (("--filter", "head=avgg"), ["no record has head 'avgg'", "avg, max"]),
    (("--sort", "auroc_meen"), ["--sort 'auroc_meen'", "did you mean 'auroc_mean'"]),
    (("--sort", "iou"), ["--sort 'iou'", "did you mean 'iou_mean',"]),  # the family's headline first
    (("--top", "0"), ["--top 0"]),
    (("--group-by", "colour"), ["--group-by 'colour'"]),
    (("--group-by", ","), ["--group-by"]),
])
def test_bad_options_are_one_line_usage_errors(run_cli, results, args, fragments):
    _usage_error(run_cli("leaderboard", "--results", results, *args), *fragments)


# --------------------------------------------------------------------------- significance


CLASSES = ["Effusion", "Mass"]


@pytest.fixture
def synthetic(tmp_path):
    """A store builder: cells with hand-made predictions on the same 300 test images."""
    rng = np.random.default_rng(0)
    n = 300
    labels = (rng.random((n, 2)) < 0.4).astype(np.float32)
    patients = np.asarray([f"p{i // 2}" for i in range(n)])  # two images per patient
    root = tmp_path / "syn"

    def build(cells: dict[str, np.ndarray]) -> ResultsStore:
        store = ResultsStore(root)
        store.register_grid("syn", {"name": "syn"}, list(cells))
        for i, (cell_id, scores) in enumerate(cells.items()):
            metrics = classification_metrics(labels, scores, CLASSES, groups=patients, n_boot=50)
            store.write_result("syn", CellResult(
                cell_id=cell_id, grid="syn", axes=CellAxes(dataset="syn", backbone="net", head=f"h{i}", seed=0),
                config={}, status="ok", metrics=metrics, localizations=(),
                info={"parameters": 1000 * (i + 1), "train_images_per_s": 50.0, "inference_images_per_s": 200.0},
            ))
            folder = store.cell_dir(cell_id)
            folder.mkdir(parents=True)
            np.savez(folder / "predictions.npz", ids=np.asarray([f"img{j}" for j in range(n)]), patient_ids=patients,
                     labels=labels, scores=scores.astype(np.float32), classes=np.asarray(CLASSES))
        return store

    return build, labels, rng


def test_significance_flag_when_one_model_is_perfect(synthetic, run_cli):
    build, labels, rng = synthetic
    perfect = labels + 0.1 * rng.random(labels.shape)
    noisy = rng.random(labels.shape)
    with build({"aaaaperfect0": perfect, "bbbbbnoisy00": noisy}) as store:
        records = store_records(store, "syn")
        assert records[0]["metrics"]["auroc_mean"] == pytest.approx(1.0)
        sig = reporting.significance(reporting.rows_from_cells(store.cells("syn")), store.root)
    assert isinstance(sig, Significance)
    assert sig.best == "aaaaperfect0" and sig.next == "bbbbbnoisy00"
    assert sig.significant is True
    assert sig.diff > 0.3 and sig.low > 0 and sig.p < 0.01 and sig.low <= sig.diff <= sig.high
    assert sig.sentence().startswith("Top cell aaaaperfect0 is [green]significantly better[/] than bbbbbnoisy00")
    out = run_cli("leaderboard", "--results", store.root).output
    assert "Top cell aaaaperfect0 is significantly better than bbbbbnoisy00" in out
    row = next(line for line in out.splitlines() if line.startswith("│ 1 "))
    assert "aaaaperfect0" in row and "1.000*" in row  # the flag on the top row
    assert "* significantly better than the runner-up" in out
    # --top 1 hides the runner-up but the top row is still compared with it
    assert "1.000*" in run_cli("leaderboard", "--results", store.root, "--top", "1").output
    assert "Top cell" not in run_cli("leaderboard", "--results", store.root, "--no-significance").output


def test_no_significance_flag_between_identical_rows(synthetic, run_cli):
    build, labels, rng = synthetic
    scores = np.clip(labels * 0.3 + 0.7 * rng.random(labels.shape), 0, 1)
    with build({"cccccsame000": scores, "dddddsame000": scores.copy()}) as store:
        sig = reporting.significance(reporting.rows_from_cells(store.cells("syn")), store.root)
    assert sig.significant is False and sig.diff == 0 and sig.p == 1
    assert "not significantly different from" in sig.sentence()
    out = run_cli("leaderboard", "--results", store.root).output
    assert "not significantly different from" in out
    assert "*" not in "".join(line for line in out.splitlines() if line.startswith("│"))


def test_significance_needs_the_same_test_images(synthetic):
    build, labels, rng = synthetic
    with build({"eeeeeeeeeee0": labels.copy(), "fffffffffff0": rng.random(labels.shape)}) as store:
        path = store.cell_dir("fffffffffff0") / "predictions.npz"
        data = dict(np.load(path))
        data["ids"] = data["ids"][::-1].copy()  # another order = not a paired comparison
        np.savez(path, **data)
        assert reporting.significance(reporting.rows_from_cells(store.cells("syn")), store.root) is None


def test_synthetic_speed_and_size_columns(synthetic, run_cli):
    build, labels, rng = synthetic
    with build({"ggggggggggg0": labels.copy(), "hhhhhhhhhhh0": rng.random(labels.shape)}) as store:
        root = store.root
    out = run_cli("leaderboard", "--results", root).output
    row = next(line for line in out.splitlines() if "ggggggggggg0" in line)
    assert "50.0" in row and "200.0" in row and "1.0k" in row
    by_size = json.loads(run_cli("leaderboard", "--results", root, "--format", "json", "--sort", "parameters").output)
    assert [r["info"]["parameters"] for r in by_size] == [1000, 2000]  # fewer parameters first


# --------------------------------------------------------------------------- HTML report


def _images(text):
    return re.findall(r"<img alt='([^']*)' src='([^']*)'", text)


def test_report_is_one_self_contained_html_file(run_cli, results, records, tmp_path):
    out = tmp_path / "report.html"
    result = run_cli("report", "--results", results, "--grid", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # nothing beside it
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    # nothing to fetch: no URL, no external script or stylesheet, every image inline
    assert not re.search(r"https?://", text)
    assert "<link" not in text and "@import" not in text
    assert text.count("<script") == 1 and "<script>" in text  # the one inline script: sortable tables
    assert re.findall(r"src=['\"]([^'\"]*)", text) == [src for _, src in _images(text)]
    for _, src in _images(text):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the leaderboards
    assert "<h2>Classification</h2>" in text and "<h2>Localization</h2>" in text
    for r in records:
        assert r["cell_id"] in text and f"{r['metrics']['auroc_mean']:.3f}" in text
    assert "paired bootstrap" in text
    # ROC curves: one figure per class
    alts = [alt for alt, _ in _images(text)]
    for name in ("Blob", "Bar"):
        assert f"ROC {name}" in alts
    # the heatmap gallery, after its heading
    gallery = text.split("<h2>Heatmaps</h2>", 1)[1]
    assert "class='gallery'" in gallery
    heatmaps = _images(gallery)
    assert heatmaps and all(not alt.startswith("ROC") for alt, _ in heatmaps)
    assert any("cam" in alt for alt, _ in heatmaps) and any("gradcam" in alt for alt, _ in heatmaps)


def test_report_gallery_shows_each_saved_overlay_once_best_cell_first(run_cli, results, records, tmp_path):
    import shutil

    import cv2

    root = tmp_path / "results"
    shutil.copytree(results, root)
    best = max(records, key=lambda r: r["metrics"]["auroc_mean"])["cell_id"]
    for cell_id in {r["cell_id"] for r in records}:  # what localization.save_overlays writes, per localizer
        for localizer in ("cam", "gradcam"):
            folder = root / "cells" / cell_id / "overlays" / localizer
            folder.mkdir(parents=True)
            cv2.imwrite(str(folder / "img0_Blob.png"), np.zeros((4, 4, 3), np.uint8))
    out = tmp_path / "report.html"
    assert run_cli("report", "--results", root, "--grid", "tiny", "--out", out).exit_code == 0
    gallery = out.read_text(encoding="utf-8").split("<h2>Heatmaps</h2>", 1)[1]
    saved = gallery.split("Overlays saved during the run", 1)[1]  # after the freshly drawn, scored maps
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", saved)
    assert captions and len(captions) == len(set(captions))  # a cell's overlays once, not once per localizer row
    best_record = next(r for r in records if r["cell_id"] == best)
    assert captions[0].startswith(f"{best_record['backbone']} / {best_record['head']} / seed {best_record['seed']}")


def test_report_unknown_grid_is_a_usage_error(run_cli, results, tmp_path):
    _usage_error(run_cli("report", "--results", results, "--grid", "nope", "--out", tmp_path / "r.html"),
                 "no grid named 'nope'", "tiny")


def test_report_without_grid_reports_the_only_grid_and_names_them_when_several(run_cli, results, tmp_path):
    import shutil

    out = tmp_path / "only.html"
    assert run_cli("report", "--results", results, "--out", out).exit_code == 0
    assert "cxrbench report: tiny" in out.read_text(encoding="utf-8")
    copy_root = tmp_path / "two"
    shutil.copytree(results, copy_root)
    with ResultsStore(copy_root) as store:
        store.register_grid("other", {"name": "other"}, [])
    _usage_error(run_cli("report", "--results", copy_root, "--out", tmp_path / "r.html"),
                 "holds 2 grids: name one with --grid", "other, tiny")


def test_group_rows_without_ok_rows_and_nan_std():
    base = {"kind": "cell", "grid": "g", "dataset": "d", "backbone": "b", "head": "h", "localizer": None,
            "status": "ok"}
    rows = [LeaderboardRow(**base, cell_id="c1", seed=0, metrics={"auroc_mean": 0.8}),
            LeaderboardRow(**base, cell_id="c2", seed=1, metrics={"auroc_mean": 0.6}),
            LeaderboardRow(**{**base, "status": "failed"}, cell_id="c3", seed=2, metrics={})]
    (grouped,) = reporting.group_rows(rows, ["backbone"])
    assert grouped.kind == "group" and grouped.backbone == "b" and grouped.seed == "*"
    assert grouped.localizer is None  # no row had a localizer
    assert grouped.metrics["auroc_mean"] == pytest.approx(0.7)
    assert grouped.spread["auroc_mean"] == pytest.approx(math.sqrt(0.02))
    assert grouped.n == 2 and grouped.cell_id == "2 cells"  # the failed cell is left out
    (single,) = reporting.group_rows(rows[:1], ["seed"])
    assert math.isnan(single.spread["auroc_mean"])
    assert single.to_json()["spread"]["auroc_mean"] is None  # NaN exported as null
    assert reporting.group_rows(rows[2:], ["seed"]) == []


# --------------------------------------------------------------------------- plugin columns


class _ColumnsPlugin:
    """A third-party plugin adding a leaderboard column (AUROC in percent)."""

    @cxrbench.hookimpl
    def cxrbench_leaderboard_columns(self, records):
        return {"auroc_pct": [round(100 * r["metrics"].get("auroc_mean", 0.0), 1) for r in records]}


class _BadColumnsPlugin:
    @cxrbench.hookimpl
    def cxrbench_leaderboard_columns(self, records):
        return {"short": [1]}  # one value for several records


def test_plugin_columns_reach_every_format(run_cli, results, pm, records):
    pm.register(_ColumnsPlugin(), name="columns")
    try:
        out = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "json").output
        exported = json.loads(out)
        assert [r["columns"]["auroc_pct"] for r in exported] == [
            round(100 * r["metrics"]["auroc_mean"], 1) for r in records]
        assert "auroc_pct" in run_cli("leaderboard", "--results", results, "--format", "csv").output.splitlines()[0]
        assert "auroc_pct" in run_cli("leaderboard", "--results", results, "--format", "markdown").output
        assert "auroc_pct" in run_cli("leaderboard", "--results", results).output
    finally:
        pm.unregister(name="columns")


def test_a_malformed_plugin_column_is_one_line_naming_the_plugin(run_cli, results, pm):
    pm.register(_BadColumnsPlugin(), name="badcolumns")
    try:
        result = run_cli("leaderboard", "--results", results, "--format", "json")
        assert result.exit_code == 4
        assert result.output.strip().count("\n") == 0 and "plugin 'badcolumns'" in result.output
    finally:
        pm.unregister(name="badcolumns")
