"""Every number cxrbench reports, declared once: key, label, definition, direction, digits.

The metric functions write these keys; every output (rich tables, Markdown, CSV, JSON,
HTML, ``--sort`` suggestions, ``leaderboard --explain``, ``docs/metrics.md``) reads this
catalogue for how to show them. Adding a metric is one :class:`MetricSpec` here plus its
computation.

Key grammar: ``<key>`` for a summary, ``<key>/<Class>`` for a per-class value of a
``per_class`` metric. A family such as ``acc_iou@<t>`` is declared once with ``{t}`` in its
key and matches every threshold.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Literal

Group = Literal["classification", "localization", "speed", "count"]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One reported number.

    Attributes:
        key: the key in a result's metrics (``{t}`` stands for a threshold in a family).
        label: short column header.
        description: one-sentence definition (the full one is in docs/metrics.md).
        group: which leaderboard shows it.
        higher_is_better: the ranking direction.
        digits: decimals shown.
        per_class: also reported per class as ``<key>/<Class>`` (the summary may be named
            differently: ``per_class_key``).
        per_class_key: the per-class prefix when it differs from ``key`` (``auroc_mean`` ->
            ``auroc``).
        unit: unit of the value, if any.
        source: the paper or reference code the definition follows.
        split: the split it is computed on.
        ci: the keys of its interval bounds, when it has one.
        in_table: shown in the default terminal tables.
        compact: kept when a table must shrink to fit a narrow terminal.
        table_thresholds: for a family, the thresholds the terminal tables show (every
            threshold stays in the exports).

    """

    key: str
    label: str
    description: str
    group: Group
    higher_is_better: bool = True
    digits: int = 3
    per_class: bool = False
    per_class_key: str | None = None
    unit: str = ""
    source: str = ""
    split: str = ""
    ci: tuple[str, str] | None = None
    in_table: bool = True
    compact: bool = False
    table_thresholds: tuple[float, ...] | None = None

    @property
    def is_family(self) -> bool:
        return "{t}" in self.key

    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.escape(self.key).replace(re.escape("{t}"), r"(?P<t>[0-9.]+)") + "$")

    def matches(self, key: str) -> bool:
        return key == self.key or (self.is_family and bool(self.pattern().match(key)))

    def label_for(self, key: str) -> str:
        """The column header of ``key`` (a family member gets its threshold in the label)."""
        if self.is_family:
            match = self.pattern().match(key)
            if match:
                return self.label.replace("{t}", match.group("t"))
        return self.label


WANG = "Wang et al., CVPR 2017 (ChestX-ray8), section 4.2"
SEED = "the seed project (cxrbench's predecessor)"
CHOE = "Choe et al., CVPR 2020 (wsolevaluation)"
SAPORTA = "Saporta et al., Nat. Mach. Intell. 2022 (cheXlocalize: eval.py, heatmap_to_segmentation.py)"
ADEBAYO = "Adebayo et al., NeurIPS 2018 (Sanity checks for saliency maps), model-parameter randomisation"
SIXT = "Sixt, Granz & Landgraf, ICML 2020 (When explanations lie), random-logit test"
RISE = "Petsiuk, Das & Saenko, BMVC 2018 (RISE), deletion and insertion"
CALIBRATION = "Naeini, Cooper & Hauskrecht, AAAI 2015; Guo et al., ICML 2017 (15 bins)"

