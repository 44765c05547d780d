"""From a dataset's records to normalised batches on the device.

Images are decoded and resized ONCE per (dataset, split, size) into a uint8 array:
either read from the prepared cache (``cxrbench prepare``, a memory-mapped file) or, when
there is none, decoded from the originals in a thread pool. Batches stay uint8 until the
last step: gathered on the host, (pinned and) copied to the device, then converted,
augmented and normalised there, whole batch at a time. Grey images are never copied into
three channels.

A cache folder is keyed by the data's identity (its fingerprint) and stamped with the
data's version (:mod:`cxrbench.dataversion`) in its ``meta.json``: a cache of other bytes
(relabelled tables, swapped images), or a damaged one (a truncated ``images.u8``), is never
read: cells decode the originals (one warning) and the next prepare rebuilds it. One
prepare at a time writes a cache folder (a file lock); temporary files have names of their
own, so concurrent prepares of one cache never write each other's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .dataversion import VerifyReport, verify_files, write_json_unique
from .errors import UsageError
from .grid import stable_digest
from .interfaces import IMAGENET_GREY_MEAN, IMAGENET_GREY_STD, Dataset, Split
from .phash import HASH_BYTES, HASH_METHOD, phashes

CACHE_FORMAT = 1


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A 2-D uint8 view of a decoded grey image (16-bit scaled to the full 8-bit range)."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    image = np.asarray(image, dtype=np.float32)
    if image.max() <= 1.0:
        image = image * 255.0
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a grey image to ``size x size`` (area interpolation when shrinking)."""
    image = to_uint8(image)
    if image.shape == (size, size):
        return image
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


@dataclasses.dataclass
class PreparedSplit:
    """A split's images at the model's input size, with boxes scaled to match.

    Attributes:
        name: split name.
        split: the dataset's records.
        images: ``N x S x S`` uint8 (in memory or memory-mapped from the cache).
        boxes: box table in the ``S x S`` pixel space.
        source_sizes: ``N x 2`` (height, width) of the images before resizing.

    """

    name: str
    split: Split
    images: np.ndarray
    boxes: pd.DataFrame
    source_sizes: np.ndarray

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, rows: np.ndarray, name: str | None = None) -> PreparedSplit:
        """The images and records of ``rows``, boxes re-indexed (a tuning or scored part)."""
        rows = np.asarray(rows, dtype=np.int64)
        split = self.split.subset(rows)
        new_index = {int(r): i for i, r in enumerate(rows)}
        boxes = self.boxes[self.boxes["index"].isin(new_index)].copy()
        boxes["index"] = boxes["index"].map(new_index).astype("int64")
        return PreparedSplit(name or self.name, split, self.images[rows], boxes.reset_index(drop=True),
                             self.source_sizes[rows])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def scale_boxes(boxes: pd.DataFrame, source_sizes: np.ndarray, size: int) -> pd.DataFrame:
    """Scale boxes from each image's own pixels to ``size x size`` (vectorised)."""
    if boxes.empty:
        return boxes.copy()
    idx = boxes["index"].to_numpy()
    heights = source_sizes[idx, 0].astype(np.float64)
    widths = source_sizes[idx, 1].astype(np.float64)
    out = boxes.copy()
    out["x"] = boxes["x"].to_numpy() * size / widths
    out["w"] = boxes["w"].to_numpy() * size / widths
    out["y"] = boxes["y"].to_numpy() * size / heights
    out["h"] = boxes["h"].to_numpy() * size / heights
    return out


# --------------------------------------------------------------------------- cache


def dataset_cache_dir(cache_root: Path, dataset: Dataset) -> Path:
    """The cache folder of one dataset's data (its splits' folders, its ``prepare --verify`` record)."""
    key = stable_digest({"fingerprint": dataset.fingerprint(), "format": CACHE_FORMAT}, 16)
    return Path(cache_root) / f"{dataset.NAME}-{key}"


