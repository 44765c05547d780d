"""The overlap audit of cross-dataset evaluation: target images the model was trained on are not scored.

Public datasets reuse each other's images: RSNA Pneumonia's 30,000 images and ChestX-Det's
are NIH ChestX-ray14 images (Shih et al., Radiology: AI 2019, e180041), so a model trained
on NIH and "externally" validated on RSNA would be scored partly on its own training
images. When a cell trained on dataset A is scored on dataset B (``evaluate_on:``), each
scored split of B (``test``, and the localization split) is checked against A's
``train`` and ``val`` images (val too: it chose the epoch):

* **By a documented mapping** where both datasets name their images in one namespace
  (:class:`OverlapKeys`, from a dataset's optional ``overlap_keys(split)`` method: NIH by
  its ``Image Index``; RSNA by the organisers' ``pneumonia-challenge-dataset-mappings_2018.json``
  when it is in its root): a B image is excluded when its name is one of A's training
  images, *or its patient is one of A's training patients* (where both give patients).
* **Otherwise by a perceptual hash** of every image (:mod:`cxrbench.phash`, computed from
  the uint8 cache: stored as ``phash.npy`` beside it by ``prepare``, or computed from the
  images when a cache has none): a B image within :data:`cxrbench.phash.MATCH_DISTANCE`
  bits of any A training image is excluded, and with it every other image of the same B
  patient in the split (B's own patient ids: a patient seen in training is not external).

The excluded images leave that transfer's scoring only (the cell's own numbers are
untouched); the count is recorded in the transfer's metrics (``overlap_excluded``) and
settings (``overlap``), and one warning line per (A, B) pair says it, e.g. ``nih ->
rsna_pneumonia: 812 of 5,278 test images are also training images of nih (by
pneumonia-challenge-dataset-mappings_2018.json): excluded``.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .phash import HASH_METHOD, MATCH_DISTANCE, matches, phashes

TRAINING_SPLITS = ("train", "val")
"""The source splits a model has seen (val selects the epoch)."""


@dataclasses.dataclass(frozen=True)
class OverlapKeys:
    """The names of a split's images (and patients) in a namespace other datasets share.

    Returned by a dataset's optional ``overlap_keys(split_name)`` method, row-aligned with
    ``split(split_name)``. Two datasets are compared by these names when they give the same
    ``namespace``; otherwise by perceptual hashes.

    Attributes:
        namespace: whose names these are (``"nih"``: NIH ChestX-ray14 ``Image Index`` values).
        images: each row's image name (None where the mapping has none: never matched).
        patients: each row's patient in the namespace, or None where not known.
        source: where the names come from, for the warning (``"NIH Image Index"``, a file name).

    """

    namespace: str
    images: tuple[str | None, ...]
    patients: tuple[str | None, ...] | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True)
class SplitOverlap:
    """What the audit found in one scored split of the target.

    Attributes:
        split: the target split.
        images: its images audited.
        by_image: images that are training images of the source.
        by_patient: further images excluded because their patient is a training patient
            (mapping), or has a training image among this split's (hash).
        method: ``"mapping"`` or ``"perceptual hash"``.
        evidence: the mapping's source, or the hash definition and threshold.
        excluded: per audited row, whether it is excluded.

    """

    split: str
    images: int
    by_image: int
    by_patient: int
    method: str
    evidence: str
    excluded: np.ndarray = dataclasses.field(repr=False, compare=False)

    @property
    def count(self) -> int:
        return self.by_image + self.by_patient

    def kept_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.excluded)

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "images": self.images, "excluded": self.count, "by_image": self.by_image,
                "by_patient": self.by_patient, "method": self.method, "evidence": self.evidence}

    def sentence(self, source: str) -> str:
        """``812 of 5,278 test images are also training images of nih (by ...)`` (and patients)."""
        text = (f"{self.by_image:,} of {self.images:,} {self.split} images are also training images of {source} "
                f"(by {self.evidence})")
        if self.by_patient:
            text += f", {self.by_patient:,} more are of patients with training images"
        return text


_MEMO: dict[tuple[Any, ...], Any] = {}
_MEMO_LOCK = threading.Lock()
_WARNED: set[tuple[str, str, str]] = set()
"""(source, target, line) pairs already warned about in this process."""


def _memo(key: tuple[Any, ...], compute: Any) -> Any:
    """The source's training names or hashes, computed once per process (every cell of a dataset shares them)."""
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    value = compute()
    with _MEMO_LOCK:
        _MEMO.setdefault(key, value)
    return value


def dataset_keys(dataset: Any, split_name: str) -> OverlapKeys | None:
    """The dataset's :class:`OverlapKeys` of a split, or None where it publishes none."""
    method = getattr(dataset, "overlap_keys", None)
    if not callable(method) or split_name not in dataset.split_names:
        return None
    keys = method(split_name)
    if keys is not None and len(keys.images) != len(dataset.split(split_name)):
        raise ValueError(f"dataset '{dataset.NAME}': overlap_keys('{split_name}') gives {len(keys.images)} names "
                         f"for {len(dataset.split(split_name))} images")
    return keys


