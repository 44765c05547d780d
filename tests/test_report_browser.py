"""The HTML report in a real browser: headless Chromium at 1280 x 900, over the DevTools protocol.

A tiny grid (one backbone, one head, two seeds, cam and gradcam, and an ``evaluate_on:``
target) is trained once for the module; gradcam is then recorded as failed on both seeds with a reason, as a localizer
that cannot explain a model is. The report is opened in Chromium (the Debian package;
``.ci/run`` installs it) and the test fails on any JavaScript error or console error, on
a network request, on a page wider than the window, on an image that does not decode, on
a blank screenshot, and when the failed localizer's reason, the seed-averaged rows or the
per-seed rows are missing. Where Chromium is not installed the tests skip, saying so,
unless ``CXRBENCH_REQUIRE_BROWSER`` is set (CI sets it: there a missing browser fails).
"""

from __future__ import annotations

import copy
import importlib.util
import os

import cv2
import numpy as np
import pytest

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.manager import build_plugin_manager
from cxrbench.records import LocalizerResult
from cxrbench.registry import Registry
from cxrbench.reporting.html import build_report
from cxrbench.store import ResultsStore
from cxrbench.subgroups import parse_by
from tests.chromium import Browser, find_chromium
from tests.conftest import TINY_GRID, builtin_plugins

WIDTH, HEIGHT = 1280, 900
REASON = "localizer 'gradcam' cannot explain this model: head avg gives no per-class logit map"

CHROMIUM = find_chromium()
MISSING = "headless Chromium is not installed (apt-get install chromium, or set $CHROMIUM to the browser)"


def _need_chromium() -> None:
    """Skip where there is no browser, but fail where CI asked for one (``CXRBENCH_REQUIRE_BROWSER``)."""
    if CHROMIUM is None:
        if os.environ.get("CXRBENCH_REQUIRE_BROWSER"):
            pytest.fail(f"CXRBENCH_REQUIRE_BROWSER is set but {MISSING}")
        pytest.skip(f"{MISSING}: the browser test of the HTML report needs it")

MEASURE = """
(async () => {
  await Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null)));
  const root = document.documentElement;
  const wraps = Array.from(document.querySelectorAll('.table-wrap')).map(w => {
    const r = w.getBoundingClientRect();
    const t = w.querySelector('table');
    return {id: t.id, left: r.left, right: r.right, scroll: w.scrollWidth, client: w.clientWidth,
            shown: r.width > 0};
  });
  return {
    innerWidth: window.innerWidth, clientWidth: root.clientWidth, scrollWidth: root.scrollWidth,
    bodyWidth: document.body.scrollWidth, title: document.title,
    h1: document.querySelector('h1').textContent, wraps: wraps,
    images: Array.from(document.images).map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight})),
  };
})()
"""

COLUMN = """
((id, header) => {
  const table = document.getElementById(id);
  const col = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === header);
  return Array.from(table.tBodies[0].rows).map(tr => parseFloat(tr.cells[col].getAttribute('data-v')));
})
"""

ROWS = """
((id) => Array.from(document.querySelectorAll('#' + id + ' tbody tr')).map(tr =>
  Array.from(tr.cells).map(td => ({text: td.innerText.trim(), title: td.title, v: td.getAttribute('data-v')}))))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(report file, {seed: cell metrics}) of the tiny grid with gradcam failed on every cell."""
    from tests.plugins import toy

    _need_chromium()

    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy)], entry_points=False)
    registry = Registry.from_plugin_manager(pm)
    grid = copy.deepcopy(TINY_GRID)
    grid.update(seeds=[0, 1], heads=["avg"])
    # a second "hospital" (other images of the same classes) scored without retraining
    grid["evaluate_on"] = [{"name": "toy", "label": "toy-b", "options": {"num_images": 48, "image_size": 32,
                                                                          "seed": 5}}]
    folder = tmp_path_factory.mktemp("browser")
    with ResultsStore(folder / "results") as store:
        summary = run_grid(parse_grid(grid, registry), pm, store)
        assert (summary.ok, summary.failed) == (2, 0)
        metrics = {}
        for cell in store.cells("tiny"):
            failed = tuple(LocalizerResult.failure(loc.key, loc.name, REASON) if loc.name == "gradcam" else loc
                           for loc in cell.localizations)
            store.write_result("tiny", cell.replace(localizations=failed), replace_localizations=True)
            metrics[cell.axes.seed] = dict(cell.metrics)
        text = build_report(store, registry, "tiny", by=[parse_by("sex"), parse_by("sex+view")])
    path = folder / "report.html"
    path.write_text(text, encoding="utf-8")
    return path, metrics