def cache_folder(cache_root: Path, dataset: Dataset, split: str, size: int) -> Path:
    """Where the prepared images of one (dataset data, split, size) live."""
    return dataset_cache_dir(cache_root, dataset) / f"{split}-{size}"


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file of a name no other process uses."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """A resume array of the cache, or None when missing, unreadable or of another shape."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return array if array.shape == shape and array.dtype == dtype else None


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Any:
    """Hold the cache folder's lock: a second prepare of the same cache waits for the first."""
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _expected_bytes(n: int, size: int) -> int:
    return max(n, 1) * size * size


def cache_problem(folder: Path, dataset: Dataset, split: Split, size: int) -> str | None:
    """Why the cache in ``folder`` cannot serve ``split`` (None: it can).

    ``"missing"`` and ``"incomplete"`` are the ordinary states of a cache not (fully)
    prepared yet; any other answer is a sentence naming what is wrong.
    """
    meta = _meta(folder)
    if not meta:
        return "missing"
    if not meta.get("complete"):
        return "incomplete"
    if meta.get("n") != len(split) or meta.get("ids") != stable_digest(list(split.ids), 16):
        return "missing"  # prepared for other records (e.g. other options): not this split's cache
    if meta.get("size") not in (None, size):
        return "missing"
    recorded = meta.get("data_version")
    # a cache written before versions were recorded is taken as it is (prepare then stamps it)
    if recorded is not None and recorded != dataset.data_version():
        return f"{folder} was prepared from other data (the files changed since)"
    images = folder / "images.u8"
    try:
        have = images.stat().st_size
    except OSError:
        return f"{images} is missing"
    if have != _expected_bytes(len(split), size):
        return f"{images} has {have:,} bytes, not the {_expected_bytes(len(split), size):,} its meta.json says"
    if _load_npy(folder / "sizes.npy", (len(split), 2), np.dtype(np.int64)) is None:
        return f"{folder / 'sizes.npy'} is missing or unreadable"
    return None


@dataclasses.dataclass
class PrepareReport:
    """What ``prepare_split`` did."""

    folder: Path
    total: int
    decoded: int
    already_done: int
    failed: list[tuple[str, str]]


def prepare_split(
    dataset: Dataset,
    split_name: str,
    size: int,
    cache_root: Path,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    flush_every: int = 256,
) -> PrepareReport:
    """Decode and resize every image of a split once into the uint8 cache; resumable.

    The cache is a memory-mapped ``N x S x S`` uint8 file plus a ``done`` mask flushed
    every ``flush_every`` images, so an interrupted prepare resumes where it stopped.
    Unreadable images are reported by id and left black (their ``done`` flag stays off,
    so the cache is marked incomplete and runs fall back to the originals).

    Args:
        dataset: the dataset to read.
        split_name: which split.
        size: square output size.
        cache_root: the cache root folder.
        workers: decoding threads (default: CPU count).
        progress: called with the number of images finished since the last call.
        flush_every: images between flushes of the resume state.

    Returns:
        A :class:`PrepareReport`.

    """
    split = dataset.split(split_name)
    folder = cache_folder(cache_root, dataset, split_name, size)
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):  # a concurrent prepare of this cache waits, then finds it done
        return _prepare_locked(dataset, split_name, split, size, folder, workers=workers, progress=progress,
                               flush_every=flush_every)