def split_hashes(dataset: Any, split_name: str, size: int, cache_root: Path | None,
                 workers: int | None = None) -> np.ndarray:
    """The perceptual hashes of a split's images at ``size``: from the cache (stored there if missing), else decoded."""
    from .data import cached_hashes, load_split

    stored = cached_hashes(dataset, split_name, size, cache_root)
    if stored is not None:
        return stored
    return phashes(load_split(dataset, split_name, size, cache_root=cache_root, workers=workers).images)


class TransferAudit:
    """The overlap audit of one (trained dataset, target) pair, for one cell's transfer.

    Args:
        source: the cell's dataset (opened).
        source_label: its display label (``nih``).
        target: the target dataset (opened).
        target_label: its display label.
        size: the cell's input size (the source's cached hashes are at this size).
        cache_root: the run's cache root.
        workers: decoding threads where a split must be decoded.

    """

    def __init__(self, source: Any, source_label: str, target: Any, target_label: str, size: int,
                 cache_root: Path | None, workers: int | None = None) -> None:
        self.source, self.source_label = source, source_label
        self.target, self.target_label = target, target_label
        self.size, self.cache_root, self.workers = size, cache_root, workers
        self.results: list[SplitOverlap] = []

    def _source_keys(self, namespace: str) -> tuple[set[str], set[str]] | None:
        def compute() -> tuple[set[str], set[str]] | None:
            images: set[str] = set()
            patients: set[str] = set()
            for name in TRAINING_SPLITS:
                keys = dataset_keys(self.source, name)
                if keys is None and name in self.source.split_names:
                    return None  # one training split without names: the names cannot vouch for the rest
                if keys is None:
                    continue
                if keys.namespace != namespace:
                    return None
                images.update(k for k in keys.images if k is not None)
                patients.update(p for p in (keys.patients or ()) if p is not None)
            return images, patients

        return _memo(("keys", self.source.fingerprint(), namespace), compute)

    def _source_hashes(self) -> np.ndarray:
        def compute() -> np.ndarray:
            parts = [split_hashes(self.source, name, self.size, self.cache_root, self.workers)
                     for name in TRAINING_SPLITS if name in self.source.split_names]
            return np.concatenate(parts) if parts else np.zeros((0, 32), dtype=np.uint8)

        return _memo(("hashes", self.source.fingerprint(), self.size, str(self.cache_root), HASH_METHOD), compute)

    def by_mapping(self, split_name: str) -> bool:
        """Whether :meth:`check` compares this target split by names (no images decoded) or by hashes."""
        keys = dataset_keys(self.target, split_name)
        return keys is not None and self._source_keys(keys.namespace) is not None

    def check(self, split_name: str, data: Any) -> SplitOverlap:
        """Audit a loaded target split (a :class:`cxrbench.data.PreparedSplit`, possibly capped)."""
        ids = list(data.split.ids)
        keys = dataset_keys(self.target, split_name)
        source_keys = self._source_keys(keys.namespace) if keys is not None else None
        if keys is not None and source_keys is not None:
            result = self._by_keys(split_name, ids, keys, *source_keys)
        else:
            result = self._by_hashes(split_name, data)
        self.results.append(result)
        return result

    def _by_keys(self, split_name: str, ids: list[str], keys: OverlapKeys, images: set[str],
                 patients: set[str]) -> SplitOverlap:
        row_of = {image_id: i for i, image_id in enumerate(self.target.split(split_name).ids)}
        rows = [row_of[i] for i in ids]
        names = [keys.images[r] for r in rows]
        own = np.array([n is not None and n in images for n in names], dtype=bool)
        by_patient = np.zeros(len(ids), dtype=bool)
        if keys.patients is not None and patients:
            by_patient = np.array([keys.patients[r] is not None and keys.patients[r] in patients for r in rows],
                                  dtype=bool) & ~own
        return SplitOverlap(split_name, len(ids), int(own.sum()), int(by_patient.sum()), "mapping",
                            keys.source or keys.namespace, own | by_patient)

    def _by_hashes(self, split_name: str, data: Any) -> SplitOverlap:
        own = matches(phashes(data.images), self._source_hashes())
        patients = np.asarray(data.split.patient_ids, dtype=str)
        by_patient = np.isin(patients, patients[own]) & ~own
        evidence = f"perceptual hash, at most {MATCH_DISTANCE} of 256 bits apart"
        return SplitOverlap(split_name, len(own), int(own.sum()), int(by_patient.sum()), "perceptual hash",
                            evidence, own | by_patient)

    def line(self) -> str | None:
        """The warning line of this pair (None when nothing was excluded)."""
        found = [r for r in self.results if r.count]
        if not found:
            return None
        seen, parts = set(), []
        for r in found:
            if r.split not in seen:
                seen.add(r.split)
                parts.append(r.sentence(self.source_label))
        return f"{self.source_label} -> {self.target_label}: {'; '.join(parts)}: excluded"

    def warn(self, say: Any) -> None:
        """Say :meth:`line` once per process and pair (every cell of the pair finds the same)."""
        line = self.line()
        if line is None:
            return
        key = (self.source_label, self.target_label, line)
        with _MEMO_LOCK:
            if key in _WARNED:
                return
            _WARNED.add(key)
        say(line)
