r"""LaTeX leaderboards for papers: booktabs tables from the same rows as the other formats.

Three tables, each a ``table`` float with a caption and a label: classification (one row per
cell or group: the catalogue's classification columns with their intervals), per-class
AUROC, and localization (one row per cell x localizer), the last two only when the rows
have them; cross-dataset rows (``evaluate_on:``) get a fourth table of their own, in
source-target order and never ranked or bolded with the cells (their test sets differ).
The best value of each column (by the catalogue's direction, at the digits shown) is bold;
ties are all bold. An interval is written as ``value ± half-width`` (``ci_style="pm"``; the
half-width of the percentile interval, ``(high - low) / 2``, which hides any asymmetry) or
as ``value [low, high]`` (``ci_style="interval"``). A grouped row shows ``mean ± std`` over
its members instead. Reference rows (published baselines) follow the ranked rows under
their own rule, marked ``ref.``, never bold, and their sources and caveats are listed under
the table. Needs ``\usepackage{booktabs}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import catalogue
from .columns import ci_level, classification_keys, localization_keys, per_class_auroc_keys, varying_axes
from .rows import LeaderboardRow, cell_rows, localizer_rows, missing

CI_STYLES = ("pm", "interval")

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}"}


def escape(text: object) -> str:
    r"""``text`` with LaTeX's special characters escaped (``Pleural_Thickening`` -> ``Pleural\_Thickening``)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def _number(value: object, digits: int) -> str | None:
    if missing(value) or (isinstance(value, float) and math.isinf(value)):
        return None
    return f"{float(value):.{digits}f}"


def _best(rows: Sequence[LeaderboardRow], key: str) -> str | None:
    """The best shown value of ``key`` among ranked rows (as text, so equal-at-display ties share it)."""
    digits = catalogue.digits(key)
    values = [float(r.value(key)) for r in rows if r.kind != "reference" and _number(r.value(key), digits)]
    if not values:
        return None
    best = max(values) if catalogue.higher_is_better(key) else min(values)
    return _number(best, digits)


def _cell(row: LeaderboardRow, key: str, best: str | None, ci_style: str, with_ci: bool = True) -> str:
    digits = catalogue.digits(key)
    text = _number(row.value(key), digits)
    if text is None:
        return "--"
    shown = rf"\textbf{{{text}}}" if row.kind != "reference" and text == best else text
    if row.kind == "group":
        spread = _number(row.spread.get(key), digits)
        return shown + (rf" $\pm$ {spread}" if spread is not None else "")
    spec = catalogue.lookup(key)
    if not with_ci or row.kind == "reference" or spec is None or spec.ci is None:
        return shown
    low, high = (row.metrics.get(k) for k in spec.ci)
    if missing(low) or missing(high):
        return shown
    if ci_style == "pm":
        return shown + rf" $\pm$ {float(high - low) / 2:.{digits}f}"
    return shown + f" [{float(low):.{digits}f}, {float(high):.{digits}f}]"


def _tabular(header: Sequence[str], body: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], align: str,
             caption: str, label: str, notes: Sequence[str] = ()) -> str:
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in body]
    if refs:
        lines += [r"\midrule", rf"\multicolumn{{{len(header)}}}{{l}}{{\emph{{Published baselines (reference, "
                               r"not ranked)}} \\"]
        lines += [" & ".join(cells) + r" \\" for cells in refs]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines += [r"\par\smallskip\footnotesize", *[note + r"\par" for note in notes]]
    lines.append(r"\end{table}")
    return "\n".join(lines)


def _axes_cells(r: LeaderboardRow, axes: Sequence[str]) -> list[str]:
    if r.kind == "reference":
        return [escape(r.backbone) if a == "backbone" else "--" for a in axes]
    return [escape(r.axis(a)) if r.axis(a) is not None else "--" for a in axes]


def _reference_notes(refs: Sequence[LeaderboardRow]) -> list[str]:
    notes = []
    for r in refs:
        cols = r.columns
        caveat = cols.get("reference caveat")
        notes.append(f"{escape(r.backbone)}: {escape(cols.get('reference source', ''))}; split "
                     f"{escape(cols.get('reference split', ''))}" + (f"; {escape(caveat)}" if caveat and caveat != "-"
                                                                        else ""))
    return notes


def latex_tables(rows: Sequence[LeaderboardRow], sort_key: str | None = None, *, ci_style: str = "pm") -> str:
    """The rows as booktabs LaTeX tables (module docstring).

    Args:
        rows: leaderboard rows, ranked; reference rows (kind ``reference``) may follow.
        sort_key: the metric the rows were ranked by (default AUROC, IoU for localization).
        ci_style: ``pm`` (value ± half-width) or ``interval`` (value [low, high]).

    Returns:
        LaTeX source (one or more ``table`` floats).

    Raises:
        ValueError: for an unknown ``ci_style``.

    """
    if ci_style not in CI_STYLES:
        raise ValueError(f"ci_style must be one of {', '.join(CI_STYLES)}, got {ci_style!r}")
    refs = [r for r in rows if r.kind == "reference"]
    transfers = [r for r in rows if r.kind == "transfer"]
    ranked = [r for r in rows if r.kind not in ("reference", "transfer")]
    out = [r"% cxrbench leaderboard (needs \usepackage{booktabs})"]
    trained = [r for r in ranked if (r.info or {}).get("kind") != "scored maps"]
    if trained:
        out.append(_classification(cell_rows(trained, sort_key), refs, ci_style))
        per_class = _per_class(cell_rows(trained, sort_key), refs)
        if per_class:
            out.append(per_class)
    localization = _localization(localizer_rows(ranked, sort_key), ci_style)
    if localization:
        out.append(localization)
    if transfers:
        out.append(_cross_dataset(transfers, ci_style))
    if len(out) == 1:
        out.append("% no results")
    return "\n\n".join(out) + "\n"


