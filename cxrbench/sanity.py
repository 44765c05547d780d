"""Sanity and faithfulness checks of one localizer on one cell (``localization.sanity``).

:func:`evaluate_sanity` runs after the localizer's maps are scored (``localization.evaluate``)
and returns metrics for the same localizer row and the settings and curves behind them:

* MPRT and the random-logit test (:mod:`cxrbench.mprt`) on a sample: the first
  ``images`` scored images (those with boxes or masks, in row order), every class of each;
* deletion and insertion curves (:mod:`cxrbench.perturbation`) on the scored (image, class)
  pairs with a true box, reusing the maps that were just scored.

Per-class values are means over the class's pairs; a summary is the mean over classes of
the class means; intervals are patient-level percentile bootstraps of that summary
(:func:`cxrbench.locmetrics.bootstrap.bootstrap_mean`) with the grid's ``evaluation``
settings. The trained model is only read: its modes are restored module by module, and the
randomised networks are a copy. docs/metrics.md, "Sanity and faithfulness", defines it all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import MprtSpec, RandomLogitSpec, SanitySpec
from .data import PreparedSplit, normalise
from .interfaces import IMAGENET_GREY_MEAN, IMAGENET_GREY_STD, Localizer
from .localization import renormalise
from .locmetrics.bootstrap import bootstrap_mean
from .mprt import MprtResult, RandomLogitResult, Stage, mprt, random_logit
from .options import options_to_dict
from .perturbation import Curve, auc, curve_probabilities, to_device
from .training import autocast

__all__ = ["evaluate_sanity", "perturbation_checks", "preserved_modes", "sample_checks", "split_mean"]


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode; afterwards every module's own train/eval flag as it was (a mixed state too)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(data: PreparedSplit, rows: np.ndarray, device: torch.device) -> Tensor:
    """Normalised ``len(rows) x 1 x S x S`` images of ``rows`` (as the batch loader normalises them)."""
    return normalise(to_device(np.asarray(data.images[np.asarray(rows, dtype=np.int64)]), device))


def _batches(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# --------------------------------------------------------------------------- summaries


def _class_means(values: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``values`` per class (NaN for a class without finite values)."""
    out = np.full(k, np.nan)
    for c in range(k):
        chosen = values[(classes == c) & np.isfinite(values)]
        if chosen.size:
            out[c] = chosen.mean()
    return out


def _mean(values: np.ndarray) -> float:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


