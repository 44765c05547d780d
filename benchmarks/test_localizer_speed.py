"""Speed of the all-class localizers against a plain forward and a naive per-class loop.

densenet121 (timm, random init, 1 input channel), average-pooling head, 8 classes,
224 px, batch 8, CPU. Run with::

    OMP_NUM_THREADS=2 PYTHONPATH=.:plugins pytest benchmarks/test_localizer_speed.py --benchmark-enable

Every benchmark is in the group ``localizers-densenet121`` so the table shows them side
by side; the last test prints each one's mean time as a ratio to the plain forward.
"""

from __future__ import annotations

import cxrbench_cam
import pytest
import torch
from cxrbench_cam.capture import resolve_layer

from cxrbench.manager import build_plugin_manager
from cxrbench.model import Classifier
from cxrbench.options import parse_options
from cxrbench.registry import Registry

cxrbench_heads = pytest.importorskip("cxrbench_heads")
cxrbench_timm = pytest.importorskip("cxrbench_timm")

GROUP = "localizers-densenet121"
CLASSES = list(range(8))
MEANS: dict[str, float] = {}


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


def _localizer(registry, name):
    cls = registry.get("localizer", name)
    return cls(parse_options(cls.Options, {}, "l", name))


def _record(benchmark, name):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled (the default addopts)
        MEANS[name] = stats.stats.mean


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
def test_forward(benchmark, model, images):
    def forward():
        with torch.no_grad():
            return model(images)

    benchmark.pedantic(forward, rounds=5, warmup_rounds=1)
    _record(benchmark, "forward")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("name", ["cam", "gradcam", "gradcampp"])
def test_localizer(benchmark, registry, model, images, name):
    localizer = _localizer(registry, name)
    maps = benchmark.pedantic(localizer, args=(model, images, CLASSES), rounds=5, warmup_rounds=1)
    assert maps.shape == (8, 8, 224, 224)
    _record(benchmark, name)


@pytest.mark.benchmark(group=GROUP)
def test_naive_gradcam_loop(benchmark, registry, model, images):
    maps = benchmark.pedantic(
        naive_gradcam, args=(model, images, CLASSES, model.default_target_layer), rounds=2, warmup_rounds=0
    )
    # Same maps as the batched localizer: the speed-up is not bought with a different answer.
    torch.testing.assert_close(maps, _localizer(registry, "gradcam")(model, images, CLASSES), atol=1e-4, rtol=1e-3)
    _record(benchmark, "naive_gradcam_loop")


def test_interleaved_ratios(request, registry, model, images):
    """Ratios robust to a shared machine: forward and localizers alternate round by round.

    Sequential benchmarks see the load change between groups; alternating them gives
    every method the same conditions. The best round of each is compared.
    """
    options = request.config.option
    if options.benchmark_disable and not options.benchmark_enable:
        pytest.skip("benchmarks disabled: run with --benchmark-enable")
    import time

    def forward():
        with torch.no_grad():
            model(images)

    runs = {"forward": forward}
    for name in ("cam", "gradcam", "gradcampp"):
        localizer = _localizer(registry, name)
        runs[name] = lambda localizer=localizer: localizer(model, images, CLASSES)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(6):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    lines = [f"{name:>10s}: {t * 1e3:8.1f} ms  {t / best['forward']:5.2f}x" for name, t in best.items()]
    print("\ninterleaved, best of 6:\n" + "\n".join(lines))


def test_ratios_to_forward():
    if "forward" not in MEANS:
        pytest.skip("benchmarks disabled: run with --benchmark-enable")
    base = MEANS["forward"]
    lines = [f"{name:>20s}: {mean * 1e3:9.1f} ms  {mean / base:6.2f}x forward" for name, mean in MEANS.items()]
    print("\n" + "\n".join(lines) + f"\n(torch threads: {torch.get_num_threads()})")
