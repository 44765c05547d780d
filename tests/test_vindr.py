"""The ``vindr`` dataset plugin: reader rules by hand, both layouts on synthetic files, then the real table."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cxrbench_vindr
import numpy as np
import pandas as pd
import pytest
from cxrbench_vindr import VinDrCXR
from cxrbench_vindr.consensus import combine_boxes, fuse_boxes, vote_labels
from cxrbench_vindr.tables import GLOBAL_LABELS, KAGGLE14, LOCAL22, read_annotations, readings_from_annotations

from cxrbench.dicom import write_dicom
from cxrbench.errors import ConfigError, UsageError
from cxrbench.interfaces import DatasetContext
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry
from cxrbench.testing import DatasetContract, make_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_TABLE = DATA / "vindr" / "train.csv"
KAGGLE_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
CARDIO = KAGGLE14.index("Cardiomegaly")
AORTIC = KAGGLE14.index("Aortic enlargement")
NODULE = KAGGLE14.index("Nodule/Mass")


def class_id(name: str) -> int:
    return KAGGLE14.index(name) if name in KAGGLE14 else 14


def write_dicoms(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, (h, w) in sizes.items():
        ramp = (np.arange(h * w, dtype=np.uint32) % 4096).astype(np.uint16).reshape(h, w)
        write_dicom(folder / f"{image_id}.dicom", ramp, bits_stored=12)


def write_kaggle(root: Path, rows: list[tuple], sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """``train.csv`` from (image_id, class_name, rad_id, box or None) rows, and a DICOM per image (64 x 64)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [KAGGLE_HEADER]
    for image_id, name, reader, box in rows:
        coords = ",".join(f"{v:.1f}" for v in box) if box is not None else ",,,"
        lines.append(f"{image_id},{name},{class_id(name)},{reader},{coords}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    ids = list(dict.fromkeys(r[0] for r in rows))
    write_dicoms(root / "train", sizes if sizes is not None else dict.fromkeys(ids, (64, 64)))
    return root


def load(root: Path, **options) -> tuple[VinDrCXR, list[str]]:
    warnings: list[str] = []
    return VinDrCXR(VinDrCXR.Options(root=str(root), **options), DatasetContext(warn=warnings.append)), warnings


def hashed(ids: list[str], fractions: dict[str, float], seed: int = 0) -> dict[str, str]:
    """The split of each id, by the rule the docs give: sha256("<seed>:<id>") as a number in [0, 1)."""
    out = {}
    for image_id in ids:
        u = int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:8], "big") / 2.0**64
        start, out[image_id] = 0.0, "train"
        for name, width in fractions.items():
            if start <= u < start + width:
                out[image_id] = name
            start += width
    return out


# --------------------------------------------------------------------------- votes and fusion, by hand


def test_vote_rules():
    votes = np.array([[0, 1, 2, 3], [1, 1, 0, 0]])
    readers = np.array([3, 1])
    np.testing.assert_array_equal(vote_labels(votes, readers, "any"), [[0, 1, 1, 1], [1, 1, 0, 0]])
    # strict majority of the image's readers: 2 of 3, and 1 of a single (consensus) reading
    np.testing.assert_array_equal(vote_labels(votes, readers, "majority"), [[0, 0, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match="labels must be"):
        vote_labels(votes, readers, "most")


def test_fusion_clusters_by_iou_and_averages_members():
    boxes = np.array([[0, 0, 20, 20], [1, 1, 21, 21], [40, 40, 60, 60], [2, 0, 22, 20.0]])
    result = fuse_boxes(boxes, np.array(["R1", "R2", "R3", "R3"]), 0.5)
    assert result.members == ((0, 1, 3), (2,))
    np.testing.assert_allclose(result.boxes[0], [1, 1 / 3, 21, 61 / 3])
    np.testing.assert_allclose(result.boxes[1], [40, 40, 60, 60])
    assert result.support.tolist() == [3, 1]


def test_fusion_matches_against_the_running_fused_box_and_needs_iou_above_the_threshold():
    # IoU of [0,0,10,10] and [5,0,15,10] is 50 / 150 = 1/3: at threshold 1/3 exactly they stay apart (WBF's '>')
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10.0]])
    assert fuse_boxes(boxes, np.array(["R1", "R2"]), 1 / 3).members == ((0,), (1,))
    assert fuse_boxes(boxes, np.array(["R1", "R2"]), 0.3).members == ((0, 1),)
    # the third box overlaps the fused box [2.5,0,12.5,10] above 0.5, though it overlaps box 0 by only 1/3
    three = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [5, 0, 15, 10.0]])
    assert fuse_boxes(three, np.array(["R1", "R2", "R3"]), 0.3).members == ((0, 1, 2),)