METRICS: tuple[MetricSpec, ...] = (
    # ------------------------------------------------------------------ classification
    MetricSpec("auroc_mean", "AUROC", "mean over classes of the area under the ROC curve (classes with both labels)",
               "classification", per_class=True, per_class_key="auroc", split="test", compact=True,
               ci=("auroc_ci_low", "auroc_ci_high"), source="Hanley & McNeil 1982; scikit-learn roc_auc_score"),
    MetricSpec("auroc_ci_low", "CI low", "lower bound of the AUROC interval (patient-level percentile bootstrap)",
               "classification", split="test", in_table=False, per_class=True),
    MetricSpec("auroc_ci_high", "CI high", "upper bound of the AUROC interval (patient-level percentile bootstrap)",
               "classification", split="test", in_table=False, per_class=True),
    MetricSpec("sensitivity_mean", "Sens", "mean over classes of TPR at the validation-chosen cut-off",
               "classification", per_class=True, per_class_key="sensitivity", split="test", in_table=False),
    MetricSpec("specificity_mean", "Spec", "mean over classes of TNR at the validation-chosen cut-off",
               "classification", per_class=True, per_class_key="specificity", split="test", in_table=False),
    MetricSpec("precision_mean", "Prec", "mean over classes of precision at the validation-chosen cut-off",
               "classification", per_class=True, per_class_key="precision", split="test", in_table=False),
    MetricSpec("f1_mean", "F1", "mean over classes of F1 at the validation-chosen cut-off", "classification",
               per_class=True, per_class_key="f1", split="test", in_table=False),
    MetricSpec("accuracy_mean", "Acc", "mean over classes of accuracy at the validation-chosen cut-off",
               "classification", per_class=True, per_class_key="accuracy", split="test", in_table=False),
    MetricSpec("cutoff", "cut-off", "per-class score cut-off chosen on validation by evaluation.cutoff (youden or "
               "seed); reported per class only", "classification", per_class=True, per_class_key="threshold",
               split="val", in_table=False),
    MetricSpec("hamming_loss", "Hamming", "fraction of wrong (image, class) decisions at the cut-offs",
               "classification", higher_is_better=False, split="test", in_table=False, source=SEED),
    MetricSpec("ece", "ECE", "expected calibration error: per class, the test images' probabilities in 15 "
               "equal-width bins on [0, 1] (bin 0 = [0, 1/15], bin b = (b/15, (b+1)/15]), the count-weighted mean over "
               "non-empty bins of |fraction positive - mean probability|; mean over classes; computed at leaderboard "
               "time from predictions.npz", "classification", higher_is_better=False, per_class=True, split="test",
               ci=("ece_ci_low", "ece_ci_high"), source=CALIBRATION),
    MetricSpec("brier", "Brier", "Brier score: per class the mean over test images of (probability - label)^2; mean "
               "over classes; computed at leaderboard time from predictions.npz", "classification",
               higher_is_better=False, per_class=True, split="test", ci=("brier_ci_low", "brier_ci_high"),
               source="Brier, Mon. Weather Rev. 1950; scikit-learn brier_score_loss"),
    *(MetricSpec(f"{key}_ci_{bound}", f"{label} CI {bound}", f"{bound} bound of the {label} interval "
                 "(patient-level percentile bootstrap, the AUROC's resamples)", "classification",
                 higher_is_better=False, split="test", in_table=False, per_class=True)
      for key, label in (("ece", "ECE"), ("brier", "Brier")) for bound in ("low", "high")),
    # ------------------------------------------------------------------ localization
    MetricSpec("maxboxacc_v2", "MaxBoxAccV2", "threshold-free box accuracy: boxes of all regions at every "
               "threshold of a sweep, IoU >= delta, best threshold per delta, mean over delta in {0.3, 0.5, 0.7}",
               "localization", per_class=True, split="boxes", compact=True,
               ci=("maxboxacc_v2_ci_low", "maxboxacc_v2_ci_high"), source=CHOE),
    MetricSpec("maxboxacc_v2@{t}", "MaxBoxAccV2@{t}", "MaxBoxAccV2 at one IoU cut-off delta (best threshold)",
               "localization", split="boxes", in_table=False, source=CHOE),
    MetricSpec("maxboxacc", "MaxBoxAcc", "box accuracy of the largest region's box, IoU >= 0.5, at the best "
               "threshold of a sweep", "localization", per_class=True, split="boxes", in_table=False, source=CHOE),
    MetricSpec("pxap", "PxAP", "pixel average precision of the maps against the true boxes rasterised as masks, "
               "all pairs' pixels pooled, over the threshold sweep", "localization", per_class=True,
               split="boxes", source=CHOE),
    MetricSpec("iou_mean", "IoU", "mean over (image, class) pairs of the best IoU of a predicted box with a true box",
               "localization", per_class=True, per_class_key="iou", split="boxes", compact=True, source=SEED,
               ci=("iou_mean_ci_low", "iou_mean_ci_high")),
    MetricSpec("iobb_mean", "IoBB", "mean over pairs of the best intersection / predicted-box area",
               "localization", per_class=True, per_class_key="iobb", split="boxes", compact=True, source=WANG),
    *(MetricSpec(f"{key}_ci_{bound}", f"{label} CI {bound}", f"{bound} bound of the {label} interval "
                 "(patient-level percentile bootstrap)", "localization", split="boxes", in_table=False)
      for key, label in (("iou_mean", "IoU"), ("hit_rate", "Hit"), ("maxboxacc_v2", "MaxBoxAccV2"))
      for bound in ("low", "high")),
    MetricSpec("cum_iou_mean", "cumIoU", "mean over pairs of the sum over predicted boxes of their best IoU",
               "localization", per_class=True, per_class_key="cum_iou", split="boxes", in_table=False, source=SEED),
    MetricSpec("acc_iou@{t}", "Acc@IoU{t}", "fraction of pairs with some predicted box of IoU strictly above t",
               "localization", per_class=True, split="boxes", source=WANG, table_thresholds=(0.1, 0.3, 0.5)),
    MetricSpec("afp_iou@{t}", "AFP@IoU{t}", "cxrbench's AFP: mean number of predicted boxes per pair with "
               "IoU <= t (not Wang et al.'s AFP)", "localization", higher_is_better=False, split="boxes",
               table_thresholds=(0.3,)),
    MetricSpec("acc_iobb@{t}", "Acc@IoBB{t}", "fraction of pairs with some predicted box of IoBB strictly above t",
               "localization", per_class=True, split="boxes", source=WANG, table_thresholds=(0.5,)),
    MetricSpec("afp_iobb@{t}", "AFP@IoBB{t}", "cxrbench's AFP: mean number of predicted boxes per pair with "
               "IoBB <= t (not Wang et al.'s AFP)", "localization", higher_is_better=False, split="boxes",
               in_table=False),
    MetricSpec("iou>{t}", "IoU>{t}", "fraction of pairs whose best IoU is strictly above t", "localization",
               split="boxes", in_table=False, source=SEED),
    MetricSpec("hit_rate", "Hit", "pointing game: per class the fraction of pairs whose map peak is within "
               "hit_tolerance original-image pixels (Euclidean) of a true box, mean over classes; maps without a "
               "peak are misses", "localization", per_class=True, split="boxes", compact=True,
               ci=("hit_rate_ci_low", "hit_rate_ci_high"), source="Zhang et al., ECCV 2016 (pointing game); TorchRay"),
    MetricSpec("hit_rate_pairs", "Hit/pairs", "pointing game over all pairs (not averaged per class)",
               "localization", split="boxes", in_table=False),
    MetricSpec("no_peak_maps", "no peak", "scored maps without a peak (constant or NaN): counted as misses",
               "localization", higher_is_better=False, digits=0, split="boxes", compact=True),
    MetricSpec("heatmap_value_in_box_mean", "in-box", "mean heatmap value inside the true boxes", "localization",
               split="boxes", in_table=False),
    MetricSpec("mask_miou", "mIoU", "masks: mean over classes of the mean IoU of the binarised map (resized to "
               "the mask) with the mask; pairs per localization.masks.true_pos_only", "localization",
               per_class=True, split="boxes", compact=True, ci=("mask_miou_ci_low", "mask_miou_ci_high"),
               source=SAPORTA),
    MetricSpec("mask_hit_rate", "Hit(mask)", "masks: per class the fraction of annotated positives whose map peak "
               "(first maximum at the mask's size) is within hit_tolerance pixels of the mask, mean over classes",
               "localization", per_class=True, split="boxes", ci=("mask_hit_rate_ci_low", "mask_hit_rate_ci_high"),
               source=SAPORTA),
    MetricSpec("mask_pxap", "PxAP(mask)", "masks: pixel average precision of the maps against the masks at the "
               "masks' size, 256 levels, positives' pixels pooled per class, mean over classes", "localization",
               per_class=True, split="boxes", in_table=False, source=CHOE),
    *(MetricSpec(f"{key}_ci_{bound}", f"{label} CI {bound}", f"{bound} bound of the {label} interval "
                 "(patient-level percentile bootstrap)", "localization", split="boxes", in_table=False)
      for key, label in (("mask_miou", "mIoU"), ("mask_hit_rate", "Hit(mask)")) for bound in ("low", "high")),
    # ------------------------------------------------------------------ sanity and faithfulness (localization.sanity)
    MetricSpec("mprt_spearman", "MPRT", "MPRT: Spearman rank correlation of the trained model's maps with the maps of "
               "the fully randomised network (cascade down to the lowest block), per class the mean over the sampled "
               "images, mean over classes; near 1 means the maps do not depend on the model", "localization",
               higher_is_better=False, per_class=True, split="boxes",
               ci=("mprt_spearman_ci_low", "mprt_spearman_ci_high"), source=ADEBAYO),
    MetricSpec("mprt_ssim", "MPRT SSIM", "MPRT: as mprt_spearman with SSIM (7x7 uniform window, sample covariance, "
               "K1 0.01, K2 0.03, min-max normalised maps, data range 1)", "localization", higher_is_better=False,
               per_class=True, split="boxes", ci=("mprt_ssim_ci_low", "mprt_ssim_ci_high"), in_table=False,
               source=f"{ADEBAYO}; skimage structural_similarity"),
    MetricSpec("mprt_independent_spearman", "MPRT indep", "MPRT: mean over blocks of the class-mean rank correlation "
               "with that block alone randomised", "localization", higher_is_better=False, split="boxes",
               in_table=False, source=ADEBAYO),
    MetricSpec("mprt_independent_ssim", "MPRT indep SSIM", "MPRT: mean over blocks of the class-mean SSIM with that "
               "block alone randomised", "localization", higher_is_better=False, split="boxes", in_table=False,
               source=ADEBAYO),
    MetricSpec("mprt_pass", "MPRT pass", "1 when mprt_spearman is below localization.sanity.mprt.bound (default 0.5; "
               "the independent mean when the cascade is off), else 0: the maps depend on the model's weights",
               "localization", digits=0, split="boxes", compact=True, source=f"cxrbench's bound on {ADEBAYO}"),
    MetricSpec("random_logit_spearman", "RandLogit", "random-logit test: per sampled image the Spearman rank "
               "correlation of the map of the most probable class with the map of a seeded random other class, mean "
               "over images", "localization", higher_is_better=False, split="boxes",
               ci=("random_logit_spearman_ci_low", "random_logit_spearman_ci_high"), source=SIXT),
    MetricSpec("random_logit_ssim", "RandLogit SSIM", "random-logit test with SSIM (as mprt_ssim), mean over images",
               "localization", higher_is_better=False, split="boxes", in_table=False,
               ci=("random_logit_ssim_ci_low", "random_logit_ssim_ci_high"), source=SIXT),
    MetricSpec("deletion_auc", "Deletion", "area under the probability of the pair's class as the map's most salient "
               "pixels are replaced by the baseline in localization.sanity.deletion.steps steps (trapezoidal, over the "
               "fraction of pixels), per class the mean over pairs, mean over classes", "localization",
               higher_is_better=False, per_class=True, split="boxes",
               ci=("deletion_auc_ci_low", "deletion_auc_ci_high"), source=RISE),
    MetricSpec("insertion_auc", "Insertion", "as deletion_auc, with the most salient pixels revealed on the baseline "
               "(a blurred copy by default)", "localization", per_class=True, split="boxes",
               ci=("insertion_auc_ci_low", "insertion_auc_ci_high"), source=RISE),
    *(MetricSpec(f"{key}_ci_{bound}", f"{label} CI {bound}", f"{bound} bound of the {label} interval "
                 "(patient-level percentile bootstrap)", "localization", higher_is_better=better, split="boxes",
                 in_table=False)
      for key, label, better in (("mprt_spearman", "MPRT", False), ("mprt_ssim", "MPRT SSIM", False),
                                 ("random_logit_spearman", "RandLogit", False),
                                 ("random_logit_ssim", "RandLogit SSIM", False), ("deletion_auc", "Deletion", False),
                                 ("insertion_auc", "Insertion", True))
      for bound in ("low", "high")),
    MetricSpec("mprt_images", "MPRT images", "images in the MPRT's sample (every class of each)", "count", digits=0,
               in_table=False),
    MetricSpec("mprt_localizer_calls", "MPRT calls", "localizer calls of the MPRT: (randomised networks + 1) per batch "
               "of sampled images", "count", higher_is_better=False, digits=0, in_table=False),
    MetricSpec("random_logit_images", "RandLogit images", "images in the random-logit test's sample", "count",
               digits=0, in_table=False),
    MetricSpec("deletion_pairs", "Deletion pairs", "(image, class) pairs with a true box whose deletion curve was read",
               "count", digits=0, in_table=False),
    MetricSpec("insertion_pairs", "Insertion pairs", "(image, class) pairs with a true box whose insertion curve was "
               "read", "count", digits=0, in_table=False),
    MetricSpec("deletion_insertion_forward_images", "Del/Ins forwards", "perturbed images sent through the model for "
               "the deletion and insertion curves (pairs x (steps + 1) per curve)", "count", higher_is_better=False,
               digits=0, in_table=False),
    MetricSpec("mask_pairs", "mask pairs", "annotated (image, class) pairs with a defined IoU (the mIoU's pairs)",
               "count", digits=0, in_table=False),
    MetricSpec("mask_positive_pairs", "mask positives", "annotated pairs whose mask is non-empty (the hit "
               "rate's pairs)", "count", digits=0, in_table=False),
    MetricSpec("mask_images", "mask images", "images with masks that were scored", "count", digits=0,
               in_table=False),
    MetricSpec("n_pairs", "pairs", "number of (image, class) pairs with a true box that were scored", "count",
               per_class=True, split="boxes", digits=0, in_table=False),
    MetricSpec("loc_images", "images", "boxed images scored", "count", digits=0, in_table=False),
    MetricSpec("overlap_excluded", "overlap excluded", "cross-dataset evaluation: target test images left out as "
               "training images (or of training patients) of the model's dataset (cxrbench.overlap)", "count",
               higher_is_better=False, split="test", digits=0, in_table=False),
    MetricSpec("loc_ms_per_image", "ms/img", "localizer time per image (all classes in one call), device-synchronised",
               "speed", higher_is_better=False, digits=1, unit="ms", compact=True),
    MetricSpec("mprt_ms_per_image", "MPRT ms/img", "MPRT time per sampled image: the trained maps, the randomised "
               "copies and their maps and similarities, device-synchronised", "speed", higher_is_better=False,
               digits=1, unit="ms", in_table=False),
    MetricSpec("deletion_insertion_ms_per_image", "Del/Ins ms/img", "deletion and insertion time per perturbed image "
               "(building it, the forward pass, reading the probability), device-synchronised", "speed",
               higher_is_better=False, digits=2, unit="ms", in_table=False),
    # ------------------------------------------------------------------ speed and size (a cell's info)
    MetricSpec("train_images_per_s", "img/s train", "training throughput over the cell's epochs, in wall-clock "
               "time on the machine and under the load of the cell's run (other cells of a parallel executor, "
               "other programs): compare speeds only between cells run alone on the same machine, or use the "
               "pytest-benchmark ratios in benchmarks/", "speed", digits=1, unit="images/s"),
    MetricSpec("inference_images_per_s", "img/s infer", "test-split prediction throughput (wall clock, under the "
               "run's load, as img/s train)", "speed", digits=1, unit="images/s"),
    MetricSpec("parameters", "params", "trainable and frozen parameters of the classifier", "speed",
               higher_is_better=False, digits=0),
    MetricSpec("duration_s", "seconds", "wall time of the cell (train, evaluate, localize)", "speed",
               higher_is_better=False, digits=0, unit="s", in_table=False),
)
"""Every metric, in the order tables show them."""

