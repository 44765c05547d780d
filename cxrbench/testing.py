"""Contract tests and benchmark helpers for cxrbench components: yours and the built-ins.

This module imports pytest (install ``cxrbench[test]``); nothing else in cxrbench imports
it, so importing cxrbench never needs pytest.

**Contract tests.** Subclass a mixin in a ``test_*.py`` file, name your component, and
pytest runs every check of that kind of component on it::

    import cxrbench_gem
    from cxrbench.testing import HeadContract

    class TestGeMHead(HeadContract):
        name = "gem"
        options = {"p": 4.0}
        plugins = [cxrbench_gem]  # hermetic; leave out to use the installed entry points

The mixins are :class:`BackboneContract`, :class:`HeadContract`,
:class:`LocalizerContract` and :class:`DatasetContract`. Their names do not start with
``Test``, so importing one into a test module does not collect it on its own. Every check
is a plain method (``test_*``) that raises ``AssertionError`` on a broken component, so it
can also be called directly.

**Benchmarks** (pytest-benchmark): :func:`benchmark_backbone`, :func:`benchmark_head`,
:func:`localizer_ratio` and :func:`benchmark_loading` time a component the way
``benchmarks/test_components.py`` times the built-ins, on ``"cpu"`` or on ``"cuda"``
(mixed precision, channels-last, synchronised timing), and put their figures in the
benchmark's ``extra_info``. Each accepts ``benchmark=None`` to time without pytest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from . import hookimpl
from .interfaces import (
    BOX_COLUMNS,
    COMPONENT_KINDS,
    Backbone,
    Dataset,
    DatasetContext,
    Localizer,
    PoolingHead,
    Split,
    empty_boxes,
)
from .manager import build_plugin_manager
from .model import Classifier
from .options import option_fields, parse_options
from .registry import Registry

__all__ = [
    "BackboneContract",
    "BenchDevice",
    "DatasetContract",
    "HeadContract",
    "LinearHead",
    "LocalizerContract",
    "LogitMapHead",
    "TinyBackbone",
    "TinyDataset",
    "benchmark_backbone",
    "benchmark_head",
    "benchmark_loading",
    "bench_device",
    "iter_names",
    "localizer_ratio",
    "measure",
    "make_backbone",
    "make_dataset",
    "make_head",
    "make_localizer",
    "registry_for",
    "synthetic_images",
    "testing_plugin",
    "tiny_classifier",
]


# --------------------------------------------------------------------------- registry and building

_REGISTRIES: dict[tuple[Any, ...], tuple[Registry, tuple[Any, ...]]] = {}


def registry_for(plugins: Sequence[Any] = (), *, entry_points: bool | None = None) -> Registry:
    """A registry of the given plugins and/or the installed ``cxrbench`` entry points (cached).

    Args:
        plugins: plugin objects (modules or instances), or ``(name, plugin)`` pairs, to
            register in code.
        entry_points: also load the installed entry points (built-ins and every
            pip-installed plugin). Default: only when ``plugins`` is empty, because a
            plugin that is installed AND listed would be registered twice.

    Returns:
        The registry, built once per distinct argument list.

    """
    plugins = tuple(plugins)
    use_entry_points = not plugins if entry_points is None else entry_points
    # Keyed by identity: plugin objects need not be hashable; the tuple keeps them alive.
    key = (tuple(id(p) for p in plugins), use_entry_points)
    if key not in _REGISTRIES:
        pm = build_plugin_manager(plugins=plugins, entry_points=use_entry_points, core=False)
        _REGISTRIES[key] = (Registry.from_plugin_manager(pm), plugins)
    return _REGISTRIES[key][0]


def _options(cls: type, kind: str, name: str, raw: Mapping[str, Any] | Any | None) -> Any:
    """Parse ``raw`` the way a grid's ``options`` block is parsed (an instance passes through)."""
    if raw is not None and not isinstance(raw, Mapping):
        return raw
    return parse_options(cls.Options, dict(raw or {}), f"{kind}s[{name}].options", f"{kind} '{name}'")


def make_backbone(name: str, options: Mapping[str, Any] | Any | None = None, *,
                  registry: Registry | None = None) -> Backbone:
    """Build backbone ``name`` as a grid would (``cls(options, name=name)``)."""
    cls = (registry or registry_for()).get("backbone", name)
    return cls(_options(cls, "backbone", name, options), name=name)


def make_head(name: str, num_features: int, num_classes: int, options: Mapping[str, Any] | Any | None = None, *,
              registry: Registry | None = None) -> PoolingHead:
    """Build pooling head ``name`` for ``num_features`` channels and ``num_classes`` classes."""
    cls = (registry or registry_for()).get("head", name)
    return cls(num_features, num_classes, _options(cls, "head", name, options))


def make_localizer(name: str, options: Mapping[str, Any] | Any | None = None, *,
                   registry: Registry | None = None) -> Localizer:
    """Build localizer ``name``."""
    cls = (registry or registry_for()).get("localizer", name)
    return cls(_options(cls, "localizer", name, options))


def make_dataset(name: str, options: Mapping[str, Any] | Any | None = None, *, registry: Registry | None = None,
                 context: DatasetContext | None = None) -> Dataset:
    """Build dataset ``name`` (warnings are collected in ``dataset.context`` only)."""
    cls = (registry or registry_for()).get("dataset", name)
    return cls(_options(cls, "dataset", name, options), context or DatasetContext())


