"""Finding names across datasets: one canonical name per finding, and how two label spaces meet.

Every chest X-ray dataset spells its findings its own way: NIH's ``Effusion`` is CheXpert's
``Pleural Effusion`` and VinDr-CXR's ``Pleural effusion``; NIH's box list writes
``Infiltrate`` for its label ``Infiltration``; CheXlocalize renames CheXpert's ``Lung
Opacity`` ``Airspace Opacity``. :data:`FINDINGS` is the one table that says which spellings
name the same finding, with the reason for every merge, and :func:`shared_classes` uses it
to pair a model's classes (trained on one dataset) with another dataset's classes, so the
model can be scored on the findings the two share.

Rules:

* **Matching is by key**: a name is stripped, runs of spaces and underscores become one
  space, spaces around ``/`` go, and case is ignored (``Pleural_Thickening`` =
  ``pleural thickening``). A key listed in the table stands for its finding's canonical
  name; any other name stands for itself, so two datasets that spell an unlisted finding
  the same way still match.
* **Two spellings are one finding only where the literature uses them for the same thing**
  (each merge's reason is in its :class:`Finding` ``why``). A finding that is a *kind* of
  another (VinDr's ``Rib fracture`` of CheXpert's ``Fracture``) is not merged: a model of the
  narrower finding would miss the broader one's other positives, and a model of the broader
  one would score the narrower one's negatives (a clavicle fracture) as positives.
* **A merged finding** (:attr:`Finding.parts`, e.g. VinDr's ``Nodule/Mass`` = NIH's
  ``Nodule`` or ``Mass``) is matched to a source with every part: its score is the
  **maximum** of the parts' probabilities (:attr:`ClassMatch.combine`). The probability that
  an image has a nodule or a mass is at least the larger of the two (Fréchet's lower bound
  P(A or B) >= max(P(A), P(B))); the maximum assumes nothing about how the two co-occur
  (noisy-OR, 1 - (1 - p)(1 - q), would assume independence), stays in [0, 1] and, being
  monotone, ranks the same whether it is taken over probabilities or logits. The opposite
  direction is never matched: a ``Nodule/Mass`` model cannot be scored on NIH's ``Nodule``
  alone, whose negatives include images with a mass.

:func:`markdown_table` renders the table for docs/datasets.md ("Label synonyms"; a test
checks the page is current: ``python -m cxrbench.synonyms`` prints it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "DATASETS",
    "FINDINGS",
    "ClassMatch",
    "Finding",
    "MatchKind",
    "canonical",
    "finding",
    "key",
    "markdown_table",
    "shared_classes",
    "target_scores",
]

DATASETS: tuple[str, ...] = ("nih", "chexpert", "chexlocalize", "vindr", "google2019", "rsna_pneumonia", "siim")
"""Datasets whose published spellings the table lists (``google2019``: the NIH expert labels of
Majkowska et al. 2020), in the order of the docs table's columns."""

