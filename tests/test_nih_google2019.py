"""``nih`` with ``labels: google2019``: the expert labels of Majkowska et al. 2020, synthetic and real."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cxrbench_nih
import numpy as np
import pytest
from cxrbench_nih import NIHChestXray14
from cxrbench_nih.tables import GOOGLE2019_CLASSES, read_google2019

from cxrbench.config import parse_grid
from cxrbench.errors import ConfigError, UsageError
from cxrbench.grid import expand
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry
from tests.conftest import builtin_plugins
from tests.test_nih import DATA, load, make_nih

GOOGLE_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                 "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,Pneumothorax,"
                 "Airspace opacity,Nodule or mass,Set Id")
FRACTURE, PTX, OPACITY, NODULE_OR_MASS = range(4)


def write_google(root: Path, rows: list[tuple[str, int, str, str, str, str, str]], name: str = "") -> Path:
    """(image, patient, fracture, pneumothorax, opacity, nodule or mass, set) rows, YES / NO / ''."""
    lines = [GOOGLE_HEADER] + [f"{img},No Finding,0,{pat},50,M,PA,2500,2048,0.168,0.168,{f},{p},{o},{n},{s}"
                               for img, pat, f, p, o, n, s in rows]
    path = root / (name or "google2019_nih-chest-xray-labels.csv")
    path.write_text("\n".join(lines) + "\n")
    return path


ENTRIES = [
    # name, NIH findings, patient, view, original w, h
    ("00000001_000.png", "Nodule", 1, "PA", 1024, 1024),           # train: Nodule -> Nodule or mass
    ("00000002_000.png", "Mass|Pneumothorax", 2, "PA", 1024, 1024),  # train
    ("00000003_000.png", "Consolidation|Infiltration", 3, "PA", 1024, 1024),  # train: no airspace opacity
    ("00000004_000.png", "No Finding", 4, "PA", 1024, 1024),       # Google val
    ("00000004_001.png", "Mass", 4, "PA", 1024, 1024),             # same patient, not labelled by Google
    ("00000005_000.png", "Pneumothorax", 5, "PA", 1024, 1024),     # Google test, boxed
    ("00000006_000.png", "Cardiomegaly|Nodule", 6, "PA", 1024, 1024),  # official test, boxed, not Google's
]
TRAIN_VAL = ["00000001_000.png", "00000002_000.png", "00000003_000.png", "00000004_000.png", "00000004_001.png"]
TEST = ["00000005_000.png", "00000006_000.png"]
BOXES = [
    ("00000005_000.png", "Pneumothorax", 100, 200, 300, 400),
    ("00000006_000.png", "Cardiomegaly", 10, 10, 500, 500),
    ("00000006_000.png", "Nodule", 512, 512, 64, 32),
]
GOOGLE = [
    ("00000004_000.png", 4, "NO", "YES", "YES", "NO", "val"),
    ("00000005_000.png", 5, "YES", "YES", "NO", "", "test"),
]


@pytest.fixture
def root(tmp_path):
    root = make_nih(tmp_path / "nih", ENTRIES, BOXES, train_val=TRAIN_VAL, test=TEST,
                    present={e[0]: (256, 256) for e in ENTRIES})
    write_google(root, GOOGLE)
    return root


def test_classes_splits_and_labels_by_hand(root):
    data, warnings = load(root, labels="google2019")
    assert data.classes == list(GOOGLE2019_CLASSES) and warnings == []
    train, val, test = (data.split(n) for n in ("train", "val", "test"))
    # patient 4 is in Google's validation set: both its images leave train
    assert train.ids == ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    assert val.ids == ["00000004_000.png"] and test.ids == ["00000005_000.png"]
    nan = math.nan
    np.testing.assert_array_equal(train.labels, [[nan, 0, nan, 1], [nan, 1, nan, 1], [nan, 0, nan, 0]])
    np.testing.assert_array_equal(val.labels, [[0, 1, 1, 0]])  # Google's, not NIH's "No Finding"
    np.testing.assert_array_equal(test.labels, [[1, 1, 0, nan]])  # a blank expert label stays unknown


def test_boxes_of_the_mapped_findings_and_expert_labels_where_google_has_them(root):
    data, _ = load(root, labels="google2019")
    boxes = data.split("boxes")
    assert boxes.ids == ["00000005_000.png", "00000006_000.png"]
    np.testing.assert_array_equal(boxes.labels, [[1, 1, 0, math.nan], [math.nan, 0, math.nan, 1]])
    table = boxes.boxes.sort_values("index")
    assert table["class_index"].tolist() == [PTX, NODULE_OR_MASS]  # Cardiomegaly has no expert class
    np.testing.assert_allclose(table[["x", "y", "w", "h"]].to_numpy(), [[25, 50, 75, 100], [128, 128, 16, 8]])
    # the tuning part is drawn from the same published population as with NIH's labels
    assert data.tuning_population("boxes") == load(root)[0].tuning_population("boxes")


def test_default_labels_are_unchanged_and_leave_fingerprint_and_cell_ids_alone(root):
    nih, _ = load(root)
    assert nih.classes == list(cxrbench_nih.tables.NIH8)
    assert '"labels"' not in nih.fingerprint()
    assert load(root, labels="nih")[0].fingerprint() == nih.fingerprint()
    google = load(root, labels="google2019")[0].fingerprint()
    assert '"labels": "google2019"' in google
    write_google(root, [*GOOGLE, ("00000006_000.png", 6, "NO", "NO", "NO", "YES", "test")])
    assert load(root, labels="google2019")[0].fingerprint() != google  # the expert table is part of the data
    assert load(root)[0].fingerprint() == nih.fingerprint()  # but not of the default's

    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("nih", cxrbench_nih)], entry_points=False)
    grid = {"name": "g", "datasets": [{"name": "nih", "options": {"root": str(root)}},
                                      {"name": "nih", "options": {"root": str(root), "labels": "google2019"}}],
            "backbones": ["resnet18"], "heads": ["avg"]}
    cells = expand(parse_grid(grid, Registry.from_plugin_manager(pm)), lambda ds: "fingerprint")
    assert "labels" not in cells[0].config["dataset"]["options"]
    assert cells[1].config["dataset"]["options"]["labels"] == "google2019"


def test_option_errors(root):
    from cxrbench.options import parse_options

    for bad in ({"task": "binary"}, {"classes": "nih14"}):
        with pytest.raises(ConfigError, match="labels google2019 has its own 4 classes") as info:
            parse_options(NIHChestXray14.Options, {"root": str(root), "labels": "google2019", **bad},
                          "datasets[0].options", "dataset 'nih'")
        assert info.value.path == "datasets[0].options.labels"
    (root / "google2019_nih-chest-xray-labels.csv").unlink()
    with pytest.raises(UsageError, match="missing under .*google2019_nih-chest-xray-labels.csv"):
        load(root, labels="google2019")
    load(root)  # the default needs no expert table


@pytest.mark.parametrize(("row", "message"), [
    (("00000004_000.png", 4, "MAYBE", "NO", "NO", "NO", "val"), "Fracture must be YES, NO or blank, got 'MAYBE'"),
    (("00000004_000.png", 4, "NO", "NO", "NO", "NO", "train"), "Set Id must be test or val"),
])
def test_bad_expert_tables_are_one_line(tmp_path, row, message):
    path = write_google(tmp_path, [row])
    with pytest.raises(UsageError, match=message):
        read_google2019(path)
    write_google(tmp_path, [GOOGLE[0], GOOGLE[0]])
    with pytest.raises(UsageError, match="has more than one row"):
        read_google2019(path)


def test_the_gzipped_table_is_read_too(root):
    import gzip

    plain = root / "google2019_nih-chest-xray-labels.csv"
    (root / "google2019_nih-chest-xray-labels.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    assert load(root, labels="google2019")[0].split("val").ids == ["00000004_000.png"]


# --------------------------------------------------------------------------- the real table


@pytest.fixture(scope="module")
def real():
    root = DATA / "nih"
    if not (root / "google2019_nih-chest-xray-labels.csv").is_file():
        pytest.skip(f"real NIH sample with the expert labels not found at {root}")
    data = load(root, labels="google2019")[0]
    with open(root / "google2019_nih-chest-xray-labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return data, rows


@pytest.mark.realdata
def test_real_expert_table_parses_in_full(real):
    _, rows = real
    table = read_google2019(DATA / "nih" / "google2019_nih-chest-xray-labels.csv")
    assert len(table) == len(rows) == 4376
    assert table["set"].value_counts().to_dict() == {"val": 2414, "test": 1962}
    for column in GOOGLE2019_CLASSES:
        assert int(table[column].sum()) == sum(r[column] == "YES" for r in rows), column
    assert table["patient"].nunique() == len({r["Patient ID"] for r in rows})


@pytest.mark.realdata
def test_real_local_images_in_the_expert_sets(real):
    data, rows = real
    present = {p.name for p in (DATA / "nih" / "images").glob("*.png")}
    by_set = {s: {r["Image Index"] for r in rows if r["Set Id"] == s and r["Image Index"] in present}
              for s in ("test", "val")}
    assert len(by_set["test"]) + len(by_set["val"]) == 23
    assert set(data.split("test").ids) == by_set["test"] and set(data.split("val").ids) == by_set["val"]
    expert = {r["Image Index"]: [{"YES": 1.0, "NO": 0.0}[r[c]] for c in GOOGLE2019_CLASSES] for r in rows}
    for name in ("test", "val"):
        split = data.split(name)
        for i, image in enumerate(split.ids):
            assert split.labels[i].tolist() == expert[image]
    google_patients = {f"{int(r['Patient ID']):08d}" for r in rows}
    train = data.split("train")
    assert not set(train.patient_ids) & google_patients and len(train) > 0
    with open(DATA / "nih" / "Data_Entry_2017_v2020.csv", newline="") as f:
        findings = {r[0]: r[1].split("|") for r in csv.reader(f)}
    for i, image in enumerate(train.ids):
        labels = train.labels[i]
        assert labels[NODULE_OR_MASS] == float("Nodule" in findings[image] or "Mass" in findings[image])
        assert labels[PTX] == float("Pneumothorax" in findings[image])
        assert math.isnan(labels[FRACTURE]) and math.isnan(labels[OPACITY])
