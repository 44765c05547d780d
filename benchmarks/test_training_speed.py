"""Throughput of the harness's training loop against a bare forward/backward/step loop.

resnet18 (timm, random init, 1 input channel) + average-pooling head, 14 classes, 64 px,
batch 16, Adam, 64 training images (4 steps) per round, on ``cpu`` and on ``cuda`` (the
``device`` parameter of conftest.py; the CUDA variant skips without a GPU). Run with::

    nice -n 10 python -m pytest benchmarks/test_training_speed.py --benchmark-only -q -s

(benchmarks/conftest.py re-enables benchmarks that the project's addopts disable for the
unit tests; ``-s`` shows the printed ratio.)

* harness: :func:`cxrbench.training.train_model` for one epoch with its real data path:
  a :class:`~cxrbench.data.BatchLoader` over a prepared uint8 split (shuffling, background
  gathering, on-device normalisation), NaN-masked BCE, the on-device running loss and
  non-finite flag. No validation split and no checkpoint folder, so both loops do the
  same work per image: what is measured is the harness's overhead around the model.
* bare: the same model and the same images, pre-normalised to float batches held in a
  list, then forward / BCE / backward / Adam step and nothing else.

Rounds alternate bare and harness (the bare round runs in pytest-benchmark's untimed
``setup`` of each harness round), so each pair shares the machine's load at that moment.
Reported: the median over pairs of the wall-clock throughput ratio harness/bare, and the
same ratio in process CPU seconds (robust on a shared machine). The issue asks for
harness/bare >= 0.9 on the CPU; both must reach it.

On CUDA the harness runs with its CUDA defaults (``amp`` and ``channels_last`` unset:
autocast in :func:`cxrbench.training.amp_dtype`'s dtype, channels-last model and batches,
pinned host batches copied asynchronously), and the bare loop does the same model work:
channels-last model and pre-built batches already on the GPU, forward under the same
autocast, the loss in float32 as the harness computes it, a ``GradScaler`` only for
float16. Both rounds are timed between two ``torch.cuda.synchronize()`` calls. The ratio
is recorded and printed but not held to 0.9 (four steps of a small model are dominated by
kernel launches there), and CPU seconds say little about GPU work.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.config import TrainSpec
from cxrbench.data import PreparedSplit, normalise
from cxrbench.interfaces import Classifier, Split, empty_boxes
from cxrbench.manager import build_plugin_manager
from cxrbench.options import parse_options
from cxrbench.registry import Registry
from cxrbench.testing import BenchDevice
from cxrbench.training import amp_dtype, autocast, train_model

cxrbench_heads = pytest.importorskip("cxrbench_heads")
cxrbench_timm = pytest.importorskip("cxrbench_timm")

N_IMAGES, SIZE, BATCH, N_CLASSES, ROUNDS = 64, 64, 16, 14, 5
MIN_RATIO = 0.9
THREADS = 1  # one compute thread: the other core of this machine is left to the loader's gather thread


@pytest.fixture(scope="module")
def setting():
    """Model, its initial weights, the prepared uint8 split and the bare loop's float batches."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    pm = build_plugin_manager(plugins=[cxrbench_timm, cxrbench_heads], entry_points=False, core=False)
    registry = Registry.from_plugin_manager(pm)
    torch.manual_seed(0)
    backbone_cls = registry.get("backbone", "resnet18")
    backbone = backbone_cls(parse_options(backbone_cls.Options, {"pretrained": False}, "b", "resnet18"))
    head_cls = registry.get("head", "avg")
    head = head_cls(backbone.num_features, N_CLASSES, parse_options(head_cls.Options, {}, "h", "avg"))
    model = Classifier(backbone, head, [f"c{k}" for k in range(N_CLASSES)])
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE), dtype=np.uint8)
    labels = (rng.random((N_IMAGES, N_CLASSES)) < 0.2).astype(np.float32)
    labels[rng.random(labels.shape) < 0.05] = np.nan  # some unknown labels: the harness masks them
    split = Split(ids=[f"i{i}" for i in range(N_IMAGES)], patient_ids=[f"p{i}" for i in range(N_IMAGES)],
                  labels=labels)
    data = PreparedSplit("train", split, images, empty_boxes(), np.full((N_IMAGES, 2), SIZE))

    # the bare loop gets the work the harness does per batch (gather, normalise) done in advance
    order = rng.permutation(N_IMAGES)
    bare_batches = []
    for i in range(0, N_IMAGES - BATCH + 1, BATCH):
        rows = order[i : i + BATCH]
        bare_batches.append((normalise(torch.from_numpy(images[rows])),
                             torch.from_numpy(np.nan_to_num(labels[rows], nan=0.0))))
    yield model, initial, data, bare_batches
    torch.set_num_threads(previous_threads)


@pytest.fixture(scope="module")
def _device_settings() -> Iterator[dict[str, tuple]]:
    """The setting moved to devices other than the CPU, built once per module."""
    settings: dict[str, tuple] = {}
    yield settings
    settings.clear()


