"""A pinned, leak-free tuning part of a boxed split (Choe et al., CVPR 2020: tune only on held-out boxes).

Where a dataset's validation split has no boxes (NIH: all 880 box images are in the official
test list; the phantom), localization choices (thresholds) may only be tuned on a held-out
part of the boxed images. The part is:

* **patient-disjoint**: every image of a patient is on the same side;
* **stratified by class**: patients are grouped by their primary finding (the class of most
  of their boxes, ties to the first name) and each group gives ``round(fraction * size)``
  patients to the tuning part (at least one when the group has two or more);
* **pinned**: within a group patients are ranked by ``sha256("<seed>:<patient>")``, so the
  assignment depends only on the published list and the seed, never on file order or on which
  images a user has downloaded. A dataset may give the published population
  (``Dataset.tuning_population``); otherwise the boxed split itself is the population.

Thresholds are tuned on the tuning part and every localization number is scored on the rest
(also when nothing is tuned, so tuned and untuned rows are computed on the same images).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .interfaces import Split


@dataclasses.dataclass(frozen=True)
class TuningPopulation:
    """The boxed images a tuning part is drawn from.

    Attributes:
        ids: image ids.
        patients: the patient of each image.
        classes: the class names of each image's boxes.

    """

    ids: tuple[str, ...]
    patients: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]

    @classmethod
    def of_split(cls, split: Split, class_names: Sequence[str]) -> TuningPopulation:
        """The boxed images of ``split`` (rows with at least one box)."""
        per_row: dict[int, list[str]] = {}
        for row, k in zip(split.boxes["index"].to_numpy(), split.boxes["class_index"].to_numpy(), strict=True):
            per_row.setdefault(int(row), []).append(str(class_names[int(k)]))
        rows = sorted(per_row)
        return cls(tuple(str(split.ids[r]) for r in rows), tuple(str(split.patient_ids[r]) for r in rows),
                   tuple(tuple(per_row[r]) for r in rows))


def _rank(seed: int, patient: str) -> str:
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def tuning_ids(population: TuningPopulation, fraction: float, seed: int) -> frozenset[str]:
    """The image ids of the tuning part (see the module docstring for the rule)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"tune_fraction must be in [0, 1), got {fraction}")
    boxes_of: dict[str, Counter] = {}
    images_of: dict[str, list[str]] = {}
    for image, patient, classes in zip(population.ids, population.patients, population.classes, strict=True):
        boxes_of.setdefault(patient, Counter()).update(classes)
        images_of.setdefault(patient, []).append(image)
    groups: dict[str, list[str]] = {}
    for patient, counts in boxes_of.items():
        primary = min(counts, key=lambda c: (-counts[c], c))
        groups.setdefault(primary, []).append(patient)
    chosen: set[str] = set()
    for patients in groups.values():
        n = int(round(fraction * len(patients)))
        if fraction > 0 and n == 0 and len(patients) >= 2:
            n = 1  # a small class still gets a patient to tune on, and keeps one to score
        chosen.update(sorted(patients, key=lambda p: _rank(seed, p))[:n])
    return frozenset(image for p in chosen for image in images_of[p])


def ids_digest(ids: Sequence[str] | frozenset[str]) -> str:
    """sha256 of the sorted ids, one per line: the same image list gives the same digest anywhere."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def partition_rows(split: Split, tune: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows in the tuning part, rows in the scored part) of ``split``."""
    in_tune = np.fromiter((str(i) in tune for i in split.ids), dtype=bool, count=len(split))
    return np.flatnonzero(in_tune), np.flatnonzero(~in_tune)
