"""Split helpers for dataset plugins (public API)."""

from __future__ import annotations

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
