"""Speed of the all-class localizers against a plain forward and a naive per-class loop.

densenet121 (timm, random init, 1 input channel), average-pooling head, 8 classes,
224 px, batch 8. Run with::

    OMP_NUM_THREADS=2 PYTHONPATH=.:plugins pytest benchmarks/test_localizer_speed.py --benchmark-enable

Every test runs on ``cpu`` and on ``cuda`` (the ``device`` parameter of conftest.py; the
CUDA variants skip without a GPU). On CUDA the model and images are channels-last, every
timed call runs under the harness's autocast (bfloat16 where supported, else float16)
and between two ``torch.cuda.synchronize()`` calls, so the time covers the GPU's work.

Every CPU benchmark is in the group ``localizers-densenet121`` (the CUDA ones in
``localizers-densenet121-cuda``) so the table shows them side by side; the last test
prints each one's mean time as a ratio to the plain forward on the same device.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import cxrbench_cam
import pytest
import torch
from cxrbench_cam.capture import resolve_layer

from cxrbench.interfaces import Classifier
from cxrbench.manager import build_plugin_manager
from cxrbench.options import parse_options
from cxrbench.registry import Registry
from cxrbench.testing import BenchDevice

cxrbench_heads = pytest.importorskip("cxrbench_heads")
cxrbench_timm = pytest.importorskip("cxrbench_timm")

GROUP = "localizers-densenet121"
CLASSES = list(range(8))
MEANS: dict[str, dict[str, float]] = {}
"""Mean seconds per round: device -> benchmark name -> mean."""


@pytest.fixture(scope="module")
def registry():
    pm = build_plugin_manager(plugins=[cxrbench_timm, cxrbench_heads, cxrbench_cam], entry_points=False, core=False)
    return Registry.from_plugin_manager(pm)


@pytest.fixture(scope="module")
def model(registry):
    torch.manual_seed(0)
    backbone_cls = registry.get("backbone", "densenet121")
    backbone = backbone_cls(parse_options(backbone_cls.Options, {"pretrained": False}, "b", "densenet121"))
    head_cls = registry.get("head", "avg")
    head = head_cls(backbone.num_features, len(CLASSES), parse_options(head_cls.Options, {}, "h", "avg"))
    return Classifier(backbone, head, [f"c{i}" for i in CLASSES]).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 1, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def _device_models() -> Iterator[dict[str, Classifier]]:
    """Copies of the model on other devices than the CPU, built once per module."""
    models: dict[str, Classifier] = {}
    yield models
    models.clear()


@pytest.fixture
def dev_model(model, bench: BenchDevice, _device_models) -> Classifier:
    """The model on the benchmark's device: the CPU model itself, else a copy (channels-last on CUDA)."""
    if not bench.is_cuda:
        return model
    if bench.name not in _device_models:
        _device_models[bench.name] = bench.module(copy.deepcopy(model)).eval()
    return _device_models[bench.name]


@pytest.fixture
def dev_images(images, bench: BenchDevice) -> torch.Tensor:
    """The images on the benchmark's device (channels-last on CUDA)."""
    return bench.tensor(images)


def _group(device: str) -> str:
    return GROUP if device == "cpu" else f"{GROUP}-{device}"


