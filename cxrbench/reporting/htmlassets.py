"""The report's inline stylesheet and script (no file, font or script is fetched).

The layout keeps the page within the window: tables scroll inside their own frame with
the first column pinned, headers wrap, figures flow in a grid. The script makes every
``table.sortable`` sortable by a click (or Enter) on a header: numbers by their
``data-v`` value, text alphabetically, missing values last in both directions.
"""

from __future__ import annotations

STYLE = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--head:#f6f8fa;--accent:#0969da;--bad:#c4122f;--good:#1a7f37}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;color:var(--fg);background:#fff;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
  "Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:12px 20px 48px}
h1{font-size:23px;margin:10px 0 2px} h2{font-size:18px;margin:30px 0 8px;padding-top:10px;
  border-top:1px solid var(--line)} h3{font-size:15px;margin:18px 0 6px}
p{margin:6px 0;max-width:75em} code{font-size:12.5px;background:var(--head);padding:0 3px;border-radius:3px}
a{color:var(--accent)}
.muted,.note{color:var(--muted)} .note{font-size:13px}
dl.meta{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:1px 14px;margin:8px 0 4px;font-size:13px}
dl.meta dt{color:var(--muted)} dl.meta dd{margin:0;overflow-wrap:anywhere}
nav.toc{font-size:13px;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:4px 14px}
.lead{font-size:15px}
.table-wrap{width:fit-content;max-width:100%;overflow-x:auto;border:1px solid var(--line);border-radius:6px;
  margin:8px 0 6px}
table{border-collapse:separate;border-spacing:0;font-size:13px}
th,td{padding:4px 9px;border-bottom:1px solid var(--line);text-align:right;vertical-align:top;white-space:nowrap}
tbody tr:last-child td{border-bottom:0}
th{background:var(--head);font-weight:600;vertical-align:bottom;white-space:normal;min-width:4.5em;max-width:9em}
th.text,td.text{text-align:left}
td.wrap{white-space:normal;min-width:12em;max-width:30em;overflow-wrap:anywhere;text-align:left}
th:first-child,td:first-child{position:sticky;left:0;z-index:1;background:#fff;border-right:1px solid var(--line);
  text-align:left;white-space:normal;min-width:12em;max-width:18em;overflow-wrap:anywhere}
th:first-child{background:var(--head);z-index:2}
tbody tr:hover td{background:#f3f6fa}
th.sort{cursor:pointer;user-select:none}
th.sort:focus{outline:2px solid var(--accent);outline-offset:-2px}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
.sd,.ci,.n{color:var(--muted);font-size:12px}
.best{font-weight:700}
.failed{color:var(--bad);font-weight:600}
.reason{display:block;color:var(--bad);font-size:12px;white-space:normal;text-align:left;min-width:14em;
  max-width:30em;overflow-wrap:anywhere}
.ok{color:var(--good)}
details{margin:6px 0 10px} summary{cursor:pointer;color:var(--accent);font-size:13px}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;margin:8px 0}
.figures.wide{grid-template-columns:repeat(auto-fill,minmax(520px,1fr))}
figure{margin:0;text-align:center;min-width:0}
figure img{max-width:100%;height:auto}
figcaption{font-size:12px;color:var(--muted);margin-top:2px;overflow-wrap:anywhere}
.pairs{display:grid;gap:14px;margin:8px 0}
.pair h4{font-size:13px;margin:0 0 4px;font-weight:600}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px;margin:4px 0}
.gallery figure{border:1px solid var(--line);border-radius:6px;padding:6px;background:#fafbfc}
.gallery img{image-rendering:pixelated;width:100%}
.scores{font-size:12px;color:var(--fg)} .scores b{font-weight:600}
.legend{display:flex;align-items:center;flex-wrap:wrap;gap:6px 16px;font-size:12px;color:var(--muted)}
.legend img{height:12px;width:220px;border:1px solid var(--line)}
.swatch{display:inline-block;width:14px;height:10px;border:2px solid;vertical-align:middle;margin-right:4px}
table.settings td:first-child{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;
  white-space:nowrap;max-width:none}
table.settings td.wrap{min-width:16em}
table.settings td.wrap{color:var(--muted)}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:0 20px;align-items:start}
"""

SCRIPT = r"""
(function () {
  "use strict";
  function keyOf(cell) {
    var v = cell.getAttribute("data-v");
    if (v !== null) { return v === "" ? null : {num: true, v: parseFloat(v)}; }
    var t = cell.textContent.trim();
    return t === "" || t === "-" || t === "\u2014" ? null : {num: false, v: t.toLowerCase()};
  }
  function compare(a, b) {
    if (a.num && b.num) { return a.v - b.v; }
    var x = String(a.v), y = String(b.v);
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  function sortBy(table, th, col) {
    var body = table.tBodies[0];
    if (!body) { return; }
    var was = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-better") === "high" ? "descending" : "ascending";
    var dir = was === null || was === "none" ? first : (was === "ascending" ? "descending" : "ascending");
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      var cell = row.cells[col];
      return {row: row, i: i, key: cell ? keyOf(cell) : null};
    });
    rows.sort(function (a, b) {
      if (a.key === null || b.key === null) {
        return a.key === b.key ? a.i - b.i : (a.key === null ? 1 : -1);
      }
      var c = compare(a.key, b.key);
      return (dir === "ascending" ? c : -c) || a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    Array.prototype.forEach.call(th.parentNode.cells, function (other) { other.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead || !table.tHead.rows.length) { return; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.classList.add("sort");
      th.tabIndex = 0;
      th.setAttribute("aria-sort", "none");
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
}());
"""
