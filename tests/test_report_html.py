"""The HTML report's parts on hand-made rows: seed averages, the Pareto front, cells and settings tables.

The whole report in a browser is ``test_report_browser.py``; these are the pieces, fast and
without a store.
"""

from __future__ import annotations

import html as html_module
import math
import re

import numpy as np
import pytest

from cxrbench.config import TrainSpec
from cxrbench.reporting import LeaderboardRow
from cxrbench.reporting.charts import TradeoffPoint, pareto_front, per_class_figure, tradeoff_figure
from cxrbench.reporting.html import _classification_summary, _localization_summary, attribute_docs, html_tables
from cxrbench.reporting.htmltable import number_cell, settings_table, show_value
from cxrbench.reporting.seedavg import classification_groups, localization_groups

PNG = b"\x89PNG\r\n\x1a\n"


def row(seed, auroc, *, head="avg", status="ok", error=None, localizer=None, loc_status=None, loc_error=None,
        iou=None):
    metrics = {"auroc_mean": auroc, "auroc/Blob": auroc}
    if iou is not None:
        metrics["iou_mean"] = iou
    return LeaderboardRow(kind="cell", cell_id=f"{head}{seed}", grid="g", dataset="toy", backbone="net", head=head,
                          localizer=localizer, seed=seed, status=status, error=error, metrics=metrics,
                          info={"train_images_per_s": 100.0 + seed}, localizer_key=localizer,
                          localizer_status=loc_status, localizer_error=loc_error)


@pytest.fixture
def rows():
    """Head avg: seeds 0 and 1 ok, seed 2 failed; cam ok on both, gradcam failed on seed 1. Head max: seed 0."""
    out = []
    for seed, auroc, cam, gradcam in ((0, 0.8, 0.30, 0.20), (1, 0.7, 0.40, None)):
        out.append(row(seed, auroc, localizer="cam", loc_status="ok", iou=cam))
        out.append(row(seed, auroc, localizer="gradcam", loc_status="ok" if gradcam else "failed", iou=gradcam,
                       loc_error=None if gradcam else "head avg has no logit map"))
    out.append(row(2, math.nan, status="failed", error="CUDA out of memory"))
    out.append(row(0, 0.9, head="max", localizer="cam", loc_status="failed", loc_error="boom"))
    return out


def test_classification_groups_average_the_seeds_that_succeeded(rows):
    groups = classification_groups(rows)
    assert [g.axes for g in groups] == [("toy", "net", "max"), ("toy", "net", "avg")]  # best mean first
    avg = groups[1]
    assert avg.seeds == [0, 1, 2] and avg.ok_seeds == 2
    assert avg.value("auroc_mean") == pytest.approx(0.75)
    assert avg.spread("auroc_mean") == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert [r.seed for r in avg.failures] == [2]
    # speed is a cell's, averaged over its ok cells once each (not once per localizer row)
    assert avg.value("train_images_per_s") == pytest.approx(100.5)
    assert math.isnan(groups[0].spread("auroc_mean"))  # one seed: no spread


def test_localization_groups_keep_failed_localizers_with_their_reason(rows):
    groups = {g.axes[2:]: g for g in localization_groups(rows)}
    assert set(groups) == {("avg", "cam"), ("avg", "gradcam"), ("max", "cam")}
    cam = groups[("avg", "cam")]
    assert cam.value("iou_mean") == pytest.approx(0.35) and cam.spread("iou_mean") == pytest.approx(
        np.std([0.3, 0.4], ddof=1))
    gradcam = groups[("avg", "gradcam")]
    assert gradcam.ok_seeds == 1 and gradcam.value("iou_mean") == pytest.approx(0.2)
    assert [r.localizer_error for r in gradcam.failures] == ["head avg has no logit map", None]
    assert groups[("max", "cam")].mean is None  # failed on every seed: still a group, without numbers
    # the avg cell of seed 2 failed before localizing: a failed seed of each of avg's localizers
    assert [(r.seed, r.status) for r in cam.failures] == [(2, "failed")] and cam.seeds == [0, 1, 2]
    assert [r.seed for r in gradcam.failures] == [1, 2]
    # ranked best mean first; the group without any number last
    assert [g.axes[2:] for g in localization_groups(rows)] == [("avg", "cam"), ("avg", "gradcam"), ("max", "cam")]


