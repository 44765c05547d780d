"""cxrbench/data.py: the prepare cache (resume, unreadable files, freshness), batches, normalise, augment."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import cxrbench_nih
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from cxrbench_phantom.export import write_nih_layout

from cxrbench import cli as cli_module
from cxrbench import data as data_module
from cxrbench.data import (
    Augment,
    BatchLoader,
    PreparedSplit,
    cache_folder,
    denormalise,
    load_split,
    normalise,
    open_cache,
    prepare_split,
    resize_square,
)
from cxrbench.interfaces import IMAGENET_GREY_MEAN, IMAGENET_GREY_STD, DatasetContext
from cxrbench.manager import build_plugin_manager
from tests.plugins.toy import ToyDataset, ToyOptions

SIZE = 24  # smaller than the toy's 32 px, so the cache really resizes


def toy(num_images: int = 48, **overrides) -> ToyDataset:
    return ToyDataset(ToyOptions(num_images=num_images, image_size=32, **overrides), DatasetContext())


class Reads:
    """Counts ``read_image`` calls of a dataset class (thread-safe: prepare decodes in a pool)."""

    def __init__(self, monkeypatch, cls) -> None:
        self.calls: Counter = Counter()
        self._lock = threading.Lock()
        original = cls.read_image

        def counting(dataset, split, index):
            with self._lock:
                self.calls[(split, int(index))] += 1
            return original(dataset, split, index)

        monkeypatch.setattr(cls, "read_image", counting)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()


@pytest.fixture
def toy_reads(monkeypatch):
    return Reads(monkeypatch, ToyDataset)


class Interrupt(Exception):
    """Stands in for Ctrl-C in the middle of a prepare."""


@pytest.mark.parametrize("killed", [False, True], ids=["interrupted", "killed"])
def test_prepare_resumes_after_interruption(tmp_path, toy_reads, killed):
    dataset = toy()
    n = len(dataset.split("train"))
    k = 10
    folder = cache_folder(tmp_path / "c", dataset, "train", SIZE)
    on_disk = {}

    def progress(step: int) -> None:
        on_disk["count"] = on_disk.get("count", 0) + step
        if on_disk["count"] == k:
            # What a SIGKILL right now would leave: the state of the last periodic flush.
            on_disk["done"] = np.load(folder / "done.npy")
            raise Interrupt

    with pytest.raises(Interrupt):
        prepare_split(dataset, "train", SIZE, tmp_path / "c", workers=2, flush_every=4, progress=progress)
    done = np.load(folder / "done.npy")
    # Images are stored in order and the resume state is flushed on the way out.
    assert done.sum() == k and done[:k].all()
    assert json.loads((folder / "meta.json").read_text())["complete"] is False
    assert open_cache(dataset, "train", SIZE, tmp_path / "c") is None  # a partial cache is never used
    expect_redone = set(range(k, n))
    if killed:
        # Flushed every 4 images: a kill after the 10th loses only the 9th and 10th.
        assert on_disk["done"].sum() == 8 and on_disk["done"][:8].all()
        np.save(folder / "done.npy", on_disk["done"])
        expect_redone = set(range(8, n))

    toy_reads.reset()
    calls = []
    report = prepare_split(dataset, "train", SIZE, tmp_path / "c", workers=2, flush_every=4, progress=calls.append)
    assert {i for (_, i) in toy_reads.calls} == expect_redone  # the done images were not decoded again
    assert max(toy_reads.calls.values()) == 1
    assert report.already_done == n - len(expect_redone) and report.decoded == len(expect_redone)
    assert not report.failed and sum(calls) == n  # the bar starts at the images already done

    fresh = prepare_split(dataset, "train", SIZE, tmp_path / "uninterrupted", workers=1)
    assert fresh.decoded == n
    resumed = open_cache(dataset, "train", SIZE, tmp_path / "c")
    reference = open_cache(dataset, "train", SIZE, tmp_path / "uninterrupted")
    assert resumed is not None and reference is not None
    np.testing.assert_array_equal(resumed.images, reference.images)
    np.testing.assert_array_equal(resumed.source_sizes, reference.source_sizes)
    expected = np.stack([resize_square(dataset.read_image("train", i), SIZE) for i in range(n)])
    np.testing.assert_array_equal(resumed.images, expected)


def test_prepare_again_decodes_nothing(tmp_path, toy_reads):
    dataset = toy()
    prepare_split(dataset, "val", SIZE, tmp_path, workers=2)
    toy_reads.reset()
    report = prepare_split(dataset, "val", SIZE, tmp_path, workers=2)
    assert toy_reads.total == 0 and report.decoded == 0 and report.already_done == len(dataset.split("val"))


def test_prepare_reports_unreadable_images_and_goes_on(tmp_path, monkeypatch):
    dataset = toy()
    original = ToyDataset.read_image

    def flaky(self, split, index):
        if index in (3, 7):
            raise OSError(f"corrupt file toy{index}.png")
        return original(self, split, index)

    monkeypatch.setattr(ToyDataset, "read_image", flaky)
    report = prepare_split(dataset, "train", SIZE, tmp_path, workers=2)
    ids = dataset.split("train").ids
    assert [name for name, _ in report.failed] == [ids[3], ids[7]]
    assert "corrupt file toy3.png" in report.failed[0][1]
    assert report.decoded == len(ids) - 2
    assert open_cache(dataset, "train", SIZE, tmp_path) is None  # incomplete: runs read the originals

    # Once the files are readable again, only the two failures are decoded.
    monkeypatch.setattr(ToyDataset, "read_image", original)
    reads = Reads(monkeypatch, ToyDataset)
    report = prepare_split(dataset, "train", SIZE, tmp_path, workers=2)
    assert sorted(i for _, i in reads.calls) == [3, 7] and not report.failed
    assert open_cache(dataset, "train", SIZE, tmp_path) is not None


# --------------------------------------------------------------------------- prepare: CLI on an NIH layout


@pytest.fixture
def nih_root(tmp_path):
    return write_nih_layout(tmp_path / "nih", num_images=30, image_size=32, seed=5)


@pytest.fixture
def nih_cli():
    import cxrbench_cam
    import cxrbench_executors
    import cxrbench_heads

    from tests.plugins import toy as toy_plugin

    plugins = [("executors", cxrbench_executors), ("heads", cxrbench_heads), ("cam", cxrbench_cam),
               ("toy", toy_plugin), ("nih", cxrbench_nih)]
    pm = build_plugin_manager(plugins=plugins, entry_points=False)
    cli_module.STATE.reset(pm)
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli_module.cli, [str(a) for a in args], catch_exceptions=False)
    cli_module.STATE.reset()


def nih_grid(tmp_path: Path, root: Path) -> Path:
    grid = {
        "name": "nih-prepare",
        "datasets": [{"name": "nih", "options": {"root": str(root), "val_fraction": 0.2}}],
        "backbones": [{"name": "tiny", "options": {"width": 4}}],
        "heads": ["avg"],
        "localizers": ["cam"],
        "train": {"epochs": 1, "batch_size": 8, "image_size": SIZE},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_cli_prepare_names_unreadable_files_and_exits_1(tmp_path, nih_root, nih_cli):
    dataset = cxrbench_nih.NIHChestXray14(cxrbench_nih.NIHChestXray14.Options(root=str(nih_root), val_fraction=0.2))
    train = dataset.split("train")
    bad = train.ids[2]
    (nih_root / "images" / bad).write_bytes(b"this is not a PNG file")
    cache = tmp_path / "cache"
    result = nih_cli("prepare", "--grid", nih_grid(tmp_path, nih_root), "--cache", cache, "--workers", 2)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("unreadable:")]
    assert len(lines) == 1
    # One whole line naming the id and the file (not wrapped at the console width).
    assert lines[0].startswith(f"unreadable: {bad}: ") and f"images/{bad}" in lines[0]
    assert "train: " in result.output and f"{len(train) - 1} decoded, 0 already cached, 1 unreadable" in result.output
    # The other images of the split, and every other split, were prepared.
    dataset = cxrbench_nih.NIHChestXray14(cxrbench_nih.NIHChestXray14.Options(root=str(nih_root), val_fraction=0.2))
    done = np.load(cache_folder(cache, dataset, "train", SIZE) / "done.npy")
    assert done.sum() == len(train) - 1 and not done[2]
    for split in ("val", "test", "boxes"):
        assert open_cache(dataset, split, SIZE, cache) is not None, split


def test_cli_prepare_then_load_split_reads_no_original(tmp_path, nih_root, nih_cli, monkeypatch):
    cache = tmp_path / "cache"
    result = nih_cli("prepare", "--grid", nih_grid(tmp_path, nih_root), "--cache", cache)
    assert result.exit_code == 0, result.output
    assert "0 unreadable" in result.output
    reads = Reads(monkeypatch, cxrbench_nih.NIHChestXray14)
    dataset = cxrbench_nih.NIHChestXray14(cxrbench_nih.NIHChestXray14.Options(root=str(nih_root), val_fraction=0.2))
    cached = load_split(dataset, "boxes", SIZE, cache_root=cache)
    assert reads.total == 0 and isinstance(cached.images, np.memmap)
    decoded = load_split(dataset, "boxes", SIZE)
    assert reads.total == len(decoded) > 0
    np.testing.assert_array_equal(cached.images, decoded.images)
    # Boxes scaled from the files' 32 px to 24 px the same way on both paths.
    np.testing.assert_allclose(cached.boxes[["x", "y", "w", "h"]].to_numpy(),
                               decoded.boxes[["x", "y", "w", "h"]].to_numpy())
    assert len(cached.boxes) > 0


def test_stale_cache_falls_back_to_the_originals(tmp_path, nih_root, monkeypatch):
    options = cxrbench_nih.NIHChestXray14.Options(root=str(nih_root), val_fraction=0.2)
    cache = tmp_path / "cache"
    report = prepare_split(cxrbench_nih.NIHChestXray14(options), "test", SIZE, cache)
    assert report.decoded == report.total > 0
    # Replace one image with a different picture: the data changed, so the cache is stale.
    dataset = cxrbench_nih.NIHChestXray14(options)
    name = dataset.split("test").ids[0]
    import cv2

    assert cv2.imwrite(str(nih_root / "images" / name), np.full((32, 32), 255, np.uint8))
    reads = Reads(monkeypatch, cxrbench_nih.NIHChestXray14)
    dataset = cxrbench_nih.NIHChestXray14(options)
    assert open_cache(dataset, "test", SIZE, cache) is None
    data = load_split(dataset, "test", SIZE, cache_root=cache)
    assert reads.total == len(data) and not isinstance(data.images, np.memmap)
    assert (data.images[0] == 255).all()  # the new pixels, not the cached ones


def test_cli_run_after_prepare_reads_no_original(tmp_path, toy_pm, tiny_grid_dict, monkeypatch):
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    tiny_grid_dict["train"]["epochs"] = 1
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid_dict))
    cli_module.STATE.reset(toy_pm)
    try:
        runner = CliRunner()
        invoke = lambda *a: runner.invoke(cli_module.cli, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
        result = invoke("prepare", "--grid", grid_file, "--results", tmp_path / "r")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "r" / "cache").is_dir()  # the default cache: RESULTS/cache
        reads = Reads(monkeypatch, ToyDataset)
        result = invoke("run", "--grid", grid_file, "--results", tmp_path / "r", "--no-progress")
        assert result.exit_code == 0, result.output
        assert reads.total == 0  # every split came from the cache
        result = invoke("run", "--grid", grid_file, "--results", tmp_path / "other", "--no-progress")
        assert result.exit_code == 0, result.output
        assert reads.total > 0  # no cache under this results folder: the originals are read
    finally:
        cli_module.STATE.reset()


# --------------------------------------------------------------------------- load_split / open_cache


def test_load_split_uses_a_fresh_cache_and_reads_nothing(tmp_path, toy_reads):
    dataset = toy()
    prepare_split(dataset, "test", SIZE, tmp_path)
    toy_reads.reset()
    progress = []
    cached = load_split(dataset, "test", SIZE, cache_root=tmp_path, progress=progress.append)
    assert toy_reads.total == 0
    assert sum(progress) == len(cached) == len(dataset.split("test"))
    decoded = load_split(dataset, "test", SIZE)
    assert toy_reads.total == len(decoded)
    np.testing.assert_array_equal(cached.images, decoded.images)
    np.testing.assert_array_equal(cached.source_sizes, decoded.source_sizes)


def test_load_split_without_cache_decodes_every_image(tmp_path, toy_reads):
    dataset = toy()
    n = len(dataset.split("val"))
    data = load_split(dataset, "val", SIZE, cache_root=tmp_path / "empty")  # no cache there
    assert toy_reads.total == n and sorted(i for _, i in toy_reads.calls) == list(range(n))
    assert data.images.shape == (n, SIZE, SIZE) and data.images.dtype == np.uint8
    # Boxes follow the resize: 32 px -> 24 px.
    raw = dataset.split("val").boxes
    np.testing.assert_allclose(data.boxes[["x", "y", "w", "h"]].to_numpy(),
                               raw[["x", "y", "w", "h"]].to_numpy() * SIZE / 32)


@pytest.mark.parametrize("tamper", ["incomplete", "other-ids", "other-count", "no-meta"])
def test_open_cache_refuses_a_stale_or_partial_cache(tmp_path, tamper):
    dataset = toy()
    prepare_split(dataset, "val", SIZE, tmp_path)
    assert open_cache(dataset, "val", SIZE, tmp_path) is not None
    folder = cache_folder(tmp_path, dataset, "val", SIZE)
    meta = json.loads((folder / "meta.json").read_text())
    if tamper == "no-meta":
        (folder / "meta.json").unlink()
    else:
        meta.update({"incomplete": {"complete": False}, "other-ids": {"ids": "0" * 16},
                     "other-count": {"n": meta["n"] + 1}}[tamper])
        (folder / "meta.json").write_text(json.dumps(meta))
    assert open_cache(dataset, "val", SIZE, tmp_path) is None
    assert open_cache(dataset, "val", SIZE, None) is None


def test_cache_is_keyed_by_data_and_size(tmp_path):
    a, b = toy(), toy(seed=1)
    assert cache_folder(tmp_path, a, "val", SIZE) != cache_folder(tmp_path, b, "val", SIZE)
    assert cache_folder(tmp_path, a, "val", SIZE) != cache_folder(tmp_path, a, "val", 32)
    prepare_split(a, "val", SIZE, tmp_path)
    assert open_cache(b, "val", SIZE, tmp_path) is None and open_cache(a, "val", 32, tmp_path) is None


# --------------------------------------------------------------------------- batches


@pytest.fixture
def prepared() -> PreparedSplit:
    return load_split(toy(num_images=92), "train", SIZE)  # 46 images: batches of 8 leave 6


def rows_of(loader: BatchLoader) -> list[np.ndarray]:
    return [rows for _, _, rows in loader]


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_image_exactly_once_per_epoch(prepared, shuffle):
    loader = BatchLoader(prepared, 8, torch.device("cpu"), shuffle=shuffle, seed=3)
    n = len(prepared)
    assert len(loader) == 6
    epochs = [np.concatenate(rows_of(loader)) for _ in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    if shuffle:
        assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
        assert not np.array_equal(epochs[0], np.arange(n))
    else:
        np.testing.assert_array_equal(epochs[0], np.arange(n))


def test_batches_carry_their_own_images_and_labels(prepared):
    labels = np.asarray(prepared.split.labels)
    for x, y, rows in BatchLoader(prepared, 8, torch.device("cpu"), shuffle=True, seed=1):
        assert x.shape == (len(rows), 1, SIZE, SIZE) and x.dtype == torch.float32  # one channel, never three
        torch.testing.assert_close(x, normalise(torch.from_numpy(prepared.images[rows])), rtol=0, atol=0)
        np.testing.assert_array_equal(y.numpy(), labels[rows])


def test_order_is_deterministic_per_seed(prepared):
    def run(seed):
        loader = BatchLoader(prepared, 8, torch.device("cpu"), shuffle=True, seed=seed, augment=Augment(flip=True))
        return [(rows, x) for _ in range(2) for x, _, rows in loader]

    first, again, other = run(7), run(7), run(8)
    for (ra, xa), (rb, xb) in zip(first, again, strict=True):
        np.testing.assert_array_equal(ra, rb)
        assert torch.equal(xa, xb)  # augmentation draws are seeded too
    assert any(not np.array_equal(ra, rb) for (ra, _), (rb, _) in zip(first, other, strict=True))


def test_drop_last_indices_and_max_batches(prepared):
    cpu = torch.device("cpu")
    loader = BatchLoader(prepared, 8, cpu, shuffle=True, drop_last=True)
    batches = rows_of(loader)
    assert len(loader) == len(batches) == 5 and all(len(r) == 8 for r in batches)
    assert len(np.unique(np.concatenate(batches))) == 40
    small = BatchLoader(prepared, 100, cpu, drop_last=True)  # smaller than one batch: still trains
    assert [len(r) for r in rows_of(small)] == [len(prepared)]
    subset = np.array([5, 1, 30, 12, 44])
    got = np.concatenate(rows_of(BatchLoader(prepared, 2, cpu, shuffle=True, indices=subset)))
    np.testing.assert_array_equal(np.sort(got), np.sort(subset))
    assert len(rows_of(BatchLoader(prepared, 8, cpu, max_batches=2))) == 2


def test_images_stay_uint8_until_normalise(prepared, monkeypatch):
    seen = []

    def spy(batch, dtype=torch.float32):
        seen.append((batch.dtype, tuple(batch.shape)))
        return normalise(batch, dtype)

    monkeypatch.setattr(data_module, "normalise", spy)
    out = list(BatchLoader(prepared, 16, torch.device("cpu")))
    assert seen == [(torch.uint8, (16, SIZE, SIZE)), (torch.uint8, (16, SIZE, SIZE)), (torch.uint8, (14, SIZE, SIZE))]
    assert all(x.dtype == torch.float32 for x, _, _ in out)
    assert prepared.images.dtype == np.uint8


def test_an_abandoned_epoch_stops_the_prefetch_thread(prepared):
    before = threading.active_count()
    loader = BatchLoader(prepared, 2, torch.device("cpu"))
    it = iter(loader)
    next(it)
    it.close()  # e.g. a break out of the training loop
    assert threading.active_count() == before
    assert len(rows_of(loader)) == len(loader)  # and the loader still works


def test_channels_last(prepared):
    x, _, _ = next(iter(BatchLoader(prepared, 4, torch.device("cpu"), channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- normalise


def test_normalise_matches_a_hand_computation():
    values = np.array([[0, 1, 64], [128, 200, 255]], dtype=np.uint8)
    batch = torch.from_numpy(np.stack([values, values[::-1]]))
    out = normalise(batch)
    assert out.shape == (2, 1, 2, 3) and out.dtype == torch.float32
    hand = [[(v / 255.0 - 0.449) / 0.226 for v in row] for row in values.tolist()]
    np.testing.assert_allclose(out[0, 0].numpy(), hand, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[1, 0].numpy(), hand[::-1], rtol=0, atol=1e-5)
    assert out[0, 0, 0, 0].item() == pytest.approx(-0.449 / 0.226, abs=1e-5)
    assert out[0, 0, 1, 2].item() == pytest.approx((1 - 0.449) / 0.226, abs=1e-5)
    assert (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD) == (0.449, 0.226)
    # Other dtypes, and back to [0, 1].
    assert normalise(batch, torch.float64).dtype == torch.float64
    torch.testing.assert_close(denormalise(out)[:, 0], batch.float() / 255, rtol=0, atol=1e-6)
    assert batch.dtype == torch.uint8  # the input is not modified


# --------------------------------------------------------------------------- augment


def ramp(n: int = 32, size: int = 12) -> torch.Tensor:
    """Asymmetric images in [0, 1]: a left-to-right ramp plus a per-image offset."""
    x = torch.linspace(0, 0.8, size).expand(n, 1, size, size).clone()
    return x + torch.arange(n).view(n, 1, 1, 1) * 0.005


def test_augment_disabled_is_the_identity(prepared):
    x = ramp()
    assert not Augment().active
    assert torch.equal(Augment()(x, torch.Generator().manual_seed(0)), x)
    cpu = torch.device("cpu")
    plain = [x for x, _, _ in BatchLoader(prepared, 8, cpu, shuffle=True, seed=2)]
    inactive = [x for x, _, _ in BatchLoader(prepared, 8, cpu, shuffle=True, seed=2, augment=Augment())]
    assert all(torch.equal(a, b) for a, b in zip(plain, inactive, strict=True))


def test_flip_flips_about_half_the_images_exactly():
    x = ramp(64)
    out = Augment(flip=True)(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert (flipped ^ kept).all()  # each image is either mirrored or untouched, nothing else
    assert 16 <= int(flipped.sum()) <= 48
    again = Augment(flip=True)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_flip_in_the_loader_is_normalised_like_the_plain_path(prepared):
    cpu = torch.device("cpu")
    for x, _, rows in BatchLoader(prepared, 8, cpu, augment=Augment(flip=True), seed=4):
        plain = normalise(torch.from_numpy(prepared.images[rows]))
        for a, p in zip(x, plain, strict=True):
            assert torch.allclose(a, p, atol=1e-5) or torch.allclose(a, p.flip(-1), atol=1e-5)


def test_brightness_contrast_and_affine_options():
    x = ramp()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    bright = Augment(brightness=0.2)(x, g())
    shift = (bright - x).mean(dim=(1, 2, 3))
    assert shift.abs().max() <= 0.2 + 1e-6 and shift.std() > 0.01  # a different offset per image
    assert bright.min() >= 0 and bright.max() <= 1
    mid = 0.35 + 0.3 * x  # far enough from 0 and 1 that contrast 1.5 needs no clipping
    contrast = Augment(contrast=0.5)(mid, g())
    ratio = contrast.std(dim=(1, 2, 3)) / mid.std(dim=(1, 2, 3))
    assert ((ratio >= 0.5 - 1e-4) & (ratio <= 1.5 + 1e-4)).all() and ratio.std() > 0.05
    torch.testing.assert_close(contrast.mean(dim=(1, 2, 3)), mid.mean(dim=(1, 2, 3)), rtol=0, atol=1e-5)
    # A pure translation moves the ramp sideways: column means shift, the shape is kept.
    moved = Augment(translate=0.25)(x, g())
    assert moved.shape == x.shape and not torch.allclose(moved, x)
    tiny = Augment(degrees=1e-6)(x, g())  # an affine warp that does nothing returns the input
    torch.testing.assert_close(tiny, x, rtol=0, atol=1e-4)