MatchKind = Literal["exact", "synonym", "merge"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding: its canonical name, each dataset's spellings, and why they are one.

    Attributes:
        name: the canonical name (what :func:`canonical` returns).
        spellings: ``{dataset: (spelling, ...)}`` as each dataset publishes it (a dataset may
            spell it twice, e.g. NIH's label and its box list).
        parts: canonical names of the findings this one is the union of (``Nodule/Mass`` =
            ``Nodule`` or ``Mass``); empty for a plain finding.
        why: the reason the spellings (and parts) are one finding, with its source; empty
            where every dataset uses the same term.

    """

    name: str
    spellings: Mapping[str, tuple[str, ...]]
    parts: tuple[str, ...] = ()
    why: str = ""

    def all_spellings(self) -> tuple[str, ...]:
        """The canonical name, then every dataset's spellings (each once, in table order)."""
        seen = dict.fromkeys([self.name, *(s for names in self.spellings.values() for s in names)])
        return tuple(seen)


def _f(name: str, why: str = "", parts: tuple[str, ...] = (), **spellings: str | tuple[str, ...]) -> Finding:
    table = {ds: (s,) if isinstance(s, str) else tuple(s) for ds, s in spellings.items()}
    return Finding(name=name, spellings=table, parts=parts, why=why)


FINDINGS: tuple[Finding, ...] = (
    _f("Atelectasis", nih="Atelectasis", chexpert="Atelectasis", chexlocalize="Atelectasis", vindr="Atelectasis"),
    _f("Cardiomegaly", nih="Cardiomegaly", chexpert="Cardiomegaly", chexlocalize="Cardiomegaly", vindr="Cardiomegaly"),
    _f("Consolidation", nih="Consolidation", chexpert="Consolidation", chexlocalize="Consolidation",
       vindr="Consolidation"),
    _f("Edema", nih="Edema", chexpert="Edema", chexlocalize="Edema", vindr="Edema"),
    _f("Emphysema", nih="Emphysema", vindr="Emphysema"),
    _f("Fibrosis", nih="Fibrosis", vindr="Pulmonary fibrosis",
       why="On a chest radiograph 'fibrosis' is lung (pulmonary) fibrosis: NIH mined the term from chest X-ray "
           "reports (Wang et al. 2017) and VinDr-CXR names the same lung finding 'Pulmonary fibrosis' "
           "(Nguyen et al. 2022)."),
    _f("Fracture", chexpert="Fracture", google2019="Fracture",
       why="Same term. Not merged with VinDr's 'Rib fracture' or 'Clavicle fracture': each is one kind of "
           "fracture, and a model of one cannot be scored on all fractures, nor a fracture model on one kind."),
    _f("Hernia", nih="Hernia"),
    _f("Infiltration", nih=("Infiltration", "Infiltrate"), vindr="Infiltration",
       why="NIH's label table says 'Infiltration' and its box list 'Infiltrate' for the same label (Wang et al. "
           "2017); VinDr-CXR uses the label's term."),
    _f("Lung Opacity", chexpert="Lung Opacity", chexlocalize="Airspace Opacity", vindr="Lung Opacity",
       google2019="Airspace opacity", rsna_pneumonia="Lung Opacity",
       why="CheXlocalize names CheXpert's 'Lung Opacity' 'Airspace Opacity' (Saporta et al. 2022), the term the "
           "NIH expert labels use (Majkowska et al. 2020). Caution: RSNA's 'Lung Opacity' (same spelling, so "
           "matched by name) is restricted to opacities suspicious for pneumonia (Shih et al. 2019), narrower than "
           "CheXpert's."),
    _f("Mass", nih="Mass"),
    _f("Nodule", nih="Nodule"),
    _f("Nodule/Mass", parts=("Nodule", "Mass"), vindr="Nodule/Mass", google2019="Nodule or mass",
       why="VinDr-CXR (Nguyen et al. 2022) and the NIH expert labels (Majkowska et al. 2020) grade nodules and "
           "masses as one finding; NIH labels them apart (a mass is a nodule over 3 cm, Hansell et al. 2008, "
           "Fleischner glossary), so a model of NIH's two scores it by the larger of its two probabilities. Not "
           "merged with CheXpert's 'Lung Lesion', which also counts other lesions (Irvin et al. 2019)."),
    _f("Pleural Effusion", nih="Effusion", chexpert="Pleural Effusion", chexlocalize="Pleural Effusion",
       vindr="Pleural effusion",
       why="NIH's 'Effusion' is the pleural effusion mined from chest X-ray reports and boxed in its box list "
           "(Wang et al. 2017); CheXpert and VinDr-CXR name it in full."),
    _f("Pleural Thickening", nih="Pleural_Thickening", vindr="Pleural thickening"),
    _f("Pneumonia", nih="Pneumonia", chexpert="Pneumonia", vindr="Pneumonia"),
    _f("Pneumothorax", nih="Pneumothorax", chexpert="Pneumothorax", chexlocalize="Pneumothorax",
       vindr="Pneumothorax", google2019="Pneumothorax", siim="Pneumothorax"),
    _f("No Finding", nih="No Finding", chexpert="No Finding", vindr="No finding"),
    _f("Enlarged Cardiomediastinum", chexpert="Enlarged Cardiomediastinum", chexlocalize="Enlarged Cardiomediastinum",
       why="Not merged with VinDr's 'Aortic enlargement': a widened mediastinum has other causes."),
    _f("Lung Lesion", chexpert="Lung Lesion", chexlocalize="Lung Lesion"),
    _f("Pleural Other", chexpert="Pleural Other"),
    _f("Support Devices", chexpert="Support Devices", chexlocalize="Support Devices"),
    _f("Aortic enlargement", vindr="Aortic enlargement"),
    _f("Calcification", vindr="Calcification"),
    _f("Clavicle fracture", vindr="Clavicle fracture"),
    _f("Enlarged PA", vindr="Enlarged PA"),
    _f("ILD", vindr="ILD", why="VinDr-CXR's abbreviation of interstitial lung disease."),
    _f("Lung cavity", vindr="Lung cavity"),
    _f("Lung cyst", vindr="Lung cyst"),
    _f("Mediastinal shift", vindr="Mediastinal shift"),
    _f("Other lesion", vindr="Other lesion"),
    _f("Rib fracture", vindr="Rib fracture"),
    _f("COPD", vindr="COPD"),
    _f("Lung tumor", vindr="Lung tumor"),
    _f("Tuberculosis", vindr="Tuberculosis"),
    _f("Other disease", vindr=("Other disease", "Other diseases"),
       why="VinDr-CXR's global label, spelled both ways in its releases."),
)
"""Every finding of the built-in datasets, the canonical name first."""


def key(name: str) -> str:
    """The matching key of a finding name: case, runs of spaces / underscores and spaces around ``/`` ignored."""
    text = re.sub(r"[\s_]+", " ", str(name)).strip()
    return re.sub(r" ?/ ?", "/", text).casefold()


def _index(findings: Sequence[Finding]) -> dict[str, Finding]:
    index: dict[str, Finding] = {}
    names = {key(f.name) for f in findings}
    for f in findings:
        for spelling in f.all_spellings():
            k = key(spelling)
            other = index.get(k)
            if other is not None and other is not f:
                raise ValueError(f"synonyms: {spelling!r} is listed for both {other.name!r} and {f.name!r}")
            index[k] = f
        unknown = [p for p in f.parts if key(p) not in names]
        if unknown:
            raise ValueError(f"synonyms: {f.name!r} is made of unlisted finding(s) {unknown}")
    return index


_BY_KEY = _index(FINDINGS)


def finding(name: str) -> Finding | None:
    """The table's entry for ``name`` (any listed spelling), or None for an unlisted name."""
    return _BY_KEY.get(key(name))


def canonical(name: str) -> str:
    """The canonical name of a finding: ``Effusion`` -> ``Pleural Effusion``.

    Args:
        name: a finding name as any dataset spells it.

    Returns:
        The table's canonical name for a listed spelling (in any case, with ``_`` or spaces),
        else ``name`` with its spaces and underscores tidied (unlisted names stand for
        themselves).

    """
    entry = finding(name)
    return entry.name if entry is not None else re.sub(r"[\s_]+", " ", str(name)).strip()


@dataclasses.dataclass(frozen=True)
class ClassMatch:
    """One target class a source model can be scored on, and from which of its outputs.

    Attributes:
        name: the finding's canonical name.
        target: index of the class in the target's classes.
        target_name: its spelling there.
        source: indices of the source classes that give its score (one, or every part of a
            merged finding, in the merged finding's part order).
        source_names: their spellings in the source.
        kind: ``exact`` (the same key), ``synonym`` (another spelling of the same finding)
            or ``merge`` (the target's finding is the union of several source classes).
        combine: how the source scores become the target's: ``identity`` (one column) or
            ``max`` (a merge: the largest of the parts' probabilities; see the module
            docstring for why).

    """

    name: str
    target: int
    target_name: str
    source: tuple[int, ...]
    source_names: tuple[str, ...]
    kind: MatchKind
    combine: Literal["identity", "max"]

    def scores(self, source_scores: np.ndarray) -> np.ndarray:
        """The target class's score of each image from the source model's ``N x K`` scores.

        Works on probabilities and on logits alike (the maximum is monotone). NaN in any
        combined column gives NaN.
        """
        values = np.asarray(source_scores)[:, list(self.source)]
        return values[:, 0].copy() if self.combine == "identity" else values.max(axis=1)

    def to_json(self) -> dict[str, Any]:
        """A plain dict (for records and provenance)."""
        out = dataclasses.asdict(self)
        out["source"], out["source_names"] = list(self.source), list(self.source_names)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassMatch:
        """The match :meth:`to_json` wrote."""
        return cls(name=str(data["name"]), target=int(data["target"]), target_name=str(data["target_name"]),
                   source=tuple(int(i) for i in data["source"]),
                   source_names=tuple(str(s) for s in data["source_names"]), kind=data["kind"],
                   combine=data["combine"])


def _by_canonical(classes: Sequence[str], side: str) -> dict[str, int]:
    """``{key of canonical name: index}``; two classes naming one finding is an error."""
    out: dict[str, int] = {}
    for i, name in enumerate(classes):
        k = key(canonical(name))
        if k in out:
            raise ValueError(f"{side} classes {classes[out[k]]!r} and {name!r} name the same finding "
                             f"({canonical(name)!r})")
        out[k] = i
    return out


def shared_classes(source_classes: Sequence[str], target_classes: Sequence[str]) -> list[ClassMatch]:
    """The target's classes a model with ``source_classes`` can be scored on, in target order.

    A target class is matched when a source class names the same finding (``exact`` when
    the keys are equal, else ``synonym``), or when its finding is merged from parts that
    are all source classes (``merge``, scored by the parts' maximum). Unmatched target
    classes are left out.

    Args:
        source_classes: the classes the model was trained on (its output order).
        target_classes: the classes of the dataset it is scored on.

    Returns:
        One :class:`ClassMatch` per matched target class.

    Raises:
        ValueError: when two classes of one side name the same finding (``Effusion`` and
            ``Pleural Effusion``): which one the other side meets would be a guess.

    """
    source = _by_canonical(source_classes, "source")
    _by_canonical(target_classes, "target")
    matches: list[ClassMatch] = []
    for j, name in enumerate(target_classes):
        name_canonical = canonical(name)
        i = source.get(key(name_canonical))
        if i is not None:
            kind: MatchKind = "exact" if key(source_classes[i]) == key(name) else "synonym"
            matches.append(ClassMatch(name_canonical, j, name, (i,), (source_classes[i],), kind, "identity"))
            continue
        entry = finding(name)
        parts = [source.get(key(p)) for p in entry.parts] if entry is not None else []
        if parts and all(p is not None for p in parts):
            rows = tuple(int(p) for p in parts if p is not None)
            matches.append(ClassMatch(name_canonical, j, name, rows, tuple(source_classes[p] for p in rows),
                                      "merge", "max"))
    return matches


def target_scores(matches: Sequence[ClassMatch], source_scores: np.ndarray) -> np.ndarray:
    """The ``N x M`` scores of the matched target classes (column m = ``matches[m]``)."""
    scores = np.asarray(source_scores)
    if not matches:
        return np.zeros((scores.shape[0], 0), dtype=scores.dtype)
    return np.stack([m.scores(scores) for m in matches], axis=1)


def markdown_table(findings: Sequence[Finding] = FINDINGS) -> str:
    """The table as the Markdown kept in docs/datasets.md (a test checks the page is current)."""
    header = ["finding", *DATASETS, "why"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in findings:
        cells = [f"**{f.name}**" + (f" = {' or '.join(f.parts)}" if f.parts else "")]
        cells += [" / ".join(f"`{s}`" for s in f.spellings.get(ds, ())) for ds in DATASETS]
        cells.append(f.why)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m cxrbench.synonyms` prints the docs table
    print(markdown_table(), end="")