def _prepare_locked(dataset: Dataset, split_name: str, split: Split, size: int, folder: Path, *,
                    workers: int | None, progress: Callable[[int], None] | None, flush_every: int) -> PrepareReport:
    n = len(split)
    ids_digest = stable_digest(list(split.ids), 16)
    version = dataset.data_version()
    meta = _meta(folder)
    images_path, done_path, sizes_path = folder / "images.u8", folder / "done.npy", folder / "sizes.npy"
    done = _load_npy(done_path, (n,), np.dtype(bool))
    sizes = _load_npy(sizes_path, (n, 2), np.dtype(np.int64))
    usable = bool(meta and meta.get("ids") == ids_digest and meta.get("n") == n
                  and meta.get("data_version") in (None, version)  # None: from before versions, kept
                  and images_path.is_file() and images_path.stat().st_size == _expected_bytes(n, size)
                  and (done is None) == (sizes is None))
    if not usable:  # other data, other records, or damaged (truncated, unreadable resume state): start again
        for path in (images_path, done_path, sizes_path, folder / PHASH_FILE):
            path.unlink(missing_ok=True)
        write_json_unique(folder / "meta.json", {"n": n, "size": size, "ids": ids_digest, "data_version": version,
                                                 "complete": False})
        done = sizes = None
    mode = "w+" if not images_path.exists() else "r+"
    images = np.memmap(images_path, dtype=np.uint8, mode=mode, shape=(max(n, 1), size, size))
    done = done if done is not None else np.zeros(n, dtype=bool)
    sizes = sizes if sizes is not None else np.zeros((n, 2), dtype=np.int64)
    todo = np.flatnonzero(~done)
    already = n - len(todo)
    if progress and already:
        progress(already)
    failed: list[tuple[str, str]] = []

    def work(i: int) -> tuple[int, np.ndarray | None, tuple[int, int] | None, str | None]:
        try:
            raw = dataset.read_image(split_name, int(i))
            return i, resize_square(raw, size), raw.shape[:2], None
        except Exception as exc:  # reported by name; the rest of the split goes on
            return i, None, None, f"{type(exc).__name__}: {exc}"

    def flush() -> None:
        images.flush()
        _save_npy_atomic(sizes_path, sizes)  # sizes before done: a done flag never lacks its size
        _save_npy_atomic(done_path, done)

    decoded = 0
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        try:
            for count, (i, image, shape, error) in enumerate(pool.map(work, todo), start=1):
                if error is not None:
                    failed.append((str(split.ids[i]), error))
                else:
                    images[i] = image
                    sizes[i] = shape
                    done[i] = True
                    decoded += 1
                if progress:
                    progress(1)
                if count % flush_every == 0:
                    flush()
        finally:
            flush()
    complete = bool(done.all())
    record: dict[str, Any] = {"n": n, "size": size, "ids": ids_digest, "data_version": version, "complete": complete}
    if complete:  # the overlap audit's perceptual hashes (cxrbench.overlap), from the cached images
        if decoded or _stored_hashes(folder, n, meta) is None:
            _write_hashes(folder, images, n)
        record["phash"] = HASH_METHOD
    write_json_unique(folder / "meta.json", record)
    return PrepareReport(folder, n, decoded, already, failed)


PHASH_FILE = "phash.npy"
"""``N x 32`` uint8 perceptual hashes of a cache folder's images (:mod:`cxrbench.phash`), beside ``images.u8``."""


def _stored_hashes(folder: Path, n: int, meta: dict[str, Any] | None) -> np.ndarray | None:
    """The cache's stored hashes, or None when missing, of another hash definition or of another shape."""
    if not meta or meta.get("phash") != HASH_METHOD:
        return None
    return _load_npy(folder / PHASH_FILE, (n, HASH_BYTES), np.dtype(np.uint8))


def _write_hashes(folder: Path, images: np.ndarray, n: int) -> np.ndarray:
    hashes = phashes(images[:n])
    _save_npy_atomic(folder / PHASH_FILE, hashes)
    return hashes


def cached_hashes(dataset: Dataset, split_name: str, size: int, cache_root: Path | None) -> np.ndarray | None:
    """The perceptual hashes of a complete, fresh cache's images; None where there is no such cache.

    A cache prepared before hashes were stored (or with another hash definition) gets them
    now, computed from its images and stored under the folder's lock (in memory only
    where the folder is read-only).
    """
    if cache_root is None:
        return None
    folder = cache_folder(cache_root, dataset, split_name, size)
    split = dataset.split(split_name)
    n = len(split)
    if cache_problem(folder, dataset, split, size) is not None:
        return None
    stored = _stored_hashes(folder, n, _meta(folder))
    if stored is not None:
        return stored
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(max(n, 1), size, size))
    try:
        with _folder_lock(folder):
            if cache_problem(folder, dataset, split, size) is not None:  # rebuilt while we waited
                return None
            meta = _meta(folder) or {}
            stored = _stored_hashes(folder, n, meta)
            if stored is None:
                stored = _write_hashes(folder, images, n)
                write_json_unique(folder / "meta.json", {**meta, "phash": HASH_METHOD})
            return stored
    except OSError:  # a read-only cache: hashed, not stored
        return phashes(images[:n])


