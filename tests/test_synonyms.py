"""The label-synonyms table: canonical names, shared classes across datasets, and its docs page."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from cxrbench_chexlocalize.tables import CHEXLOCALIZE_PATHOLOGIES
from cxrbench_chexpert.labels import ALL14 as CHEXPERT14
from cxrbench_nih.tables import GOOGLE2019_CLASSES, NIH14
from cxrbench_vindr.tables import GLOBAL_LABELS, KAGGLE14, LOCAL22

from cxrbench import synonyms
from cxrbench.synonyms import ClassMatch, Finding, canonical, shared_classes, target_scores

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- canonical names


@pytest.mark.parametrize(("spelling", "name"), [
    ("Effusion", "Pleural Effusion"),
    ("Pleural effusion", "Pleural Effusion"),
    ("pleural_effusion", "Pleural Effusion"),
    ("  PLEURAL   EFFUSION ", "Pleural Effusion"),
    ("Infiltrate", "Infiltration"),
    ("Pleural_Thickening", "Pleural Thickening"),
    ("Pleural thickening", "Pleural Thickening"),
    ("Airspace Opacity", "Lung Opacity"),
    ("Airspace opacity", "Lung Opacity"),
    ("Nodule or mass", "Nodule/Mass"),
    ("nodule / mass", "Nodule/Mass"),
    ("Pulmonary fibrosis", "Fibrosis"),
    ("Other diseases", "Other disease"),
    ("No finding", "No Finding"),
    ("Nodule", "Nodule"),
    ("Mass", "Mass"),
])
def test_canonical_names_ignore_case_spaces_and_underscores(spelling, name):
    assert canonical(spelling) == name


def test_unlisted_names_stand_for_themselves_tidied():
    assert canonical("Broken  heart_syndrome ") == "Broken heart syndrome"
    assert synonyms.finding("Broken heart syndrome") is None


def test_canonical_is_idempotent_and_every_spelling_leads_to_its_finding():
    for entry in synonyms.FINDINGS:
        for spelling in entry.all_spellings():
            assert canonical(spelling) == entry.name
            assert canonical(canonical(spelling)) == entry.name
            assert synonyms.finding(spelling) is entry


@pytest.mark.parametrize(("dataset", "classes"), [
    ("nih", NIH14 + ("No Finding",)),
    ("chexpert", CHEXPERT14),
    ("chexlocalize", CHEXLOCALIZE_PATHOLOGIES),
    ("vindr", KAGGLE14 + LOCAL22 + GLOBAL_LABELS + ("Other diseases", "No finding")),
    ("google2019", GOOGLE2019_CLASSES),
])
def test_every_built_in_class_is_in_the_table_under_its_dataset(dataset, classes):
    """Each dataset's published spelling is listed in that dataset's column (so the docs table is complete)."""
    for name in classes:
        entry = synonyms.finding(name)
        assert entry is not None, name
        listed = {synonyms.key(s) for s in entry.spellings.get(dataset, ())}
        assert synonyms.key(name) in listed, (dataset, name, entry.name)


def test_a_spelling_under_two_findings_and_unlisted_parts_are_refused():
    a = Finding("A", {"x": ("Same",)})
    b = Finding("B", {"y": ("same",)})
    with pytest.raises(ValueError, match="listed for both 'A' and 'B'"):
        synonyms._index([a, b])
    with pytest.raises(ValueError, match="unlisted finding"):
        synonyms._index([Finding("AB", {}, parts=("A", "C")), a])


# --------------------------------------------------------------------------- shared classes


def by_name(matches: list[ClassMatch]) -> dict[str, ClassMatch]:
    return {m.target_name: m for m in matches}


def test_nih_on_the_google_expert_labels():
    matches = shared_classes(NIH14, GOOGLE2019_CLASSES)
    assert [m.target_name for m in matches] == ["Pneumothorax", "Nodule or mass"]  # no Fracture, no opacity in NIH
    found = by_name(matches)
    assert found["Pneumothorax"] == ClassMatch("Pneumothorax", 1, "Pneumothorax", (NIH14.index("Pneumothorax"),),
                                               ("Pneumothorax",), "exact", "identity")
    merged = found["Nodule or mass"]
    assert (merged.name, merged.target, merged.kind, merged.combine) == ("Nodule/Mass", 3, "merge", "max")
    assert merged.source == (NIH14.index("Nodule"), NIH14.index("Mass"))
    assert merged.source_names == ("Nodule", "Mass")


def test_vindr_model_on_nih_classes_never_splits_nodule_mass():
    found = by_name(shared_classes(KAGGLE14, NIH14))
    expected = {  # NIH class -> (VinDr class, kind), worked out by hand from the table
        "Atelectasis": ("Atelectasis", "exact"),
        "Cardiomegaly": ("Cardiomegaly", "exact"),
        "Effusion": ("Pleural effusion", "synonym"),
        "Infiltration": ("Infiltration", "exact"),
        "Pneumothorax": ("Pneumothorax", "exact"),
        "Consolidation": ("Consolidation", "exact"),
        "Fibrosis": ("Pulmonary fibrosis", "synonym"),
        "Pleural_Thickening": ("Pleural thickening", "exact"),  # same key: case and underscore only
    }
    assert {t: (m.source_names[0], m.kind) for t, m in found.items()} == expected
    for target, match in found.items():
        assert NIH14[match.target] == target and KAGGLE14[match.source[0]] == match.source_names[0]


def test_nih_model_on_vindr_merges_nodule_and_mass():
    found = by_name(shared_classes(NIH14, KAGGLE14))
    assert found["Nodule/Mass"].kind == "merge"
    assert found["Nodule/Mass"].source_names == ("Nodule", "Mass")
    assert found["Pleural effusion"].kind == "synonym" and found["Pleural effusion"].source_names == ("Effusion",)
    assert "Lung Opacity" not in found and "Aortic enlargement" not in found


def test_a_source_with_one_part_only_does_not_score_the_merged_finding():
    assert shared_classes(["Nodule"], ["Nodule/Mass"]) == []
    assert shared_classes(["Nodule/Mass"], ["Nodule", "Mass"]) == []  # never split a merged finding


def test_chexpert_and_chexlocalize_and_google_meet_on_lung_opacity():
    match = shared_classes(CHEXPERT14, CHEXLOCALIZE_PATHOLOGIES)
    opacity = by_name(match)["Airspace Opacity"]
    assert (opacity.kind, opacity.source_names, opacity.name) == ("synonym", ("Lung Opacity",), "Lung Opacity")
    assert by_name(shared_classes(CHEXLOCALIZE_PATHOLOGIES, GOOGLE2019_CLASSES))["Airspace opacity"].kind == "exact"
    assert by_name(shared_classes(CHEXPERT14, GOOGLE2019_CLASSES))["Airspace opacity"].kind == "synonym"
    # CheXpert's Fracture meets Google's; VinDr's rib fracture is a kind of fracture, not the same finding
    assert [m.target_name for m in shared_classes(CHEXPERT14, GOOGLE2019_CLASSES)] == \
        ["Fracture", "Pneumothorax", "Airspace opacity"]
    assert shared_classes(LOCAL22, ["Fracture"]) == []


def test_a_direct_match_wins_over_a_merge_and_unlisted_names_match_by_key():
    found = by_name(shared_classes(["Nodule", "Mass", "Nodule or mass"], ["Nodule/Mass", "my_finding"]))
    assert found["Nodule/Mass"].kind == "synonym" and found["Nodule/Mass"].source == (2,)
    assert "my_finding" not in found
    unlisted = shared_classes(["My Finding"], ["my_finding"])
    assert [(m.name, m.kind, m.source) for m in unlisted] == [("my finding", "exact", (0,))]  # the target's spelling


def test_two_classes_naming_one_finding_are_an_error():
    with pytest.raises(ValueError, match="source classes 'Effusion' and 'Pleural Effusion'"):
        shared_classes(["Effusion", "Pleural Effusion"], ["Effusion"])
    with pytest.raises(ValueError, match="target classes"):
        shared_classes(["Effusion"], ["pleural effusion", "Effusion"])


def test_scores_identity_and_max_by_hand():
    matches = shared_classes(NIH14, GOOGLE2019_CLASSES)
    probs = np.zeros((3, len(NIH14)))
    nodule, mass, ptx = NIH14.index("Nodule"), NIH14.index("Mass"), NIH14.index("Pneumothorax")
    probs[:, nodule] = [0.1, 0.7, 0.3]
    probs[:, mass] = [0.6, 0.2, 0.3]
    probs[:, ptx] = [0.9, 0.05, 0.5]
    scores = target_scores(matches, probs)
    assert scores.shape == (3, 2)
    np.testing.assert_array_equal(scores[:, 0], [0.9, 0.05, 0.5])
    np.testing.assert_array_equal(scores[:, 1], [0.6, 0.7, 0.3])
    # the maximum is monotone: logits give the same ranking as probabilities
    logits = np.log(probs.clip(1e-9) / (1 - probs.clip(1e-9)))
    np.testing.assert_allclose(1 / (1 + np.exp(-target_scores(matches, logits))), scores, atol=1e-12)
    labels = probs.copy()
    labels[0, nodule] = math.nan
    assert math.isnan(matches[1].scores(labels)[0])  # NaN in a combined column stays unknown
    assert target_scores([], probs).shape == (3, 0)


def test_matches_round_trip_through_json():
    for match in shared_classes(NIH14, KAGGLE14):
        assert ClassMatch.from_json(match.to_json()) == match


# --------------------------------------------------------------------------- the docs page


def test_docs_table_is_generated_from_the_synonyms_table():
    text = (REPO / "docs" / "datasets.md").read_text()
    start, end = text.index("<!-- synonyms:start -->\n"), text.index("<!-- synonyms:end -->")
    assert text[start + len("<!-- synonyms:start -->\n"):end] == synonyms.markdown_table(), \
        "docs/datasets.md is out of date: paste `python -m cxrbench.synonyms` between the markers"


def test_every_merge_says_why():
    for entry in synonyms.FINDINGS:
        datasets_spelling = {synonyms.key(s) for names in entry.spellings.values() for s in names}
        if entry.parts or len(datasets_spelling) > 1:
            assert entry.why, entry.name
