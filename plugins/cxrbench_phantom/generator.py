"""The phantom generator: cohort records, scenes and pixels of image ``i``, on demand.

Image ``i`` depends only on the generator's settings and ``i``: its scene comes from
the stream ``[seed, STREAM_SCENE, i]`` and its pixels from ``[seed, STREAM_PIXELS, i]``,
so any image can be made alone, in any order, from any thread, and is always the same.
"""

from __future__ import annotations

import numpy as np

from . import render
from .cohort import CLASSES, STREAM_PIXELS, Cohort, make_cohort
from .scene import Scene, sample_scene


class PhantomGenerator:
    """Synthetic chest radiographs with planted lesions and their exact boxes.

    Args:
        num_images: number of images in the data set.
        image_size: side of the square images, pixels.
        seed: seed of everything random.
        difficulty: 0 = conspicuous lesions, 1 = lesion contrast near the noise level.
        classes: findings that may occur (a subset of :data:`CLASSES`), default all.
        no_finding_fraction: share of images without any finding.
        val_fraction: share of images (whole patients) in the validation split.
        test_fraction: share of images (whole patients) in the test split.

    """

    def __init__(
        self,
        num_images: int,
        image_size: int = 256,
        seed: int = 0,
        difficulty: float = 0.3,
        classes: tuple[str, ...] | None = None,
        no_finding_fraction: float = 0.3,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
    ) -> None:
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.difficulty = float(difficulty)
        self.classes = tuple(classes) if classes else CLASSES
        self.cohort: Cohort = make_cohort(
            num_images, self.seed, self.classes, no_finding_fraction, val_fraction, test_fraction
        )
        self._class_names = np.array(CLASSES)

    def __len__(self) -> int:
        return len(self.cohort)

    def findings(self, i: int) -> tuple[str, ...]:
        """Finding names of image ``i`` (in :data:`CLASSES` order)."""
        return tuple(self._class_names[self.cohort.findings[i]])

    def scene(self, i: int) -> Scene:
        """The scene of image ``i``: anatomy, pose and lesion shapes (no pixels)."""
        return sample_scene(i, int(self.cohort.patient[i]), self.seed, self.findings(i), self.difficulty)

    def image(self, i: int) -> np.ndarray:
        """Render image ``i`` as ``image_size x image_size`` uint8."""
        rng = np.random.default_rng([self.seed, STREAM_PIXELS, i])
        return render.render(self.scene(i), self.image_size, self.difficulty, rng)

    def boxes(self, i: int) -> list[tuple[str, int, int, int, int]]:
        """``(finding, x, y, w, h)`` of every lesion of image ``i``, in pixels of ``image_size``."""
        return render.boxes(self.scene(i), self.image_size)

    def masks(self, i: int) -> list[tuple[str, np.ndarray]]:
        """``(finding, mask)`` of every lesion of image ``i`` (uint8 0/1 masks)."""
        scene = self.scene(i)
        return [
            (lesion.name, m)
            for lesion, m in zip(scene.lesions, render.lesion_masks(scene, self.image_size), strict=True)
        ]