@pytest.fixture(scope="module")
def page(report, tmp_path_factory):
    """The report loaded in headless Chromium at 1280 x 900."""
    path, _ = report
    with Browser(CHROMIUM, tmp_path_factory.mktemp("profile"), width=WIDTH, height=HEIGHT) as browser:
        browser.open(path.as_uri())
        yield browser


def _open_every_details(page):
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")


def test_the_page_renders_without_errors_or_network(page, report):
    measured = page.evaluate(MEASURE)
    assert measured["title"] == "cxrbench report: tiny" and measured["h1"] == "cxrbench report: tiny"
    assert page.errors() == []  # console errors, uncaught exceptions, failed loads
    # nothing is fetched: the page itself is the only request, every image is a data: URI
    assert page.requests and all(url.startswith(("file:", "data:", "about:")) for url in page.requests), \
        page.requests


def test_no_horizontal_overflow_at_1280_px(page):
    for state in ("closed", "every <details> open"):
        if state != "closed":
            _open_every_details(page)
        m = page.evaluate(MEASURE)
        assert m["innerWidth"] == WIDTH
        assert m["scrollWidth"] <= m["innerWidth"] and m["bodyWidth"] <= m["innerWidth"], state
        shown = [w for w in m["wraps"] if w["shown"]]
        assert shown, state
        for w in shown:  # every table frame inside the window; a wide table scrolls inside its frame
            assert w["left"] >= 0 and w["right"] <= m["clientWidth"] + 0.5, (state, w)
    # the seed-averaged leaderboards fit as they are, without scrolling inside their frame
    m = page.evaluate(MEASURE)
    summaries = {w["id"]: w for w in m["wraps"] if w["id"] in ("classification-summary", "localization-summary")}
    assert set(summaries) == {"classification-summary", "localization-summary"}
    for w in summaries.values():
        assert w["scroll"] <= w["client"], w
    assert page.errors() == []


def test_every_image_decodes(page):
    images = page.evaluate(MEASURE)["images"]
    assert all(i["w"] > 0 and i["h"] > 0 for i in images), [i["alt"] for i in images if not i["w"]]
    alts = [i["alt"] for i in images]
    assert {"ROC Blob", "ROC Bar"} <= set(alts)
    assert "colour scale" in alts and "per-class AUROC" in alts
    assert any(a.startswith("training ") for a in alts)
    assert any("against" in a for a in alts)  # the speed-against-accuracy chart
    if importlib.util.find_spec("cxrbench.calibration") is not None:  # reliability diagrams of the best cell
        assert {"reliability Blob", "reliability Bar"} <= set(alts)
    gallery = [a for a in alts if a.endswith(" cam")]
    assert gallery and not [a for a in alts if a.endswith(" gradcam")]  # gradcam failed: not drawn


def test_cross_dataset_rows_have_their_own_table(page, report):
    rows = page.evaluate(f"{ROWS}('cross-dataset')")
    pairs = [r[0]["text"] for r in rows]
    assert pairs and set(pairs) == {"toy -> toy-b"}
    assert len({r[3]["text"] for r in rows}) == 2  # both seeds
    assert "toy-b" not in page.evaluate("document.getElementById('localization').innerText")
    assert "toy-b" not in page.evaluate("document.getElementById('classification').innerText")


def test_subgroup_tables_are_drawn_in_the_window(page):
    rows = page.evaluate(f"{ROWS}('subgroups-classification-sex')")
    groups = [r[4]["text"] for r in rows if r[4]["text"] != "gap"]  # (a gap where both groups can be scored)
    assert groups == ["F", "M"] * 4  # two seeds, on the cells' own test split and on the evaluate_on target
    assert [r[0]["text"] for r in rows if r[0]["text"]] == ["toy", "toy", "toy -> toy-b", "toy -> toy-b"]
    assert page.evaluate("document.getElementById('subgroups-localization-sex_view') !== null")


