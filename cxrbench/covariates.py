"""Per-image covariates (sex, age, view, ...): building them, and saving them with a cell.

A dataset attaches them to a split as ``Split.covariates`` (one row per image, the order
of ``ids``). A cell saves the covariates of the splits it scored next to its predictions
(``covariates.npz``), so ``cxrbench leaderboard --by sex`` can score subgroups at
leaderboard time (:mod:`cxrbench.subgroups`) without opening the dataset again.

The file holds only numeric and fixed-width string arrays (``np.load(...,
allow_pickle=False)`` reads it): per *role* (``test``: the classified split;
``localization``: the split whose boxes the localizers were scored on)

* ``<role>__ids``: the image ids, in split order;
* ``<role>__split``: the split's name (0-d string);
* ``<role>__col__<name>``: one column; float64 (NaN = missing) for numeric columns,
  strings (``""`` = missing) for the others.

A role with no column means the dataset gave no covariates for that split; a cell with no
file at all was run before cxrbench saved covariates.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STANDARD_COLUMNS = ("sex", "age", "view")
"""The covariate names every dataset should use where it has the information."""

SEX_VALUES = ("F", "M")
"""The values of the standard ``sex`` column (anything else is missing)."""

_SEX_SPELLINGS = {"f": "F", "female": "F", "w": "F", "m": "M", "male": "M"}

ROLES = ("test", "localization")
"""Which split of a cell a set of saved covariates belongs to."""


def normalise_sex(values: Sequence[Any] | pd.Series) -> list[str | None]:
    """``Female`` / ``F`` -> ``F``, ``Male`` / ``M`` -> ``M`` (any case); anything else (``Unknown``, blank) -> None."""
    return [_SEX_SPELLINGS.get(str(v).strip().lower()) if isinstance(v, str) else None for v in values]


def parse_age(values: Sequence[Any] | pd.Series) -> np.ndarray:
    """Ages in years as float64: numbers, or NIH's old ``058Y`` spelling; anything else is NaN."""
    text = pd.Series(list(values), dtype=object).astype(str).str.strip().str.rstrip("Yy")
    return pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)


def covariate_frame(n: int, *, sex: Sequence[Any] | None = None, age: Sequence[Any] | None = None,
                    view: Sequence[Any] | None = None, **extras: Sequence[Any]) -> pd.DataFrame:
    """A ``Split.covariates`` table of ``n`` images with the standard columns given.

    Args:
        n: number of images.
        sex: per image; normalised with :func:`normalise_sex` (``F`` / ``M`` / None).
        age: per image, in years; parsed with :func:`parse_age` (float, NaN = missing).
        view: per image (``PA``, ``AP``, ``LAT``, ...); blank -> None.
        **extras: dataset-specific columns (identifiers), kept as given.

    Returns:
        The table, one row per image.

    """
    columns: dict[str, Any] = {}
    if sex is not None:
        columns["sex"] = pd.Series(normalise_sex(sex), dtype=object)
    if age is not None:
        columns["age"] = parse_age(age)
    if view is not None:
        columns["view"] = pd.Series([str(v).strip() or None if isinstance(v, str) else None for v in view],
                                    dtype=object)
    for name, values in extras.items():
        columns[name] = list(values) if not isinstance(values, np.ndarray) else values
    frame = pd.DataFrame(columns, index=pd.RangeIndex(n))
    check_covariates(frame, n)
    return frame


def check_covariates(frame: Any, n: int) -> None:
    """Raise ValueError unless ``frame`` is a DataFrame of ``n`` rows with identifier column names."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"split covariates must be a pandas.DataFrame, got {type(frame).__name__}")
    if len(frame) != n:
        raise ValueError(f"split covariates have {len(frame)} rows for {n} images")
    bad = [str(c) for c in frame.columns if not (isinstance(c, str) and c.isidentifier())]
    if bad:
        raise ValueError(f"split covariates: column name {bad[0]!r} is not an identifier (e.g. 'sex', 'view_position')")


# --------------------------------------------------------------------------- saved with a cell


@dataclasses.dataclass(frozen=True)
class SavedCovariates:
    """One role's covariates as saved by a cell.

    Attributes:
        split: the split's name.
        ids: ``(N,)`` image ids.
        columns: name -> ``(N,)`` float64 (NaN = missing) or str (``""`` = missing).

    """

    split: str
    ids: np.ndarray
    columns: Mapping[str, np.ndarray]

    def column(self, name: str) -> np.ndarray | None:
        return self.columns.get(name)


def _as_array(series: pd.Series) -> np.ndarray:
    """A column as a pickle-free array: float64 when numeric (bools too), else strings."""
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(["" if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)
                       for v in series.tolist()], dtype=str)


def save_covariates(path: Path, role: str, split_name: str, ids: Sequence[str],
                    covariates: pd.DataFrame | None) -> None:
    """Write (or replace) one role's covariates in a cell's ``covariates.npz``, atomically.

    The other role already in the file is kept: a localizer-only run of a cell adds its
    localization split's covariates next to the test split's saved when it trained.
    """
    from .artifacts import save_npz_atomic

    if role not in ROLES:
        raise ValueError(f"covariate role must be one of {ROLES}, got {role!r}")
    arrays: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if not k.startswith(f"{role}__")}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            arrays = {}  # an unreadable file is rewritten from what this run knows
    arrays[f"{role}__ids"] = np.asarray([str(i) for i in ids], dtype=str)
    arrays[f"{role}__split"] = np.asarray(str(split_name))
    if covariates is not None:
        for name in covariates.columns:
            arrays[f"{role}__col__{name}"] = _as_array(covariates[name])
    save_npz_atomic(path, **arrays)


def load_covariates(path: Path) -> dict[str, SavedCovariates] | None:
    """The roles saved in a cell's ``covariates.npz``; None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    out: dict[str, SavedCovariates] = {}
    for role in ROLES:
        ids = arrays.get(f"{role}__ids")
        if ids is None:
            continue
        prefix = f"{role}__col__"
        columns = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and v.shape == ids.shape}
        out[role] = SavedCovariates(split=str(arrays.get(f"{role}__split", role)), ids=ids, columns=columns)
    return out
