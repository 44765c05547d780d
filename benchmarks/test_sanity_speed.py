"""Cost of the sanity and faithfulness checks (``localization.sanity``) against what they cannot avoid.

* Deletion + insertion (``cxrbench.perturbation.curve_probabilities``: ranking the maps,
  building every perturbed image on the device, the forward passes, reading the class
  probabilities) against the bare forward passes of the SAME perturbed images, built
  beforehand, in the same batches. The issue's bound: at most 1.2x. The two alternate round
  by round (best round of each), so both see the same machine load.
* The MPRT's localizer calls, counted: (randomised networks + 1) per batch of images.

resnet18 (timm, random init, 1 input channel, ``--localizer-backbone``), average-pooling
head, 8 classes, ``--bench-size`` px; 4 (image, class) pairs, 20 steps per curve (deletion
on the mean, insertion on a blur): 168 perturbed images per round. Run with::

    OMP_NUM_THREADS=2 PYTHONPATH=.:plugins pytest benchmarks/test_sanity_speed.py --benchmark-enable -s

Every test runs on ``cpu`` and on ``cuda`` (skipped without a GPU; there with autocast,
channels-last and synchronised timing, as the cell runs it).
"""

from __future__ import annotations

import time

import cxrbench_cam
import numpy as np
import pytest
import torch
from cxrbench_cam.options import MapOptions

from cxrbench.config import MprtSpec, SanitySpec
from cxrbench.data import PreparedSplit
from cxrbench.interfaces import Classifier, Split
from cxrbench.options import parse_options
from cxrbench.perturbation import Curve, curve_probabilities, perturbed_images, plan_steps, saliency_ranks
from cxrbench.randomisation import model_blocks
from cxrbench.sanity import sample_checks
from cxrbench.testing import BenchDevice

CLASSES = 8
CURVES = (Curve("deletion", 20, "mean"), Curve("insertion", 20, "blur", sigma=5.0))
RATIO_BOUND = 1.2


def _model(registry, backbone: str, size: int) -> Classifier:
    torch.manual_seed(0)
    backbone_cls = registry.get("backbone", backbone)
    net = backbone_cls(parse_options(backbone_cls.Options, {"pretrained": False}, "b", backbone), name=backbone)
    head_cls = registry.get("head", "avg")
    head = head_cls(net.num_features, CLASSES, parse_options(head_cls.Options, {}, "h", "avg"))
    return Classifier(net, head, [f"c{i}" for i in range(CLASSES)]).eval()


def _pairs(bench: BenchDevice, size: int):
    generator = torch.Generator().manual_seed(0)
    images = bench.tensor(torch.randn(2, 1, size, size, generator=generator)).contiguous()
    maps = torch.rand(4, size // 32, size // 32, generator=generator)  # CAM-like coarse maps, upsampled
    maps = torch.nn.functional.interpolate(maps[:, None], size=(size, size), mode="bilinear")[:, 0]
    image_index = torch.tensor([0, 0, 1, 1])
    classes = torch.tensor([1, 5, 2, 7])
    return images, maps.to(bench.device), image_index.to(bench.device), classes.to(bench.device)


def test_deletion_and_insertion_cost_at_most_1_2x_their_forward_passes(device, bench, bench_registry,
                                                                       bench_settings, bench_figures, request):
    options = request.config.option
    if options.benchmark_disable and not options.benchmark_enable:
        pytest.skip("benchmarks disabled: run with --benchmark-enable")
    size = bench_settings.size
    model = bench.module(_model(bench_registry, bench_settings.localizer_backbone, size))
    images, maps, image_index, classes = _pairs(bench, size)
    batch = 64 if bench.is_cuda else 16
    channels_last = bench.channels_last

    def full():
        out = curve_probabilities(model, images, maps, image_index, classes, CURVES, batch_size=batch,
                                  dtype=bench.amp_dtype, channels_last=channels_last, mean=0.1)
        bench.synchronize()
        return out

    # the same perturbed images, built beforehand: what any implementation must send through the model
    plan = plan_steps(images, CURVES, 0.1)
    ranks = saliency_ranks(maps)
    total = len(maps) * plan.steps
    prebuilt = []
    for start in range(0, total, batch):
        items = torch.arange(start, min(start + batch, total), device=bench.device)
        x = perturbed_images(images, ranks, image_index, plan, items)
        prebuilt.append((x.contiguous(memory_format=torch.channels_last) if channels_last else x, items))

    def bare():
        out = torch.empty(total, device=bench.device)
        with torch.no_grad(), bench.autocast():
            for x, items in prebuilt:
                pair = torch.div(items, plan.steps, rounding_mode="floor")
                out[items] = torch.sigmoid(model(x).float()).gather(1, classes[pair].unsqueeze(1)).squeeze(1)
        bench.synchronize()
        return out

    for run in (full, bare):  # untimed: kernel selection, caches
        run()
    best = {"curves": float("inf"), "forward": float("inf")}
    for _ in range(max(bench_settings.rounds, 2)):
        for name, run in (("curves", full), ("forward", bare)):
            bench.synchronize()
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    together = torch.cat(full(), dim=1).flatten()
    torch.testing.assert_close(together.float().cpu(), bare().float().cpu(), atol=2e-2 if bench.is_cuda else 1e-5,
                               rtol=0)
    ratio = best["curves"] / best["forward"]
    figure = (f"{ratio:.3f}x ({best['curves'] * 1e3:.1f} ms vs {best['forward'] * 1e3:.1f} ms bare forward, "
              f"{total} images of {size} px, batch {batch})")
    print(f"\n[{device}] deletion + insertion: {figure}")
    bench_figures.append((f"deletion+insertion / bare forwards [{device}]", figure))
    assert ratio <= RATIO_BOUND


@pytest.mark.parametrize("cascade, independent", [(True, True), (True, False), (False, True)])
def test_mprt_costs_one_localizer_call_per_randomised_network_plus_one(device, bench, bench_registry,
                                                                       bench_settings, cascade, independent):
    size = 64
    model = bench.module(_model(bench_registry, bench_settings.localizer_backbone, size))
    cam, calls = cxrbench_cam.CAM(MapOptions()), []

    class Counting(type(cam)):
        def __call__(self, net, x, wanted):
            calls.append(len(x))
            return cam(net, x, wanted)

    n = 6
    split = Split(ids=[f"i{i}" for i in range(n)], patient_ids=[f"p{i}" for i in range(n)],
                  labels=np.zeros((n, CLASSES), np.float32))
    data = PreparedSplit("boxes", split, np.random.default_rng(0).integers(0, 255, (n, size, size), dtype=np.uint8),
                         split.boxes, np.full((n, 2), size))
    spec = SanitySpec(mprt=MprtSpec(images=n, cascade=cascade, independent=independent))
    metrics, _ = sample_checks(model, Counting(MapOptions()), data, np.arange(n), [f"c{i}" for i in range(CLASSES)],
                               spec, batch_size=n, device=bench.device, dtype=bench.amp_dtype, n_boot=0, boot_seed=0,
                               ci=0.95)
    blocks = len(model_blocks(model))
    stages = (blocks if cascade else 0) + (blocks - (1 if cascade else 0) if independent else 0)
    assert len(calls) == stages + 1 == metrics["mprt_localizer_calls"]
    assert all(c == n for c in calls)  # one call per network for the whole sample
    print(f"\n[{device}] MPRT, {blocks} blocks, cascade={cascade}, independent={independent}: {len(calls)} localizer "
          f"calls, {metrics['mprt_ms_per_image']:.1f} ms per image")
