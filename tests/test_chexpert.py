"""The ``chexpert`` dataset plugin: tiny published-style layouts, then the real sample."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import cv2
import cxrbench_chexpert
import numpy as np
import pytest
from cxrbench_chexpert import CheXpert, cxrbench_register_datasets
from cxrbench_chexpert.labels import ALL14, COMPETITION5

from cxrbench.errors import UsageError
from cxrbench.interfaces import DatasetContext

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *ALL14]
RELEASE = "CheXpert-v1.0-small"


def row(patient: int, study: int = 1, view: str = "frontal", split: str = "train", **labels: str) -> dict:
    """One table row; labels by finding name with spaces as underscores ('' = blank)."""
    number = 1 if view == "frontal" else 2
    values = {name: labels.get(name.replace(" ", "_"), "") for name in ALL14}
    return {
        "Path": f"{RELEASE}/{split}/patient{patient:05d}/study{study}/view{number}_{view}.jpg",
        "Sex": "Female",
        "Age": "60",
        "Frontal/Lateral": "Frontal" if view == "frontal" else "Lateral",
        "AP/PA": "AP" if view == "frontal" else "",
        **values,
    }


def make_chexpert(root: Path, train: list[dict], valid: list[dict] = (), present: list[str] | None = None) -> Path:
    """Write ``root/CheXpert-v1.0-small`` with its tables and small JPEGs.

    Args:
        present: table paths to write images for (default: every row).
    """
    release = root / RELEASE
    release.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        with open(release / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HEADER)
            writer.writeheader()
            writer.writerows(rows)
    paths = [r["Path"] for r in [*train, *valid]] if present is None else present
    for path in paths:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(target), np.full((12, 10), 90, np.uint8))
    return root


def load(root: Path, **options) -> tuple[CheXpert, list[str]]:
    warnings: list[str] = []
    dataset = CheXpert(CheXpert.Options(root=str(root), **options), DatasetContext(warn=warnings.append))
    return dataset, warnings


def labelled_layout(tmp_path: Path) -> Path:
    train = [
        row(1, Atelectasis="-1.0", Cardiomegaly="1.0", Edema="-1.0", Consolidation="0.0"),
        row(2, Pleural_Effusion="-1.0", Consolidation="-1.0"),
        row(3),
    ]
    return make_chexpert(tmp_path, train)


def labels_by_patient(dataset: CheXpert) -> dict[str, list[float]]:
    out = {}
    for name in ("train", "val"):
        split = dataset.split(name)
        for pid, lab in zip(split.patient_ids, split.labels.tolist(), strict=True):
            out[pid] = lab
    return out


# --------------------------------------------------------------------------- registration and options


def test_registers_through_the_plugin_hook():
    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry

    assert cxrbench_register_datasets() == [CheXpert]
    pm = build_plugin_manager(plugins=[cxrbench_chexpert], entry_points=False, core=False)
    assert Registry.from_plugin_manager(pm).get("dataset", "chexpert") is CheXpert
    assert CheXpert.HAS_BOXES is False


def test_class_presets_and_validation(tmp_path):
    root = labelled_layout(tmp_path)
    assert load(root)[0].classes == list(COMPETITION5)
    assert load(root, classes="all14")[0].classes == list(ALL14)
    assert load(root, classes=("Edema", "No Finding"))[0].classes == ["Edema", "No Finding"]
    bad = [
        {"classes": "nih8"},
        {"classes": ("Effusion",)},
        {"uncertain": "maybe"},
        {"uncertain": {"Edema": "twos"}},
        {"uncertain": {"Fracture": "ones"}},  # not a selected class
        {"val_fraction": -0.1},
    ]
    for options in bad:
        with pytest.raises(ValueError):
            CheXpert.Options(root=str(root), **options).validate()


# --------------------------------------------------------------------------- uncertain policies

U = math.nan


@pytest.mark.parametrize(
    ("policy", "patient1", "patient2"),
    [
        # classes: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
        ("ignore", [U, 1, 0, U, 0], [0, 0, U, 0, U]),
        ("zeros", [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]),
        ("ones", [1, 1, 0, 1, 0], [0, 0, 1, 0, 1]),
        ("seed", [1, 1, 0, 1, 0], [0, 0, 0, 0, 0]),  # U-Ones for Atelectasis/Edema, U-Zeros else
        ({"Edema": "ones", "Consolidation": "zeros"}, [U, 1, 0, 1, 0], [0, 0, 0, 0, U]),
    ],
)
def test_uncertain_policies(tmp_path, policy, patient1, patient2):
    dataset, _ = load(labelled_layout(tmp_path), uncertain=policy, val_fraction=0.0)
    labels = labels_by_patient(dataset)
    np.testing.assert_array_equal(labels["patient00001"], patient1)
    np.testing.assert_array_equal(labels["patient00002"], patient2)
    np.testing.assert_array_equal(labels["patient00003"], [0, 0, 0, 0, 0])  # blank = 0
    assert dataset.split("train").labels.dtype == np.float32


# --------------------------------------------------------------------------- rows and splits


def test_root_may_be_the_release_folder_or_its_parent(tmp_path):
    root = labelled_layout(tmp_path)
    a, _ = load(root, val_fraction=0.0)
    b, _ = load(root / RELEASE, val_fraction=0.0)
    assert list(a.split("train").ids) == list(b.split("train").ids)
    assert len(a.split("train")) == 3
    image = a.read_image("train", 0)
    assert image.shape == (12, 10) and image.dtype == np.uint8


def test_a_renamed_release_folder_still_resolves_table_paths(tmp_path):
    root = labelled_layout(tmp_path)
    renamed = (root / RELEASE).rename(root / "chexpert_small")
    dataset, warnings = load(renamed, val_fraction=0.0)
    assert len(dataset.split("train")) == 3 and warnings == []


def test_frontal_only(tmp_path):
    train = [row(1), row(1, view="lateral"), row(2, view="lateral")]
    root = make_chexpert(tmp_path, train)
    assert [Path(i).name for i in load(root, val_fraction=0.0)[0].split("train").ids] == ["view1_frontal.jpg"]
    assert len(load(root, val_fraction=0.0, frontal_only=False)[0].split("train")) == 3


def test_test_split_is_valid_csv(tmp_path):
    valid = [row(64541, split="valid", Edema="1.0"), row(64542, split="valid")]
    root = make_chexpert(tmp_path, [row(1)], valid)
    test = load(root)[0].split("test")
    assert list(test.ids) == [r["Path"] for r in valid]
    assert list(test.patient_ids) == ["patient64541", "patient64542"]
    np.testing.assert_array_equal(test.labels[:, COMPETITION5.index("Edema")], [1, 0])


def test_train_val_split_is_patient_disjoint_and_seeded(tmp_path):
    train = [row(p, study=s) for p in range(1, 41) for s in (1, 2)]
    root = make_chexpert(tmp_path, train)
    dataset, _ = load(root, val_fraction=0.2, split_seed=7)
    tr, va = dataset.split("train"), dataset.split("val")
    assert len(tr) + len(va) == 80
    assert not set(tr.patient_ids) & set(va.patient_ids)
    assert len(set(va.patient_ids)) == 8
    assert list(load(root, val_fraction=0.2, split_seed=7)[0].split("val").ids) == list(va.ids)
    assert set(load(root, val_fraction=0.2, split_seed=8)[0].split("val").patient_ids) != set(va.patient_ids)


def test_oversample_positives_lists_positive_training_rows_twice(tmp_path):
    train = [row(1, Edema="1.0"), row(2, Edema="-1.0"), row(3)]
    root = make_chexpert(tmp_path, train)
    plain = load(root, val_fraction=0.0, uncertain="seed")[0].split("train")
    doubled = load(root, val_fraction=0.0, uncertain="seed", oversample_positives=True)[0].split("train")
    assert len(plain) == 3 and len(doubled) == 5  # patients 1 and 2 (U-Ones Edema) twice
    assert len(set(doubled.ids)) == 5
    assert [i.endswith("#2") for i in doubled.ids] == [False, True, False, True, False]
    np.testing.assert_array_equal(doubled.labels[0], doubled.labels[1])
    # ignore policy: an uncertain label is not a positive.
    ignored = load(root, val_fraction=0.0, oversample_positives=True)[0].split("train")
    assert len(ignored) == 4
    assert doubled.patient_ids[1] == doubled.patient_ids[0]
    assert len(load(root, val_fraction=0.0)[0].split("test")) == 0


def test_partial_download_warns_once_with_the_count(tmp_path):
    train = [row(p) for p in range(1, 6)]
    root = make_chexpert(tmp_path, train, present=[train[0]["Path"], train[3]["Path"]])
    dataset, warnings = load(root, val_fraction=0.0)
    for name in dataset.split_names:
        dataset.split(name)
    assert len(warnings) == 1
    assert "3 of 5 listed frontal images are missing" in warnings[0] and "using the 2 present" in warnings[0]
    assert list(dataset.split("train").ids) == [train[0]["Path"], train[3]["Path"]]


def test_no_images_and_missing_tables_are_usage_errors(tmp_path):
    root = make_chexpert(tmp_path / "a", [row(1)], present=[])
    with pytest.raises(UsageError, match="no images"):
        load(root)[0].split("train")
    root = make_chexpert(tmp_path / "b", [row(1)])
    (root / RELEASE / "valid.csv").unlink()
    with pytest.raises(UsageError, match="missing under .*valid.csv"):
        load(root)
    with pytest.raises(UsageError, match="no train.csv"):
        load(tmp_path)
    with pytest.raises(UsageError, match="not a folder"):
        load(tmp_path / "absent")


def test_table_paths_cannot_leave_the_release_folder(tmp_path):
    evil = row(2)
    evil["Path"] = f"{RELEASE}/../../secret.jpg"
    root = make_chexpert(tmp_path / "root", [row(1), evil], present=[row(1)["Path"]])
    cv2.imwrite(str(tmp_path / "secret.jpg"), np.zeros((4, 4), np.uint8))
    dataset, warnings = load(root, val_fraction=0.0)
    assert len(dataset.split("train")) == 1 and "1 of 2" in warnings[0]
    link = root / RELEASE / "train" / "patient00009"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UsageError, match="patient00009"):
        load(root)[0].split("train")


def test_fingerprint_changes_with_options_and_files(tmp_path):
    root = labelled_layout(tmp_path)
    first = load(root)[0].fingerprint()
    assert str(tmp_path) not in first
    assert load(root, uncertain="ones")[0].fingerprint() != first
    cv2.imwrite(str(root / row(1)["Path"]), np.zeros((30, 30), np.uint8))
    assert load(root)[0].fingerprint() != first


# --------------------------------------------------------------------------- the real sample


@pytest.fixture(scope="module")
def real_chexpert():
    root = DATA / "chexpert"
    if not (root / RELEASE / "train.csv").is_file():
        pytest.skip(f"real CheXpert sample not found at {root}")
    warnings: list[str] = []
    start = time.perf_counter()
    dataset = CheXpert(CheXpert.Options(root=str(root), uncertain="seed"), DatasetContext(warn=warnings.append))
    splits = {name: dataset.split(name) for name in dataset.split_names}
    return dataset, splits, warnings, time.perf_counter() - start


@pytest.mark.realdata
def test_real_chexpert_finds_the_17_images(real_chexpert):
    dataset, splits, warnings, seconds = real_chexpert
    assert len(splits["train"]) + len(splits["val"]) == 17
    assert len(splits["test"]) == 0
    assert len(warnings) == 1 and "using the 17 present" in warnings[0]
    for name in ("train", "val"):
        for i in range(len(splits[name])):
            image = dataset.read_image(name, i)
            assert image.ndim == 2 and image.dtype == np.uint8 and min(image.shape) > 100
    assert seconds < 20  # loose: a shared CI machine; about 1 s measured


@pytest.mark.realdata
def test_real_chexpert_labels_follow_the_seed_policy(real_chexpert):
    dataset, splits, _, _ = real_chexpert
    wanted = set(splits["train"].ids) | set(splits["val"].ids)
    with open(DATA / "chexpert" / RELEASE / "train.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        table = {r[0]: dict(zip(header, r, strict=True)) for r in reader if r[0] in wanted}
    seen_uncertain = False
    for name in ("train", "val"):
        split = splits[name]
        for path, labels in zip(split.ids, split.labels.tolist(), strict=True):
            for finding, value in zip(dataset.classes, labels, strict=True):
                raw = table[path][finding]
                if raw == "-1.0":
                    seen_uncertain = True
                    expected = 1.0 if finding in ("Edema", "Atelectasis") else 0.0
                else:
                    expected = float(raw) if raw else 0.0
                assert value == expected, (path, finding, raw)
    assert seen_uncertain


@pytest.mark.realdata
def test_real_chexpert_missing_count_is_the_listed_frontal_images_not_present(real_chexpert):
    _, _, warnings, _ = real_chexpert
    listed = 0
    for table in ("train.csv", "valid.csv"):
        with open(DATA / "chexpert" / RELEASE / table, newline="") as f:
            listed += sum(r["Frontal/Lateral"] == "Frontal" for r in csv.DictReader(f))
    assert warnings == [
        f"chexpert: {listed - 17:,} of {listed:,} listed frontal images are missing under "
        f"{(DATA / 'chexpert' / RELEASE).resolve()} (partial download?); using the 17 present"
    ]


@pytest.mark.realdata
@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones", {"Atelectasis": "ones", "Edema": "zeros"}],
                         ids=["ignore", "zeros", "ones", "per-class"])
def test_real_chexpert_rows_under_each_uncertain_policy(real_chexpert, policy):
    dataset = CheXpert(CheXpert.Options(root=str(DATA / "chexpert"), uncertain=policy), DatasetContext())
    with open(DATA / "chexpert" / RELEASE / "train.csv", newline="") as f:
        table = {r["Path"]: r for r in csv.DictReader(f)}
    per_class = policy if isinstance(policy, dict) else dict.fromkeys(dataset.classes, policy)
    uncertain_to = {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}
    seen_uncertain = 0
    for name in ("train", "val"):
        split = dataset.split(name)
        for path, labels in zip(split.ids, split.labels.tolist(), strict=True):
            for finding, value in zip(dataset.classes, labels, strict=True):
                raw = table[path][finding]
                if raw == "-1.0":
                    seen_uncertain += 1
                    expected = uncertain_to[per_class.get(finding, "ignore")]
                else:
                    expected = float(raw) if raw else 0.0  # blank = 0 under every policy
                assert value == expected or (math.isnan(expected) and math.isnan(value)), (path, finding, raw)
    assert seen_uncertain
