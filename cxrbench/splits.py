"""Split helpers for dataset plugins (public API)."""

from __future__ import annotations

import hashlib

import numpy as np


def patient_split(patients: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Pick ``round(val_fraction * P)`` of the P distinct patients for validation.

    The patients are sorted before the seeded shuffle, so the choice depends only on
    the published table and the seed (not on row order or on which images are present).

    Args:
        patients: patient id of every row.
        val_fraction: fraction of patients for validation.
        seed: the split seed.

    Returns:
        The chosen patient ids (use with ``np.isin``).

    """
    unique = np.unique(np.asarray(patients))
    n_val = int(round(val_fraction * len(unique)))
    order = np.random.default_rng(seed).permutation(len(unique))
    return unique[order[:n_val]]


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ValueError, naming the option, unless both fractions are in [0, 1) and leave a train split."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1 (train would be empty), got "
                         f"{val_fraction} + {test_fraction}")


def hashed_split(patients: np.ndarray, fractions: dict[str, float], seed: int, rest: str = "train") -> np.ndarray:
    """Assign every row to a split by a digest of its patient: deterministic, patient-level.

    Each patient draws ``u = sha256("<seed>:<patient>")`` read as a number in [0, 1); the
    named splits take consecutive intervals of ``u`` of the given widths, in order, and
    ``rest`` takes what is left. A patient's split depends only on its id and the seed,
    never on the other patients, on row order or on which images are present, so a partial
    download keeps every present image where the full one has it. Split sizes are the
    fractions up to sampling noise (binomial: +-0.3% of 20,000 patients at 0.2).

    Args:
        patients: the patient id of every row (compared as strings).
        fractions: split name -> fraction of patients, e.g. ``{"test": 0.2, "val": 0.1}``.
        seed: the split seed.
        rest: the split of the patients no interval takes.

    Returns:
        One split name per row (an object array).

    Raises:
        ValueError: when a fraction is negative or they add up to more than 1.

    """
    widths = list(fractions.values())
    if any(f < 0 for f in widths) or sum(widths) > 1.0 + 1e-12:
        raise ValueError(f"split fractions must be >= 0 and add up to at most 1, got {fractions}")
    unique, inverse = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    draws = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{p}".encode()).digest()[:8], "big") / 2.0**64
                      for p in unique.tolist()], dtype=np.float64)
    names = np.full(len(unique), rest, dtype=object)
    start = 0.0
    for name, width in fractions.items():
        names[(draws >= start) & (draws < start + width)] = name
        start += width
    return names[inverse.reshape(-1)]
