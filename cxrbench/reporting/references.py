"""Published baselines as leaderboard reference rows: shown beside the cells, never ranked or tested.

A reference row is a :class:`LeaderboardRow` of kind ``reference``: ``backbone`` holds the
published model, ``status`` is ``reference``, its ``metrics`` hold the published values of
the classes the user's cells also have, and ``columns`` say where the numbers come from
(source and table, split, caveat). The CLI appends them after ranking, so nothing that
sorts, groups, keeps the top N or tests significance ever sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from .. import catalogue
from ..baselines import PublishedBaseline, load_baselines
from .columns import fmt
from .rows import LeaderboardRow, class_names, missing

REFERENCE_COLUMNS = ("reference source", "reference split", "reference caveat")
"""The ``columns`` a reference row carries (cells show ``-`` there in the exports)."""


def dataset_name(label: str) -> str:
    """A dataset axis label's component name: ``nih[classes=nih14]`` -> ``nih``."""
    return str(label).split("[", 1)[0]


def _localization_metrics(rows: Sequence[LeaderboardRow]) -> set[str]:
    """Summary localization keys the cells have (e.g. ``acc_iobb@0.5``)."""
    return {k for r in rows for k in r.metrics if "/" not in k and (spec := catalogue.lookup(k)) is not None
            and spec.group == "localization"}


def reference_rows(rows: Sequence[LeaderboardRow], baselines: Sequence[PublishedBaseline] | None = None
                   ) -> list[LeaderboardRow]:
    """Reference rows for the published baselines that match the cells' dataset and classes.

    A baseline matches when its dataset is the component name of a cell's dataset axis and it
    has a value for at least one class the cells have. It then gets the per-class AUROCs of
    those classes, ``auroc_mean`` over them only when it covers every one (a mean over other
    classes would not compare), and the per-class values of the localization metrics the
    cells report (e.g. ``acc_iobb@0.5/<Class>``).

    Args:
        rows: the leaderboard rows (cells or groups).
        baselines: the baselines to consider (default: the shipped table).

    Returns:
        One reference row per matching baseline, in the table's order.

    """
    baselines = load_baselines() if baselines is None else baselines
    ours = [r for r in rows if r.kind != "reference"]
    datasets = {dataset_name(r.dataset) for r in ours}
    classes = class_names(ours)
    loc_metrics = _localization_metrics(ours)
    out = []
    for base in baselines:
        if base.dataset not in datasets:
            continue
        shared = [c for c in classes if c in base.classes("auroc")]
        metrics = {catalogue.per_class_key("auroc", c): base.values[catalogue.per_class_key("auroc", c)]
                   for c in shared}
        if shared and len(shared) == len(classes):
            metrics["auroc_mean"] = sum(metrics.values()) / len(shared)
        for metric in sorted(loc_metrics):
            for cls in base.classes(metric):
                if cls in classes:
                    metrics[catalogue.per_class_key(metric, cls)] = base.values[catalogue.per_class_key(metric, cls)]
        if not metrics:
            continue
        shown = [m for m in base.sources if m == "auroc" or m in loc_metrics]
        sources = "; ".join(dict.fromkeys(base.sources[m] for m in shown))
        caveats = "; ".join(dict.fromkeys(base.caveats[m] for m in shown if base.caveats.get(m)))
        out.append(LeaderboardRow(
            kind="reference", cell_id=f"ref:{base.key}", grid="-", dataset=base.dataset, backbone=base.model,
            head="-", localizer=None, seed=None, status="reference", metrics=metrics,
            columns=dict(zip(REFERENCE_COLUMNS, (sources, base.split, caveats or "-"), strict=True)),
            provenance={"reference": {"key": base.key, "model": base.model, "split": base.split,
                                      "sources": dict(base.sources), "caveats": dict(base.caveats)}}))
    return out


def reference_table(refs: Sequence[LeaderboardRow], rows: Sequence[LeaderboardRow]) -> Table | None:
    """The rich table of the reference rows (per-class AUROC of the cells' classes); None without any."""
    refs = [r for r in refs if any(catalogue.split_key(k)[0] == "auroc" for k in r.metrics)]
    if not refs:
        return None
    classes = [c for c in class_names(rows) if any(f"auroc/{c}" in r.metrics for r in refs)]
    table = Table(title="Published baselines (references: not ranked, not in the significance tests)",
                  title_justify="left", header_style="bold",
                  caption="Numbers copied from the source; a caveat says where the split or labels differ from "
                          "the cells' (docs/metrics.md, 'Published baselines').")
    table.add_column("reference")
    table.add_column("split")
    table.add_column(catalogue.label("auroc_mean"), justify="right")
    for cls in classes:
        table.add_column(escape(cls[:12]), justify="right")
    table.add_column("source")
    table.add_column("caveat", overflow="fold")
    for r in refs:
        mean = r.metrics.get("auroc_mean")
        table.add_row(escape(r.backbone), escape(str(r.columns.get("reference split"))),
                      "-" if missing(mean) else fmt(mean),
                      *[fmt(r.metrics.get(f"auroc/{c}"), catalogue.digits("auroc")) for c in classes],
                      escape(str(r.columns.get("reference source"))), escape(str(r.columns.get("reference caveat"))))
    return table


def reference_localization_table(refs: Sequence[LeaderboardRow]) -> Table | None:
    """Published per-class localization accuracies of the metrics the cells report; None without any."""
    keys = sorted({k for r in refs for k in r.metrics if "/" in k and catalogue.split_key(k)[0] != "auroc"})
    if not keys:
        return None
    table = Table(title="Published localization baselines (references, per class)", title_justify="left",
                  header_style="bold")
    table.add_column("reference")
    table.add_column("metric")
    classes = list(dict.fromkeys(catalogue.split_key(k)[1] for k in keys))
    for cls in classes:
        table.add_column(escape(cls[:12]), justify="right")
    for r in refs:
        for metric in dict.fromkeys(catalogue.split_key(k)[0] for k in keys):
            if not any(k.startswith(metric + "/") for k in r.metrics):
                continue
            table.add_row(escape(r.backbone), escape(catalogue.label(metric)),
                          *[fmt(r.metrics.get(catalogue.per_class_key(metric, c))) for c in classes])
    return table
