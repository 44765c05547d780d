"""CheXpert's findings and its uncertain-label policies.

The tables code each finding as 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or
blank (not mentioned, read as negative). What an uncertain label becomes is a policy
(Irvin et al. 2019 compare "U-Ignore", "U-Zeros" and "U-Ones"):

* ``ignore``: NaN, masked out of the loss and the metrics;
* ``zeros`` / ``ones``: negative / positive;
* ``seed``: the seed project's mix, ``ones`` for Edema and Atelectasis, ``zeros`` else;
* a mapping ``{finding: ignore|zeros|ones}``; findings not named are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

COMPETITION5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
"""The five competition findings (the seed project's task)."""

ALL14 = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""Every observation column of the published tables, in table order."""

CLASS_PRESETS = {"competition5": COMPETITION5, "all14": ALL14}
POLICY_VALUES = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
SEED_ONES = frozenset({"Edema", "Atelectasis"})


def resolve_classes(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    """The findings selected by a ``classes`` option.

    Raises:
        ValueError: for an unknown preset, an unknown or repeated name, or an empty list.

    """
    if isinstance(spec, str):
        if spec in CLASS_PRESETS:
            return CLASS_PRESETS[spec]
        raise ValueError(f"classes must be 'competition5', 'all14' or a list of findings, got {spec!r}")
    names = tuple(str(name) for name in spec)
    if not names:
        raise ValueError("classes is an empty list")
    unknown = [name for name in names if name not in ALL14]
    if unknown:
        raise ValueError(f"unknown CheXpert finding(s) {unknown}; valid: {', '.join(ALL14)}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes lists a finding twice: {list(names)}")
    return names


def resolve_uncertain(spec: str | Mapping[str, str], classes: tuple[str, ...]) -> dict[str, float]:
    """The value each class's uncertain (-1) labels become: NaN, 0.0 or 1.0.

    Args:
        spec: ``ignore``, ``zeros``, ``ones``, ``seed`` or ``{finding: ignore|zeros|ones}``.
        classes: the selected findings.

    Raises:
        ValueError: for an unknown policy, or a mapping naming a finding not selected.

    """
    if isinstance(spec, str):
        if spec == "seed":
            return {c: 1.0 if c in SEED_ONES else 0.0 for c in classes}
        if spec in POLICY_VALUES:
            return dict.fromkeys(classes, POLICY_VALUES[spec])
        raise ValueError(f"uncertain must be ignore, zeros, ones, seed or a mapping, got {spec!r}")
    unknown = [name for name in spec if name not in classes]
    if unknown:
        raise ValueError(f"uncertain names finding(s) {unknown} that are not in classes {list(classes)}")
    bad = {name: policy for name, policy in spec.items() if policy not in POLICY_VALUES}
    if bad:
        raise ValueError(f"uncertain policies must be ignore, zeros or ones, got {bad}")
    return {c: POLICY_VALUES[spec.get(c, "ignore")] for c in classes}


def apply_policy(raw: np.ndarray, classes: tuple[str, ...], uncertain: dict[str, float]) -> np.ndarray:
    """Turn raw table values (``N x K``: 1, 0, -1, NaN = blank) into training labels.

    Blank becomes 0 and -1 becomes ``uncertain[class]``; any other value is kept.

    Returns:
        ``N x K`` float32.

    """
    labels = np.where(np.isnan(raw), 0.0, raw).astype(np.float32)
    fill = np.array([uncertain[c] for c in classes], dtype=np.float32)
    return np.where(labels == -1.0, fill[None, :], labels).astype(np.float32)
