"""Published baselines: per-class numbers of published models on NIH ChestX-ray14, as reference rows.

The numbers live in ``published.csv`` beside this module (shipped in the wheel), one row per
(baseline, metric, class) with the paper and table it was copied from, the split it was
measured on (``official``: NIH's patient-wise ``test_list.txt``, the split cxrbench's ``nih``
dataset tests on; ``random``: a split of the authors' own) and a caveat wherever the numbers
are not directly comparable with a cxrbench cell. The first line of the file names its
version; a change of a value is a new version.

Every value was checked against a copy of its source found by the project's search tool
(the paper's text for Wang et al. v5 Tables 3, 4, 7, 17 and 19 and for CheXNet v3 Table 2,
torchxrayvision's ``BENCHMARKS.md`` for its models). Sources whose numbers could not be
checked are left out rather than recalled.

They are references, not results: ``cxrbench leaderboard --baselines`` shows them beside the
user's cells for the classes both have, never ranks them and never tests them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import re
from collections.abc import Mapping
from importlib import resources
from typing import Literal

from .. import catalogue
from ..errors import ConfigError

__all__ = ["DATA_FILE", "SPLITS", "PublishedBaseline", "load_baselines", "table_version"]

DATA_FILE = "published.csv"
SPLITS = ("official", "random")
COLUMNS = ("baseline", "model", "dataset", "split", "metric", "class", "value", "source", "table", "caveat")
_VERSION = re.compile(r"^#.*\bversion\s+(\d+)\b")

Split = Literal["official", "random"]


@dataclasses.dataclass(frozen=True)
class PublishedBaseline:
    """One published model's numbers on one dataset.

    Attributes:
        key: a stable short name, e.g. ``chexnet2017``.
        model: the model as the source names it.
        dataset: the cxrbench dataset the numbers are about (``nih``).
        split: ``official`` (NIH's published patient-wise test list) or ``random``.
        values: ``{metric key: value}`` with catalogue keys, e.g. ``auroc/Effusion`` or
            ``acc_iobb@0.5/Mass``.
        sources: ``{metric: "source, table"}``: where each metric's numbers were copied from.
        caveats: ``{metric: caveat}``: why a metric is not directly comparable ('' if it is).

    """

    key: str
    model: str
    dataset: str
    split: Split
    values: Mapping[str, float]
    sources: Mapping[str, str]
    caveats: Mapping[str, str]

    def classes(self, metric: str = "auroc") -> list[str]:
        """The classes with a value of ``metric`` (a per-class prefix such as ``auroc``)."""
        return [catalogue.split_key(k)[1] for k in self.values if catalogue.split_key(k)[0] == metric]

    def source(self, metric: str = "auroc") -> str:
        return self.sources.get(metric, "")

    def caveat(self, metric: str = "auroc") -> str:
        return self.caveats.get(metric, "")


def _data_text() -> str:
    return resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")


def table_version(text: str | None = None) -> int:
    """The version named on the data file's first line.

    Raises:
        ConfigError: when the first line names no version.

    """
    first = (_data_text() if text is None else text).splitlines()[:1]
    match = _VERSION.match(first[0]) if first else None
    if match is None:
        raise ConfigError(DATA_FILE, "the first line must be a comment naming the version ('# ... version N')")
    return int(match.group(1))


def parse_baselines(text: str, name: str = DATA_FILE) -> list[PublishedBaseline]:
    """Baselines from the CSV text (comment lines start with ``#``).

    Raises:
        ConfigError: naming the file and line of a malformed row (missing source or split,
            a split other than official / random without a caveat, an undeclared metric, a
            value outside [0, 1]).

    """
    table_version(text)
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in lines)))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ConfigError(name, f"the header must be {','.join(COLUMNS)}")
    grouped: dict[str, dict] = {}
    for (line_no, _), row in zip(lines[1:], reader, strict=True):
        where = f"{name}:{line_no}"
        if any(row[c] is None or not row[c].strip() for c in COLUMNS if c != "caveat"):
            raise ConfigError(where, "every column but caveat needs a value")
        split = row["split"]
        if split not in SPLITS:
            raise ConfigError(where, f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split != "official" and not (row["caveat"] or "").strip():
            raise ConfigError(where, f"a {split} split needs a caveat saying how it differs from the official one")
        metric, cls = row["metric"], row["class"]
        key = catalogue.per_class_key(metric, cls)
        if catalogue.lookup(key) is None:
            raise ConfigError(where, f"metric {metric!r} is not in the catalogue (cxrbench/catalogue.py)")
        try:
            value = float(row["value"])
        except ValueError:
            raise ConfigError(where, f"value {row['value']!r} is not a number") from None
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ConfigError(where, f"value {value} is outside [0, 1]")
        entry = grouped.setdefault(row["baseline"], {"model": row["model"], "dataset": row["dataset"], "split": split,
                                                     "values": {}, "sources": {}, "caveats": {}})
        if (entry["model"], entry["dataset"], entry["split"]) != (row["model"], row["dataset"], split):
            raise ConfigError(where, f"baseline {row['baseline']!r} changes its model, dataset or split")
        if key in entry["values"]:
            raise ConfigError(where, f"{row['baseline']} has {key} twice")
        entry["values"][key] = value
        entry["sources"].setdefault(metric, f"{row['source']}, {row['table']}")
        entry["caveats"].setdefault(metric, (row["caveat"] or "").strip())
    return [PublishedBaseline(key=k, **v) for k, v in grouped.items()]


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[PublishedBaseline, ...]:
    return tuple(parse_baselines(_data_text()))


def load_baselines(dataset: str | None = None) -> list[PublishedBaseline]:
    """The shipped baselines, optionally only those of one dataset (e.g. ``nih``)."""
    return [b for b in _shipped() if dataset is None or b.dataset == dataset]