def synthetic_images(n: int, size: int | tuple[int, int], *, seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """``n x 1 x H x W`` normalised-looking grey images (standard normal), reproducible."""
    height, width = (size, size) if isinstance(size, int) else size
    images = torch.randn(n, 1, height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return images.to(device)


# --------------------------------------------------------------------------- tiny components


@dataclasses.dataclass(frozen=True)
class TinyOptions:
    """Options of :class:`TinyBackbone`.

    Attributes:
        width: channels of the feature map.
        in_chans: channels of the first convolution (1 or 3; grey input is expanded).

    """

    width: int = 8
    in_chans: int = 1

    def validate(self) -> None:
        """Reject impossible values."""
        if self.width < 1:
            raise ValueError(f"width must be at least 1, got {self.width}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")


class TinyBackbone(Backbone):
    """Two conv-BN-ReLU blocks (stride 2) and a ``feature_map`` identity: a test backbone."""

    NAME = "testing_tiny"
    Options = TinyOptions

    def __init__(self, options: TinyOptions | None = None, name: str | None = None) -> None:
        options = options if options is not None else TinyOptions()
        super().__init__(options, name=name)
        self.in_chans = options.in_chans
        self.num_features = options.width
        self.body = nn.Sequential(
            nn.Conv2d(options.in_chans, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, options.width, 3, padding=1),
            nn.BatchNorm2d(options.width),
            nn.ReLU(inplace=True),
        )
        self.feature_map = nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        if self.in_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.feature_map(self.body(x))


class LinearHead(PoolingHead):
    """Average pooling and one linear classifier (CAM is exact for it): a test head."""

    NAME = "testing_linear"

    def __init__(self, num_features: int, num_classes: int, options: Any = None) -> None:
        super().__init__(num_features, num_classes, options)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, fmap: Tensor) -> tuple[Tensor, None]:
        return self.fc(fmap.mean(dim=(-2, -1))), None

    def class_weights(self) -> tuple[Tensor, Tensor]:
        return self.fc.weight, self.fc.bias


class LogitMapHead(PoolingHead):
    """Probabilistic-CAM-style pooling with a 1x1 classifier that yields a logit map: a test head."""

    NAME = "testing_logit_map"
    YIELDS_LOGIT_MAP = True

    def __init__(self, num_features: int, num_classes: int, options: Any = None) -> None:
        super().__init__(num_features, num_classes, options)
        self.classifier = nn.Conv2d(num_features, num_classes, 1)

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor]:
        logit_map = self.classifier(fmap)
        prob = torch.sigmoid(logit_map).flatten(2)
        weights = prob / prob.sum(dim=-1, keepdim=True)
        pooled = torch.einsum("nkp,ncp->nkc", weights, fmap.flatten(2))
        logits = (pooled * self.classifier.weight.flatten(1)).sum(-1) + self.classifier.bias
        return logits, logit_map

    def class_weights(self) -> tuple[Tensor, Tensor]:
        return self.classifier.weight.flatten(1), self.classifier.bias


def tiny_classifier(head: str = "linear", *, num_classes: int = 4, width: int = 8, seed: int = 0) -> Classifier:
    """A small trained-looking classifier: :class:`TinyBackbone` + a test head, in eval mode.

    BatchNorm running statistics are randomised, so a localizer that forgets eval mode, or
    one that updates the statistics, gives different maps.

    Args:
        head: ``linear`` (:class:`LinearHead`) or ``logit_map`` (:class:`LogitMapHead`).
        num_classes: number of classes.
        width: feature channels.
        seed: initialisation seed.

    """
    heads = {"linear": LinearHead, "logit_map": LogitMapHead}
    if head not in heads:
        raise ValueError(f"head must be one of {sorted(heads)}, got {head!r}")
    torch.manual_seed(seed)
    backbone = TinyBackbone(TinyOptions(width=width))
    model = Classifier(backbone, heads[head](width, num_classes), [f"class{i}" for i in range(num_classes)])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@dataclasses.dataclass(frozen=True)
class TinyDatasetOptions:
    """Options of :class:`TinyDataset`.

    Attributes:
        num_images: images over all splits.
        image_size: side of the square images.
        seed: seed of the labels and images.

    """

    num_images: int = 24
    image_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        """Reject impossible values."""
        if self.num_images < 4:
            raise ValueError(f"num_images must be at least 4, got {self.num_images}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")