def hand_table() -> pd.DataFrame:
    rows = [
        ("A", "Cardiomegaly", "R1", (10, 10, 30, 30)), ("A", "Cardiomegaly", "R2", (12, 12, 32, 32)),
        ("A", "No finding", "R3", None),
        ("B", "Nodule/Mass", "R1", (0, 0, 10, 10)), ("B", "No finding", "R2", None), ("B", "No finding", "R3", None),
        ("C", "Aortic enlargement", "R1", (0, 0, 20, 20)), ("C", "Aortic enlargement", "R2", (1, 1, 21, 21)),
        ("C", "Aortic enlargement", "R3", (40, 40, 60, 60)),
        ("D", "Cardiomegaly", "R1", (0, 0, 10, 10)), ("D", "Cardiomegaly", "R2", (6, 0, 16, 10)),
        ("D", "No finding", "R3", None),
    ]
    frame = pd.DataFrame([(i, c, r, *(b if b else (math.nan,) * 4)) for i, c, r, b in rows],
                         columns=["image_id", "class_name", "reader", "x_min", "y_min", "x_max", "y_max"])
    return frame


def test_consensus_and_all_by_hand():
    readings = readings_from_annotations(hand_table(), KAGGLE14)
    assert readings.image_ids.tolist() == ["A", "B", "C", "D"] and readings.readers.tolist() == [3, 3, 3, 3]
    assert readings.votes[:, CARDIO].tolist() == [2, 0, 0, 2]
    assert readings.votes[:, NODULE].tolist() == [0, 1, 0, 0]
    assert readings.votes[:, AORTIC].tolist() == [0, 0, 3, 0]
    majority = vote_labels(readings.votes, readings.readers, "majority")
    any_ = vote_labels(readings.votes, readings.readers, "any")

    fused = combine_boxes(readings.boxes, readings.readers, majority, "consensus", 0.5)
    got = {(int(r.image), int(r.class_index)): (r.x0, r.y0, r.x1, r.y1) for r in fused.itertuples()}
    # A: IoU 324 / 476 = 0.68 -> one box, the mean; B: one reader of three, and no majority;
    # C: R1 and R2 fuse, R3's box alone is one reader; D: IoU 40 / 160 = 0.25, two lone boxes
    assert got == {(0, CARDIO): (11.0, 11.0, 31.0, 31.0), (2, AORTIC): (0.5, 0.5, 20.5, 20.5)}
    assert (fused["reader"] == "consensus").all()

    everything = combine_boxes(readings.boxes, readings.readers, any_, "all")
    assert len(everything) == 8  # A 2, B 1, C 3, D 2
    majority_only = combine_boxes(readings.boxes, readings.readers, majority, "all")
    assert len(majority_only) == 7 and not ((majority_only["image"] == 1).any())  # B's lone box has no label


def test_consensus_does_not_depend_on_row_order():
    table = hand_table()
    readings = readings_from_annotations(table, KAGGLE14)
    shuffled = readings_from_annotations(table.iloc[::-1].reset_index(drop=True), KAGGLE14)
    labels = vote_labels(readings.votes, readings.readers, "majority")
    a = combine_boxes(readings.boxes, readings.readers, labels, "consensus")
    # the reversed table lists images D, C, B, A: map its rows back before comparing
    order = [shuffled.image_ids.tolist().index(i) for i in readings.image_ids]
    b = combine_boxes(shuffled.boxes, shuffled.readers, labels[np.argsort(order)], "consensus")
    b["image"] = [readings.image_ids.tolist().index(shuffled.image_ids[i]) for i in b["image"]]
    pd.testing.assert_frame_equal(a, b.sort_values(["image", "class_index", "x0", "y0"]).reset_index(drop=True))


