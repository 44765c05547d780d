"""Speed of delivering training batches: the seed project's per-image path vs the prepared cache.

Run: ``nice -n 10 python -m pytest benchmarks/test_dataset_speed.py --benchmark-only -q``

* the seed's loading path on pre-resized 256 px PNGs (``cv2.imread`` -> 3-channel stack ->
  PIL -> torchvision ``Resize(224)`` / ``ToTensor`` / ``Normalize``, one image at a time,
  then ``torch.stack``) vs the same batches delivered from the cxrbench cache (prepared
  once at 224 px) as normalised float tensors by :class:`cxrbench.data.BatchLoader`. Both
  run in the same test on the same files; the per-image ratio is printed and stored in
  ``extra_info`` (issue 3 asks for at least 30x);
* ``prepare`` (decode + resize + write the cache) of the 32 full-size 1024 px NIH images
  (host work whatever the training device: CPU only).

The two batch-delivery tests run on ``cpu`` and on ``cuda`` (the ``device`` parameter of
conftest.py; the CUDA variants skip without a GPU). On CUDA both paths deliver the batches
on the GPU, channels-last, as training there consumes them: the seed path stacks on the
host, pins the batch and copies it (what the harness's loader does with a host batch); the
cache path is :class:`~cxrbench.data.BatchLoader` on the GPU (pinned uint8 rows copied,
then normalised on the device). Both end with ``torch.cuda.synchronize()``, inside the
timed region. Loading has no mixed precision: both deliver float32, which the model's
autocast then casts.

The real NIH images in ``../shared/data`` are used when present; otherwise the phantom,
exported in the NIH layout at 256 px, stands in so that the comparison always runs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cxrbench.data import BatchLoader, PreparedSplit, open_cache, prepare_split
from cxrbench.imageio import read_grey
from cxrbench.interfaces import Dataset, DatasetContext, Split
from cxrbench.testing import BenchDevice

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIH_IMAGES = SHARED_DATA / "nih" / "images"
FULL_SIZE_IMAGES = SHARED_DATA / "nih-full-sample" / "images"

N_IMAGES, BATCH, SIZE = 128, 32, 224
MIN_SPEEDUP = 30.0
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CPU = BenchDevice("cpu")
GROUP = "batch-delivery"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Both paths on one thread: the comparison is per core, not who grabs more of a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FolderDataset(Dataset):
    """Every PNG of one folder as a single unlabelled ``train`` split (what the benchmark needs)."""

    NAME = "folder"
    SPLITS = ("train",)

    @dataclasses.dataclass(frozen=True)
    class Options:
        root: str
        limit: int | None = None

    def __init__(self, options: Options) -> None:
        super().__init__(options, DatasetContext())
        self.classes = ["Any"]
        self.files = sorted(str(p) for p in Path(options.root).glob("*.png"))[: options.limit]

    def split(self, name: str) -> Split:
        ids = [os.path.basename(f) for f in self.files]
        return Split(ids=ids, patient_ids=ids, labels=np.zeros((len(ids), 1), dtype=np.float32))

    def read_image(self, split: str, index: int) -> np.ndarray:
        return read_grey(self.files[index])

    def fingerprint(self) -> str:
        return f"folder:{self.options.root}:{len(self.files)}"


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> tuple[Path, str]:
    """256 px grey PNGs: the real NIH sample when present, else the phantom exported like it."""
    if NIH_IMAGES.is_dir() and len(list(NIH_IMAGES.glob("*.png"))) >= N_IMAGES:
        return NIH_IMAGES, "nih (real, 256 px)"
    from cxrbench_phantom.export import write_nih_layout

    root = write_nih_layout(tmp_path_factory.mktemp("phantom-nih"), num_images=N_IMAGES, image_size=256, seed=0)
    return root / "images", "phantom (NIH layout, 256 px)"


@pytest.fixture(scope="module")
def dataset(png_folder) -> FolderDataset:
    return FolderDataset(FolderDataset.Options(str(png_folder[0]), limit=N_IMAGES))


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory) -> PreparedSplit:
    cache = tmp_path_factory.mktemp("cache")
    report = prepare_split(dataset, "train", SIZE, cache, workers=2)
    assert not report.failed and report.decoded == N_IMAGES
    data = open_cache(dataset, "train", SIZE, cache)
    assert data is not None
    return data


SEED_TRANSFORM = transforms.Compose(
    [transforms.Resize(SIZE), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
)


def seed_batches(files: list[str], dev: BenchDevice = CPU) -> list[torch.Tensor]:
    """The seed project's loader: one image at a time through cv2, numpy, PIL and torchvision.

    On CUDA each stacked batch is pinned and copied to the GPU (channels-last), and the
    call returns once the copies are done.
    """
    out = []
    for start in range(0, len(files), BATCH):
        tensors = []
        for path in files[start : start + BATCH]:
            grey = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            rgb = np.stack([grey, grey, grey], axis=-1)
            tensors.append(SEED_TRANSFORM(Image.fromarray(rgb)))
        batch = torch.stack(tensors)
        if dev.is_cuda:
            batch = batch.pin_memory().to(dev.device, non_blocking=True)
            if dev.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(batch)
    dev.synchronize()
    return out


def cache_batches(data: PreparedSplit, dev: BenchDevice = CPU) -> list[torch.Tensor]:
    """cxrbench: the same batches from the uint8 cache, normalised whole batch at a time on ``dev``."""
    out = [x for x, _, _ in BatchLoader(data, BATCH, dev.device, channels_last=dev.channels_last)]
    dev.synchronize()
    return out


def best_of(fn, *args, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.benchmark(group=GROUP)
def test_seed_loading_path(benchmark, device, bench, dataset):
    if bench.is_cuda:
        benchmark.group = f"{GROUP}-{device}"
        seed_batches(dataset.files[:BATCH], bench)  # CUDA context and pinned-memory pool, not counted
    batches = benchmark.pedantic(seed_batches, args=(dataset.files, bench), rounds=3, iterations=1)
    assert len(batches) == N_IMAGES // BATCH and batches[0].shape == (BATCH, 3, SIZE, SIZE)
    assert batches[0].device.type == bench.device.type


@pytest.mark.benchmark(group=GROUP)
def test_cache_loading_path(benchmark, device, bench, dataset, prepared, png_folder):
    if bench.is_cuda:
        benchmark.group = f"{GROUP}-{device}"
    times: list[float] = []

    def timed() -> list[torch.Tensor]:
        start = time.perf_counter()
        out = cache_batches(prepared, bench)
        times.append(time.perf_counter() - start)
        return out

    batches = benchmark.pedantic(timed, rounds=20, iterations=1, warmup_rounds=2)
    assert len(batches) == N_IMAGES // BATCH
    assert batches[0].shape == (BATCH, 1, SIZE, SIZE) and batches[0].dtype == torch.float32
    assert batches[0].device.type == bench.device.type

    # The seed path on the same files, in the same test, for the ratio.
    files = dataset.files
    seed = seed_batches(files, bench)
    seed_per_image = best_of(seed_batches, files, bench, rounds=3) / N_IMAGES
    ours_per_image = min(times) / N_IMAGES
    speedup = seed_per_image / ours_per_image

    # Same pixels up to resampling differences: the seed's first channel (it is grey x 3)
    # against ours, both in ImageNet-normalised units.
    ours = torch.cat(batches)[:, 0].cpu()
    theirs = torch.cat(seed)[:, 0].cpu() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    ours_01 = ours * 0.226 + 0.449
    assert (ours_01 - theirs).abs().mean() < 0.02

    benchmark.extra_info.update(
        device=bench.name,
        images=png_folder[1],
        seed_ms_per_image=round(seed_per_image * 1e3, 3),
        cache_ms_per_image=round(ours_per_image * 1e3, 4),
        speedup=round(speedup, 1),
    )
    print(
        f"\nbatch delivery [{bench.name}] on {png_folder[1]}: seed {seed_per_image * 1e3:.2f} ms/image, "
        f"cache {ours_per_image * 1e3:.3f} ms/image, {speedup:.0f}x"
    )
    assert speedup >= MIN_SPEEDUP


@pytest.mark.benchmark(group="prepare")
@pytest.mark.skipif(not FULL_SIZE_IMAGES.is_dir(), reason="needs ../shared/data/nih-full-sample")
def test_prepare_full_size(benchmark, tmp_path):
    dataset = FolderDataset(FolderDataset.Options(str(FULL_SIZE_IMAGES)))
    n = len(dataset.files)
    assert n == 32
    counter = iter(range(1_000))

    def run():
        # A fresh cache folder every round: prepare must decode and resize every image.
        return prepare_split(dataset, "train", SIZE, tmp_path / f"c{next(counter)}")

    times: list[float] = []

    def timed():
        start = time.perf_counter()
        report = run()
        times.append(time.perf_counter() - start)
        return report

    report = benchmark.pedantic(timed, rounds=3, iterations=1)
    assert report.decoded == n and not report.failed
    rate = n / min(times)
    benchmark.extra_info.update(images=n, images_per_s=round(rate, 1), workers=os.cpu_count())
    print(f"\nprepare: {n} full-size images at {rate:.1f} images/s ({os.cpu_count()} threads)")