class TinyDataset(Dataset):
    """A synthetic grey dataset with three findings drawn as bright squares, with boxes.

    Splits are whole patients (two images per patient), ``boxes`` is the ``test`` images
    that have a finding. Images are a pure function of the options and the index, so
    reads are thread-safe.
    """

    NAME = "testing_tiny"
    HAS_BOXES = True
    Options = TinyDatasetOptions
    CLASSES = ("Mass", "Nodule", "Effusion")

    def __init__(self, options: TinyDatasetOptions | None = None, context: DatasetContext | None = None) -> None:
        options = options if options is not None else TinyDatasetOptions()
        super().__init__(options, context or DatasetContext())
        self.classes = list(self.CLASSES)
        self.native_size = options.image_size
        rng = np.random.default_rng(options.seed)
        n, size = options.num_images, options.image_size
        self._labels = (rng.random((n, len(self.CLASSES))) < 0.35).astype(np.float32)
        side = max(size // 6, 2)
        self._corners = rng.integers(0, size - side, size=(n, len(self.CLASSES), 2))
        self._side = side
        patients = np.arange(n) // 2
        fold = patients % 6
        test = np.flatnonzero(fold == 5)
        self._rows = {
            "train": np.flatnonzero(fold < 4),
            "val": np.flatnonzero(fold == 4),
            "test": test,
            "boxes": test[self._labels[test].any(axis=1)],
        }
        self._patients = patients

    def split(self, name: str) -> Split:
        rows = self._rows[name]
        size = self.options.image_size
        boxes = empty_boxes()
        if name == "boxes":
            records = [(r, k, *map(float, self._corners[i, k]), float(self._side), float(self._side))
                       for r, i in enumerate(rows) for k in np.flatnonzero(self._labels[i])]
            if records:
                boxes = pd.DataFrame(records, columns=list(BOX_COLUMNS)).astype(empty_boxes().dtypes.to_dict())
        return Split(
            ids=[f"tiny{i:05d}" for i in rows],
            patient_ids=[f"p{p:05d}" for p in self._patients[rows]],
            labels=self._labels[rows],
            boxes=boxes,
            image_sizes=np.full((len(rows), 2), size, dtype=np.int64),
        )

    def read_image(self, split: str, index: int) -> np.ndarray:
        i = int(self._rows[split][index])
        size = self.options.image_size
        rng = np.random.default_rng((self.options.seed, i))
        image = rng.integers(20, 60, size=(size, size), dtype=np.uint8)
        for k in np.flatnonzero(self._labels[i]):
            x, y = self._corners[i, k]
            image[y : y + self._side, x : x + self._side] = 200 + 20 * k
        return image


class _TestingPlugin:
    """Registers the tiny components (``testing_tiny`` etc.) through the public hooks."""

    @hookimpl
    def cxrbench_register_backbones(self) -> list[type]:
        return [TinyBackbone]

    @hookimpl
    def cxrbench_register_pooling_heads(self) -> list[type]:
        return [LinearHead, LogitMapHead]

    @hookimpl
    def cxrbench_register_datasets(self) -> list[type]:
        return [TinyDataset]


testing_plugin = _TestingPlugin()
"""Plugin object registering :class:`TinyBackbone`, :class:`LinearHead`, :class:`LogitMapHead`
and :class:`TinyDataset`; pass ``("testing", testing_plugin)`` to ``build_plugin_manager``."""


# --------------------------------------------------------------------------- devices and timing


@dataclasses.dataclass(frozen=True)
class BenchDevice:
    """Where and how a benchmark runs.

    On CPU: float32, contiguous tensors. On CUDA: autocast mixed precision (bfloat16 where
    the GPU supports it, else float16), channels-last modules and inputs, and a
    ``torch.cuda.synchronize()`` inside every timed call, so the time covers the GPU's
    work and not only the kernel launches.

    Attributes:
        name: ``cpu`` or ``cuda``.
        amp_dtype: autocast dtype, or None for full precision.
        channels_last: convert modules and 4-D inputs to channels-last.

    """

    name: str
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def device(self) -> torch.device:
        return torch.device(self.name)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context on CUDA; a no-op on CPU (CPU figures stay float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA); nothing on CPU."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def module(self, module: nn.Module) -> nn.Module:
        """Move ``module`` (in place) to the device and memory format."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def tensor(self, x: Tensor) -> Tensor:
        """Move ``x`` to the device; 4-D tensors in the memory format."""
        x = x.to(self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def bench_device(name: str | BenchDevice = "cpu") -> BenchDevice:
    """The :class:`BenchDevice` for ``cpu`` or ``cuda``; skips the calling test without a GPU."""
    if isinstance(name, BenchDevice):
        return name
    kind = torch.device(name).type
    if kind == "cpu":
        return BenchDevice(str(name))
    if kind != "cuda":
        raise ValueError(f"benchmark devices are cpu and cuda, got {name!r}")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BenchDevice(str(name), amp_dtype=amp, channels_last=True)


def measure(benchmark: Any, fn: Callable[[], Any], device: BenchDevice, *, rounds: int = 3, warmup_rounds: int = 1,
            setup: Callable[[], None] | None = None) -> list[float]:
    """Time ``fn()`` for ``rounds`` rounds after ``warmup_rounds``, through pytest-benchmark if given.

    The timed call runs under the device's autocast and ends with a device
    synchronisation. ``setup`` runs before every round, untimed.

    Args:
        benchmark: the ``benchmark`` fixture, or None to time without pytest-benchmark.
        fn: what to time (no arguments).
        device: where it runs.
        rounds: timed rounds.
        warmup_rounds: untimed rounds first (allocations, one-off kernel selection).
        setup: untimed work before each round (e.g. an interleaved reference).

    Returns:
        The seconds of every timed round (one round when benchmarks are disabled).

    """
    times: list[float] = []

    def target() -> Any:
        device.synchronize()  # work queued before the round (setup) is not the round's
        start = time.perf_counter()
        with device.autocast():
            out = fn()
        device.synchronize()
        times.append(time.perf_counter() - start)
        return out

    def before() -> None:
        if setup is not None:
            setup()

    if benchmark is None:
        for _ in range(warmup_rounds + rounds):
            before()
            target()
    else:
        benchmark.pedantic(target, setup=before, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    # A disabled pytest-benchmark calls the target once, without warm-up rounds.
    return times[warmup_rounds:] if len(times) > warmup_rounds else times


def _record(benchmark: Any, figures: dict[str, Any]) -> dict[str, Any]:
    if benchmark is not None:
        benchmark.extra_info.update(figures)
    return figures


def _summary(times: Sequence[float]) -> dict[str, float]:
    """Best and median round in milliseconds; the best is the least disturbed by other load."""
    return {"best_ms": round(min(times) * 1e3, 3), "median_ms": round(statistics.median(times) * 1e3, 3)}


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
    if backward:
        model.train()

        def step() -> None:
            model.forward_features(x).float().mean().backward()

        def clear() -> None:
            model.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model.forward_features(x)

        clear = None  # type: ignore[assignment]
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
        pool.train()
        fmap.requires_grad_(True)

        def step() -> None:
            logits, _ = pool(fmap)
            logits.float().sum().backward()

        def clear() -> None:
            pool.zero_grad(set_to_none=True)
            fmap.grad = None
    else:
        pool.eval()

        def step() -> None:
            with torch.no_grad():
                pool(fmap)

        clear = None  # type: ignore[assignment]
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

    def forward() -> None:
        dev.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), dev.autocast():
            model(x)
        dev.synchronize()
        forward_times.append(time.perf_counter() - start)

    def localize() -> Tensor:
        maps = localizer(model, x, classes)
        shapes.append(tuple(maps.shape))
        return maps

    times = measure(benchmark, localize, dev, rounds=rounds, warmup_rounds=warmup_rounds, setup=forward)
    forward_times = forward_times[warmup_rounds:] if len(forward_times) > warmup_rounds else forward_times
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
    from .data import BatchLoader, load_split, open_cache, prepare_split

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


# --------------------------------------------------------------------------- contract mixins


class _Contract:
    """What every contract mixin shares: which component, with which options, from where."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    """The registered name of the component under test (required)."""
    options: ClassVar[Mapping[str, Any]] = {}
    """Its ``options`` block, as in a grid."""
    plugins: ClassVar[Sequence[Any]] = ()
    """Plugins to register in code (hermetic); empty = the installed entry points."""
    entry_points: ClassVar[bool | None] = None
    """Load the installed entry points too (default: only when ``plugins`` is empty)."""

    @classmethod
    def registry(cls) -> Registry:
        return registry_for(cls.plugins, entry_points=cls.entry_points)

    @classmethod
    def component_class(cls) -> type:
        if not cls.name:
            raise TypeError(f"{cls.__name__}: set the class attribute `name` to the component's registered name")
        return cls.registry().get(cls.kind, cls.name)

    @classmethod
    def parsed_options(cls, **overrides: Any) -> Any:
        return _options(cls.component_class(), cls.kind, cls.name, {**cls.options, **overrides})

    @classmethod
    def _cache(cls) -> dict[Any, Any]:
        # One cache per concrete subclass (not inherited), so components are built once per class.
        if "_contract_cache" not in cls.__dict__:
            cls._contract_cache = {}
        return cls.__dict__["_contract_cache"]

    def test_registered_with_a_name_options_and_a_description(self) -> None:
        cls = self.component_class()
        base = COMPONENT_KINDS[self.kind]
        assert issubclass(cls, base), f"{cls.__qualname__} is not a {base.__name__}"
        assert isinstance(cls.NAME, str) and cls.NAME.strip() == cls.NAME
        assert " " not in cls.NAME, f"NAME {cls.NAME!r} has a space"
        assert dataclasses.is_dataclass(cls.Options), f"{cls.__qualname__}.Options is not a dataclass"
        assert cls.describe(), f"{cls.__qualname__} has no docstring (its first line is shown by `cxrbench list`)"
        self.parsed_options()  # the contract's options are valid


# --------------------------------------------------------------------------- backbones


class BackboneContract(_Contract):
    """Contract checks for a backbone: feature-map shape, target layer, ``in_chans``,
    gradients, batch invariance and determinism.

    Class attributes to set: ``name`` (and ``options``, ``plugins``); optionally
    ``size``/``batch`` of the test images, ``in_chans_values`` to check, ``min_map_size``
    (smallest spatial side of the feature map at ``size``) and ``atol``.
    """

    kind = "backbone"
    size: ClassVar[int] = 64
    batch: ClassVar[int] = 2
    in_chans_values: ClassVar[tuple[int, ...]] = (1, 3)
    min_map_size: ClassVar[int] = 2
    atol: ClassVar[float] = 1e-4

    def make_backbone(self, **overrides: Any) -> Backbone:
        """A fresh backbone (seed 0) with the contract's options and ``overrides``."""
        torch.manual_seed(0)
        cls = self.component_class()
        return cls(self.parsed_options(**overrides), name=self.name)

    def backbone(self, **overrides: Any) -> Backbone:
        """The backbone, built once per class and set of overrides; gradients cleared."""
        key = tuple(sorted(overrides.items()))
        cache = self._cache()
        if key not in cache:
            cache[key] = self.make_backbone(**overrides)
        model = cache[key]
        model.zero_grad(set_to_none=True)
        return model

    def images(self, n: int | None = None) -> Tensor:
        return synthetic_images(n or self.batch, self.size)

    def test_feature_map_shape(self) -> None:
        model = self.backbone().eval()
        with torch.no_grad():
            fmap = model.forward_features(self.images())
        assert isinstance(fmap, Tensor) and fmap.ndim == 4, f"feature map {tuple(fmap.shape)}, not N x C x h x w"
        assert fmap.shape[:2] == (self.batch, model.num_features), (
            f"feature map {tuple(fmap.shape)}: expected batch {self.batch} and num_features {model.num_features}"
        )
        assert min(fmap.shape[2:]) >= self.min_map_size, f"feature map {tuple(fmap.shape)} at {self.size} px"
        assert fmap.is_floating_point() and torch.isfinite(fmap).all()

    def test_forward_is_forward_features(self) -> None:
        model = self.backbone().eval()
        x = self.images()
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.forward_features(x))

    def test_target_layer_outputs_the_feature_map(self) -> None:
        model = self.backbone().eval()
        try:
            layer = model.get_submodule(model.target_layer)
        except AttributeError:
            raise AssertionError(f"target_layer {model.target_layer!r} is not a submodule of the backbone") from None
        seen: dict[str, Tensor] = {}
        handle = layer.register_forward_hook(lambda module, args, out: seen.update(out=out))
        try:
            with torch.no_grad():
                fmap = model.forward_features(self.images())
        finally:
            handle.remove()
        assert "out" in seen, f"target_layer {model.target_layer!r} did not run in forward_features"
        out = seen["out"]
        # Gradient localizers hook this layer and differentiate the head w.r.t. its output.
        assert out is fmap or (out.shape == fmap.shape and torch.equal(out, fmap)), (
            f"target_layer {model.target_layer!r} outputs {tuple(out.shape)}, not the feature map {tuple(fmap.shape)}"
        )

    def test_in_chans(self) -> None:
        accepts = "in_chans" in option_fields(self.component_class().Options)
        for in_chans in self.in_chans_values if accepts else (None,):
            model = self.backbone(in_chans=in_chans) if in_chans is not None else self.backbone()
            if in_chans is not None:
                assert model.in_chans == in_chans, f"in_chans={in_chans} built in_chans={model.in_chans}"
            assert model.in_chans in (1, 3)
            # The host always feeds one grey channel, whatever the first layer expects.
            with torch.no_grad():
                fmap = model.eval().forward_features(self.images())
            assert fmap.shape[:2] == (self.batch, model.num_features)

    def test_gradients_reach_the_input_and_the_parameters(self) -> None:
        model = self.backbone().train()
        x = self.images().requires_grad_(True)
        try:
            model.forward_features(x).square().mean().backward()
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            assert trainable, "no trainable parameters"
            grads = [p.grad for _, p in trainable if p.grad is not None]
            assert grads, "backward reached none of the parameters"
            assert all(torch.isfinite(g).all() for g in grads), "non-finite parameter gradients"
            assert any(g.abs().sum() > 0 for g in grads), "all parameter gradients are zero"
            assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()

    def test_batch_invariance(self) -> None:
        model = self.backbone().eval()
        x = self.images()
        with torch.no_grad():
            whole = model.forward_features(x)
            alone = model.forward_features(x[-1:])
        torch.testing.assert_close(alone, whole[-1:], atol=self.atol, rtol=1e-3,
                                   msg="in eval mode an image's feature map depends on the rest of its batch")

    def test_deterministic(self) -> None:
        model = self.backbone().eval()
        x = self.images()
        with torch.no_grad():
            first = model.forward_features(x)
            second = model.forward_features(x)
        torch.testing.assert_close(second, first, msg="two eval forwards of the same batch differ")
        # Parameters, not buffers: other checks ran train-mode forwards that moved BatchNorm statistics.
        again = self.make_backbone()
        for (key, a), (_, b) in zip(model.named_parameters(), again.named_parameters(), strict=True):
            assert torch.equal(a, b), f"two builds under the same seed differ in {key!r}"