@pytest.fixture
def dev_setting(setting, bench: BenchDevice, _device_settings):
    """The setting on the benchmark's device: the CPU one itself, else a copy on the GPU.

    On CUDA the model is a channels-last copy, its initial weights and the bare loop's
    batches (channels-last images, labels) are already on the GPU; the prepared split
    stays on the host, where the harness's loader reads it.
    """
    if not bench.is_cuda:
        return setting
    if bench.name not in _device_settings:
        model, initial, data, bare_batches = setting
        dev_model = bench.module(copy.deepcopy(model))
        dev_model.load_state_dict(initial)
        dev_initial = {k: v.to(bench.device) for k, v in initial.items()}
        dev_batches = [(bench.tensor(x), y.to(bench.device)) for x, y in bare_batches]
        _device_settings[bench.name] = (dev_model, dev_initial, data, dev_batches)
    return _device_settings[bench.name]


def bare_loop(model, batches, lr, dtype: torch.dtype | None = None):
    """Forward / BCE / backward / step over pre-built batches; nothing else.

    ``dtype``: autocast dtype of the forward (None, the CPU case: full precision), with a
    gradient scaler for float16, as the harness does.
    """
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if dtype is None:
        for x, y in batches:
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return
    scaler = torch.amp.GradScaler(batches[0][0].device.type, enabled=dtype == torch.float16)
    for x, y in batches:
        with autocast(x.device, dtype):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


class Clock:
    """Wall-clock and process CPU seconds of each round of one loop.

    ``sync`` runs at both ends of every timed round (``torch.cuda.synchronize`` on CUDA),
    so a round's time covers the device's work and none of the previous round's.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.sync = sync

    def __call__(self, fn):
        if self.sync is not None:
            self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        if self.sync is not None:
            self.sync()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        return result

    def clear(self) -> None:
        self.wall.clear()
        self.cpu.clear()


@pytest.mark.benchmark(group="training-loop-resnet18")
def test_training_loop_vs_bare(benchmark, device, bench, dev_setting):
    if bench.is_cuda:
        benchmark.group = f"training-loop-resnet18-{device}"
    model, initial, data, bare_batches = dev_setting
    if bench.is_cuda:
        # the harness's CUDA defaults: mixed precision and channels-last
        spec = TrainSpec(epochs=1, batch_size=BATCH, lr=1e-4, optimizer="adam", device="cuda")
        harness_clock, bare_clock = Clock(bench.synchronize), Clock(bench.synchronize)
    else:
        spec = TrainSpec(epochs=1, batch_size=BATCH, lr=1e-4, optimizer="adam", device="cpu", amp=False,
                         channels_last=False)
        harness_clock, bare_clock = Clock(), Clock()
    device = bench.device
    dtype = amp_dtype(spec, device)

    def harness():
        return harness_clock(lambda: train_model(model, data, None, spec, seed=0, device=device))

    def bare_round():
        model.load_state_dict(initial)
        bare_clock(lambda: bare_loop(model, bare_batches, spec.lr, dtype))
        model.load_state_dict(initial)  # both loops start every round from the same weights

    # warm-up of both (allocator, oneDNN / cuDNN kernels), not counted
    bare_round()
    harness()
    harness_clock.clear()
    bare_clock.clear()

    outcome = benchmark.pedantic(harness, setup=bare_round, rounds=ROUNDS, iterations=1)
    images = len(bare_batches) * BATCH
    assert outcome.epochs_run == 1 and np.isfinite(outcome.history[0]["loss"])
    assert outcome.train_images_per_s > 0
    assert len(harness_clock.wall) == len(bare_clock.wall) >= 1

    # Throughput ratio harness/bare = bare time / harness time. Each pair of rounds ran
    # back to back under the same machine load, so the median of the pairs' ratios is
    # the robust wall-clock figure; CPU seconds of the process (the loader's gather
    # thread included) are nearly immune to other processes and show the loop's own cost.
    wall_ratio = float(np.median(np.divide(bare_clock.wall, harness_clock.wall)))
    cpu_ratio = float(np.median(np.divide(bare_clock.cpu, harness_clock.cpu)))
    harness_rate = images / float(np.median(harness_clock.wall))
    bare_rate = images / float(np.median(bare_clock.wall))
    benchmark.extra_info.update(
        device=bench.name,
        amp_dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
        images_per_round=images,
        harness_images_per_s=round(harness_rate, 2),
        bare_images_per_s=round(bare_rate, 2),
        harness_over_bare=round(wall_ratio, 3),
        harness_over_bare_cpu=round(cpu_ratio, 3),
        harness_wall_s=[round(t, 3) for t in harness_clock.wall],
        bare_wall_s=[round(t, 3) for t in bare_clock.wall],
        harness_cpu_s=[round(t, 3) for t in harness_clock.cpu],
        bare_cpu_s=[round(t, 3) for t in bare_clock.cpu],
    )
    print(
        f"\ntraining loop [{bench.name}], {images} images/round, {len(harness_clock.wall)} paired rounds: "
        f"harness {harness_rate:.1f} img/s, bare {bare_rate:.1f} img/s (medians); "
        f"harness/bare = {wall_ratio:.3f} wall, {cpu_ratio:.3f} CPU time\n"
        f"  wall s: harness {[round(t, 2) for t in harness_clock.wall]}, bare {[round(t, 2) for t in bare_clock.wall]}"
        f"\n  cpu s:  harness {[round(t, 2) for t in harness_clock.cpu]}, bare {[round(t, 2) for t in bare_clock.cpu]}"
    )
    if not bench.is_cuda:  # the bar is for the CPU; on CUDA the ratio is reported (module docstring)
        assert wall_ratio >= MIN_RATIO
        assert cpu_ratio >= MIN_RATIO