INFO_KEYS = ("parameters", "train_images_per_s", "inference_images_per_s", "duration_s")
"""Catalogue entries read from a cell's ``info`` rather than its metrics."""

_BY_KEY = {m.key: m for m in METRICS if not m.is_family}
_PER_CLASS = {m.per_class_key or m.key: m for m in METRICS if m.per_class}
_FAMILIES = [m for m in METRICS if m.is_family]


def split_key(key: str) -> tuple[str, str | None]:
    """``auroc/Effusion`` -> (``auroc``, ``Effusion``); ``auroc_mean`` -> (``auroc_mean``, None)."""
    if "/" in key:
        base, cls = key.split("/", 1)
        return base, cls
    return key, None


def per_class_key(base: str, class_name: str) -> str:
    """The key of a per-class value: ``per_class_key("auroc", "Effusion") == "auroc/Effusion"``."""
    return f"{base}/{class_name}"


def lookup(key: str) -> MetricSpec | None:
    """The declaration of ``key`` (a summary, a per-class value or a family member), or None."""
    base, cls = split_key(key)
    if cls is None and base in _BY_KEY:
        return _BY_KEY[base]
    if cls is not None and base in _PER_CLASS:
        return _PER_CLASS[base]
    for family in _FAMILIES:
        if family.matches(base):
            return family
    return None