# --------------------------------------------------------------------------- heads


class HeadContract(_Contract):
    """Contract checks for a pooling head: output shapes, logit map, gradients,
    ``class_weights`` (a linear classifier, one row per class), batch invariance and
    determinism, on several feature-map sizes.

    Class attributes: ``name`` (and ``options``, ``plugins``); optionally
    ``num_features``, ``num_classes``, ``batch``, ``map_sizes``.
    """

    kind = "head"
    num_features: ClassVar[int] = 16
    num_classes: ClassVar[int] = 3
    batch: ClassVar[int] = 2
    map_sizes: ClassVar[tuple[tuple[int, int], ...]] = ((7, 7), (1, 1), (3, 5))
    atol: ClassVar[float] = 1e-5

    def make_head(self) -> PoolingHead:
        torch.manual_seed(0)
        cls = self.component_class()
        return cls(self.num_features, self.num_classes, self.parsed_options())

    def head(self) -> PoolingHead:
        cache = self._cache()
        if "head" not in cache:
            cache["head"] = self.make_head()
        pool = cache["head"]
        pool.zero_grad(set_to_none=True)
        return pool

    def features(self, hw: tuple[int, int] = (7, 7), n: int | None = None) -> Tensor:
        """A non-negative feature map, like a post-ReLU backbone output."""
        generator = torch.Generator().manual_seed(1)
        return torch.randn(n or self.batch, self.num_features, *hw, generator=generator).clamp_min_(0) + 0.01

    def test_output_shapes(self) -> None:
        pool = self.head().eval()
        k = self.num_classes
        for hw in self.map_sizes:
            with torch.no_grad():
                out = pool(self.features(hw))
            assert isinstance(out, tuple) and len(out) == 2, "forward must return (logits, logit map or None)"
            logits, logit_map = out
            assert logits.shape == (self.batch, k), f"logits {tuple(logits.shape)} for a {hw} map"
            assert torch.isfinite(logits).all()
            if pool.YIELDS_LOGIT_MAP:
                assert logit_map is not None and logit_map.shape == (self.batch, k, *hw), (
                    f"YIELDS_LOGIT_MAP is True but the logit map is {None if logit_map is None else logit_map.shape}"
                )
            else:
                assert logit_map is None, "a logit map was returned but YIELDS_LOGIT_MAP is False"

    def test_gradients_reach_the_features_and_every_parameter(self) -> None:
        pool = self.head().train()
        fmap = self.features().requires_grad_(True)
        try:
            logits, _ = pool(fmap)
            logits.sum().backward()
            assert fmap.grad is not None and torch.isfinite(fmap.grad).all() and fmap.grad.abs().sum() > 0
            missing = [n for n, p in pool.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"no gradient reached {missing}"
        finally:
            pool.zero_grad(set_to_none=True)
            pool.eval()

    def test_class_weights_are_the_linear_classifier(self) -> None:
        pool = self.head().eval()
        weights = pool.class_weights()
        if weights is None:
            return  # not a linear classifier: CAM does not apply, nothing to check
        weight, bias = weights
        k, c = self.num_classes, self.num_features
        assert weight.shape == (k, c) and bias.shape == (k,), (
            f"class_weights: weight {tuple(weight.shape)} (expected {(k, c)}), bias {tuple(bias.shape)}"
        )
        fmap = self.features()
        with torch.no_grad():
            logits, _ = pool(fmap)
            original = weight.detach().clone()
            try:
                # Class 1's row moves only class 1's logit: classes are independent.
                weight[1] += torch.randn(c, generator=torch.Generator().manual_seed(2))
                changed, _ = pool(fmap)
                others = [i for i in range(k) if i != 1]
                torch.testing.assert_close(changed[:, others], logits[:, others],
                                           msg="changing class 1's weights changed another class's logit")
                assert not torch.allclose(changed[:, 1], logits[:, 1]), "class_weights() are not the weights used"
                # The classifier is the whole story: without weights every logit is its bias.
                weight.zero_()
                zeroed, _ = pool(fmap)
                torch.testing.assert_close(zeroed, bias.detach().expand_as(zeroed),
                                           msg="with zero class weights the logits are not the bias")
            finally:
                weight.copy_(original)

    def test_batch_invariance(self) -> None:
        pool = self.head().eval()
        fmap = self.features(n=max(self.batch, 2))
        with torch.no_grad():
            whole, whole_map = pool(fmap)
            alone, alone_map = pool(fmap[-1:])
        torch.testing.assert_close(alone, whole[-1:], atol=self.atol, rtol=1e-4)
        if whole_map is not None:
            torch.testing.assert_close(alone_map, whole_map[-1:], atol=self.atol, rtol=1e-4)

    def test_deterministic(self) -> None:
        pool = self.head().eval()
        fmap = self.features()
        with torch.no_grad():
            torch.testing.assert_close(pool(fmap)[0], pool(fmap)[0])
        again = self.make_head()
        for (key, a), (_, b) in zip(pool.named_parameters(), again.named_parameters(), strict=True):
            assert torch.equal(a, b), f"two builds under the same seed differ in {key!r}"


# --------------------------------------------------------------------------- localizers


def _hook_counts(model: nn.Module) -> dict[str, int]:
    """Every kind of module hook, counted over the model and globally."""
    from torch.nn.modules import module as module_mod

    counts = {"global_forward": len(module_mod._global_forward_hooks),
              "global_forward_pre": len(module_mod._global_forward_pre_hooks),
              "global_backward": len(module_mod._global_backward_hooks)}
    for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        counts[attr] = sum(len(getattr(m, attr, {})) for m in model.modules())
    return counts


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, bool], dict[str, bool]]:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
    )


