"""cxrbench.splits.hashed_split: each patient placed by sha256("<seed>:<patient>"), alone."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cxrbench.api import hashed_split


def draw(seed: int, patient: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}:{patient}".encode()).digest()[:8], "big") / 2.0**64


def test_rows_follow_their_patient_and_the_intervals():
    patients = np.array([f"p{k % 40}" for k in range(100)], dtype=object)  # 40 patients, several rows each
    got = hashed_split(patients, {"test": 0.25, "val": 0.15}, seed=5)
    for patient, name in zip(patients, got, strict=True):
        u = draw(5, patient)
        assert name == ("test" if u < 0.25 else "val" if u < 0.40 else "train")
    by_patient = {}
    for patient, name in zip(patients, got, strict=True):
        assert by_patient.setdefault(patient, name) == name  # all rows of a patient together


def test_a_patient_is_placed_alone():
    everyone = [f"id{k}" for k in range(500)]
    full = dict(zip(everyone, hashed_split(np.array(everyone), {"test": 0.2}, 0), strict=True))
    some = everyone[::7]
    part = dict(zip(some, hashed_split(np.array(some), {"test": 0.2}, 0), strict=True))
    assert part == {p: full[p] for p in some}
    share = np.mean([v == "test" for v in full.values()])
    assert 0.14 < share < 0.26
    assert set(hashed_split(np.array(everyone), {}, 0)) == {"train"}
    assert set(hashed_split(np.array(everyone), {"test": 0.2}, 0, rest="pool")) == {"test", "pool"}


def test_bad_fractions():
    with pytest.raises(ValueError, match="at most 1"):
        hashed_split(np.array(["a"]), {"test": 0.7, "val": 0.4}, 0)
    with pytest.raises(ValueError):
        hashed_split(np.array(["a"]), {"test": -0.1}, 0)