def on_device(bench: BenchDevice, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as one timed call on ``bench``: under its autocast, between two synchronisations.

    On the CPU both are no-ops, so the CPU figures are those of ``fn`` alone.
    """

    def run(*args: Any) -> Any:
        bench.synchronize()  # nothing queued before the call is counted in it
        with bench.autocast():
            out = fn(*args)
        bench.synchronize()  # the GPU's work, not only its kernel launches
        return out

    return run


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """float32 without TF32 on CUDA (convolutions and matrix products), for the correctness check."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _localizer(registry, name):
    cls = registry.get("localizer", name)
    return cls(parse_options(cls.Options, {}, "l", name))


def _record(benchmark, device, name):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled (the default addopts)
        MEANS.setdefault(device, {})[name] = stats.stats.mean


def naive_gradcam(model, images, classes, layer_path):
    """What popular libraries do: per class, a full forward and a full backward.

    The gradient is taken with a tensor hook on the layer's output and ``backward()``
    from the class score, which runs through the whole network (parameter gradients
    included), once per class.
    """
    layer = resolve_layer(model, layer_path)
    maps = []
    for k in classes:
        store = {}

        def hook(module, inputs, output, store=store):
            store["act"] = output
            output.register_hook(lambda grad: store.__setitem__("grad", grad))

        handle = layer.register_forward_hook(hook)
        try:
            logits = model(images)
            model.zero_grad(set_to_none=True)
            logits[:, k].sum().backward()
        finally:
            handle.remove()
        weights = store["grad"].mean(dim=(-2, -1), keepdim=True)
        maps.append((weights * store["act"].detach()).sum(1).clamp_min(0))
    model.zero_grad(set_to_none=True)
    cams = torch.stack(maps, dim=1)
    low = cams.amin(dim=(-2, -1), keepdim=True)
    high = cams.amax(dim=(-2, -1), keepdim=True)
    cams = (cams - low) / (high - low).clamp_min(1e-12)
    return torch.nn.functional.interpolate(cams, size=images.shape[-2:], mode="bilinear")


@pytest.mark.benchmark(group=GROUP)
def test_forward(benchmark, device, bench, dev_model, dev_images):
    benchmark.group = _group(device)

    def forward():
        with torch.no_grad():
            return dev_model(dev_images)

    benchmark.pedantic(on_device(bench, forward), rounds=5, warmup_rounds=1)
    _record(benchmark, device, "forward")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("name", ["cam", "gradcam", "gradcampp"])
def test_localizer(benchmark, registry, device, bench, dev_model, dev_images, name):
    benchmark.group = _group(device)
    localizer = _localizer(registry, name)
    maps = benchmark.pedantic(on_device(bench, localizer), args=(dev_model, dev_images, CLASSES), rounds=5,
                              warmup_rounds=1)
    assert maps.shape == (8, 8, 224, 224)
    _record(benchmark, device, name)


@pytest.mark.benchmark(group=GROUP)
def test_naive_gradcam_loop(benchmark, registry, device, bench, dev_model, dev_images):
    benchmark.group = _group(device)
    args = (dev_model, dev_images, CLASSES, dev_model.default_target_layer)
    # A GPU's first call selects kernels (cuDNN): one untimed round there; the CPU has none.
    maps = benchmark.pedantic(on_device(bench, naive_gradcam), args=args, rounds=2,
                              warmup_rounds=1 if bench.is_cuda else 0)
    # Same maps as the batched localizer: the speed-up is not bought with a different answer.
    gradcam = _localizer(registry, "gradcam")
    if bench.is_cuda:
        # The timed maps are mixed precision; the check compares both methods in float32.
        with full_precision():
            maps = naive_gradcam(*args)
            batched = gradcam(dev_model, dev_images, CLASSES)
        torch.testing.assert_close(maps.cpu(), batched.cpu(), atol=1e-3, rtol=1e-3)
    else:
        torch.testing.assert_close(maps, gradcam(dev_model, dev_images, CLASSES), atol=1e-4, rtol=1e-3)
    _record(benchmark, device, "naive_gradcam_loop")


def test_interleaved_ratios(request, registry, device, bench, dev_model, dev_images):
    """Ratios robust to a shared machine: forward and localizers alternate round by round.

    Sequential benchmarks see the load change between groups; alternating them gives
    every method the same conditions. The best round of each is compared. On CUDA one
    untimed round of each runs first (kernel selection) and every round is synchronised.
    """
    options = request.config.option
    if options.benchmark_disable and not options.benchmark_enable:
        pytest.skip("benchmarks disabled: run with --benchmark-enable")

    def forward():
        with torch.no_grad():
            dev_model(dev_images)

    runs = {"forward": on_device(bench, forward)}
    for name in ("cam", "gradcam", "gradcampp"):
        localizer = _localizer(registry, name)
        runs[name] = on_device(bench, lambda localizer=localizer: localizer(dev_model, dev_images, CLASSES))
    if bench.is_cuda:
        for run in runs.values():
            run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(6):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    lines = [f"{name:>10s}: {t * 1e3:8.1f} ms  {t / best['forward']:5.2f}x" for name, t in best.items()]
    print(f"\ninterleaved, best of 6 [{device}]:\n" + "\n".join(lines))


def test_ratios_to_forward(device):
    means = MEANS.get(device, {})
    if "forward" not in means:
        pytest.skip("benchmarks disabled: run with --benchmark-enable")
    base = means["forward"]
    lines = [f"{name:>20s}: {mean * 1e3:9.1f} ms  {mean / base:6.2f}x forward" for name, mean in means.items()]
    print(f"\n[{device}]\n" + "\n".join(lines) + f"\n(torch threads: {torch.get_num_threads()})")
