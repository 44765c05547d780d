"""Who is in the phantom cohort: patients, follow-ups, findings and splits.

Everything here is vectorised over images and drawn from a few seeded streams, so a
cohort of 100,000 images is described in well under a second without rendering a pixel.
Image ``i``'s own scene (where its lesions are) is sampled later from its own stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
"""The eight NIH ChestX-ray14 findings that have boxes, spelled as NIH spells them."""

# Seed-sequence stream tags: each kind of randomness has its own stream, so adding draws
# to one never shifts another (e.g. re-tuning lesion textures keeps the same labels).
STREAM_COHORT = 1
STREAM_LABELS = 2
STREAM_PATIENT = 3
STREAM_SCENE = 4
STREAM_PIXELS = 5

# Latent-factor model of co-occurrence. Each abnormal image has three latent factors
# (cardiac/fluid, infective/airspace, neoplastic); a finding's log-odds is its bias plus
# its loadings times the factors, so e.g. effusion comes with cardiomegaly and
# atelectasis, pneumonia with infiltration, mass with nodule.
_BIAS = np.array([-1.7, -1.8, -1.5, -1.6, -2.0, -1.8, -1.9, -2.2])
_LOADINGS = np.array(
    [
        # cardiac, infective, neoplastic
        [0.6, 0.9, 0.0],  # Atelectasis
        [1.4, 0.0, 0.0],  # Cardiomegaly
        [1.3, 0.6, 0.3],  # Effusion
        [0.0, 1.3, 0.2],  # Infiltration
        [0.0, 0.0, 1.4],  # Mass
        [0.0, 0.2, 1.3],  # Nodule
        [0.0, 1.4, 0.0],  # Pneumonia
        [0.0, 0.3, 0.3],  # Pneumothorax
    ]
)


@dataclasses.dataclass(frozen=True)
class Cohort:
    """The per-image records of a phantom data set (no pixels).

    Attributes:
        patient: ``N`` int, the patient number (1-based) of each image.
        follow_up: ``N`` int, 0 for a patient's first image, 1, 2 for later ones.
        sex: ``N`` str, ``M`` or ``F`` (constant per patient).
        age: ``N`` int, years at the time of the image.
        view: ``N`` str, ``PA`` or ``AP``.
        findings: ``N x 8`` bool over :data:`CLASSES` (restricted to the chosen classes).
        split: ``N`` str, ``train``, ``val`` or ``test``; patients never straddle splits.

    """

    patient: np.ndarray
    follow_up: np.ndarray
    sex: np.ndarray
    age: np.ndarray
    view: np.ndarray
    findings: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.patient)

    def image_id(self, i: int) -> str:
        """NIH-style id ``PPPPPPPP_FFF`` (8-digit patient, 3-digit follow-up) of image ``i``."""
        return f"{int(self.patient[i]):08d}_{int(self.follow_up[i]):03d}"


def _patients(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Group images into patients of 1-3 consecutive images."""
    rng = np.random.default_rng([seed, STREAM_COHORT])
    sizes = rng.integers(1, 4, size=num_images)
    starts = np.cumsum(sizes) - sizes
    starts = starts[starts < num_images]
    patient = np.zeros(num_images, np.int64)
    patient[starts] = 1
    patient = np.cumsum(patient)  # 1-based patient number
    follow_up = np.arange(num_images) - starts[patient - 1]
    return patient, follow_up


def _findings(num_images: int, seed: int, classes: tuple[str, ...], no_finding_fraction: float) -> np.ndarray:
    """Sample the multi-label findings of every image (``N x 8`` bool)."""
    rng = np.random.default_rng([seed, STREAM_LABELS])
    abnormal = rng.random(num_images) >= no_finding_fraction
    factors = rng.standard_normal((num_images, _LOADINGS.shape[1]))
    logits = _BIAS + factors @ _LOADINGS.T
    p = 1.0 / (1.0 + np.exp(-logits))
    u = rng.random((num_images, len(CLASSES)))
    chosen = np.isin(np.array(CLASSES), classes)
    present = (u < p) & chosen & abnormal[:, None]
    # An abnormal image must show something: give it its most likely chosen finding
    # (largest p / u), which keeps the co-occurrence structure.
    empty = abnormal & ~present.any(axis=1)
    score = np.where(chosen, p / np.maximum(u, 1e-12), -np.inf)
    present[empty, score[empty].argmax(axis=1)] = True
    return present


def _splits(patient: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Assign whole patients to test, then val, then train, in a seeded random order."""
    n = len(patient)
    num_patients = int(patient.max()) if n else 0
    counts = np.bincount(patient, minlength=num_patients + 1)[1:]
    order = np.random.default_rng([seed, STREAM_COHORT, 1]).permutation(num_patients)
    before = np.cumsum(counts[order]) - counts[order]  # images already assigned
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    split_of_rank = np.where(before < n_test, 0, np.where(before < n_test + n_val, 1, 2))
    split_of_patient = np.empty(num_patients, np.int64)
    split_of_patient[order] = split_of_rank
    names = np.array(["test", "val", "train"])
    return names[split_of_patient[patient - 1]]


def make_cohort(
    num_images: int,
    seed: int,
    classes: tuple[str, ...] = CLASSES,
    no_finding_fraction: float = 0.3,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Cohort:
    """Describe every image of a phantom data set without rendering anything.

    Args:
        num_images: number of images.
        seed: the data set's seed.
        classes: the findings that may occur (others never do).
        no_finding_fraction: probability that an image has no finding at all.
        val_fraction: share of images (whole patients) in the validation split.
        test_fraction: share of images (whole patients) in the test split.

    Returns:
        The :class:`Cohort`.

    """
    patient, follow_up = _patients(num_images, seed)
    rng = np.random.default_rng([seed, STREAM_COHORT, 2])
    num_patients = int(patient.max()) if num_images else 0
    sex_of_patient = np.where(rng.random(num_patients) < 0.55, "M", "F")
    age_of_patient = rng.integers(18, 86, size=num_patients)
    view = np.where(rng.random(num_images) < 0.6, "PA", "AP")
    return Cohort(
        patient=patient,
        follow_up=follow_up,
        sex=sex_of_patient[patient - 1],
        age=age_of_patient[patient - 1] + follow_up,
        view=view,
        findings=_findings(num_images, seed, tuple(classes), no_finding_fraction),
        split=_splits(patient, seed, val_fraction, test_fraction),
    )