_WARNED: set[str] = set()
"""Cache problems already warned about in this process (one line each, not one per cell)."""


def open_cache(dataset: Dataset, split_name: str, size: int, cache_root: Path | None, *,
               warn: bool = True) -> PreparedSplit | None:
    """The prepared split from a complete, fresh and whole cache, memory-mapped; None if there is none.

    A cache of other data or a damaged one is not read: with ``warn``, one warning line
    (through the dataset's ``context.warn``, once per process) says why and that the
    originals are decoded instead.
    """
    if cache_root is None:
        return None
    folder = cache_folder(cache_root, dataset, split_name, size)
    split = dataset.split(split_name)
    problem = cache_problem(folder, dataset, split, size)
    if problem is not None:
        if warn and problem not in ("missing", "incomplete") and problem not in _WARNED:
            _WARNED.add(problem)
            dataset.context.warn(f"cache: {problem}; decoding the original images instead "
                                 "('cxrbench prepare' rebuilds it)")
        return None
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(max(len(split), 1), size, size))
    sizes = np.load(folder / "sizes.npy", allow_pickle=False)
    return PreparedSplit(split_name, split, images[: len(split)], scale_boxes(split.boxes, sizes, size), sizes)


def verify_dataset(dataset: Dataset, cache_root: Path, *, workers: int | None = None,
                   progress: Callable[[int], None] | None = None) -> VerifyReport | None:
    """``prepare --verify``: hash a file dataset's files in full against the last verify's record.

    Returns:
        What the verify found, or None for a dataset with no files (generated data). A hidden
        change raises the dataset's verify generation, so its data version, and so the cache's
        stamp and the finished cells' records, no longer match.

    """
    files = getattr(dataset, "data_files", None)
    if not callable(files):
        return None
    report = verify_files(dataset_cache_dir(cache_root, dataset), files(), workers=workers, progress=progress)
    forget = getattr(dataset, "forget_data_version", None)
    if callable(forget):
        forget()
    return report