def reference_wbf(boxes: np.ndarray, readers: np.ndarray, iou_thr: float, scale: float):
    """The reference implementation (ZFTurbo's ensemble-boxes) on the same boxes, taken in the same order."""
    ensemble_boxes = pytest.importorskip("ensemble_boxes")
    models = sorted(set(readers.tolist()))
    # confidences a hair apart pin the reference's order (it sorts by confidence) to ours
    scores = 1.0 - 1e-7 * np.arange(len(boxes))
    boxes_list = [(boxes[readers == m] / scale).tolist() for m in models]
    scores_list = [scores[readers == m].tolist() for m in models]
    labels_list = [[0] * int((readers == m).sum()) for m in models]
    fused, conf, _ = ensemble_boxes.weighted_boxes_fusion(boxes_list, scores_list, labels_list, iou_thr=iou_thr,
                                                          skip_box_thr=0.0, conf_type="avg")
    return np.asarray(fused) * scale, np.rint(np.asarray(conf) * len(models)).astype(int)


def sort_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(boxes.T[::-1])]


def test_fusion_agrees_with_the_reference_implementation_on_random_readings():
    rng = np.random.default_rng(0)
    for trial in range(60):
        centres = rng.uniform(50, 450, size=(rng.integers(1, 4), 2))
        rows, readers = [], []
        for reader in ("R1", "R2", "R3"):
            for cx, cy in centres:
                if rng.random() < 0.7:
                    w, h = rng.uniform(30, 80, size=2)
                    dx, dy = rng.normal(0, 10, size=2)
                    rows.append([cx + dx - w / 2, cy + dy - h / 2, cx + dx + w / 2, cy + dy + h / 2])
                    readers.append(reader)
        if not rows:
            continue
        boxes, who = np.array(rows), np.array(readers, dtype=object)
        ours = fuse_boxes(boxes, who, 0.5)
        ref_boxes, ref_members = reference_wbf(boxes, who, 0.5, 500.0)
        mine = np.column_stack([ours.boxes, [len(m) for m in ours.members]])
        theirs = np.column_stack([ref_boxes, ref_members])
        np.testing.assert_allclose(sort_rows(mine), sort_rows(theirs), atol=1e-3, err_msg=f"trial {trial}")


# --------------------------------------------------------------------------- the Kaggle layout


def hand_rows() -> list[tuple]:
    table = hand_table()
    return [(r.image_id, r.class_name, r.reader, None if math.isnan(r.x_min) else (r.x_min, r.y_min, r.x_max, r.y_max))
            for r in table.itertuples()]


def test_kaggle_layout_splits_labels_and_boxes(tmp_path):
    ids = [f"img{i:02d}" for i in range(40)]
    rows = hand_rows() + [(i, "No finding", r, None) for i in ids for r in ("R4", "R5", "R6")]
    root = write_kaggle(tmp_path / "vindr", rows)
    data, warnings = load(root, test_fraction=0.3, val_fraction=0.2)
    assert data.layout == "kaggle" and data.classes == list(KAGGLE14) and warnings == []
    expected = hashed(["A", "B", "C", "D", *ids], {"test": 0.3, "val": 0.2})
    for name in ("train", "val", "test"):
        assert sorted(data.split(name).ids) == sorted(i for i, s in expected.items() if s == name), name
    assert data.split("boxes") is data.split("test")
    assert data.split("train").boxes.empty
    every = {i: (name, row) for name in ("train", "val", "test") for row, i in enumerate(data.split(name).ids)}
    name, row = every["A"]
    assert data.split(name).labels[row, CARDIO] == 1.0 and data.split(name).labels[row].sum() == 1.0
    name_b, row_b = every["B"]
    assert data.split(name_b).labels[row_b].sum() == 0.0  # one reader of three: no majority
    for name in ("val", "test"):
        split = data.split(name)
        assert split.image_sizes.tolist() == [[64, 64]] * len(split)
        assert split.patient_ids == split.ids  # no patient ids are published
    boxed = {(data.split(n).ids[int(b.index)], int(b.class_index)): (b.x, b.y, b.w, b.h)
             for n in ("val", "test") for b in data.split(n).boxes.itertuples()}
    want = {("A", CARDIO): (11.0, 11.0, 20.0, 20.0), ("C", AORTIC): (0.5, 0.5, 20.0, 20.0)}
    assert boxed == {k: v for k, v in want.items() if every[k[0]][0] != "train"}


