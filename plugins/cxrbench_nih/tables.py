"""Parsing NIH ChestX-ray14's published tables, quirks included, fast.

The published CSV headers do not match their rows: ``Bbox [x,y,w,h]`` in
``BBox_List_2017.csv`` and ``OriginalImage[Width,Height]`` /
``OriginalImagePixelSpacing[x,y]`` in ``Data_Entry_2017*.csv`` each span several
columns, and the 2017 files end every line with a comma. Splitting the header line on
commas gives one token per data column, so columns are located by token and read by
position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.api import UsageError, covariate_frame

NIH8 = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
"""The 8 findings with boxes (the seed project's multi-label task)."""

NIH14 = NIH8 + ("Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
"""All 14 findings, in the seed project's order."""

NO_FINDING = "No Finding"

RELEASE_SIZE = 1024
"""Width and height of every PNG NIH released; ``BBox_List_2017.csv`` is in these pixels.

(``Data_Entry``'s ``OriginalImage[Width,Height]``, e.g. 2992 x 2991, is the size of the
scan before NIH resized it; box coordinates never exceed 1024.)"""

SPELLINGS = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}
"""Spellings seen in the published tables -> the names used here."""


def harmonise(label: str) -> str:
    """The canonical spelling of a finding name (``Infiltrate`` -> ``Infiltration``)."""
    label = label.strip()
    return SPELLINGS.get(label, label)


def _header_tokens(path: Path) -> tuple[list[str], int]:
    """The header split on commas, and the field count of the first data row.

    The two differ in the published box table (its header has three extra commas).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            header = f.readline().rstrip("\r\n").split(",")
            first_row = f.readline().rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                         f"{exc.start}); save it as UTF-8") from None
    n_fields = first_row.count(",") + 1 if first_row else len(header)
    return [token.strip() for token in header], n_fields


def _column(tokens: list[str], path: Path, *, equals: str | None = None, starts: str | None = None) -> int:
    for i, token in enumerate(tokens):
        if (equals is not None and token == equals) or (starts is not None and token.startswith(starts)):
            return i
    raise UsageError(f"{path}: no column {equals or starts!r} in the header")


def _read_by_position(path: Path, n_fields: int, columns: dict[str, int], dtypes: dict[str, object]) -> pd.DataFrame:
    beyond = [name for name, pos in columns.items() if pos >= n_fields]
    if beyond:
        raise UsageError(f"{path}: rows have {n_fields} fields, too few for column(s) {', '.join(beyond)}")
    try:
        frame = pd.read_csv(
            path,
            header=None,
            skiprows=1,
            names=list(range(n_fields)),
            usecols=list(columns.values()),
            index_col=False,
            skipinitialspace=True,
            dtype={columns[name]: dtype for name, dtype in dtypes.items()},
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: cannot parse: {detail}") from None
    return frame.rename(columns={pos: name for name, pos in columns.items()})[list(columns)]


def read_data_entry(path: Path) -> pd.DataFrame:
    """Read ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``.

    Args:
        path: the label table.

    Returns:
        Columns ``name`` (image file name), ``findings`` (``|``-joined), ``patient``
        (int) and ``view`` (PA / AP), one row per image, in file order, and, when the
        table has them (the published ones do), ``age`` (``Patient Age``, as text) and
        ``sex`` (``Patient Gender``, ``M`` / ``F``). The
        ``OriginalImage[Width,Height]`` columns are not read: they give the size of
        the scans NIH started from, not of the released PNGs the boxes refer to.

    Raises:
        UsageError: naming the file when a column is missing or a row is malformed.

    """
    tokens, n_fields = _header_tokens(path)
    columns = {
        "name": _column(tokens, path, equals="Image Index"),
        "findings": _column(tokens, path, equals="Finding Labels"),
        "patient": _column(tokens, path, equals="Patient ID"),
        "view": _column(tokens, path, equals="View Position"),
    }
    dtypes = {
        "name": str,
        "findings": str,
        "patient": "int64",
        "view": str,
    }
    # optional: covariates for subgroups (a hand-made table without them still loads)
    for name, title in (("age", "Patient Age"), ("sex", "Patient Gender")):
        if title in tokens and tokens.index(title) < n_fields:
            columns[name], dtypes[name] = tokens.index(title), str
    frame = _read_by_position(path, n_fields, columns, dtypes)
    repeated = frame["name"][frame["name"].duplicated()]
    if len(repeated):
        raise UsageError(f"{path}: image {repeated.iloc[0]!r} has more than one row")
    frame["findings"] = frame["findings"].fillna(NO_FINDING)
    frame["view"] = frame["view"].fillna("")
    return frame


def entry_covariates(entry: pd.DataFrame) -> pd.DataFrame:
    """The subgroup covariates of every ``read_data_entry`` row: ``sex``, ``age``, ``view``.

    ``age`` is ``Patient Age`` in years (the 2017 table spelled some ``058Y``). The original
    ``Data_Entry_2017.csv`` has a few ages above 100 (e.g. 148, 411-414): data-entry errors
    that the v2020 table corrected (its maximum is 95); they are kept as given, so an age
    bin such as ``>=60`` holds them. ``view`` is ``View Position`` (``PA`` / ``AP``).
    """
    n = len(entry)
    return covariate_frame(n, sex=entry["sex"] if "sex" in entry else [None] * n,
                           age=entry["age"] if "age" in entry else [None] * n, view=entry["view"])


def read_bbox_list(path: Path) -> pd.DataFrame:
    """Read ``BBox_List_2017.csv``.

    Args:
        path: the box table.

    Returns:
        Columns ``name``, ``label`` (harmonised spelling), ``x``, ``y``, ``w``, ``h`` in
        the pixels of the released 1024 x 1024 PNG, one row per box, in file order.

    Raises:
        UsageError: naming the file for a missing column, a malformed row or a label
            that is not an NIH finding.

    """
    tokens, n_fields = _header_tokens(path)
    x = _column(tokens, path, starts="Bbox")
    columns = {
        "name": _column(tokens, path, equals="Image Index"),
        "label": _column(tokens, path, equals="Finding Label"),
        "x": x,
        "y": x + 1,
        "w": x + 2,
        "h": x + 3,
    }
    frame = _read_by_position(path, n_fields, columns, {"name": str, "label": str})
    frame["label"] = frame["label"].fillna("").map(harmonise)
    unknown = sorted(set(frame["label"]) - set(NIH14))
    if unknown:
        raise UsageError(f"{path}: unknown finding label(s) {', '.join(map(repr, unknown))}")
    coords = frame[["x", "y", "w", "h"]]
    if coords.isna().to_numpy().any():
        raise UsageError(f"{path}: some boxes lack one of x, y, w, h")
    frame[["x", "y", "w", "h"]] = coords.astype("float64")
    return frame


def read_name_list(path: Path) -> np.ndarray:
    """Read ``train_val_list.txt`` / ``test_list.txt``: one image file name a line."""
    try:
        names = pd.read_csv(path, header=None, names=["name"], dtype=str, skipinitialspace=True)["name"]
    except pd.errors.EmptyDataError:  # an empty list is valid (e.g. no test images)
        return np.array([], dtype=object)
    return names.dropna().to_numpy(dtype=object)


def finding_matrix(findings: pd.Series, classes: tuple[str, ...]) -> np.ndarray:
    """``N x K`` float32 0/1 matrix of which ``classes`` each ``|``-joined string names.

    The table has about 800 distinct label strings for 112k images, so each distinct
    string is parsed once and the result is gathered by code.
    """
    codes, uniques = pd.factorize(findings.fillna(NO_FINDING), sort=False)
    column = {name: k for k, name in enumerate(classes)}
    table = np.zeros((len(uniques) + 1, len(classes)), dtype=np.float32)  # last row: NaN code -1
    for u, text in enumerate(uniques):
        for label in str(text).split("|"):
            k = column.get(harmonise(label))
            if k is not None:
                table[u, k] = 1.0
    return table[codes]


# --------------------------------------------------------------------------- expert labels (Majkowska et al. 2020)

GOOGLE2019_NAMES = ("google2019_nih-chest-xray-labels.csv", "google2019_nih-chest-xray-labels.csv.gz")
"""File names of the combined expert-label table (test and validation sets in one file, as
torchxrayvision and others redistribute Google's two files), looked for in the NIH root."""

GOOGLE2019_CLASSES = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
"""The four adjudicated findings, spelled and ordered as the table's columns."""

GOOGLE2019_SETS = ("test", "val")
"""Values of the table's ``Set Id``: Google's test and validation images."""

_GOOGLE_VALUES = {"YES": 1.0, "NO": 0.0}


def read_google2019(path: Path) -> pd.DataFrame:
    """Read the expert labels of Majkowska et al. (Radiology 2020) for 4,376 NIH images.

    Args:
        path: ``google2019_nih-chest-xray-labels.csv`` (or ``.csv.gz``).

    Returns:
        Columns ``name`` (image file name), ``patient`` (int), ``set`` (``test`` / ``val``)
        and one float32 column per :data:`GOOGLE2019_CLASSES` (``YES`` 1, ``NO`` 0, blank NaN),
        one row per image, in file order.

    Raises:
        UsageError: naming the file for a missing column, a repeated image, a ``Set Id`` other
            than test / val, or a label other than YES / NO / blank.

    """
    wanted = {"Image Index": "name", "Patient ID": "patient", "Set Id": "set",
              **{c: c for c in GOOGLE2019_CLASSES}}
    try:
        header = pd.read_csv(path, nrows=0).columns
        missing = [c for c in wanted if c not in header]
        if missing:
            raise UsageError(f"{path}: no column(s) {', '.join(map(repr, missing))}")
        frame = pd.read_csv(path, usecols=list(wanted), dtype=str, skipinitialspace=True, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: cannot parse: {detail}") from None
    frame = frame.rename(columns=wanted)[list(wanted.values())]
    frame["name"] = frame["name"].str.strip()
    repeated = frame["name"][frame["name"].duplicated()]
    if len(repeated):
        raise UsageError(f"{path}: image {repeated.iloc[0]!r} has more than one row")
    frame["set"] = frame["set"].str.strip().str.lower()
    bad_sets = sorted(set(frame["set"]) - set(GOOGLE2019_SETS))
    if bad_sets:
        raise UsageError(f"{path}: Set Id must be test or val, got {bad_sets[0]!r}")
    patients = pd.to_numeric(frame["patient"].str.strip(), errors="coerce")
    if patients.isna().any():
        raise UsageError(f"{path}: Patient ID {frame['patient'][patients.isna()].iloc[0]!r} is not a number")
    frame["patient"] = patients.astype("int64")
    for column in GOOGLE2019_CLASSES:
        text = frame[column].str.strip().str.upper()
        values = text.map(_GOOGLE_VALUES)
        bad = text[values.isna() & (text != "")]
        if len(bad):
            raise UsageError(f"{path}: {column} must be YES, NO or blank, got {bad.iloc[0]!r}")
        frame[column] = values.astype("float32")
    return frame