def test_summary_tables_show_spread_seed_counts_and_failures(rows):
    cls = _classification_summary(classification_groups(rows))
    assert "0.750<span class='sd'> ± 0.071</span>" in cls
    # two of the three seeds, the failed one named with its reason, visible and as tooltip
    assert "2 of 3<span class='reason'>seed 2: cell failed: CUDA out of memory</span>" in cls
    assert "title='seed 2: cell failed: CUDA out of memory'" in cls
    loc = html_module.unescape(_localization_summary(localization_groups(rows)))
    assert ("1 of 3<span class='reason'>seed 1: head avg has no logit map; seed 2: cell failed: CUDA out of "
            "memory</span>") in loc
    assert "2 of 3<span class='reason'>seed 2: cell failed: CUDA out of memory</span>" in loc  # cam
    # every seed failed: "failed" and the reason where the numbers would be, sorting last
    failed = re.search(r"<td class='wrap' title='boom' data-v=''>(.*?)</td>", loc)
    assert failed and "<span class='failed'>failed</span><span class='reason'>boom</span>" in failed.group(1)


def test_leaderboard_export_says_why_a_localizer_failed(rows):
    text = html_tables([r for r in rows if r.localizer])
    assert "<h2>Localization</h2>" in text
    local = text.split("<h2>Localization</h2>", 1)[1]
    assert local.count("class='failed'>failed</span>") == 2
    assert "title='head avg has no logit map'" in local and "<span class='reason'>boom</span>" in local
    # values as the terminal writes them, sortable by their number
    assert "<td data-v='0.3'>0.300</td>" in local


def test_number_cell_digits_spread_interval_and_missing():
    assert number_cell("auroc_mean", 0.91234, spread=0.0123).html == "0.912<span class='sd'> ± 0.012</span>"
    cell = number_cell("iou_mean", 0.25, interval=(0.2, 0.31))
    assert cell.html == "0.250 <span class='ci'>0.200-0.310</span>" and cell.sort == 0.25
    assert number_cell("parameters", 11_200_000).html == "11.2M"
    empty = number_cell("auroc_mean", math.nan)
    assert empty.html == "-" and empty.sort is None and empty.sortable_number


def test_pareto_front_by_hand():
    xs, ys = [1.0, 2.0, 3.0, 4.0, math.nan], [0.9, 0.8, 0.95, 0.7, 0.99]
    # faster is higher x: (3, .95) beats (1, .9) and (2, .8); (4, .7) is the fastest
    assert pareto_front(xs, ys) == [2, 3]
    # faster is lower x (milliseconds): (1, .9) is fastest, (3, .95) most accurate, the rest dominated
    assert pareto_front(xs, ys, x_higher=False) == [0, 2]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [0, 1]  # equal points do not dominate each other
    assert pareto_front([], []) == []


def test_charts_are_png():
    points = [TradeoffPoint("a", 10.0, 0.8, 0.01), TradeoffPoint("b", 200.0, 0.7, None)]
    assert tradeoff_figure(points, xlabel="img/s", ylabel="AUROC").startswith(PNG)
    from cxrbench.reporting.charts import BarSeries

    png = per_class_figure([BarSeries("a", [0.8, math.nan], [0.01, math.nan])], ["Blob", "Bar"], ylabel="AUROC")
    assert png.startswith(PNG)
    from cxrbench.reporting.charts import reliability_figure

    edges = np.linspace(0, 1, 4)
    png = reliability_figure("Blob", edges, np.array([0.1, np.nan, 0.9]), np.array([0.0, np.nan, 1.0]),
                             np.array([3, 0, 2]))
    assert png.startswith(PNG)


def test_settings_table_marks_what_differs_from_the_default():
    docs = attribute_docs(TrainSpec)
    assert docs["lr"].startswith("learning rate") and "``" not in "".join(docs.values())
    text = settings_table({"lr": 0.01, "epochs": TrainSpec().epochs, "amp": None},
                          defaults={"lr": TrainSpec().lr, "epochs": TrainSpec().epochs, "amp": None}, meanings=docs)
    assert "<td class='text'><b>0.01</b></td>" in text  # changed: bold
    assert f"<td class='text'>{TrainSpec().epochs}</td>" in text and "<td class='text'>none</td>" in text
    assert show_value({"a": [1, 2], "b": True}) == "a=1, 2, b=true"


def test_a_configuration_whose_every_seed_failed_says_why():
    rows = [row(0, 0.8), row(0, math.nan, head="lse", status="failed", error="NaN loss at epoch 1"),
            row(1, math.nan, head="lse", status="failed", error="NaN loss at epoch 1")]
    groups = classification_groups(rows)
    assert [g.axes[2] for g in groups] == ["avg", "lse"] and groups[1].mean is None
    text = _classification_summary(groups)
    last = text.rsplit("<tr>", 1)[1]
    assert "<span class='failed'>failed</span><span class='reason'>cell failed: NaN loss at epoch 1</span>" in last
    assert "0 of 2" in last