def test_kaggle_layout_with_every_readers_box_and_any_vote(tmp_path):
    root = write_kaggle(tmp_path / "vindr", hand_rows())
    data, _ = load(root, readers="all", labels="any", test_fraction=0.5, val_fraction=0.49)
    where = hashed(["A", "B", "C", "D"], {"test": 0.5, "val": 0.49})
    boxed = sum(len(data.split(n).boxes) for n in ("val", "test"))
    per_image = {"A": 2, "B": 1, "C": 3, "D": 2}
    assert boxed == sum(n for i, n in per_image.items() if where[i] != "train")


def test_boxes_are_clipped_to_the_dicom_size_from_its_header(tmp_path):
    rows = [("big", "Cardiomegaly", r, (30, 40, 90, 70)) for r in ("R1", "R2", "R3")]
    root = write_kaggle(tmp_path / "vindr", rows, sizes={"big": (50, 80)})
    data, _ = load(root, test_fraction=0.5, val_fraction=0.49)
    split = next(data.split(n) for n in ("val", "test") if len(data.split(n)))
    assert split.image_sizes.tolist() == [[50, 80]]
    assert data.read_image("test" if len(data.split("test")) else "val", 0).shape == (50, 80)
    assert split.boxes[["x", "y", "w", "h"]].to_numpy().tolist() == [[30.0, 40.0, 50.0, 10.0]]


def test_partial_download_warns_once_and_no_image_is_an_error(tmp_path):
    rows = [(i, "No finding", r, None) for i in ("a", "b", "c") for r in ("R1", "R2", "R3")]
    root = write_kaggle(tmp_path / "vindr", rows, sizes={"a": (8, 8)})
    data, warnings = load(root)
    assert sum(len(data.split(n)) for n in ("train", "val", "test")) == 1
    assert len(warnings) == 1 and "2 of 3 listed images are missing" in warnings[0]
    empty = write_kaggle(tmp_path / "empty", rows, sizes={})
    with pytest.raises(UsageError, match="none of the 3 listed images"):
        load(empty)[0].split("train")


def test_layout_errors_are_one_line(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UsageError, match=r"missing under .* \(kaggle layout\): train.csv"):
        load(tmp_path / "nothing")
    (tmp_path / "half" / "annotations").mkdir(parents=True)
    (tmp_path / "half" / "annotations" / "annotations_train.csv").write_text("image_id\n")
    with pytest.raises(UsageError, match="physionet layout.*annotations_test.csv"):
        load(tmp_path / "half")
    root = write_kaggle(tmp_path / "vindr", hand_rows())
    with pytest.raises(UsageError, match="only the 14 challenge findings; Edema need the PhysioNet layout"):
        load(root, classes=["Edema"])
    (root / "train.csv").write_text(KAGGLE_HEADER + "\nA,Cardiomegaly,3,R1,10,10,5,30\n")
    with pytest.raises(UsageError, match=r"train.csv: row 2 has x_max <= x_min"):
        load(root)[0].split("train")
    (root / "train.csv").write_text("image_id,class_name,rad_id\nA,Cardiomegaly,R1\n")
    with pytest.raises(UsageError, match="no column"):
        load(root)[0].split("train")


@pytest.fixture(scope="module")
def registry():
    pm = build_plugin_manager(plugins=[("vindr", cxrbench_vindr)], entry_points=False)
    return Registry.from_plugin_manager(pm)


