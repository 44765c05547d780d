"""Speed of every registered component, through the helpers plugin authors use (cxrbench.testing).

Parametrised over the installed registry (see conftest.py for the selection options), so
a newly installed plugin is benchmarked without new code:

* backbones: ``forward_features`` images/s, inference and forward+backward
  (``extra_info``: images_per_s, params);
* pooling heads: cost on a densenet121-sized feature map (1024 channels, stride 32), 14
  classes;
* localizers: all classes in one call as a RATIO to a plain forward of the same batch,
  the two interleaved round by round (``extra_info``: ratio);
* datasets: images/s of a pass of training batches from the prepared cache and from the
  originals (phantom always; nih / chexpert when ``--bench-data-root`` holds them);
* metrics: what one cell computes, on realistic sizes: classification metrics with a
  1,000-replicate patient bootstrap on 25,000 x 14 predictions (the data of
  test_metrics_speed.py, which compares the kernels with sklearn), and boxes + scores for
  984 boxed (image, class) heatmaps, as many as NIH's box list.

Run::

    nice -n 10 python -m pytest benchmarks/test_components.py --benchmark-only --benchmark-autosave
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# The bootstrap data is test_metrics_speed.py's fixture: one definition of the realistic case.
from test_metrics_speed import N_BOOT, N_CLASSES, N_IMAGES, predictions  # noqa: F401

from cxrbench.boxes import ThresholdPolicy
from cxrbench.errors import CxrbenchError
from cxrbench.interfaces import Classifier
from cxrbench.localization import LocalizationRun, score
from cxrbench.metrics import classification_metrics
from cxrbench.testing import (
    benchmark_backbone,
    benchmark_head,
    benchmark_loading,
    localizer_ratio,
    make_backbone,
    make_dataset,
    make_head,
    make_localizer,
    synthetic_images,
)

STEPS = ["forward", "forward_backward"]
HEAD_CHANNELS = 1024  # densenet121's num_features, the seed's backbone
HEAD_CLASSES = 14  # NIH ChestX-ray14
LOCALIZER_CLASSES = list(range(8))  # the eight NIH findings with boxes, explained in one call
NIH_BOXED_PAIRS = 984


def build_or_skip(build, what: str):
    """Build a component with default options; a component that needs options is skipped, named."""
    try:
        return build()
    except (CxrbenchError, TypeError, ValueError) as exc:
        pytest.skip(f"{what}: cannot be built with default options: {exc}")


# --------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("step", STEPS)
def test_backbone(benchmark, backbone_name, step, device, bench, bench_registry, bench_settings, bench_figures):
    benchmark.group = f"backbone-{step}-{device}"
    torch.manual_seed(0)
    backbone = build_or_skip(lambda: make_backbone(backbone_name, registry=bench_registry), backbone_name)
    figures = benchmark_backbone(
        benchmark, backbone, size=bench_settings.size, batch=bench_settings.batch, device=bench,
        backward=step == "forward_backward", rounds=bench_settings.rounds,
    )
    benchmark.extra_info["backbone"] = backbone_name
    bench_figures.append((f"backbone {backbone_name} {step} [{device}]", f"{figures['images_per_s']:.1f} images/s"))


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("step", STEPS)
def test_head(benchmark, head_name, step, device, bench, bench_registry, bench_settings, bench_figures):
    benchmark.group = f"head-{step}-{device}"
    torch.manual_seed(0)
    head = build_or_skip(lambda: make_head(head_name, HEAD_CHANNELS, HEAD_CLASSES, registry=bench_registry),
                         head_name)
    side = max(bench_settings.size // 32, 1)
    shape = (bench_settings.batch, HEAD_CHANNELS, side, side)
    figures = benchmark_head(benchmark, head, shape, device=bench, backward=step == "forward_backward",
                             rounds=max(bench_settings.rounds, 5))
    benchmark.extra_info["head"] = head_name
    bench_figures.append((f"head {head_name} {step} [{device}]", f"{figures['best_ms']:.2f} ms per batch"))


# --------------------------------------------------------------------------- localizers


_MODELS: dict[tuple[str, str, str], Classifier] = {}


def explained_model(registry, settings, localizer, device: str) -> tuple[Classifier, str]:
    """The reference backbone with the first head the localizer supports (avg, else any)."""
    heads = ["avg", *[n for n in registry.names("head") if n != "avg"]]
    for head_name in heads:
        key = (settings.localizer_backbone, head_name, device)
        if key not in _MODELS:
            torch.manual_seed(0)
            backbone = make_backbone(settings.localizer_backbone, registry=registry)
            head = make_head(head_name, backbone.num_features, len(LOCALIZER_CLASSES), registry=registry)
            _MODELS[key] = Classifier(backbone, head, [f"c{k}" for k in LOCALIZER_CLASSES]).eval()
        if localizer.unsupported_reason(_MODELS[key]) is None:
            return _MODELS[key], head_name
    pytest.skip(f"localizer {localizer.NAME!r} supports none of the heads {heads}")


def test_localizer(benchmark, localizer_name, device, bench, bench_registry, bench_settings, bench_figures):
    benchmark.group = f"localizer-{bench_settings.localizer_backbone}-{device}"
    localizer = build_or_skip(lambda: make_localizer(localizer_name, registry=bench_registry), localizer_name)
    model, head_name = explained_model(bench_registry, bench_settings, localizer, device)
    images = synthetic_images(bench_settings.batch, bench_settings.size)
    figures = localizer_ratio(benchmark, localizer, model, images, LOCALIZER_CLASSES, device=bench,
                              rounds=bench_settings.rounds)
    size = bench_settings.size
    assert figures["shape"] == (bench_settings.batch, len(LOCALIZER_CLASSES), size, size)
    benchmark.extra_info.update(localizer=localizer_name, backbone=bench_settings.localizer_backbone, head=head_name)
    bench_figures.append((
        f"localizer {localizer_name} ({bench_settings.localizer_backbone}+{head_name}, "
        f"{len(LOCALIZER_CLASSES)} classes) [{device}]",
        f"{figures['ratio']:.2f}x forward",
    ))


# --------------------------------------------------------------------------- datasets


def dataset_options(name: str, data_root: Path) -> dict:
    """Options for the built-in datasets; other datasets get their defaults."""
    if name == "phantom":
        return {"num_images": 200, "image_size": 256}  # 130 training images of 256 px
    if name in ("nih", "chexpert"):
        return {"root": str(data_root / name)}
    return {}


_CACHES: dict[str, Path] = {}


@pytest.mark.parametrize("source", ["cache", "originals"])
def test_dataset_loading(benchmark, dataset_name, source, device, bench, bench_registry, bench_settings,
                         tmp_path_factory, bench_figures):
    benchmark.group = f"dataset-loading-{device}"
    options = dataset_options(dataset_name, bench_settings.data_root)
    if "root" in options and not Path(options["root"]).is_dir():
        pytest.skip(f"no {dataset_name} data at {options['root']}")
    dataset = build_or_skip(lambda: make_dataset(dataset_name, options, registry=bench_registry), dataset_name)
    sizes = {name: len(dataset.split(name)) for name in dataset.split_names}
    split = max(sizes, key=sizes.__getitem__)
    if dataset_name not in _CACHES:  # prepared once per run, for every device
        _CACHES[dataset_name] = tmp_path_factory.mktemp(f"cache-{dataset_name}")
    figures = benchmark_loading(
        benchmark, dataset, split=split, size=bench_settings.size, batch=bench_settings.batch, source=source,
        cache_root=_CACHES[dataset_name], device=bench, rounds=bench_settings.rounds, warmup_rounds=1,
    )
    benchmark.extra_info["dataset"] = dataset_name
    bench_figures.append((
        f"dataset {dataset_name} {split} ({figures['images']} images) from {source} [{device}]",
        f"{figures['images_per_s']:.0f} images/s",
    ))


# --------------------------------------------------------------------------- metrics (host only: numpy)


@pytest.mark.benchmark(group="metrics")
def test_metrics_classification(benchmark, predictions, bench_figures):  # noqa: F811
    y, scores, patients = predictions
    names = [f"C{k}" for k in range(N_CLASSES)]
    # Cut-offs are chosen on the same predictions as the test: a speed figure, not an evaluation.
    out = benchmark.pedantic(
        classification_metrics,
        args=(y, scores, names),
        kwargs={"y_true_val": y, "y_score_val": scores, "groups": patients, "n_boot": N_BOOT},
        rounds=3,
        iterations=1,
    )
    assert np.isfinite(out["auroc_ci_low"]) and out["auroc_ci_low"] <= out["auroc_mean"] <= out["auroc_ci_high"]
    benchmark.extra_info.update(images=N_IMAGES, classes=N_CLASSES, replicates=N_BOOT)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        bench_figures.append((f"classification metrics + AUROC CI, {N_IMAGES:,} x {N_CLASSES}, {N_BOOT} replicates",
                              f"{stats.stats.min:.2f} s"))


@pytest.fixture(scope="module")
def boxed_run(bench_settings) -> LocalizationRun:
    """984 CAM-like heatmaps (7 x 7 upsampled to the input size) with one or two true boxes each."""
    size = bench_settings.size
    generator = torch.Generator().manual_seed(3)
    low = torch.rand(NIH_BOXED_PAIRS, 1, 7, 7, generator=generator) ** 3
    maps = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    maps = ((maps - flat.amin(1)[:, None, None]) / (flat.amax(1) - flat.amin(1))[:, None, None]).numpy()
    rng = np.random.default_rng(3)
    true = []
    for i in range(NIH_BOXED_PAIRS):
        n = 1 + (i % 9 == 0)
        xy = rng.uniform(0, size * 0.7, (n, 2))
        true.append(np.column_stack([xy, rng.uniform(size * 0.05, size * 0.3, (n, 2))]))
    peaks = np.column_stack(np.unravel_index(maps.reshape(len(maps), -1).argmax(1), (size, size)))[:, ::-1] + 0.5
    rows = np.arange(NIH_BOXED_PAIRS) // 1.12  # ~880 images, as NIH's 984 boxes on 880 images
    classes = np.arange(NIH_BOXED_PAIRS) % 8
    return LocalizationRun(maps.astype(np.float32), rows.astype(np.int64), classes, true, peaks.astype(float),
                           float("nan"), int(rows.max()) + 1)


@pytest.mark.benchmark(group="metrics")
def test_metrics_localization(benchmark, boxed_run, bench_settings, bench_figures):
    names = [f"C{k}" for k in range(8)]
    out, _ = benchmark.pedantic(score, args=(boxed_run, ThresholdPolicy(), names, 0.0), rounds=3, iterations=1)
    assert out["n_pairs"] == NIH_BOXED_PAIRS and 0 <= out["iou_mean"] <= 1
    benchmark.extra_info.update(pairs=NIH_BOXED_PAIRS, map_size=bench_settings.size)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        bench_figures.append((f"heatmaps -> boxes -> scores, {NIH_BOXED_PAIRS} maps of {bench_settings.size} px",
                              f"{stats.stats.min * 1e3:.0f} ms"))