def _inplace_flags(model: nn.Module) -> dict[str, bool]:
    """``inplace`` of every module that has one (ReLU, Dropout, ...): a localizer may not flip them."""
    return {name: bool(m.inplace) for name, m in model.named_modules() if isinstance(getattr(m, "inplace", None), bool)}


class LocalizerContract(_Contract):
    """Contract checks for a localizer: shape, [0, 1] range and device of the maps; the
    model left exactly as found (modes, flags, weights, BatchNorm statistics, no
    gradients, no hooks); all classes in one call equal to one class at a time; batch
    invariance; determinism; frozen models and ``no_grad`` callers.

    Runs on :func:`tiny_classifier` (a linear head, or a logit-map head when the
    localizer needs one); override :meth:`make_model` for another model.

    Class attributes: ``name`` (and ``options``, ``plugins``); optionally ``model_head``
    (``auto``, ``linear``, ``logit_map``), ``image_size``, ``batch``, ``num_classes``,
    ``classes``, ``atol``.
    """

    kind = "localizer"
    model_head: ClassVar[str] = "auto"
    image_size: ClassVar[int] = 32
    batch: ClassVar[int] = 3
    num_classes: ClassVar[int] = 4
    classes: ClassVar[tuple[int, ...]] = (2, 0, 3)
    atol: ClassVar[float] = 1e-5

    def localizer(self) -> Localizer:
        cls = self.component_class()
        return cls(self.parsed_options())

    def make_model(self) -> Classifier:
        """The classifier to explain (eval mode). Default: a tiny one the localizer supports."""
        heads = ("linear", "logit_map") if self.model_head == "auto" else (self.model_head,)
        reasons = []
        for head in heads:
            model = tiny_classifier(head, num_classes=self.num_classes)
            reason = self.localizer().unsupported_reason(model)
            if reason is None:
                return model
            reasons.append(f"{head}: {reason}")
        raise AssertionError(f"localizer {self.name!r} supports none of the test models ({'; '.join(reasons)}); "
                             "override make_model()")

    def images(self, n: int | None = None) -> Tensor:
        return synthetic_images(n or self.batch, self.image_size, seed=1)

    def run(self, model: Classifier | None = None, images: Tensor | None = None,
            classes: Sequence[int] | None = None) -> Tensor:
        model = model if model is not None else self.make_model()
        images = images if images is not None else self.images()
        return self.localizer()(model, images, list(self.classes if classes is None else classes))

    def test_maps_shape_range_and_device(self) -> None:
        images = self.images()
        maps = self.run(images=images)
        expected = (self.batch, len(self.classes), self.image_size, self.image_size)
        assert isinstance(maps, Tensor) and tuple(maps.shape) == expected, (
            f"maps of shape {tuple(getattr(maps, 'shape', ()))}, expected N x classes x H x W = {expected}"
        )
        assert maps.is_floating_point() and maps.device == images.device
        assert torch.isfinite(maps).all(), "maps hold NaN or inf"
        low, high = float(maps.min()), float(maps.max())
        assert low >= 0.0 and high <= 1.0, f"maps range over [{low:.4g}, {high:.4g}], not within [0, 1]"
        assert not maps.requires_grad, "maps still hold an autograd graph"

    def test_model_left_unchanged(self) -> None:
        model = self.make_model().train()
        # A mixed state must come back as it was: not merely "train() afterwards".
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eval()
        for p in model.head.parameters():
            p.requires_grad_(False)
        state, modes, flags = _snapshot(model)
        inplace = _inplace_flags(model)
        self.run(model)
        after_state, after_modes, after_flags = _snapshot(model)
        changed_modes = sorted(k for k in modes if after_modes.get(k) != modes[k])
        assert not changed_modes, f"train/eval mode changed for {changed_modes[:5]}"
        changed_flags = sorted(k for k in flags if after_flags.get(k) != flags[k])
        assert not changed_flags, f"requires_grad changed for {changed_flags[:5]}"
        after_inplace = _inplace_flags(model)
        changed_inplace = sorted(k for k in inplace if after_inplace.get(k) != inplace[k])
        assert not changed_inplace, f"inplace flags changed for {changed_inplace[:5]}"
        changed_state = [k for k, v in state.items() if not torch.equal(after_state[k], v)]
        assert not changed_state, f"weights or buffers changed: {changed_state[:5]}"
        with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
        assert not with_grad, f"parameter gradients left behind: {with_grad[:5]}"

    def test_no_hooks_left(self) -> None:
        model = self.make_model()
        before = _hook_counts(model)
        self.run(model)
        after = _hook_counts(model)
        assert after == before, f"hooks left behind: before {before}, after {after}"

    def test_all_classes_at_once_equal_one_class_at_a_time(self) -> None:
        model, images = self.make_model(), self.images()
        together = self.run(model, images)
        for j, k in enumerate(self.classes):
            alone = self.run(model, images, [k])
            torch.testing.assert_close(together[:, j : j + 1], alone, atol=self.atol, rtol=1e-4,
                                       msg=f"class {k}'s maps differ when asked with others")

    def test_batch_invariance(self) -> None:
        model, images = self.make_model(), self.images()
        whole = self.run(model, images)
        alone = self.run(model, images[-1:])
        torch.testing.assert_close(alone, whole[-1:], atol=self.atol, rtol=1e-4,
                                   msg="an image's maps depend on the rest of its batch")

    def test_deterministic(self) -> None:
        model, images = self.make_model(), self.images()
        torch.testing.assert_close(self.run(model, images), self.run(model, images))

    def test_frozen_model_and_no_grad_caller(self) -> None:
        model, images = self.make_model(), self.images()
        expected = self.run(model, images)
        for p in model.parameters():
            p.requires_grad_(False)
        torch.testing.assert_close(self.run(model, images), expected, atol=self.atol, rtol=1e-4,
                                   msg="a frozen model gives different maps")
        assert not any(p.requires_grad for p in model.parameters()), "requires_grad was switched on"
        for p in model.parameters():
            p.requires_grad_(True)
        # Evaluation code often runs inside no_grad: gradient methods must still work there.
        with torch.no_grad():
            inside = self.run(model, images)
        torch.testing.assert_close(inside, expected, atol=self.atol, rtol=1e-4,
                                   msg="maps differ when called inside torch.no_grad()")