def higher_is_better(key: str) -> bool:
    """The ranking direction of ``key`` (unknown keys, e.g. plugin columns: larger first)."""
    spec = lookup(key)
    return spec.higher_is_better if spec is not None else True


def digits(key: str) -> int:
    spec = lookup(key)
    return spec.digits if spec is not None else 3


def label(key: str) -> str:
    """The column header of ``key``; a per-class key shows its class name."""
    base, cls = split_key(key)
    if cls is not None:
        return cls
    spec = lookup(key)
    return spec.label_for(key) if spec is not None else key


def table_keys(group: Group, available: Iterable[str], *, compact: bool = False,
               every_threshold: bool = False) -> list[str]:
    """The summary keys of ``group`` to show, in catalogue order, among ``available``.

    Family members are expanded in the order of their thresholds (only the family's
    ``table_thresholds`` unless ``every_threshold``).
    """
    present = [k for k in dict.fromkeys(available) if "/" not in k]
    out: list[str] = []
    for spec in METRICS:
        if spec.group != group or not spec.in_table or (compact and not spec.compact):
            continue
        if spec.is_family:
            members = [k for k in present if spec.matches(k)]
            if spec.table_thresholds is not None and not every_threshold:
                members = [k for k in members
                           if float(spec.pattern().match(k).group("t")) in spec.table_thresholds]
            out += sorted(members, key=lambda k: float(spec.pattern().match(k).group("t")))
        elif spec.key in present:
            out.append(spec.key)
    return out


