"""The ``phantom`` dataset: synthetic radiographs generated on demand, no files needed."""

from __future__ import annotations

import dataclasses
import difflib
import threading

import numpy as np
import pandas as pd

from cxrbench.api import Dataset, DatasetContext, Split, UsageError, covariate_frame, empty_boxes

from .cohort import CLASSES
from .generator import PhantomGenerator

GENERATOR_VERSION = 1
"""Bump whenever the same options would give different pixels, labels or boxes."""


@dataclasses.dataclass(frozen=True)
class Options:
    """Options of the phantom dataset.

    Attributes:
        num_images: number of images (all splits together).
        image_size: side of the square images, pixels (also the model's native size).
        seed: seed of everything random; the same options always give the same data.
        difficulty: 0 = very conspicuous lesions, 1 = lesion contrast near the noise level.
        classes: findings that may occur (a subset of the eight NIH box findings);
            None = all eight.
        no_finding_fraction: share of images without any finding.
        val_fraction: share of images (whole patients) in the ``val`` split.
        test_fraction: share of images (whole patients) in the ``test`` split.

    """

    num_images: int = 1000
    image_size: int = 256
    seed: int = 0
    difficulty: float = 0.3
    classes: tuple[str, ...] | None = None
    no_finding_fraction: float = 0.3
    val_fraction: float = 0.15
    test_fraction: float = 0.2

    def validate(self) -> None:
        """Raise ValueError, naming the option, when a value is out of range."""
        if not 1 <= self.num_images <= MAX_IMAGES:
            raise ValueError(f"num_images must be between 1 and {MAX_IMAGES:,}, got {self.num_images}")
        if not 32 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be between 32 and 4096 pixels, got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or positive, got {self.seed}")
        for name in ("difficulty", "no_finding_fraction", "val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 to leave training images, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        validate_classes(self.classes)


MAX_IMAGES = 10_000_000
"""Most phantom images a dataset may ask for (10x ChestX-ray14): a typo such as ``10**12``
is refused by ``validate`` instead of exhausting memory when the cohort is drawn."""


def validate_classes(classes: tuple[str, ...] | None) -> None:
    """Raise ValueError unless ``classes`` is None or distinct names from :data:`CLASSES`."""
    if classes is None:
        return
    if len(classes) == 0:
        raise ValueError("classes must name at least one finding (or be left out for all eight)")
    for name in classes:
        if name not in CLASSES:
            close = difflib.get_close_matches(str(name), CLASSES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown class {name!r}{hint}; valid classes: {', '.join(CLASSES)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes lists a finding twice: {list(classes)}")


def generator_for(options: Options) -> PhantomGenerator:
    """The generator that ``options`` describe."""
    return PhantomGenerator(
        num_images=options.num_images,
        image_size=options.image_size,
        seed=options.seed,
        difficulty=options.difficulty,
        classes=options.classes,
        no_finding_fraction=options.no_finding_fraction,
        val_fraction=options.val_fraction,
        test_fraction=options.test_fraction,
    )


class PhantomDataset(Dataset):
    """Synthetic chest radiographs with planted lesions and exact boxes (no files needed).

    Every image is generated on demand from the seed and its own number, so reading is
    thread-safe and order-free. Labels and splits come from a vectorised cohort
    description; boxes are the tight bounding rectangles of the drawn lesion masks.
    """

    NAME = "phantom"
    HAS_BOXES = True
    Options = Options

    def __init__(self, options: Options, context: DatasetContext | None = None) -> None:
        super().__init__(options, context or DatasetContext())
        try:  # the host validates options from a grid; this catches direct construction
            options.validate()
        except ValueError as exc:
            raise UsageError(f"dataset 'phantom': {exc}") from None
        self.generator = generator_for(options)
        self.classes = list(options.classes) if options.classes else list(CLASSES)
        self.native_size = options.image_size
        cohort = self.generator.cohort
        columns = [CLASSES.index(c) for c in self.classes]
        self._labels = cohort.findings[:, columns].astype(np.float32)
        test = np.flatnonzero(cohort.split == "test")
        self._rows = {
            "train": np.flatnonzero(cohort.split == "train"),
            "val": np.flatnonzero(cohort.split == "val"),
            "test": test,
            "boxes": test[cohort.findings[test].any(axis=1)],
        }
        self._splits: dict[str, Split] = {}
        self._lock = threading.Lock()

    def rows(self, name: str) -> np.ndarray:
        """Image numbers (in the generator) of the rows of split ``name``."""
        try:
            return self._rows[name]
        except KeyError:
            raise UsageError(
                f"dataset 'phantom' has no split {name!r}; splits: {', '.join(self.split_names)}"
            ) from None

    def split(self, name: str) -> Split:
        """Records of split ``name``; boxes only for ``boxes`` (cached)."""
        rows = self.rows(name)
        with self._lock:
            if name not in self._splits:
                cohort = self.generator.cohort
                size = self.options.image_size
                self._splits[name] = Split(
                    ids=[cohort.image_id(i) for i in rows],
                    patient_ids=[f"{p:08d}" for p in cohort.patient[rows]],
                    labels=self._labels[rows],
                    boxes=self._box_table(rows) if name == "boxes" else empty_boxes(),
                    image_sizes=np.full((len(rows), 2), size, dtype=np.int64),
                    # the cohort's synthetic sex / age / view, so `leaderboard --by` works on a fresh clone
                    covariates=covariate_frame(len(rows), sex=cohort.sex[rows].tolist(), age=cohort.age[rows],
                                               view=cohort.view[rows].tolist()),
                )
            return self._splits[name]

    def _box_table(self, rows: np.ndarray) -> pd.DataFrame:
        records = [
            (r, self.classes.index(name), x, y, w, h)
            for r, i in enumerate(rows)
            for name, x, y, w, h in self.generator.boxes(int(i))
        ]
        if not records:
            return empty_boxes()
        table = pd.DataFrame(records, columns=["index", "class_index", "x", "y", "w", "h"])
        return table.astype(
            {
                "index": "int64",
                "class_index": "int64",
                "x": "float64",
                "y": "float64",
                "w": "float64",
                "h": "float64",
            }
        )

    def read_image(self, split: str, index: int) -> np.ndarray:
        """Render image ``index`` of ``split``: ``image_size x image_size`` uint8."""
        rows = self.rows(split)
        if not 0 <= index < len(rows):
            raise IndexError(f"split {split!r} of dataset 'phantom' has {len(rows)} images, asked for {index}")
        return self.generator.image(int(rows[index]))

    def fingerprint(self) -> str:
        """Every option and the generator version (the data is a pure function of both)."""
        return f"{super().fingerprint()}:generator-v{GENERATOR_VERSION}"
