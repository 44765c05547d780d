"""The dataset contract: labels, splits, images, boxes and the prepared cache, as the host reads them."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from ...interfaces import BOX_COLUMNS, Dataset, Split
from ..factories import make_dataset
from .base import ComponentContract

__all__ = ["DatasetContract"]


class DatasetContract(ComponentContract):
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
        return self._cached("dataset", self._fresh_dataset)

    def _fresh_dataset(self) -> Dataset:
        """A fresh build of the dataset with the contract's options."""
        return make_dataset(self.name, self.parsed_options(), registry=self.registry())

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
        again = self._fresh_dataset().fingerprint()
        assert isinstance(first, str) and first, "fingerprint() must return a non-empty string"
        assert first == again, "the same options and data give different fingerprints"

    def test_prepare_and_open_cache(self, tmp_path: Path) -> None:
        from ...data import open_cache, prepare_split, resize_square

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