def known_keys(available: Iterable[str]) -> list[str]:
    """The keys of ``available`` the catalogue declares (for ``--sort`` suggestions)."""
    return [k for k in available if lookup(k) is not None]


def explain(keys: Iterable[str]) -> list[tuple[str, str, str]]:
    """(label, key, definition with its source) for each distinct declared metric among ``keys``."""
    seen: dict[str, tuple[str, str, str]] = {}
    for key in keys:
        spec = lookup(key)
        if spec is None or spec.key in seen:
            continue
        source = f" [{spec.source}]" if spec.source else ""
        where = f" (split: {spec.split})" if spec.split else ""
        seen[spec.key] = (spec.label.replace("{t}", "t"), spec.key, f"{spec.description}{where}{source}")
    return list(seen.values())


def markdown_table() -> str:
    """The catalogue as the Markdown table kept in docs/metrics.md (a test checks it is current)."""
    lines = ["| key | column | group | better | definition | source |", "|---|---|---|---|---|---|"]
    for spec in METRICS:
        key = spec.key + (f" (per class: `{spec.per_class_key or spec.key}/<Class>`)" if spec.per_class else "")
        better = "higher" if spec.higher_is_better else "lower"
        where = f" Split: {spec.split}." if spec.split else ""
        lines.append(f"| `{key}` | {spec.label.replace('{t}', 't')} | {spec.group} | {better} | "
                     f"{spec.description}.{where} | {spec.source or 'cxrbench'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m cxrbench.catalogue` prints the docs table
    print(markdown_table(), end="")
