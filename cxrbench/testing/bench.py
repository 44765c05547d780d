"""Speed figures of a component, timed the way ``benchmarks/`` times the built-ins.

Each helper takes the ``benchmark`` fixture of pytest-benchmark (or None, to time
without it), runs on ``"cpu"`` or ``"cuda"`` (see :mod:`.timing`), returns its figures and
puts them in the benchmark's ``extra_info``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..interfaces import Backbone, Classifier, Dataset, Localizer, PoolingHead
from .factories import synthetic_images
from .timing import BenchDevice, bench_device, measure, timed_call, without_warmup

__all__ = ["benchmark_backbone", "benchmark_head", "benchmark_loading", "localizer_ratio"]


def _record(benchmark: Any, figures: dict[str, Any]) -> dict[str, Any]:
    if benchmark is not None:
        benchmark.extra_info.update(figures)
    return figures


def _summary(times: Sequence[float]) -> dict[str, float]:
    """Best and median round in milliseconds; the best is the least disturbed by other load."""
    return {"best_ms": round(min(times) * 1e3, 3), "median_ms": round(statistics.median(times) * 1e3, 3)}


def _step(module: nn.Module, forward: Callable[[], Tensor], loss: Callable[[Tensor], Tensor], *, backward: bool,
          inputs: Tensor | None = None) -> tuple[Callable[[], None], Callable[[], None] | None]:
    """The step to time on ``module`` and the untimed setup before each round.

    Inference: eval mode, ``forward()`` under ``no_grad``, no setup. Training:
    train mode, ``loss(forward()).backward()``, with the module's gradients (and those of
    ``inputs``) cleared before each round.
    """
    if not backward:
        module.eval()

        def infer() -> None:
            with torch.no_grad():
                forward()

        return infer, None
    module.train()

    def train() -> None:
        loss(forward()).backward()

    def clear() -> None:
        module.zero_grad(set_to_none=True)
        if inputs is not None:
            inputs.grad = None

    return train, clear


def benchmark_backbone(benchmark: Any, backbone: Backbone, *, size: int = 224, batch: int = 8,
                       device: str | BenchDevice = "cpu", backward: bool = False, rounds: int = 3,
                       warmup_rounds: int = 1) -> dict[str, Any]:
    """Images per second of ``backbone.forward_features``, inference or a training step.

    The backbone is moved to the device in place. Inference runs in eval mode under
    ``no_grad``; ``backward=True`` runs train mode, a mean of the feature map as the loss
    and ``backward()`` (gradients are cleared before each round, untimed).

    Returns:
        ``images_per_s`` (from the best round), ``params``, ``best_ms``, ``median_ms``,
        also stored in ``benchmark.extra_info``.

    """
    dev = bench_device(device)
    model = dev.module(backbone)
    x = dev.tensor(synthetic_images(batch, size))
    step, clear = _step(model, lambda: model.forward_features(x), lambda fmap: fmap.float().mean(),
                        backward=backward)
    times = measure(benchmark, step, dev, rounds=rounds, warmup_rounds=warmup_rounds, setup=clear)
    model.zero_grad(set_to_none=True)
    figures = {
        "images_per_s": round(batch / min(times), 2),
        "params": sum(p.numel() for p in model.parameters()),
        "size": size,
        "batch": batch,
        "device": dev.name,
        "torch_threads": torch.get_num_threads(),
        **_summary(times),
    }
    return _record(benchmark, figures)


def benchmark_head(benchmark: Any, head: PoolingHead, feature_shape: Sequence[int], *,
                   device: str | BenchDevice = "cpu", backward: bool = False, rounds: int = 5,
                   warmup_rounds: int = 1) -> dict[str, Any]:
    """Cost of a pooling head on a feature map of ``feature_shape`` (``N x C x h x w``).

    The feature map is non-negative, like a post-ReLU backbone output. ``backward=True``
    also differentiates the logits' sum w.r.t. the head's parameters and the feature map.

    Returns:
        ``images_per_s``, ``best_ms``, ``median_ms`` (also in ``benchmark.extra_info``).

    """
    dev = bench_device(device)
    n, c = int(feature_shape[0]), int(feature_shape[1])
    if c != head.num_features:
        raise ValueError(f"feature_shape has {c} channels, the head expects {head.num_features}")
    pool = dev.module(head)
    generator = torch.Generator().manual_seed(0)
    fmap = dev.tensor(torch.randn(*feature_shape, generator=generator).clamp_min_(0))
    if backward:
        fmap.requires_grad_(True)
    step, clear = _step(pool, lambda: pool(fmap)[0], lambda logits: logits.float().sum(), backward=backward,
                        inputs=fmap)
    times = measure(benchmark, step, dev, rounds=rounds, warmup_rounds=warmup_rounds, setup=clear)
    pool.zero_grad(set_to_none=True)
    figures = {"images_per_s": round(n / min(times), 2), "feature_shape": list(map(int, feature_shape)),
               "device": dev.name, **_summary(times)}
    return _record(benchmark, figures)


def localizer_ratio(benchmark: Any, localizer: Localizer, model: Classifier, images: Tensor,
                    classes: Sequence[int], *, device: str | BenchDevice = "cpu", rounds: int = 3,
                    warmup_rounds: int = 1) -> dict[str, Any]:
    """All-class localizer cost as a multiple of a plain forward of the same batch.

    A plain forward (``no_grad``, logits only) runs, timed, right before every round of
    the localizer, so both see the same machine load; the ratio divides their best
    rounds. Ratios are comparable across machines, the milliseconds are not.

    Args:
        benchmark: the ``benchmark`` fixture (it times the localizer), or None.
        localizer: the localizer under test.
        model: the classifier (moved to the device in place, eval mode).
        images: ``N x 1 x H x W`` images (moved to the device).
        classes: the classes to explain in ONE call.
        device: ``cpu`` or ``cuda``.
        rounds: timed rounds of each.
        warmup_rounds: untimed rounds of each first.

    Returns:
        ``ratio``, ``localizer_ms`` and ``forward_ms`` (best rounds), ``classes``, and the
        last maps' ``shape`` (also in ``benchmark.extra_info``, without the shape).

    """
    dev = bench_device(device)
    model = dev.module(model).eval()
    x = dev.tensor(images)
    classes = list(classes)
    forward_times: list[float] = []
    shapes: list[tuple[int, ...]] = []

    def plain_forward() -> None:
        with torch.no_grad():
            model(x)

    def forward() -> None:
        forward_times.append(timed_call(plain_forward, dev)[1])

    def localize() -> Tensor:
        maps = localizer(model, x, classes)
        shapes.append(tuple(maps.shape))
        return maps

    times = measure(benchmark, localize, dev, rounds=rounds, warmup_rounds=warmup_rounds, setup=forward)
    forward_times = without_warmup(forward_times, warmup_rounds)
    figures = {
        "ratio": round(min(times) / min(forward_times), 3),
        "localizer_ms": round(min(times) * 1e3, 3),
        "forward_ms": round(min(forward_times) * 1e3, 3),
        "classes": len(classes),
        "batch": int(x.shape[0]),
        "device": dev.name,
    }
    _record(benchmark, figures)
    return {**figures, "shape": shapes[-1]}


def benchmark_loading(benchmark: Any, dataset: Dataset, *, split: str, size: int, batch: int, source: str,
                      cache_root: str | Path | None = None, device: str | BenchDevice = "cpu", rounds: int = 2,
                      warmup_rounds: int = 0, workers: int | None = None) -> dict[str, Any]:
    """Images per second of one pass over a split, as training batches on the device.

    ``source="cache"`` prepares the split into ``cache_root`` first (untimed) and times
    opening the memory-mapped cache plus a pass of ``BatchLoader``: what every epoch costs
    once ``cxrbench prepare`` has run. ``source="originals"`` times decoding and resizing
    every original image (``load_split`` without a cache) plus the same pass: what a run
    without a cache pays once.

    Returns:
        ``images_per_s`` (best round), ``images``, ``best_ms``, ``median_ms`` (also in
        ``benchmark.extra_info``).

    """
    from ..data import BatchLoader, load_split, open_cache, prepare_split

    dev = bench_device(device)
    if source not in ("cache", "originals"):
        raise ValueError(f"source must be 'cache' or 'originals', got {source!r}")
    if source == "cache":
        if cache_root is None:
            raise ValueError("source='cache' needs a cache_root")
        report = prepare_split(dataset, split, size, Path(cache_root), workers=workers)
        if report.failed:
            raise AssertionError(f"prepare failed for {len(report.failed)} images, e.g. {report.failed[0]}")

    def load() -> Any:
        if source == "cache":
            data = open_cache(dataset, split, size, Path(cache_root))  # type: ignore[arg-type]
            if data is None:
                raise AssertionError("the prepared cache did not open")
            return data
        return load_split(dataset, split, size, cache_root=None, workers=workers)

    def one_pass() -> int:
        count = 0
        for x, _y, _rows in BatchLoader(load(), batch, dev.device, channels_last=dev.channels_last):
            count += int(x.shape[0])
        return count

    n = len(dataset.split(split))
    times = measure(benchmark, one_pass, dev, rounds=rounds, warmup_rounds=warmup_rounds)
    figures = {"images_per_s": round(n / min(times), 1), "images": n, "split": split, "size": size,
               "source": source, "device": dev.name, **_summary(times)}
    return _record(benchmark, figures)
