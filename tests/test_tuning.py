"""The pinned, patient-disjoint, class-stratified tuning part of a boxed split."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.config import LocalizationSpec
from cxrbench.interfaces import Split
from cxrbench.tuning import TuningPopulation, ids_digest, partition_rows, tuning_ids

NIH_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih"


def population(n_patients=60, images_per_patient=2, classes=("A", "B", "C"), seed=0):
    rng = np.random.default_rng(seed)
    ids, patients, labels = [], [], []
    for p in range(n_patients):
        primary = classes[p % len(classes)]
        for i in range(images_per_patient):
            ids.append(f"p{p:03d}_{i}")
            patients.append(f"p{p:03d}")
            labels.append((primary,) if rng.random() < 0.8 else (primary, classes[(p + 1) % len(classes)]))
    return TuningPopulation(tuple(ids), tuple(patients), tuple(labels))


def test_patient_disjoint_and_stratified():
    pop = population()
    tune = tuning_ids(pop, 0.2, seed=0)
    by_patient = {}
    for image, patient in zip(pop.ids, pop.patients, strict=True):
        by_patient.setdefault(patient, set()).add(image in tune)
    assert all(len(sides) == 1 for sides in by_patient.values())  # every image of a patient on one side
    tuned_patients = {p for p, sides in by_patient.items() if True in sides}
    # 20 patients per primary class: round(0.2 * 20) = 4 of each
    per_class = {c: sum(1 for p in tuned_patients if int(p[1:]) % 3 == "ABC".index(c)) for c in "ABC"}
    assert per_class == {"A": 4, "B": 4, "C": 4}


def test_pinned_whatever_images_are_present_and_their_order():
    pop = population()
    tune = tuning_ids(pop, 0.2, seed=0)
    shuffled = np.random.default_rng(1).permutation(len(pop.ids))
    again = TuningPopulation(tuple(pop.ids[i] for i in shuffled), tuple(pop.patients[i] for i in shuffled),
                             tuple(pop.classes[i] for i in shuffled))
    assert tuning_ids(again, 0.2, seed=0) == tune and ids_digest(tune) == ids_digest(sorted(tune))
    assert tuning_ids(pop, 0.2, seed=1) != tune  # the seed matters
    assert tuning_ids(pop, 0.0, seed=0) == frozenset()
    with pytest.raises(ValueError, match="tune_fraction"):
        tuning_ids(pop, 1.0, seed=0)


def test_a_small_class_keeps_one_patient_to_tune_and_one_to_score():
    pop = TuningPopulation(("a", "b", "c"), ("1", "2", "3"), (("Rare",), ("Rare",), ("Common",)))
    tune = tuning_ids(pop, 0.2, seed=0)
    assert len(tune & {"a", "b"}) == 1 and "c" not in tune  # a class of one patient is never held out


def test_partition_rows_and_split_subset():
    boxes = pd.DataFrame({"index": [0, 2, 2], "class_index": [0, 1, 0], "x": [1.0, 2, 3], "y": [1.0, 2, 3],
                          "w": [4.0, 4, 4], "h": [4.0, 4, 4]})
    split = Split(ids=["a", "b", "c"], patient_ids=["1", "2", "3"], labels=np.eye(3, 2, dtype=np.float32),
                  boxes=boxes)
    tune_rows, scored_rows = partition_rows(split, frozenset({"c"}))
    assert tune_rows.tolist() == [2] and scored_rows.tolist() == [0, 1]
    part = split.subset(tune_rows)
    assert part.ids == ["c"] and part.boxes["index"].tolist() == [0, 0] and part.boxes["x"].tolist() == [2.0, 3.0]
    assert TuningPopulation.of_split(split, ["A", "B"]).classes == (("A",), ("B", "A"))


def test_tune_needs_held_out_boxes():
    with pytest.raises(ValueError, match="tune_fraction > 0"):
        LocalizationSpec(tune=True, tune_fraction=0.0).validate()
    with pytest.raises(ValueError, match="tune_fraction must be in"):
        LocalizationSpec(tune_fraction=1.0).validate()


@pytest.mark.realdata
def test_the_official_nih_tuning_list_is_fixed():
    if not NIH_ROOT.is_dir():
        pytest.skip("../shared/data/nih is absent")
    from cxrbench_nih.dataset import NIHChestXray14

    from cxrbench.interfaces import DatasetContext

    nih = NIHChestXray14(NIHChestXray14.Options(root=str(NIH_ROOT)), DatasetContext())
    pop = nih.tuning_population("boxes")
    assert len(pop.ids) == 880 and len(set(pop.patients)) == 726  # the whole BBox_List_2017.csv
    tune = tuning_ids(pop, 0.2, seed=0)
    assert len(tune) == 173
    assert ids_digest(tune) == "2d8714c75a876a272feafc0da7ed7bc09e2fa9e51230b0a717c11ad5951a9a73"