@pytest.mark.parametrize(("options", "path", "message"), [
    ({"readers": "fused"}, "readers", "expected one of"),
    ({"labels": "most"}, "labels", "expected one of"),
    ({"fusion_iou": 1.5}, "fusion_iou", "fusion_iou must be in"),
    ({"classes": ["Cardiomegaly", "Heart attack"]}, "classes", "does not label"),
    ({"classes": "all14"}, "classes", "classes must be"),
    ({"test_fraction": 0.6, "val_fraction": 0.5}, "test_fraction", "must be below 1"),
])
def test_bad_options_name_the_option(tmp_path, registry, options, path, message):
    root = write_kaggle(tmp_path / "vindr", hand_rows())
    with pytest.raises(ConfigError, match=message) as info:
        make_dataset("vindr", {"root": str(root), **options}, registry=registry)
    assert info.value.path.endswith(path) and "\n" not in str(info.value)


def test_class_names_in_any_case_give_the_same_options_and_fingerprint(tmp_path):
    root = write_kaggle(tmp_path / "vindr", hand_rows())
    a = load(root, classes=["pleural EFFUSION", "nodule/mass"])[0]
    b = load(root, classes=["Pleural effusion", "Nodule/Mass"])[0]
    assert a.classes == ["Pleural effusion", "Nodule/Mass"] and a.options == b.options
    assert a.fingerprint() == b.fingerprint() != load(root, readers="all")[0].fingerprint()


# --------------------------------------------------------------------------- the PhysioNet layout


LABEL_COLUMNS = [*LOCAL22, *GLOBAL_LABELS[:-1]]