def load_split(
    dataset: Dataset,
    split_name: str,
    size: int,
    *,
    cache_root: Path | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> PreparedSplit:
    """A split at ``size``: from the prepared cache when fresh, else decoded now in memory.

    An image that cannot be read (``prepare`` reports it and leaves the cache incomplete)
    is left out of the split with one warning giving the count and the first id, rather
    than failing the whole cell; every number of the cell is then over the readable images.
    A split left with no readable image is an error.
    """
    cached = open_cache(dataset, split_name, size, cache_root)
    if cached is not None:
        if progress:
            progress(len(cached))
        return cached
    split = dataset.split(split_name)
    n = len(split)
    images = np.zeros((n, size, size), dtype=np.uint8)
    sizes = np.zeros((n, 2), dtype=np.int64)
    unreadable: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            raw = dataset.read_image(split_name, i)
        except (UsageError, OSError, ValueError) as exc:  # one bad file, named below; not the cell's end
            unreadable[i] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        else:
            sizes[i] = raw.shape[:2]
            images[i] = resize_square(raw, size)
        if progress:
            progress(1)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        list(pool.map(work, range(n)))
    if split.image_sizes is not None:
        sizes = np.asarray(split.image_sizes, dtype=np.int64)
    data = PreparedSplit(split_name, split, images, scale_boxes(split.boxes, sizes, size), sizes)
    if not unreadable:
        return data
    first = min(unreadable)
    if len(unreadable) == n:
        raise UsageError(f"split {split_name!r}: none of its {n} images can be read (first: {split.ids[first]}: "
                         f"{unreadable[first]})")
    if warn is not None:
        warn(f"split {split_name!r}: {len(unreadable)} of {n} images cannot be read and are left out (first: "
             f"{split.ids[first]}: {unreadable[first]})")
    return data.subset(np.array([i for i in range(n) if i not in unreadable], dtype=np.int64))


# --------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class Augment:
    """Batch-wise augmentation on the device (all off by default)."""

    flip: bool = False
    degrees: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.flip or self.degrees or self.scale or self.translate or self.brightness or self.contrast)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``N x 1 x H x W`` images in [0, 1]."""
        n = x.shape[0]
        dev = x.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, generator=generator, device="cpu").to(dev) * (high - low) + low

        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(dev).view(n, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        if self.degrees or self.scale or self.translate:
            angle = uniform(-self.degrees, self.degrees) * (torch.pi / 180)
            scale = uniform(1 - self.scale, 1 + self.scale)
            tx, ty = uniform(-self.translate, self.translate) * 2, uniform(-self.translate, self.translate) * 2
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.brightness or self.contrast:
            b = uniform(-self.brightness, self.brightness).view(n, 1, 1, 1)
            c = uniform(1 - self.contrast, 1 + self.contrast).view(n, 1, 1, 1)
            mean = x.mean(dim=(2, 3), keepdim=True)
            x = ((x - mean) * c + mean + b).clamp_(0, 1)
        return x


_NEG_SHIFT = torch.tensor(-IMAGENET_GREY_MEAN / IMAGENET_GREY_STD, dtype=torch.float64)


def normalise(batch_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``N x H x W`` uint8 (on any device) -> ``N x 1 x H x W`` normalised float."""
    scale = 1.0 / (255.0 * IMAGENET_GREY_STD)
    x = batch_u8.unsqueeze(1).to(dtype)
    # One fused pass, x * scale - mean / std, written in place: a 0-dim tensor acts as a
    # scalar on any device and dtype (one rounding in half precision, one kernel on the GPU).
    return torch.add(_NEG_SHIFT, x, alpha=scale, out=x)


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise` to [0, 1] (for pictures)."""
    return (x * IMAGENET_GREY_STD + IMAGENET_GREY_MEAN).clamp(0, 1)


class BatchLoader:
    """Iterate over (images, labels, indices) batches of a prepared split on a device.

    A background thread gathers the next batch's uint8 rows (and pins them on CUDA)
    while the device works on the current one.

    Args:
        data: the prepared split.
        batch_size: images per batch.
        device: target device.
        shuffle: reshuffle every epoch (seeded).
        seed: seed of the shuffling and augmentation streams.
        augment: device-side augmentation (None = none).
        channels_last: return images in channels-last memory format.
        drop_last: drop a last incomplete batch (training).
        indices: iterate over these rows only.
        max_batches: stop after this many batches per epoch.

    """

    def __init__(
        self,
        data: PreparedSplit,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        channels_last: bool = False,
        drop_last: bool = False,
        indices: np.ndarray | None = None,
        max_batches: int | None = None,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment if augment is not None and augment.active else None
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        self.max_batches = max_batches
        labels = np.asarray(data.split.labels, dtype=np.float32)
        self.labels = torch.from_numpy(labels).to(device)
        self.pin = device.type == "cuda"

    def __len__(self) -> int:
        n = len(self.indices)
        count = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.drop_last and count == 0 and n > 0:
            count = 1  # a split smaller than one batch still trains
        return count if self.max_batches is None else min(count, self.max_batches)

    def _order(self) -> list[np.ndarray]:
        order = self.rng.permutation(self.indices) if self.shuffle else self.indices
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        return batches[: len(self)]

    def _gather(self, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        sorted_rows = np.sort(rows)  # sequential reads from a memory map
        host = torch.from_numpy(np.ascontiguousarray(self.data.images[sorted_rows]))
        if self.pin:
            host = host.pin_memory()
        return host, sorted_rows

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        batches = self._order()
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def producer() -> None:
            try:
                for rows in batches:
                    if stop.is_set():
                        return
                    q.put(self._gather(rows))
            except BaseException as exc:  # surfaced in the consumer
                q.put(exc)
                return
            q.put(None)

        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                host, rows = item
                batch = host.to(self.device, non_blocking=True)
                if self.augment is not None:
                    x = batch.unsqueeze(1).float().div_(255.0)
                    x = self.augment(x, self.generator)
                    x = x.sub_(IMAGENET_GREY_MEAN).div_(IMAGENET_GREY_STD)
                else:
                    x = normalise(batch)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = self.labels[torch.from_numpy(rows).to(self.device, non_blocking=True)]
                yield x, y, rows
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
