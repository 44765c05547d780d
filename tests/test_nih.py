"""The ``nih`` dataset plugin: tiny published-style layouts, then the real sample."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import cv2
import cxrbench_nih
import numpy as np
import pytest
from cxrbench_nih import NIHChestXray14, cxrbench_register_datasets
from cxrbench_nih.tables import NIH8, NIH14

from cxrbench.errors import ConfigError, UsageError
from cxrbench.interfaces import BOX_COLUMNS, DatasetContext

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def make_nih(
    root: Path,
    entries: list[tuple[str, str, int, str, int, int]],
    boxes: list[tuple[str, str, float, float, float, float]] = (),
    train_val: list[str] | None = None,
    test: list[str] | None = None,
    present: dict[str, tuple[int, ...]] | None = None,
    folder: str = "images",
    trailing_comma: bool = False,
) -> Path:
    """Write a published-style NIH root.

    Args:
        entries: (name, findings, patient, view, original width, original height).
        boxes: (name, label, x, y, w, h) in original pixels.
        train_val / test: list files (default: all names in train_val).
        present: name -> shape of the PNG to write (default: 8x8 grey for every entry).
        folder: image folder relative to root.
        trailing_comma: write Data_Entry_2017.csv with the 2017 release's trailing commas.
    """
    root.mkdir(parents=True, exist_ok=True)
    end = "," if trailing_comma else ""
    lines = [ENTRY_HEADER + end]
    for name, findings, patient, view, width, height in entries:
        lines.append(f"{name},{findings},0,{patient},50,M,{view},{width},{height},0.143,0.143{end}")
    entry_name = "Data_Entry_2017.csv" if trailing_comma else "Data_Entry_2017_v2020.csv"
    (root / entry_name).write_text("\n".join(lines) + "\n")
    box_lines = [BBOX_HEADER] + [f"{n},{lab},{x},{y},{w},{h}" for n, lab, x, y, w, h in boxes]
    (root / "BBox_List_2017.csv").write_text("\n".join(box_lines) + "\n")
    names = [e[0] for e in entries]
    (root / "train_val_list.txt").write_text("\n".join(names if train_val is None else train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test or []) + "\n")
    images = root / folder
    images.mkdir(parents=True, exist_ok=True)
    shapes = present if present is not None else {n: (8, 8) for n in names}
    for name, shape in shapes.items():
        pixels = np.full(shape, 100, dtype=np.uint8)
        assert cv2.imwrite(str(images / name), pixels)
    return root


def load(root: Path, **options) -> tuple[NIHChestXray14, list[str]]:
    warnings: list[str] = []
    dataset = NIHChestXray14(NIHChestXray14.Options(root=str(root), **options), DatasetContext(warn=warnings.append))
    return dataset, warnings


# --------------------------------------------------------------------------- registration and options


def test_registers_through_the_plugin_hook():
    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry

    assert cxrbench_register_datasets() == [NIHChestXray14]
    pm = build_plugin_manager(plugins=[cxrbench_nih], entry_points=False, core=False)
    assert Registry.from_plugin_manager(pm).get("dataset", "nih") is NIHChestXray14


def test_class_presets_and_explicit_lists(tmp_path):
    root = make_nih(tmp_path / "nih", [("00000001_000.png", "No Finding", 1, "PA", 1024, 1024)])
    assert load(root)[0].classes == list(NIH8)
    assert load(root, classes="nih14")[0].classes == list(NIH14)
    assert load(root, classes=("Hernia", "Infiltrate"))[0].classes == ["Hernia", "Infiltration"]
    assert load(root, task="binary")[0].classes == ["Abnormal"]
    for bad in ("nih9", ("Hernia", "Cancer"), (), ("Mass", "Mass")):
        with pytest.raises(ValueError):
            NIHChestXray14.Options(root=str(root), classes=bad).validate()
    with pytest.raises(ValueError, match="val_fraction"):
        NIHChestXray14.Options(root=str(root), val_fraction=1.0).validate()


def test_option_errors_name_the_yaml_path(tmp_path):
    from cxrbench.options import parse_options

    with pytest.raises(ConfigError, match=r"datasets\[0\]\.options.*Cancer"):
        parse_options(
            NIHChestXray14.Options,
            {"root": str(tmp_path), "classes": ["Cancer"]},
            "datasets[0].options",
            "dataset 'nih'",
        )
    parsed = parse_options(NIHChestXray14.Options, {"root": "x", "classes": ["Mass"]}, "p", "dataset 'nih'")
    assert parsed.classes == ("Mass",)


# --------------------------------------------------------------------------- labels, boxes, splits


def test_labels_and_infiltrate_spelling(tmp_path):
    entries = [
        ("00000001_000.png", "Infiltration|Mass", 1, "PA", 1024, 1024),
        ("00000002_000.png", "No Finding", 2, "PA", 1024, 1024),
        ("00000003_000.png", "Hernia", 3, "AP", 1024, 1024),
    ]
    root = make_nih(tmp_path / "nih", entries, train_val=[], test=[e[0] for e in entries])
    dataset, _ = load(root, classes="nih14")
    test = dataset.split("test")
    assert list(test.ids) == [e[0] for e in entries]
    expected = np.zeros((3, 14), np.float32)
    expected[0, NIH14.index("Infiltration")] = expected[0, NIH14.index("Mass")] = 1
    expected[2, NIH14.index("Hernia")] = 1
    np.testing.assert_array_equal(test.labels, expected)
    assert list(test.patient_ids) == ["00000001", "00000002", "00000003"]


def test_binary_task_is_any_finding_versus_no_finding(tmp_path):
    entries = [
        ("00000001_000.png", "Hernia", 1, "PA", 1024, 1024),  # not among nih8: still abnormal
        ("00000002_000.png", "No Finding", 2, "PA", 1024, 1024),
        ("00000003_000.png", "Effusion|Mass", 3, "PA", 1024, 1024),
    ]
    boxes = [("00000003_000.png", "Mass", 10, 20, 30, 40)]
    root = make_nih(tmp_path / "nih", entries, boxes, train_val=[], test=[e[0] for e in entries])
    dataset, _ = load(root, task="binary")
    np.testing.assert_array_equal(dataset.split("test").labels[:, 0], [1, 0, 1])
    assert dataset.split("boxes").boxes["class_index"].tolist() == [0]


def test_boxes_are_scaled_from_release_pixels_to_the_file_size(tmp_path):
    # OriginalImage[Width,Height] is the scan's size before NIH's resize to 1024 px:
    # it must NOT be used (boxes are in the released 1024 x 1024 PNG's pixels).
    entries = [
        ("00000001_000.png", "Infiltration|Mass", 1, "PA", 2992, 2991),
        ("00000002_000.png", "Nodule", 2, "PA", 2500, 2048),
        ("00000003_000.png", "Hernia", 3, "PA", 1024, 1024),
    ]
    boxes = [
        ("00000001_000.png", "Infiltrate", 204.8, 102.4, 409.6, 307.2),
        ("00000002_000.png", "Nodule", 512.0, 256.0, 64.0, 32.0),
        ("00000001_000.png", "Mass", 1000.0, 512.0, 20.0, 10.0),
    ]
    present = {"00000001_000.png": (50, 100), "00000002_000.png": (256, 256), "00000003_000.png": (8, 8)}
    root = make_nih(tmp_path / "nih", entries, boxes, present=present)
    split = load(root)[0].split("boxes")
    assert list(split.ids) == ["00000001_000.png", "00000002_000.png"]  # order of first box
    assert split.image_sizes.tolist() == [[50, 100], [256, 256]]
    table = split.boxes
    assert list(table.columns) == list(BOX_COLUMNS)
    # By hand: image 1 is 100 wide and 50 high (x * 100/1024, y * 50/1024); image 2 is 256.
    expected = [
        (0, NIH8.index("Infiltration"), 20.0, 5.0, 40.0, 15.0),
        (1, NIH8.index("Nodule"), 128.0, 64.0, 16.0, 8.0),
        (0, NIH8.index("Mass"), 1000 * 100 / 1024, 25.0, 20 * 100 / 1024, 10 * 50 / 1024),
    ]
    np.testing.assert_array_equal(table[["index", "class_index"]].to_numpy(), [e[:2] for e in expected])
    np.testing.assert_allclose(table[["x", "y", "w", "h"]].to_numpy(), [e[2:] for e in expected], rtol=1e-12)
    assert table["index"].dtype == np.int64 and table["class_index"].dtype == np.int64


def test_boxes_of_unselected_classes_are_dropped(tmp_path):
    entries = [("00000001_000.png", "Mass|Nodule", 1, "PA", 1024, 1024)]
    boxes = [("00000001_000.png", "Mass", 0, 0, 8, 8), ("00000001_000.png", "Nodule", 0, 0, 4, 4)]
    root = make_nih(tmp_path / "nih", entries, boxes)
    split = load(root, classes=("Nodule",))[0].split("boxes")
    assert split.boxes["class_index"].tolist() == [0] and split.boxes["w"].tolist() == [4 * 8 / 1024]
    assert len(split) == 1  # the image stays, with its selected labels


def test_unknown_box_label_is_a_usage_error(tmp_path):
    entries = [("00000001_000.png", "Mass", 1, "PA", 1024, 1024)]
    root = make_nih(tmp_path / "nih", entries, [("00000001_000.png", "Tumour", 0, 0, 1, 1)])
    with pytest.raises(UsageError, match="BBox_List_2017.csv.*Tumour"):
        load(root)[0].split("boxes")


def test_views_filter(tmp_path):
    entries = [
        ("00000001_000.png", "Mass", 1, "PA", 1024, 1024),
        ("00000002_000.png", "Mass", 2, "AP", 1024, 1024),
    ]
    root = make_nih(tmp_path / "nih", entries, train_val=[], test=[e[0] for e in entries])
    assert list(load(root, views="AP")[0].split("test").ids) == ["00000002_000.png"]
    assert list(load(root, views="PA")[0].split("test").ids) == ["00000001_000.png"]
    assert len(load(root)[0].split("test")) == 2


def _many_patients(n_patients: int = 40) -> list[tuple[str, str, int, str, int, int]]:
    return [
        (f"{p:08d}_{k:03d}.png", "Mass" if k else "No Finding", p, "PA", 1024, 1024)
        for p in range(1, n_patients + 1)
        for k in range(3)
    ]


def test_train_val_split_is_patient_disjoint_seeded_and_stable(tmp_path):
    entries = _many_patients(40)
    root = make_nih(tmp_path / "nih", entries)
    dataset, _ = load(root, val_fraction=0.25, split_seed=3)
    train, val = dataset.split("train"), dataset.split("val")
    assert len(train) + len(val) == len(entries)
    assert not set(train.patient_ids) & set(val.patient_ids)
    assert len(set(val.patient_ids)) == 10  # round(0.25 * 40)
    again = load(root, val_fraction=0.25, split_seed=3)[0].split("val")
    assert list(again.ids) == list(val.ids)
    other = load(root, val_fraction=0.25, split_seed=4)[0].split("val")
    assert set(other.patient_ids) != set(val.patient_ids)
    # The choice depends on the tables, not on which images were downloaded.
    for name in list(val.ids)[::2] + list(train.ids)[::2]:
        (root / "images" / name).unlink()
    partial, warnings = load(root, val_fraction=0.25, split_seed=3)
    assert set(partial.split("val").ids) == set(list(val.ids)[1::2])
    assert len(warnings) == 1


def test_images_001_layout_and_2017_table_with_trailing_commas(tmp_path):
    entries = _many_patients(4)
    root = make_nih(tmp_path / "nih", entries, folder="images_001/images", trailing_comma=True)
    dataset, warnings = load(root, val_fraction=0.0)
    assert len(dataset.split("train")) == 12 and len(dataset.split("val")) == 0
    assert warnings == []
    path = dataset.image_path("train", 0)
    assert Path(path).parent == (root / "images_001" / "images").resolve()
    image = dataset.read_image("train", 0)
    assert image.shape == (8, 8) and image.dtype == np.uint8


def test_partial_download_warns_once_with_the_count(tmp_path):
    entries = _many_patients(4)
    present = {e[0]: (8, 8) for e in entries[:5]}
    root = make_nih(tmp_path / "nih", entries, present=present)
    dataset, warnings = load(root)
    for name in dataset.split_names:
        dataset.split(name)
    assert len(warnings) == 1
    assert "7 of 12 listed images are missing" in warnings[0] and "using the 5 present" in warnings[0]
    assert len(dataset.split("train")) + len(dataset.split("val")) == 5


def test_no_images_is_one_usage_error_naming_the_root(tmp_path):
    root = make_nih(tmp_path / "nih", _many_patients(2), present={})
    with pytest.raises(UsageError, match=str(root)):
        load(root)[0].split("train")
    # Images present, but none of the listed ones.
    other = make_nih(tmp_path / "nih2", _many_patients(2), present={"99999999_000.png": (8, 8)})
    with pytest.raises(UsageError, match="none of the 6 listed images"):
        load(other)[0].split("train")


def test_missing_tables_are_one_usage_error(tmp_path):
    root = make_nih(tmp_path / "nih", _many_patients(1))
    (root / "Data_Entry_2017_v2020.csv").unlink()
    (root / "test_list.txt").unlink()
    with pytest.raises(UsageError) as info:
        load(root)
    message = str(info.value)
    assert "\n" not in message and "Data_Entry_2017" in message and "test_list.txt" in message
    with pytest.raises(UsageError, match="not a folder"):
        load(tmp_path / "absent")


def test_a_linked_image_leading_outside_the_root_is_refused(tmp_path):
    root = make_nih(tmp_path / "nih", _many_patients(1), present={})
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), np.zeros((4, 4), np.uint8))
    (root / "images" / "00000001_000.png").symlink_to(secret)
    with pytest.raises(UsageError, match="00000001_000.png"):
        load(root)[0].split("train")


def test_table_names_with_paths_are_never_followed(tmp_path):
    entries = [("../../secret.png", "Mass", 1, "PA", 1024, 1024), ("00000002_000.png", "Mass", 2, "PA", 8, 8)]
    root = make_nih(tmp_path / "nih" / "root", entries, present={"00000002_000.png": (8, 8)})
    cv2.imwrite(str(tmp_path / "secret.png"), np.zeros((4, 4), np.uint8))
    dataset, warnings = load(root, val_fraction=0.0)
    assert list(dataset.split("train").ids) == ["00000002_000.png"]
    assert "1 of 2 listed images are missing" in warnings[0]


def test_fingerprint_follows_the_data_not_the_location(tmp_path):
    root = make_nih(tmp_path / "a", _many_patients(3))
    first = load(root)[0].fingerprint()
    assert first.startswith("nih:") and str(root) not in first
    moved = shutil.copytree(root, tmp_path / "b")
    assert load(moved)[0].fingerprint() == first
    assert load(root, views="PA")[0].fingerprint() != first
    cv2.imwrite(str(root / "images" / "00000001_001.png"), np.zeros((16, 16), np.uint8))
    assert load(root)[0].fingerprint() != first
    (root / "images" / "00000002_000.png").unlink()
    assert load(root)[0].fingerprint() != first


def test_empty_list_file_and_repeated_table_rows(tmp_path):
    root = make_nih(tmp_path / "nih", _many_patients(1))
    (root / "test_list.txt").write_bytes(b"")
    assert len(load(root)[0].split("test")) == 0
    entry = root / "Data_Entry_2017_v2020.csv"
    entry.write_text(entry.read_text() + entry.read_text().splitlines()[1] + "\n")
    with pytest.raises(UsageError, match="00000001_000.png.*more than one row"):
        load(root)[0].split("train")


def test_unknown_split_name(tmp_path):
    root = make_nih(tmp_path / "nih", _many_patients(1))
    with pytest.raises(UsageError, match="no split 'training'"):
        load(root)[0].split("training")


# --------------------------------------------------------------------------- the real sample


@pytest.fixture(scope="module")
def real_nih():
    root = DATA / "nih"
    if not (root / "Data_Entry_2017_v2020.csv").is_file():
        pytest.skip(f"real NIH sample not found at {root}")
    warnings: list[str] = []
    start = time.perf_counter()
    dataset = NIHChestXray14(NIHChestXray14.Options(root=str(root)), DatasetContext(warn=warnings.append))
    splits = {name: dataset.split(name) for name in dataset.split_names}
    seconds = time.perf_counter() - start
    return dataset, splits, warnings, seconds


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.mark.realdata
def test_real_nih_split_sizes_and_warning(real_nih):
    dataset, splits, warnings, seconds = real_nih
    assert len(splits["train"]) + len(splits["val"]) == 565
    assert len(splits["test"]) == 265
    assert len(splits["boxes"]) == 200
    assert not set(splits["train"].patient_ids) & set(splits["val"].patient_ids)
    assert warnings == [
        f"nih: 111,290 of 112,120 listed images are missing under {DATA.resolve() / 'nih'} "
        "(partial download?); using the 830 present"
    ]
    assert seconds < 20  # loose: a shared CI machine; about 0.5 s measured


@pytest.mark.realdata
def test_real_nih_boxes_are_scaled_to_256_pixels(real_nih):
    dataset, splits, _, _ = real_nih
    boxes = splits["boxes"]
    assert boxes.image_sizes.tolist() == [[256, 256]] * 200
    present = set(boxes.ids)
    rows = [r for r in _read_rows(DATA / "nih" / "BBox_List_2017.csv") if r[0] in present]
    assert len(boxes.boxes) == len(rows)
    # By hand from the CSV, read with the csv module (by position: name, label, x, y, w, h).
    name, label, x, y, w, h = rows[0][:6]
    first = boxes.boxes.iloc[0]
    assert boxes.ids[int(first["index"])] == name
    assert dataset.classes[int(first["class_index"])] == ("Infiltration" if label == "Infiltrate" else label)
    np.testing.assert_allclose(
        [first["x"], first["y"], first["w"], first["h"]], [float(v) * 256 / 1024 for v in (x, y, w, h)]
    )
    expected = np.array([[float(v) * 256 / 1024 for v in r[2:6]] for r in rows])
    np.testing.assert_allclose(boxes.boxes[["x", "y", "w", "h"]].to_numpy(), expected)
    assert "Infiltration" in {dataset.classes[k] for k in boxes.boxes["class_index"]}


@pytest.mark.realdata
def test_real_nih_labels_match_data_entry(real_nih):
    dataset, splits, _, _ = real_nih
    wanted = set(splits["test"].ids) | set(splits["boxes"].ids)
    with open(DATA / "nih" / "Data_Entry_2017_v2020.csv", newline="") as f:
        entry = {r[0]: r[1].split("|") for r in csv.reader(f) if r[0] in wanted}
    for name in ("test", "boxes"):
        split = splits[name]
        for i in range(0, len(split), 37):
            expected = [float(c in entry[split.ids[i]]) for c in dataset.classes]
            assert split.labels[i].tolist() == expected


@pytest.mark.realdata
def test_real_nih_rgba_images_read_as_2d(real_nih):
    dataset, splits, _, _ = real_nih
    rgba = 0
    for name in ("train", "val", "test"):
        for i in range(len(splits[name])):
            with open(dataset.image_path(name, i), "rb") as f:
                if f.read(26)[25] != 6:  # PNG colour type 6 = RGBA
                    continue
            rgba += 1
            image = dataset.read_image(name, i)
            assert image.shape == (256, 256) and image.dtype == np.uint8
    assert rgba >= 1


@pytest.mark.realdata
def test_real_nih_splits_are_the_official_lists_of_the_images_present(real_nih):
    _, splits, _, _ = real_nih
    present = {p.name for p in (DATA / "nih" / "images").glob("*.png")}
    lists = {name: set((DATA / "nih" / f"{name}.txt").read_text().split()) for name in ("train_val_list", "test_list")}
    boxed = {r[0] for r in _read_rows(DATA / "nih" / "BBox_List_2017.csv")}
    assert set(splits["train"].ids) | set(splits["val"].ids) == lists["train_val_list"] & present
    assert set(splits["test"].ids) == lists["test_list"] & present
    assert set(splits["boxes"].ids) == boxed & present
    assert not set(splits["train"].ids) & set(splits["val"].ids)