def write_physionet(root: Path) -> Path:
    """Train: 30 images, 3 readers (rad_ID in the labels, as the release spells it); test: 6 consensus images."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    train_ids = [f"t{i:02d}" for i in range(30)]
    test_ids = [f"s{i}" for i in range(6)]
    box_lines = ["image_id,rad_id,class_name,x_min,y_min,x_max,y_max"]
    label_lines = ["image_id,rad_ID," + ",".join(LABEL_COLUMNS) + ",Other diseases,No finding"]
    for k, image_id in enumerate(train_ids):
        for reader in ("R1", "R2", "R3"):
            marks = {"Cardiomegaly"} if (k % 3 == 0 and reader != "R3") else set()
            if k % 5 == 0 and reader == "R1":
                marks |= {"Pneumonia"}  # a global label: votes only
            for name in sorted(marks - {"Pneumonia"}):
                box_lines.append(f"{image_id},{reader},{name},{10 + k % 2},10,40,40")
            if not marks:
                box_lines.append(f"{image_id},{reader},No finding,,,,")
            values = [int(c in marks) for c in LABEL_COLUMNS] + [0, int(not marks)]
            label_lines.append(f"{image_id},{reader}," + ",".join(map(str, values)))
    (ann / "annotations_train.csv").write_text("\n".join(box_lines) + "\n")
    (ann / "image_labels_train.csv").write_text("\n".join(label_lines) + "\n")
    test_boxes = ["image_id,class_name,x_min,y_min,x_max,y_max"]
    test_labels = ["image_id," + ",".join(LABEL_COLUMNS) + ",Other disease,No finding"]
    for k, image_id in enumerate(test_ids):
        cardio = k % 2 == 0
        if cardio:  # two overlapping consensus boxes: kept as published, never fused
            test_boxes += [f"{image_id},Cardiomegaly,5,5,30,30", f"{image_id},Cardiomegaly,6,6,31,31"]
        else:
            test_boxes.append(f"{image_id},No finding,,,,")
        values = [int(c == "Cardiomegaly" and cardio) for c in LABEL_COLUMNS] + [0, int(not cardio)]
        test_labels.append(f"{image_id}," + ",".join(map(str, values)))
    (ann / "annotations_test.csv").write_text("\n".join(test_boxes) + "\n")
    (ann / "image_labels_test.csv").write_text("\n".join(test_labels) + "\n")
    write_dicoms(root / "train", dict.fromkeys(train_ids, (48, 48)))
    write_dicoms(root / "test", dict.fromkeys(test_ids, (48, 48)))
    return root


def test_physionet_layout_official_test_and_reader_votes(tmp_path):
    root = write_physionet(tmp_path / "vindr")
    data, warnings = load(root, classes=["Cardiomegaly", "Pneumonia", "Other diseases"], val_fraction=0.3)
    assert data.layout == "physionet" and warnings == []
    assert data.classes == ["Cardiomegaly", "Pneumonia", "Other disease"]
    test = data.split("test")
    assert test.ids == [f"s{i}" for i in range(6)]
    assert test.labels[:, 0].tolist() == [1, 0, 1, 0, 1, 0]
    # the consensus boxes as published: two per positive image, unfused
    assert len(test.boxes) == 6 and sorted(set(test.boxes["index"])) == [0, 2, 4]
    expected = hashed([f"t{i:02d}" for i in range(30)], {"val": 0.3})
    assert sorted(data.split("val").ids) == sorted(i for i, s in expected.items() if s == "val")
    train_val = {i: (n, r) for n in ("train", "val") for r, i in enumerate(data.split(n).ids)}
    for k in range(30):
        name, row = train_val[f"t{k:02d}"]
        labels = data.split(name).labels[row]
        assert labels[0] == (1.0 if k % 3 == 0 else 0.0)  # two of three readers
        assert labels[1] == 0.0  # one reader's Pneumonia: no majority
    val = data.split("val")
    for b in val.boxes.itertuples():
        k = int(val.ids[int(b.index)][1:])
        assert k % 3 == 0 and (b.x, b.y, b.w, b.h) == (10 + k % 2, 10.0, 30 - k % 2, 30.0)
    anyone = load(root, classes=["Pneumonia"], labels="any", val_fraction=0.3)[0]
    pneumonia = {i: anyone.split(n).labels[r, 0] for n in ("train", "val") for r, i in enumerate(anyone.split(n).ids)}
    assert pneumonia == {f"t{k:02d}": float(k % 5 == 0) for k in range(30)}


def test_physionet_names_a_missing_finding_column(tmp_path):
    root = write_physionet(tmp_path / "vindr")
    path = root / "annotations" / "image_labels_test.csv"
    path.write_text(path.read_text().replace("Cardiomegaly", "Cardio"))
    with pytest.raises(UsageError, match="image_labels_test.csv: no column for finding.*'Cardiomegaly'"):
        load(root)[0].split("test")


class TestVinDrContract(DatasetContract):
    """Every dataset check, on a synthetic PhysioNet layout."""

    name = "vindr"
    plugins = (("vindr", cxrbench_vindr),)

    @pytest.fixture(autouse=True, scope="class")
    def _options(self, request, tmp_path_factory):
        root = write_physionet(tmp_path_factory.mktemp("contract"))
        request.cls.options = {"root": str(root), "classes": ["Cardiomegaly"], "val_fraction": 0.3}


# --------------------------------------------------------------------------- the real table


@pytest.fixture(scope="module")
def real_table() -> pd.DataFrame:
    if not REAL_TABLE.is_file():
        pytest.skip(f"real VinDr-CXR table not found at {REAL_TABLE}")
    return pd.read_csv(REAL_TABLE)


@pytest.fixture(scope="module")
def real_readings(real_table):
    return readings_from_annotations(read_annotations(REAL_TABLE), KAGGLE14)


def test_real_table_counts(real_table, real_readings):
    assert len(real_table) == 67_914
    assert real_table["image_id"].nunique() == 15_000 == len(real_readings.image_ids)
    assert (real_table.groupby("image_id")["rad_id"].nunique() == 3).all() and (real_readings.readers == 3).all()
    drawn = real_table[real_table["class_name"] != "No finding"]
    assert len(drawn) == 36_096 == len(real_readings.boxes)
    counts = real_readings.boxes["class_index"].value_counts().sort_index()
    assert {KAGGLE14[k]: int(n) for k, n in counts.items()} == drawn["class_name"].value_counts().to_dict()
    assert (real_table["class_name"] == "No finding").sum() == 31_818


def test_real_majority_and_any_labels_match_an_independent_count(real_table, real_readings):
    drawn = real_table[real_table["class_name"] != "No finding"]
    readers_per = drawn.groupby(["image_id", "class_name"])["rad_id"].nunique()
    for rule, minimum in (("majority", 2), ("any", 1)):
        labels = vote_labels(real_readings.votes, real_readings.readers, rule)
        want = readers_per[readers_per >= minimum].groupby("class_name").size().to_dict()
        assert {KAGGLE14[k]: int(n) for k, n in enumerate(labels.sum(axis=0)) if n} == want, rule
    majority = vote_labels(real_readings.votes, real_readings.readers, "majority")
    nothing = (real_table["class_name"] == "No finding").groupby(real_table["image_id"]).all()
    assert int(nothing.sum()) == 10_606 and int((majority.sum(axis=1) == 0).sum()) >= 10_606


def test_real_consensus_versus_every_box(real_table, real_readings):
    r = real_readings
    majority = vote_labels(r.votes, r.readers, "majority")
    everyone = combine_boxes(r.boxes, r.readers, vote_labels(r.votes, r.readers, "any"), "all")
    assert len(everyone) == 36_096
    by_majority = combine_boxes(r.boxes, r.readers, majority, "all")
    drawn = real_table[real_table["class_name"] != "No finding"]
    readers_per = drawn.groupby(["image_id", "class_name"])["rad_id"].transform("nunique")
    assert len(by_majority) == int((readers_per >= 2).sum()) == 28_172
    fused = combine_boxes(r.boxes, r.readers, majority, "consensus", 0.5)
    assert len(fused) == 8_163
    # every fused box is a majority finding, and fusing never makes more boxes than half the drawn ones
    assert (majority[fused["image"], fused["class_index"]] == 1).all()
    per_pair = fused.groupby(["image", "class_index"]).size()
    drawn_pair = by_majority.groupby(["image", "class_index"]).size()
    assert (per_pair <= drawn_pair.reindex(per_pair.index) // 2).all()
    # a fused box lies within the hull of the boxes it averages
    hull = by_majority.groupby(["image", "class_index"]).agg(x0=("x0", "min"), y0=("y0", "min"),
                                                           x1=("x1", "max"), y1=("y1", "max"))
    joined = fused.merge(hull, left_on=["image", "class_index"], right_index=True, suffixes=("", "_hull"))
    assert len(joined) == len(fused)
    assert (joined["x0"] >= joined["x0_hull"]).all() and (joined["y1"] <= joined["y1_hull"]).all()


def test_real_consensus_agrees_with_the_reference_implementation(real_readings):
    pytest.importorskip("ensemble_boxes")
    boxes = real_readings.boxes.sort_values(["image", "class_index", "reader", "x0", "y0", "x1", "y1"], kind="stable")
    checked = 0
    for (_, _), group in boxes.groupby(["image", "class_index"], sort=True):
        if group["reader"].nunique() < 2:
            continue
        coords, who = group[["x0", "y0", "x1", "y1"]].to_numpy(), group["reader"].to_numpy(dtype=object)
        ours = fuse_boxes(coords, who, 0.5)
        ref_boxes, ref_members = reference_wbf(coords, who, 0.5, 4096.0)
        mine = np.column_stack([ours.boxes, [len(m) for m in ours.members]])
        np.testing.assert_allclose(sort_rows(mine), sort_rows(np.column_stack([ref_boxes, ref_members])), atol=0.05)
        checked += 1
        if checked == 400:
            break
    assert checked == 400


def test_real_table_builds_with_synthetic_dicoms_for_real_ids(real_table, real_readings, tmp_path):
    root = tmp_path / "vindr"
    (root / "train").mkdir(parents=True)
    (root / "train.csv").write_bytes(REAL_TABLE.read_bytes())
    drawn = real_table.dropna(subset=["x_max"])
    chosen = list(drawn["image_id"].drop_duplicates().iloc[:5]) + list(
        real_table[real_table["class_name"] == "No finding"]["image_id"].drop_duplicates().iloc[:3])
    sizes = {}
    for image_id in chosen:
        rows = drawn[drawn["image_id"] == image_id]
        sizes[image_id] = (int(rows["y_max"].max()) + 16, int(rows["x_max"].max()) + 16) if len(rows) else (64, 64)
        write_dicom(root / "train" / f"{image_id}.dicom", np.zeros(sizes[image_id], np.uint8))
    data, warnings = load(root)
    data.split("train")
    assert len(warnings) == 1 and "14,992 of 15,000 listed images are missing" in warnings[0]
    majority = vote_labels(real_readings.votes, real_readings.readers, "majority")
    position = {i: k for k, i in enumerate(real_readings.image_ids)}
    fused = combine_boxes(real_readings.boxes, real_readings.readers, majority, "consensus")
    seen = 0
    for name in ("train", "val", "test"):
        split = data.split(name)
        for row, image_id in enumerate(split.ids):
            seen += 1
            np.testing.assert_array_equal(split.labels[row], majority[position[image_id]])
            if name == "train":
                continue
            assert tuple(split.image_sizes[row]) == sizes[image_id]
            mine = split.boxes[split.boxes["index"] == row]
            want = fused[fused["image"] == position[image_id]]
            assert len(mine) == len(want)
            np.testing.assert_allclose(mine[["x", "y"]].to_numpy(), want[["x0", "y0"]].to_numpy())
            np.testing.assert_allclose((mine["x"] + mine["w"]).to_numpy(), want["x1"].to_numpy())
    assert seen == len(chosen)


def test_a_grid_cell_on_real_ids(real_table, real_readings, tmp_path):
    """One cell (resnet10t, one epoch) on the real readings of 64 images, shrunk 32 times, as synthetic DICOMs."""
    import cxrbench_cam
    import cxrbench_executors
    import cxrbench_heads
    import cxrbench_timm
    from helpers import store_records

    from cxrbench.config import parse_grid
    from cxrbench.driver import run_grid
    from cxrbench.store import ResultsStore

    majority = vote_labels(real_readings.votes, real_readings.readers, "majority")
    ids = real_readings.image_ids
    positives = list(ids[majority[:, CARDIO] == 1][:32])
    negatives = list(ids[majority.sum(axis=1) == 0][:32])
    subset = real_table[real_table["image_id"].isin(positives + negatives)].copy()
    subset[["x_min", "y_min", "x_max", "y_max"]] = (subset[["x_min", "y_min", "x_max", "y_max"]] / 32).round(1)
    root = tmp_path / "vindr"
    (root / "train").mkdir(parents=True)
    subset.to_csv(root / "train.csv", index=False)
    rng = np.random.default_rng(3)
    for image_id in positives + negatives:
        pixels = rng.integers(0, 400, (96, 96)).astype(np.uint16)
        heart = subset[(subset["image_id"] == image_id) & (subset["class_name"] == "Cardiomegaly")]
        for b in heart.itertuples():
            pixels[int(b.y_min):int(b.y_max), int(b.x_min):int(b.x_max)] += 1500  # a bright heart
        write_dicom(root / "train" / f"{image_id}.dicom", np.minimum(pixels, 4095), bits_stored=12)
    plugins = [("executors", cxrbench_executors), ("heads", cxrbench_heads), ("cam", cxrbench_cam),
               ("timm", cxrbench_timm), ("vindr", cxrbench_vindr)]
    pm = build_plugin_manager(plugins=plugins, entry_points=False)
    grid = {
        "name": "vindr-real-ids",
        "datasets": [{"name": "vindr", "options": {"root": str(root), "classes": ["Cardiomegaly"],
                                                   "test_fraction": 0.3, "val_fraction": 0.2}}],
        "backbones": [{"name": "resnet10t", "options": {"pretrained": False}}],
        "heads": ["avg"], "localizers": ["cam"],
        "train": {"epochs": 1, "batch_size": 16, "image_size": 64, "lr": 0.001},
        "evaluation": {"bootstrap": 20},
    }
    spec = parse_grid(grid, Registry.from_plugin_manager(pm))
    with ResultsStore(tmp_path / "results") as store:
        summary = run_grid(spec, pm, store)
        records = store_records(store, spec.name)
    assert (summary.ok, summary.failed) == (1, 0), records[0]["error"] if records else summary
    metrics = records[0]["metrics"]
    assert 0.0 <= metrics["auroc/Cardiomegaly"] <= 1.0
    for key in ("iou_mean", "hit_rate"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, key