def _classification(rows: Sequence[LeaderboardRow], refs: Sequence[LeaderboardRow], ci_style: str) -> str:
    axes = varying_axes(rows)
    keys = classification_keys(rows) or ["auroc_mean"]
    best = {k: _best(rows, k) for k in keys}
    header = ["\\#", *[escape(a) for a in axes], *[escape(catalogue.label(k)) for k in keys]]
    body = [[str(rank), *_axes_cells(r, axes), *[_cell(r, k, best[k], ci_style) for k in keys]]
            for rank, r in enumerate(rows, start=1)]
    ref_body = [["ref.", *_axes_cells(r, axes), *[_cell(r, k, None, ci_style) for k in keys]] for r in refs
                if any(k in r.metrics for k in keys)]  # e.g. no mean over the cells' classes: per-class table only
    if any(r.kind == "group" for r in rows):
        shown = "mean $\\pm$ std over the group"
    else:
        form = "$\\pm$ half-width of the" if ci_style == "pm" else "[low, high]: the"
        shown = f"{form} {escape(ci_level(rows))} (patient-level bootstrap)"
    caption = f"Classification on the test split; {shown}; best in bold."
    return _tabular(header, body, ref_body, "r" + "l" * len(axes) + "r" * len(keys), caption,
                    "tab:cxrbench-classification", _reference_notes(refs))


def _per_class(rows: Sequence[LeaderboardRow], refs: Sequence[LeaderboardRow]) -> str | None:
    keys = per_class_auroc_keys(rows)
    if not keys:
        return None
    axes = varying_axes(rows)
    best = {k: _best(rows, k) for k in keys}
    header = ["\\#", *[escape(a) for a in axes], *[escape(catalogue.label(k)) for k in keys]]
    body = [[str(rank), *_axes_cells(r, axes), *[_cell(r, k, best[k], "pm", with_ci=False) for k in keys]]
            for rank, r in enumerate(rows, start=1)]
    ref_body = [["ref.", *_axes_cells(r, axes), *[_cell(r, k, None, "pm", with_ci=False) for k in keys]]
                for r in refs if any(k in r.metrics for k in keys)]
    return _tabular(header, body, ref_body, "r" + "l" * len(axes) + "r" * len(keys),
                    "Per-class AUROC on the test split; best in bold.", "tab:cxrbench-per-class-auroc")


def _localization(rows: Sequence[LeaderboardRow], ci_style: str) -> str | None:
    if not rows:
        return None
    axes = [*varying_axes(rows), "localizer"]
    keys = localization_keys(rows)
    best = {k: _best(rows, k) for k in keys}
    header = ["\\#", *[escape(a) for a in axes], *[escape(catalogue.label(k)) for k in keys]]
    body = []
    for rank, r in enumerate(rows, start=1):
        if r.localizer_status == "failed":
            values = ["failed"] + ["--"] * (len(keys) - 1) if keys else []
        else:
            values = [_cell(r, k, best[k], ci_style) for k in keys]
        body.append([str(rank), *_axes_cells(r, axes), *values])
    return _tabular(header, body, (), "r" + "l" * len(axes) + "r" * len(keys),
                    "Localization on the boxed split; best in bold.", "tab:cxrbench-localization")


def _cross_dataset(rows: Sequence[LeaderboardRow], ci_style: str) -> str:
    """Each cell scored on another dataset: AUROC with its interval, per class, and localization."""
    with_localizer = any(r.localizer for r in rows)
    axes = [a for a in ("backbone", "head", "seed") if a != "seed" or len({r.seed for r in rows}) > 1]
    keys = ["auroc_mean", *per_class_auroc_keys(rows),
            *[k for k in localization_keys(rows, compact=True) if k != "loc_ms_per_image"]]
    header = [r"trained on $\rightarrow$ scored on", *[escape(a) for a in axes],
              *(["localizer"] if with_localizer else []), *[escape(catalogue.label(k)) for k in keys]]
    scores = 1 + len(per_class_auroc_keys(rows))  # AUROC and per class; localization after them
    body = []
    for r in rows:
        source, _, target = r.dataset.partition(" -> ")
        pair = rf"{escape(source)} $\rightarrow$ {escape(target)}"
        if r.status != "ok":
            values = ["failed"] + ["--"] * (len(keys) - 1)
        else:  # per-class AUROC without intervals, as in the per-class table
            values = [_cell(r, k, None, ci_style, with_ci=not k.startswith("auroc/")) for k in keys]
            if r.localizer_status == "failed" and len(keys) > scores:
                values[scores:] = ["failed"] + ["--"] * (len(keys) - scores - 1)
        body.append([pair, *_axes_cells(r, axes), *([escape(r.localizer or "--")] if with_localizer else []),
                     *values])
    form = "$\\pm$ half-width of the" if ci_style == "pm" else "[low, high]: the"
    caption = ("Cross-dataset evaluation: each model scored, without retraining, on another dataset's test "
               f"split, on the classes both share; {form} {escape(ci_level(rows))} (patient-level bootstrap).")
    return _tabular(header, body, (), "l" + "l" * len(axes) + ("l" if with_localizer else "") + "r" * len(keys),
                    caption, "tab:cxrbench-cross-dataset")
