"""Subgroup metrics: AUROC and localization per covariate group, with patient-level bootstrap CIs.

``cxrbench leaderboard --by sex`` (or ``view``, ``age:40,60``, any saved covariate) splits a
cell's scored images by one covariate (:mod:`cxrbench.covariates`), or by the combinations
of up to three (``--by sex+age:40,60``: :class:`Intersection`), and scores every group on
the cell's own resamples:

* **Resamples.** The patients of the WHOLE scored split are drawn with replacement, exactly
  as the cell's own interval draws them (``cxrbench.metrics.bootstrap_counts`` with the
  cell's ``evaluation.bootstrap`` replicates and ``bootstrap_seed``); each group's statistic
  is recomputed on every replicate from the images of that group it contains. Group sizes
  therefore vary between replicates, as they would in a new sample of patients, and every
  group (and the gap) is scored on the same replicates.
* **AUROC.** Per class on the group's images (Mann-Whitney, as ``roc_auc_score``). A class
  with fewer than :data:`MIN_CLASS_COUNT` positives or negatives in the group is NaN there.
  The group's mean AUROC is the mean over the classes that every known group can score
  (so all groups and their gap compare the same classes).
* **Localization.** From the cell's per-pair scores (``pairs/<localizer>.npz``): the mean
  IoU over the group's pairs, the pointing game's hit rate (mean over classes of the class
  means) and MaxBoxAccV2 (Choe et al. 2020; its best thresholds chosen again on the group,
  and again in every replicate, as for the whole split). A group with fewer than
  :data:`MIN_CLASS_COUNT` pairs is NaN.
* **Gap.** The best minus the worst group by point estimate, among the groups with a known
  covariate value (``unknown`` is shown, never in the gap). Its interval is the percentile
  interval of the same two groups' difference over the replicates (a paired bootstrap);
  recomputing "max minus min" per replicate would be biased upwards and never below 0.

Intervals are percentile intervals (NaN-aware), as the cell's own.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .metrics import _draw_counts, _nanmean_rows, _percentile_bounds, _replicate_aurocs, auroc

MIN_CLASS_COUNT = 5
"""Fewest positives AND negatives of a class (fewest pairs, for localization) a group needs
for that class's AUROC (its localization metrics) not to be NaN."""

UNKNOWN = "unknown"
"""The group of images whose covariate value is missing."""


# --------------------------------------------------------------------------- groupings