# --------------------------------------------------------------------------- datasets


class DatasetContract(_Contract):
    """Contract checks for a dataset: classes, splits (labels 1/0/NaN, unique ids, patient
    ids), decoded images (2-D uint8/uint16, deterministic, thread-safe), boxes inside
    their images, patient-disjoint splits, a stable fingerprint, and a prepare/open-cache
    round trip.

    Class attributes: ``name`` and ``options`` (and ``plugins``); optionally
    ``images_per_split`` (images read per split), ``disjoint_splits``,
    ``max_prepare_images`` and ``prepare_size``. Override :meth:`unavailable_reason` to
    skip when the data is absent (e.g. no files at ``root``).
    """

    kind = "dataset"
    images_per_split: ClassVar[int] = 3
    disjoint_splits: ClassVar[tuple[tuple[str, str], ...]] = (("train", "val"), ("train", "test"), ("val", "test"))
    max_prepare_images: ClassVar[int] = 64
    prepare_size: ClassVar[int] = 32

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the data cannot be read here (the checks then skip), or None."""
        return None

    def dataset(self) -> Dataset:
        reason = self.unavailable_reason()
        if reason:
            pytest.skip(reason)
        cache = self._cache()
        if "dataset" not in cache:
            cache["dataset"] = make_dataset(self.name, self.parsed_options(), registry=self.registry())
        return cache["dataset"]

    def splits(self) -> dict[str, Split]:
        data = self.dataset()
        return {name: data.split(name) for name in data.split_names}

    def _sample(self, n: int) -> list[int]:
        """First, middle and last rows (up to ``images_per_split``)."""
        picks = np.unique(np.linspace(0, n - 1, num=min(self.images_per_split, n)).round().astype(int))
        return [int(i) for i in picks]

    def test_classes(self) -> None:
        classes = self.dataset().classes
        assert isinstance(classes, list) and classes, "classes must be a non-empty list of finding names"
        assert all(isinstance(c, str) and c.strip() for c in classes)
        assert len(set(classes)) == len(classes), f"a class is listed twice: {classes}"

    def test_splits(self) -> None:
        data = self.dataset()
        k = len(data.classes)
        splits = self.splits()
        assert any(len(s) for s in splits.values()), "every split is empty"
        if data.HAS_BOXES:
            assert "boxes" in splits, "HAS_BOXES is True but there is no 'boxes' split"
        for name, split in splits.items():
            assert isinstance(split, Split), f"split {name!r} is a {type(split).__name__}, not a Split"
            n = len(split)
            labels = np.asarray(split.labels)
            assert labels.shape == (n, k), f"split {name!r}: labels {labels.shape}, expected {(n, k)}"
            assert labels.dtype.kind == "f", f"split {name!r}: labels are {labels.dtype}, not float (NaN = unknown)"
            known = labels[~np.isnan(labels)]
            assert np.isin(known, (0.0, 1.0)).all(), f"split {name!r}: labels other than 1, 0 and NaN"
            assert len(set(map(str, split.ids))) == n, f"split {name!r}: ids are not unique"
            assert len(split.patient_ids) == n
            if split.image_sizes is not None:
                sizes = np.asarray(split.image_sizes)
                assert sizes.shape == (n, 2) and (sizes > 0).all(), f"split {name!r}: image_sizes {sizes.shape}"
            missing = set(BOX_COLUMNS) - set(split.boxes.columns)
            assert not missing, f"split {name!r}: box table lacks {sorted(missing)}"
            again = data.split(name)
            assert list(again.ids) == list(split.ids), f"split {name!r} changes between calls"

    def test_read_image(self) -> None:
        data = self.dataset()
        for name, split in self.splits().items():
            for i in self._sample(len(split)):
                image = data.read_image(name, i)
                assert isinstance(image, np.ndarray) and image.ndim == 2, (
                    f"{name}[{i}]: {type(image).__name__} of shape {getattr(image, 'shape', None)}, not a 2-D array"
                )
                assert image.dtype in (np.uint8, np.uint16), f"{name}[{i}]: dtype {image.dtype}, not uint8 or uint16"
                assert min(image.shape) > 0
                if split.image_sizes is not None:
                    assert tuple(image.shape) == tuple(np.asarray(split.image_sizes)[i]), (
                        f"{name}[{i}]: image {image.shape} but image_sizes says {tuple(split.image_sizes[i])}"
                    )
                assert np.array_equal(data.read_image(name, i), image), f"{name}[{i}] differs between reads"

    def test_reads_are_thread_safe(self) -> None:
        data = self.dataset()
        jobs = [(name, i) for name, split in self.splits().items() for i in self._sample(len(split))]
        expected = [data.read_image(name, i) for name, i in jobs]
        barrier = threading.Barrier(min(4, len(jobs)) or 1)

        def read(job: tuple[str, int]) -> np.ndarray:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=5)  # start together, to overlap as much as possible
            return data.read_image(*job)

        with ThreadPoolExecutor(max_workers=min(4, len(jobs)) or 1) as pool:
            got = list(pool.map(read, jobs))
        for job, a, b in zip(jobs, expected, got, strict=True):
            assert np.array_equal(a, b), f"{job} differs when read from several threads"

    def test_boxes_lie_inside_their_images(self) -> None:
        data = self.dataset()
        if not data.HAS_BOXES:
            return
        split = data.split("boxes")
        boxes = split.boxes
        if boxes.empty:
            return
        n, k = len(split), len(data.classes)
        idx = boxes["index"].to_numpy()
        assert ((idx >= 0) & (idx < n)).all(), "box index outside the split"
        cls = boxes["class_index"].to_numpy()
        assert ((cls >= 0) & (cls < k)).all(), "box class_index outside the classes"
        x, y, w, h = (boxes[c].to_numpy(dtype=float) for c in ("x", "y", "w", "h"))
        assert (w > 0).all() and (h > 0).all(), "boxes with zero or negative width or height"
        if split.image_sizes is not None:
            sizes = np.asarray(split.image_sizes)[idx]
        else:
            sizes = np.array([data.read_image("boxes", int(i)).shape for i in idx])
        tol = 1.0  # one pixel: published box tables round to whole pixels
        inside = (x >= -tol) & (y >= -tol) & (x + w <= sizes[:, 1] + tol) & (y + h <= sizes[:, 0] + tol)
        outside = np.flatnonzero(~inside)
        assert not len(outside), f"{len(outside)} boxes reach outside their image, e.g. box table row {outside[0]}"

    def test_patients_do_not_cross_splits(self) -> None:
        splits = self.splits()
        for a, b in self.disjoint_splits:
            if a in splits and b in splits:
                shared = set(map(str, splits[a].patient_ids)) & set(map(str, splits[b].patient_ids))
                assert not shared, f"{len(shared)} patients are in both {a!r} and {b!r}, e.g. {sorted(shared)[0]}"

    def test_fingerprint_is_stable(self) -> None:
        first = self.dataset().fingerprint()
        again = make_dataset(self.name, self.parsed_options(), registry=self.registry()).fingerprint()
        assert isinstance(first, str) and first, "fingerprint() must return a non-empty string"
        assert first == again, "the same options and data give different fingerprints"

    def test_prepare_and_open_cache(self, tmp_path: Path) -> None:
        from .data import open_cache, prepare_split, resize_square

        data = self.dataset()
        sizes = {name: len(s) for name, s in self.splits().items() if 0 < len(s) <= self.max_prepare_images}
        if not sizes:
            pytest.skip(f"no split of at most {self.max_prepare_images} images to prepare")
        name = min(sizes, key=sizes.__getitem__)
        size = self.prepare_size
        report = prepare_split(data, name, size, tmp_path, workers=2)
        assert not report.failed, f"prepare failed: {report.failed[:3]}"
        prepared = open_cache(data, name, size, tmp_path)
        assert prepared is not None, "a complete prepare did not give an openable cache"
        assert prepared.images.shape == (sizes[name], size, size)
        for i in self._sample(sizes[name]):
            np.testing.assert_array_equal(prepared.images[i], resize_square(data.read_image(name, i), size))


def iter_names(registry: Registry, kind: str) -> Iterator[str]:
    """Every buildable name of ``kind``: explicit names, and family classes' ``EXAMPLES``.

    A family class (one serving many names through ``matches``, like every timm model)
    cannot be built under its own ``NAME``; the examples it lists stand in for it.
    """
    for name, cls, _provider in registry.items(kind):
        if "matches" in cls.__dict__ and name == cls.NAME:
            yield from getattr(cls, "EXAMPLES", ())
        else:
            yield name