def test_failed_localizer_shows_failed_and_its_reason(page):
    rows = page.evaluate(f"{ROWS}('localization-summary')")
    failed = [r for r in rows if any(c["text"] == "gradcam" for c in r)]
    assert len(failed) == 1
    cells = failed[0]
    reason_cell = next(c for c in cells if c["text"].startswith("failed"))
    assert REASON in reason_cell["text"]  # visible, not only on hover
    assert reason_cell["title"] == REASON and reason_cell["v"] == ""  # the tooltip; sorts last
    ok = [r for r in rows if any(c["text"] == "cam" for c in r)]
    assert len(ok) == 1 and not any("failed" in c["text"] for c in ok[0])
    # and in the list of failures, once per cell
    failures = page.evaluate(f"{ROWS}('failures-table')")
    assert len(failures) == 2 and all(r[3]["title"] == REASON for r in failures)
    assert "gradcam: not drawn" in page.evaluate("document.getElementById('heatmaps').innerText")


def test_seeds_are_averaged_with_their_spread_and_per_seed_rows_remain(page, report):
    _, metrics = report
    auroc = np.array([metrics[0]["auroc_mean"], metrics[1]["auroc_mean"]])
    (row,) = page.evaluate(f"{ROWS}('classification-summary')")  # one configuration, two seeds
    texts = [c["text"] for c in row]
    assert texts[:2] == ["tiny", "avg"]
    assert f"{auroc.mean():.3f} ± {auroc.std(ddof=1):.3f}" in texts
    assert "2" in texts  # seeds averaged
    per_seed = page.evaluate("Array.from(document.querySelectorAll('#classification-per-seed tbody tr'))"
                             ".map(tr => tr.innerText)")
    assert len(per_seed) == 2
    for seed, m in metrics.items():
        assert any(f"{m['auroc_mean']:.3f}" in line and f"{m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f}" in line
                   for line in per_seed), seed


def test_clicking_a_header_sorts_the_table(page):
    def values():
        return page.evaluate(f"{COLUMN}('classification-per-seed', 'AUROC')")

    header = ("Array.from(document.querySelectorAll('#classification-per-seed thead th'))"
              ".find(th => th.textContent === 'AUROC')")
    page.evaluate(f"{header}.click()")
    assert page.evaluate(f"{header}.getAttribute('aria-sort')") == "descending"  # higher is better: best first
    first = values()
    assert first == sorted(first, reverse=True)
    page.evaluate(f"{header}.click()")
    assert values() == sorted(first)
    # a failed localizer has no number: last whichever way the column is sorted
    iou = ("Array.from(document.querySelectorAll('#localization-per-seed thead th'))"
           ".find(th => th.textContent === 'IoU')")
    for direction in ("descending", "ascending"):
        page.evaluate(f"{iou}.click()")
        assert page.evaluate(f"{iou}.getAttribute('aria-sort')") == direction
        column = page.evaluate(f"{COLUMN}('localization-per-seed', 'IoU')")
        numbers = [v for v in column if v is not None]  # JSON has no NaN: a row without a number reads None
        assert len(numbers) == 2 and column[2:] == [None, None]  # the two failed rows last
        assert numbers == sorted(numbers, reverse=direction == "descending")
    assert page.errors() == []


def test_screenshot_at_1280_by_900_is_not_blank(page):
    page.evaluate("window.scrollTo(0, 0)")
    picture = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (HEIGHT, WIDTH, 3)
    ink = (picture.min(axis=2) < 200).mean()  # text, rules and table borders on a white page
    assert 0.01 < ink < 0.6, ink
    colours = picture.reshape(-1, 3).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    assert len(np.unique(colours)) > 50  # anti-aliased text and figures, not a flat colour


def test_the_harness_sees_javascript_errors(tmp_path):
    """The checks above could fail: a thrown error and a console.error are both caught."""
    _need_chromium()
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><title>x</title><p>x</p><script>console.error('said');"
                    "undefinedFunction();</script>", encoding="utf-8")
    with Browser(CHROMIUM, tmp_path / "profile", width=WIDTH, height=HEIGHT) as browser:
        browser.open(page.as_uri())
        texts = [e.text for e in browser.errors()]
    assert any("said" in t for t in texts) and any("undefinedFunction" in t for t in texts), texts