@dataclasses.dataclass(frozen=True)
class Grouping:
    """How ``--by`` splits images: a covariate column, and bin edges for a numeric one.

    Numeric bins are left-closed, right-open: edges ``40, 60`` give ``<40`` (age < 40),
    ``40-59`` (40 <= age < 60) and ``>=60``. With integer edges the middle labels read
    ``a-(b-1)`` (ages are whole years in NIH and CheXpert); other edges read ``a-<b``.

    Attributes:
        column: the covariate's name (``sex``, ``view``, ``age``, ...).
        edges: bin edges, strictly increasing; None for a categorical column.

    """

    column: str
    edges: tuple[float, ...] | None = None

    @property
    def text(self) -> str:
        """The ``--by`` value this grouping is written as."""
        return self.column if self.edges is None else f"{self.column}:{','.join(_num(e) for e in self.edges)}"

    def bin_labels(self) -> list[str]:
        """The bins' labels in order (numeric groupings only)."""
        if self.edges is None:
            return []
        e = self.edges
        middle = [f"{_num(a)}-{_num(b - 1)}" if float(a).is_integer() and float(b).is_integer() and b - 1 >= a
                  else f"{_num(a)}-<{_num(b)}" for a, b in zip(e[:-1], e[1:], strict=True)]
        return [f"<{_num(e[0])}", *middle, f">={_num(e[-1])}"]

    def assign(self, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Each image's group label, and the groups in display order (``unknown`` last).

        Raises:
            ValueError: a numeric column without edges, or edges on a text column.

        """
        values = np.asarray(values)
        numeric = values.dtype.kind in "fiub"
        if self.edges is None:
            if numeric:
                raise ValueError(f"--by {self.column}: the covariate is numeric; give bin edges, e.g. "
                                 f"--by {self.column}:40,60")
            text = np.asarray([str(v) for v in values], dtype=object)
            missing = text == ""
            labels = np.where(missing, UNKNOWN, text)
            order = sorted(set(text[~missing].tolist()))
        else:
            if not numeric:
                raise ValueError(f"--by {self.text}: bin edges need a numeric covariate; "
                                 f"'{self.column}' holds text (use --by {self.column})")
            v = values.astype(np.float64)
            missing = ~np.isfinite(v)
            names = np.asarray(self.bin_labels(), dtype=object)
            # right=False: bin i holds edges[i-1] <= v < edges[i] (left-closed)
            index = np.digitize(np.where(missing, 0.0, v), np.asarray(self.edges), right=False)
            labels = np.where(missing, UNKNOWN, names[index])
            order = [n for n in names.tolist() if (labels == n).any()]
        if missing.any():
            order.append(UNKNOWN)
        return labels.astype(object), order


    @property
    def columns(self) -> tuple[str, ...]:
        """The covariates this grouping reads (one)."""
        return (self.column,)

    def assign_columns(self, values: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """:meth:`assign` on the one column of ``values`` (the interface :class:`Intersection` shares)."""
        (only,) = values
        return self.assign(only)


@dataclasses.dataclass(frozen=True)
class Intersection:
    """``--by sex+view``: images grouped by every combination of several covariates.

    A group is labelled by its parts' labels joined by ``" / "`` (``F / PA``), in the
    parts' display orders (the first part varying slowest); combinations no image has are
    left out. An image whose value is missing in ANY part is ``unknown`` (never in the gap).
    Intersections get small fast: a combination with too few positives, negatives or pairs
    is NaN by the same :data:`MIN_CLASS_COUNT` rule as any group.

    Attributes:
        parts: the groupings combined, two or more, each on its own covariate.

    """

    parts: tuple[Grouping, ...]

    @property
    def text(self) -> str:
        return "+".join(p.text for p in self.parts)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(p.column for p in self.parts)

    def assign_columns(self, values: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """Each image's combined label, and the combinations present in display order (``unknown`` last).

        Raises:
            ValueError: as :meth:`Grouping.assign`, for the part that does not fit its covariate.

        """
        assigned = [part.assign(v) for part, v in zip(self.parts, values, strict=True)]
        n = len(assigned[0][0])
        unknown = np.zeros(n, dtype=bool)
        for labels, _ in assigned:
            unknown |= labels == UNKNOWN
        joined = np.asarray([" / ".join(str(labels[i]) for labels, _ in assigned) for i in range(n)], dtype=object)
        out = np.where(unknown, UNKNOWN, joined).astype(object)
        present = set(out[~unknown].tolist())
        known_orders = [[g for g in order if g != UNKNOWN] for _, order in assigned]
        order = [" / ".join(combo) for combo in itertools.product(*known_orders) if " / ".join(combo) in present]
        if unknown.any():
            order.append(UNKNOWN)
        return out, order


MAX_INTERSECTED = 3
"""Most covariates one ``--by`` may intersect (``sex+view+age:40,60``): beyond that the groups
are too small to score on any public chest X-ray test split."""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def parse_by(text: str) -> Grouping | Intersection:
    """``sex`` / ``view`` / ``age:40,60`` -> a :class:`Grouping`; ``sex+age:40,60`` -> an :class:`Intersection`.

    Raises:
        ValueError: one line saying what is wrong with the value.

    """
    if "+" not in text:
        return _parse_one(text)
    parts = tuple(_parse_one(piece) for piece in text.split("+"))
    columns = [p.column for p in parts]
    if len(set(columns)) != len(columns):
        raise ValueError(f"--by {text!r}: each covariate may appear once (got {', '.join(columns)})")
    if len(parts) > MAX_INTERSECTED:
        raise ValueError(f"--by {text!r}: at most {MAX_INTERSECTED} covariates can be intersected")
    return Intersection(parts)


def _parse_one(text: str) -> Grouping:
    column, _, edges_text = text.strip().partition(":")
    column = column.strip()
    if not column.isidentifier():
        raise ValueError(f"--by {text!r}: give a covariate name such as sex, view or age:40,60")
    if not _:
        return Grouping(column)
    try:
        edges = tuple(float(e) for e in edges_text.split(",") if e.strip())
    except ValueError:
        raise ValueError(f"--by {text!r}: bin edges must be numbers separated by commas, e.g. age:40,60") from None
    if not edges or not all(math.isfinite(e) for e in edges) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"--by {text!r}: give strictly increasing bin edges, e.g. age:40,60")
    return Grouping(column, edges)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class GroupScore:
    """One group's metrics on one split.

    Attributes:
        group: the group's label.
        n_images: images of the group in the scored split.
        n_patients: their patients.
        metrics: point estimates and ``<key>_ci_low`` / ``<key>_ci_high`` (per class:
            ``auroc/<Class>``, ``auroc_ci_low/<Class>``, ...); NaN where undefined.
        n_pairs: localization only: the (image, class) pairs with a true box.

    """

    group: str
    n_images: int
    n_patients: int
    metrics: Mapping[str, float]
    n_pairs: int | None = None


@dataclasses.dataclass(frozen=True)
class Gap:
    """Best minus worst group of one metric, with its paired-bootstrap interval.

    Attributes:
        metric: the metric's key (``auroc_mean``, ``maxboxacc_v2``, ...).
        best: the group with the highest point estimate.
        worst: the group with the lowest.
        value: best minus worst.
        low: lower bound of the interval of that difference over the replicates.
        high: upper bound.

    """

    metric: str
    best: str
    worst: str
    value: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class SubgroupScores:
    """Every group of one split, the gaps, and what the mean AUROC averages over.

    Attributes:
        groups: in display order.
        gaps: one per metric with at least two scored known groups.
        mean_classes: classification only: the classes in every group's mean AUROC.

    """

    groups: tuple[GroupScore, ...]
    gaps: tuple[Gap, ...]
    mean_classes: tuple[str, ...] = ()


def _bounds(replicates: np.ndarray, ci: float) -> tuple[float, float]:
    if replicates.size == 0 or not np.isfinite(replicates).any():
        return math.nan, math.nan
    low, high = _percentile_bounds(replicates[:, None], ci)
    return float(low[0]), float(high[0])


def _gap(metric: str, order: Sequence[str], point: Mapping[str, float], reps: Mapping[str, np.ndarray],
         ci: float) -> Gap | None:
    known = [g for g in order if g != UNKNOWN and math.isfinite(point[g])]
    if len(known) < 2:
        return None
    best = max(known, key=lambda g: point[g])
    worst = min((g for g in known if g != best), key=lambda g: point[g])  # a tie still names two groups
    diff = reps[best] - reps[worst]
    low, high = _bounds(diff[np.isfinite(diff)], ci)
    return Gap(metric, best, worst, float(point[best] - point[worst]), low, high)


# --------------------------------------------------------------------------- AUROC


def subgroup_auroc(labels: np.ndarray, scores: np.ndarray, patients: Sequence[str] | np.ndarray,
                   groups: np.ndarray, order: Sequence[str], classes: Sequence[str], *, n_boot: int, seed: int,
                   ci: float, min_count: int = MIN_CLASS_COUNT) -> SubgroupScores:
    """Per-group AUROC (per class and mean) with patient-level bootstrap intervals, and the gap.

    Args:
        labels: ``N x K`` test labels, 1 / 0 / NaN.
        scores: ``N x K`` scores.
        patients: patient of each image (the resampling unit, over the whole split).
        groups: group label of each image.
        order: the groups, in display order.
        classes: the K class names.
        n_boot: replicates (0: no intervals).
        seed: the resampling seed (the cell's ``bootstrap_seed``: the cell's own resamples).
        ci: interval coverage.
        min_count: fewest positives and negatives of a class in a group.

    Returns:
        The groups' scores (keys ``auroc_mean``, ``auroc/<Class>`` and their intervals) and the
        gap of ``auroc_mean``.

    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    patients = np.asarray(patients)
    weights = _draw_counts(patients, n_boot, seed)  # N x R: the cell's own patient resamples
    per_group: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for g in order:
        rows = np.flatnonzero(groups == g)
        yg = y[rows]
        eligible = (np.sum(yg == 1, axis=0) >= min_count) & (np.sum(yg == 0, axis=0) >= min_count)
        point = auroc(yg, s[rows]) if rows.size else np.full(y.shape[1], np.nan)
        point[~eligible] = np.nan
        reps = _replicate_aurocs(yg, s[rows], np.ascontiguousarray(weights[rows]))  # R x K
        reps[:, ~eligible] = np.nan
        per_group[g] = (rows, point, reps)
    known = [g for g in order if g != UNKNOWN]
    common = np.ones(y.shape[1], dtype=bool)
    for g in known or order:
        common &= np.isfinite(per_group[g][1])
    out, point_mean, rep_mean = [], {}, {}
    for g in order:
        rows, point, reps = per_group[g]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            point_mean[g] = float(np.nanmean(point[common])) if common.any() else math.nan
        rep_mean[g] = _nanmean_rows(reps[:, common]) if common.any() else np.full(reps.shape[0], np.nan)
        metrics = {"auroc_mean": point_mean[g]}
        if n_boot > 0:
            metrics["auroc_ci_low"], metrics["auroc_ci_high"] = _bounds(rep_mean[g], ci)
        low, high = _percentile_bounds(reps, ci) if n_boot > 0 else (None, None)
        for j, name in enumerate(classes):
            metrics[f"auroc/{name}"] = float(point[j])
            if low is not None:
                metrics[f"auroc_ci_low/{name}"], metrics[f"auroc_ci_high/{name}"] = float(low[j]), float(high[j])
        out.append(GroupScore(g, int(rows.size), int(np.unique(patients[rows]).size), metrics))
    gap = _gap("auroc_mean", order, point_mean, rep_mean, ci)
    return SubgroupScores(tuple(out), tuple(x for x in [gap] if x is not None),
                          tuple(c for c, keep in zip(classes, common, strict=True) if keep))


# --------------------------------------------------------------------------- localization


LOCALIZATION_KEYS = ("maxboxacc_v2", "iou_mean", "hit_rate")
"""The per-pair localization metrics scored per group (what ``pairs/<localizer>.npz`` carries)."""


def _pair_statistics(w: np.ndarray, best_iou: np.ndarray, hits: np.ndarray, correct: np.ndarray,
                     classes: np.ndarray) -> dict[str, np.ndarray]:
    """The three statistics for every row of the pair weights ``w`` (``rows x pairs``).

    Weighted means equal the statistic on the data with every pair repeated by its weight
    (as :mod:`cxrbench.locmetrics.bootstrap` computes them).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        total = w.sum(axis=1)
        iou = w @ best_iou / total
        class_means = []
        for c in np.unique(classes):
            wc = w[:, classes == c]
            class_means.append(wc @ hits[classes == c] / wc.sum(axis=1))
        means = np.stack(class_means, axis=1) if class_means else np.full((w.shape[0], 1), np.nan)
        hit = _nanmean_rows(means)
        c = correct.reshape(correct.shape[0], -1) if correct.ndim == 3 else correct
        deltas = correct.shape[1] if correct.ndim == 3 else 1
        curves = (w @ c / total[:, None]).reshape(w.shape[0], deltas, -1)
        v2 = curves.max(axis=2).mean(axis=1)
    return {"maxboxacc_v2": v2, "iou_mean": iou, "hit_rate": hit}


def subgroup_localization(patients: np.ndarray, best_iou: np.ndarray, hits: np.ndarray, correct: np.ndarray,
                          classes: np.ndarray, pair_groups: np.ndarray, image_ids: np.ndarray, order: Sequence[str],
                          *, n_boot: int, seed: int, ci: float, min_count: int = MIN_CLASS_COUNT) -> SubgroupScores:
    """Per-group localization metrics from a localizer's per-pair scores, with intervals, and the gaps.

    Args:
        patients: patient of each pair (the resampling unit, over every scored pair).
        best_iou: ``(P,)`` best IoU of each pair's predicted boxes.
        hits: ``(P,)`` pointing-game hit of each pair.
        correct: ``P x D x T`` MaxBoxAccV2 correctness (``MaxBoxAccResult.correct()``).
        classes: ``(P,)`` class of each pair.
        pair_groups: group label of each pair (its image's).
        image_ids: image of each pair (to count a group's images).
        order: the groups in display order.
        n_boot: replicates (0: no intervals).
        seed: the cell's bootstrap seed (the same resamples as its localization interval).
        ci: interval coverage.
        min_count: fewest pairs a group needs.

    Returns:
        The groups' scores and one gap per metric of :data:`LOCALIZATION_KEYS`.

    """
    patients = np.asarray(patients)
    best_iou = np.asarray(best_iou, dtype=np.float64)
    hits = np.asarray(hits, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    classes = np.asarray(classes)
    weights = _draw_counts(patients, n_boot, seed).T  # R x P: the cell's own resamples of its pairs' patients
    out, point, reps = [], {k: {} for k in LOCALIZATION_KEYS}, {k: {} for k in LOCALIZATION_KEYS}
    for g in order:
        cols = np.flatnonzero(pair_groups == g)
        w = np.vstack([np.ones((1, cols.size)), weights[:, cols]]).astype(np.float64)
        if cols.size >= max(min_count, 1):
            stats = _pair_statistics(w, best_iou[cols], hits[cols], correct[cols], classes[cols])
        else:
            stats = {k: np.full(w.shape[0], np.nan) for k in LOCALIZATION_KEYS}
        metrics: dict[str, float] = {}
        for key in LOCALIZATION_KEYS:
            point[key][g], reps[key][g] = float(stats[key][0]), stats[key][1:]
            metrics[key] = point[key][g]
            if n_boot > 0:
                metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = _bounds(stats[key][1:], ci)
        out.append(GroupScore(g, int(np.unique(image_ids[cols]).size), int(np.unique(patients[cols]).size), metrics,
                              n_pairs=int(cols.size)))
    gaps = [_gap(key, order, point[key], reps[key], ci) for key in LOCALIZATION_KEYS]
    return SubgroupScores(tuple(out), tuple(x for x in gaps if x is not None))