def _per_class(key: str, class_means: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    return {f"{key}/{name}": float(class_means[c]) for c, name in enumerate(class_names)}


def _interval(key: str, values: np.ndarray, patients: np.ndarray, classes: np.ndarray | None, *, n_boot: int,
              seed: int, ci: float) -> dict[str, float]:
    """``<key>_ci_low`` / ``_ci_high`` of the mean (over classes, with ``classes``) of finite ``values``."""
    keep = np.isfinite(values)
    if n_boot <= 0 or not keep.any():
        return {}
    interval = bootstrap_mean(values[keep], patients[keep], classes=None if classes is None else classes[keep],
                              n_boot=n_boot, seed=seed, ci=ci)
    return {f"{key}_ci_low": float(interval.low), f"{key}_ci_high": float(interval.high)}


def _stage_record(stage: Stage, class_names: Sequence[str]) -> dict[str, Any]:
    k = len(class_names)
    classes = np.tile(np.arange(k), stage.spearman.shape[0])
    rho = _class_means(stage.spearman.ravel(), classes, k)
    index = _class_means(stage.ssim.ravel(), classes, k)
    return {"randomised": list(stage.randomised), "spearman": _mean(rho), "ssim": _mean(index),
            "spearman_per_class": dict(zip(class_names, map(float, rho), strict=True)),
            "ssim_per_class": dict(zip(class_names, map(float, index), strict=True))}


def _mprt_metrics(result: MprtResult, spec: MprtSpec, class_names: Sequence[str], patients: np.ndarray, *,
                  n_boot: int, seed: int, ci: float) -> tuple[dict[str, float], dict[str, Any]]:
    k = len(class_names)
    cascade = [_stage_record(s, class_names) for s in result.cascade]
    independent = [_stage_record(s, class_names) for s in result.independent]
    final = result.cascade[-1] if result.cascade else None
    metrics: dict[str, float] = {}
    if final is not None:
        n = final.spearman.shape[0]
        pair_patients, pair_classes = np.repeat(patients, k), np.tile(np.arange(k), n)
        for key, values in (("mprt_spearman", final.spearman), ("mprt_ssim", final.ssim)):
            means = _class_means(values.ravel(), pair_classes, k)
            metrics[key] = _mean(means)
            metrics.update(_per_class(key, means, class_names))
            metrics.update(_interval(key, values.ravel(), pair_patients, pair_classes, n_boot=n_boot, seed=seed,
                                     ci=ci))
    if independent:
        metrics["mprt_independent_spearman"] = _mean(np.array([s["spearman"] for s in independent]))
        metrics["mprt_independent_ssim"] = _mean(np.array([s["ssim"] for s in independent]))
    # the pass rests on the fully randomised network; without the cascade, on the blocks' mean
    decisive = metrics.get("mprt_spearman", metrics.get("mprt_independent_spearman", float("nan")))
    metrics["mprt_pass"] = float(decisive < spec.bound) if np.isfinite(decisive) else float("nan")
    settings = {"images": int(len(patients)), "bound": spec.bound, "seed": spec.seed, "blocks": list(result.blocks),
                "cascade": cascade, "independent": independent, "localizer_calls": result.localizer_calls,
                "decided_by": "mprt_spearman" if final is not None else "mprt_independent_spearman"}
    return metrics, settings


def _random_logit_metrics(result: RandomLogitResult, spec: RandomLogitSpec, class_names: Sequence[str],
                          patients: np.ndarray, ids: Sequence[str], *, n_boot: int, seed: int,
                          ci: float) -> tuple[dict[str, float], dict[str, Any]]:
    metrics: dict[str, float] = {"random_logit_images": float(len(patients))}
    for key, values in (("random_logit_spearman", result.spearman), ("random_logit_ssim", result.ssim)):
        metrics[key] = _mean(values)
        metrics.update(_interval(key, np.asarray(values, dtype=np.float64), patients, None, n_boot=n_boot, seed=seed,
                                 ci=ci))
    pairs = [{"id": str(i), "predicted": class_names[int(p)], "other": class_names[int(o)]}
             for i, p, o in zip(ids, result.predicted, result.other, strict=True)]
    return metrics, {"images": int(len(patients)), "seed": spec.seed, "pairs": pairs}


# --------------------------------------------------------------------------- the checks


def sample_checks(model: nn.Module, localizer: Localizer, data: PreparedSplit, image_rows: np.ndarray,
                   class_names: Sequence[str], spec: SanitySpec, *, batch_size: int, device: torch.device,
                   dtype: torch.dtype | None, n_boot: int, boot_seed: int,
                   ci: float) -> tuple[dict[str, float], dict[str, Any]]:
    """MPRT and random logit on the first images of the scored split.

    Args:
        model: the trained classifier, in eval mode (only read).
        localizer: the localizer under test.
        data: the scored part of the boxed split.
        image_rows: the scored images' rows, in order; the sample is the first of them.
        class_names: the model's classes (every one is explained).
        spec: the checks; ``spec.mprt`` and ``spec.random_logit`` are read.
        batch_size: images per localizer call.
        device: the model's device.
        dtype: autocast dtype of the forward pass that predicts the classes (random logit).
        n_boot: bootstrap replicates of the intervals (0 = none).
        boot_seed: their seed.
        ci: their level.

    Returns:
        (metrics, settings per check).

    """
    wanted = max(spec.mprt.images if spec.mprt else 0, spec.random_logit.images if spec.random_logit else 0)
    rows = np.asarray(image_rows, dtype=np.int64)[:wanted]
    if not len(rows):
        return {}, {"skipped": "no scored image"}
    classes = list(range(len(class_names)))

    def explain(net: nn.Module, x: Tensor) -> Tensor:
        return renormalise(localizer(net, x, classes).float())

    batches = [_images(data, part, device) for part in _batches(rows, batch_size)]
    _synchronize(device)
    started = time.perf_counter()
    trained = [explain(model, x) for x in batches]
    _synchronize(device)
    trained_seconds = time.perf_counter() - started
    patients = np.asarray(data.split.patient_ids, dtype=str)
    metrics: dict[str, float] = {}
    settings: dict[str, Any] = {}
    if spec.mprt is not None:
        n = min(spec.mprt.images, len(rows))
        images, maps = _first(batches, n), _first(trained, n)
        result = mprt(model, explain, images, maps, seed=spec.mprt.seed, cascade=spec.mprt.cascade,
                      independent=spec.mprt.independent)
        found, settings["mprt"] = _mprt_metrics(result, spec.mprt, class_names, patients[rows[:n]], n_boot=n_boot,
                                                seed=boot_seed, ci=ci)
        metrics.update(found)
        metrics["mprt_images"] = float(n)
        metrics["mprt_localizer_calls"] = float(result.localizer_calls)
        # the trained maps' share of this sample, then every randomised stage
        metrics["mprt_ms_per_image"] = 1000.0 * (trained_seconds * n / len(rows) + result.seconds) / n
    if spec.random_logit is not None:
        n = min(spec.random_logit.images, len(rows))
        if len(class_names) < 2:
            settings["random_logit"] = {"skipped": "the model has one class"}
        else:
            with torch.no_grad(), autocast(device, dtype):
                probabilities = torch.cat([torch.sigmoid(model(x).float()) for x in _first(batches, n)])
            result = random_logit(_first(trained, n), probabilities, seed=spec.random_logit.seed)
            ids = [str(data.split.ids[r]) for r in rows[:n]]
            found, settings["random_logit"] = _random_logit_metrics(result, spec.random_logit, class_names,
                                                                    patients[rows[:n]], ids, n_boot=n_boot,
                                                                    seed=boot_seed, ci=ci)
            metrics.update(found)
    return metrics, settings


def _first(batches: Sequence[Tensor], n: int) -> list[Tensor]:
    """The batches holding the first ``n`` rows (the last one cut)."""
    out, left = [], n
    for batch in batches:
        if left <= 0:
            break
        out.append(batch[:left])
        left -= len(out[-1])
    return out


def _curves(spec: SanitySpec) -> list[tuple[Curve, int | None]]:
    out = []
    for kind in ("deletion", "insertion"):
        check = getattr(spec, kind)
        if check is not None:
            out.append((Curve(kind, check.steps, check.baseline, check.sigma), check.max_pairs))
    return out


def split_mean(data: PreparedSplit) -> float:
    """The scored images' mean pixel, in normalised units (the ``mean`` baseline)."""
    mean = float(np.mean(data.images, dtype=np.float64)) / 255.0 if len(data) else IMAGENET_GREY_MEAN
    return (mean - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD


def perturbation_checks(model: nn.Module, data: PreparedSplit, run: Any, class_names: Sequence[str],
                         spec: SanitySpec, *, batch_size: int, device: torch.device, dtype: torch.dtype | None,
                         channels_last: bool, n_boot: int, boot_seed: int,
                         ci: float) -> tuple[dict[str, float], dict[str, Any]]:
    """Deletion and insertion AUCs of the scored pairs, from the maps that were scored.

    Args:
        model: the trained classifier, in eval mode (only read).
        data: the scored part of the boxed split.
        run: the scored run: its pairs (sorted by row) and their maps.
        class_names: the model's classes.
        spec: the checks; ``spec.deletion`` and ``spec.insertion`` are read.
        batch_size: images per batch of source images, and perturbed images per forward pass.
        device: the model's device.
        dtype: autocast dtype of the forward passes.
        channels_last: feed the perturbed images channels-last.
        n_boot: bootstrap replicates of the intervals (0 = none).
        boot_seed: their seed.
        ci: their level.

    Returns:
        (metrics, settings per curve: options, x axis and mean curves).

    """
    curves = _curves(spec)
    if not len(run.pair_rows):
        return {}, {c.kind: {"skipped": "no scored pair"} for c, _ in curves}
    mean = split_mean(data) if any(c.baseline == "mean" for c, _ in curves) else 0.0
    groups: dict[int, list[Curve]] = {}
    for curve, cap in curves:  # curves scoring the same pairs share their forward passes
        groups.setdefault(min(cap or len(run.pair_rows), len(run.pair_rows)), []).append(curve)
    _synchronize(device)
    started = time.perf_counter()
    on_device: dict[str, list[Tensor]] = {}
    forwards = 0
    for n_pairs, group in groups.items():
        rows, classes = run.pair_rows[:n_pairs], run.pair_classes[:n_pairs]
        for part in _batches(np.unique(rows), batch_size):
            # pairs are sorted by row, so the pairs of a run of rows are a run of pairs
            first, last = np.searchsorted(rows, part[0]), np.searchsorted(rows, part[-1], side="right")
            probabilities = curve_probabilities(
                model, _images(data, part, device), to_device(run.maps[first:last], device),
                to_device(np.searchsorted(part, rows[first:last]).astype(np.int64), device),
                to_device(classes[first:last].astype(np.int64), device), group, batch_size=batch_size,
                dtype=dtype, channels_last=channels_last, mean=mean)
            for curve, table in zip(group, probabilities, strict=True):
                on_device.setdefault(curve.kind, []).append(table)
            forwards += (last - first) * sum(c.steps + 1 for c in group)
    host = {kind: torch.cat(tables).cpu().numpy() for kind, tables in on_device.items()}  # the one copy back
    _synchronize(device)
    seconds = time.perf_counter() - started
    pixels = data.size * data.size
    patients = np.asarray(data.split.patient_ids, dtype=str)
    k = len(class_names)
    metrics: dict[str, float] = {"deletion_insertion_forward_images": float(forwards),
                                 "deletion_insertion_ms_per_image": 1000.0 * seconds / max(forwards, 1)}
    settings: dict[str, Any] = {}
    for n_pairs, group in groups.items():
        pair_classes = run.pair_classes[:n_pairs]
        pair_patients = patients[run.pair_rows[:n_pairs]]
        for curve in group:
            fractions = curve.fractions(pixels)
            table = host[curve.kind]
            areas = auc(table, fractions)
            key = f"{curve.kind}_auc"
            means = _class_means(areas, pair_classes, k)
            metrics[key] = _mean(means)
            metrics.update(_per_class(key, means, class_names))
            metrics.update(_interval(key, areas, pair_patients, pair_classes, n_boot=n_boot, seed=boot_seed, ci=ci))
            metrics[f"{curve.kind}_pairs"] = float(n_pairs)
            curves_per_class = {name: table[pair_classes == c].mean(axis=0).tolist()
                                for c, name in enumerate(class_names) if (pair_classes == c).any()}
            settings[curve.kind] = {"steps": curve.steps, "baseline": curve.baseline,
                                    "sigma": curve.sigma if curve.baseline == "blur" else None,
                                    "baseline_value": mean if curve.baseline == "mean" else None,
                                    "pairs": int(n_pairs), "fractions": fractions.tolist(),
                                    "mean_curve": table.mean(axis=0).tolist(), "mean_curve_per_class": curves_per_class}
    return metrics, settings


def evaluate_sanity(model: nn.Module, localizer: Localizer, data: PreparedSplit, run: Any,
                    class_names: Sequence[str], spec: SanitySpec, *, batch_size: int, device: torch.device,
                    dtype: torch.dtype | None = None, channels_last: bool = False, n_boot: int = 0,
                    boot_seed: int = 0, ci: float = 0.95) -> tuple[dict[str, float], dict[str, Any]]:
    """Every check ``spec`` switches on, for one localizer of one cell.

    Args:
        model: the trained classifier (only read; its modes are restored exactly).
        localizer: the localizer whose maps were scored.
        data: the scored part of the boxed split.
        run: the scored :class:`~cxrbench.localization.LocalizationRun` (its image rows are
            the MPRT's sample; its pairs and maps feed deletion and insertion).
        class_names: the model's classes.
        spec: which checks, with which options.
        batch_size: images per localizer call and per forward pass.
        device: the model's device.
        dtype: the cell's autocast dtype for the forward passes of the checks (None: full precision).
        channels_last: feed perturbed images channels-last.
        n_boot: bootstrap replicates of the intervals (0 = none).
        boot_seed: their seed.
        ci: their level.

    Returns:
        (metrics for the localizer's row, settings: each check's options, stages and curves).

    """
    metrics: dict[str, float] = {}
    settings: dict[str, Any] = {"options": options_to_dict(spec)}
    with preserved_modes(model):
        if spec.mprt is not None or spec.random_logit is not None:
            image_rows = run.image_rows if run.image_rows is not None else np.unique(run.pair_rows)
            found, extra = sample_checks(model, localizer, data, image_rows, class_names, spec,
                                          batch_size=batch_size, device=device, dtype=dtype, n_boot=n_boot,
                                          boot_seed=boot_seed, ci=ci)
            metrics.update(found)
            settings.update(extra)
        if spec.deletion is not None or spec.insertion is not None:
            found, extra = perturbation_checks(model, data, run, class_names, spec, batch_size=batch_size,
                                                device=device, dtype=dtype, channels_last=channels_last,
                                                n_boot=n_boot, boot_seed=boot_seed, ci=ci)
            metrics.update(found)
            settings.update(extra)
    return metrics, settings
