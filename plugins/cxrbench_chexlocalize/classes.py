"""The ``classes`` option of the ``chexlocalize`` dataset: which localized pathologies, in CheXpert spelling.

Classes are named as CheXpert names them (``Lung Opacity``, not CheXlocalize's
``Airspace Opacity``), so a model trained on the ``chexpert`` dataset aligns with this
one by name. Either spelling is accepted in a list.
"""

from __future__ import annotations

from cxrbench_chexpert.labels import COMPETITION5

from .tables import CHEXLOCALIZE_PATHOLOGIES, CHEXLOCALIZE_TO_CHEXPERT, CHEXPERT_TO_CHEXLOCALIZE

ALL10: tuple[str, ...] = tuple(CHEXLOCALIZE_TO_CHEXPERT[name] for name in CHEXLOCALIZE_PATHOLOGIES)
"""The 10 localized pathologies, CheXpert spelling, in CheXlocalize's order."""

CLASS_PRESETS: dict[str, tuple[str, ...]] = {"all10": ALL10, "competition5": COMPETITION5}

__all__ = ["ALL10", "CLASS_PRESETS", "chexpert_spelling", "resolve_classes"]


def chexpert_spelling(name: str) -> str:
    """``name`` in CheXpert spelling when it is a CheXlocalize pathology, else unchanged."""
    return CHEXLOCALIZE_TO_CHEXPERT.get(name, name)


def resolve_classes(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    """The classes a ``classes`` option selects, in CheXpert spelling.

    Args:
        spec: ``all10``, ``competition5`` or a list of pathologies (CheXpert or
            CheXlocalize spelling).

    Raises:
        ValueError: starting with ``classes``, for an unknown preset, a finding
            CheXlocalize does not localize, a repeated one or an empty list.

    """
    if isinstance(spec, str):
        if spec in CLASS_PRESETS:
            return CLASS_PRESETS[spec]
        raise ValueError(f"classes must be 'all10', 'competition5' or a list of pathologies, got {spec!r}")
    names = tuple(chexpert_spelling(str(name)) for name in spec)
    if not names:
        raise ValueError("classes is an empty list")
    unknown = [name for name in names if name not in CHEXPERT_TO_CHEXLOCALIZE]
    if unknown:
        raise ValueError(f"classes names finding(s) CheXlocalize does not localize {unknown}; "
                         f"localized: {', '.join(ALL10)}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes lists a pathology twice (in either spelling): {list(spec)}")
    return names
