"""The ``siim`` dataset plugin: every RLE row of an image in its mask, splits by the DICOM PatientID."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from importlib.metadata import entry_points
from pathlib import Path

import cxrbench_siim
import numpy as np
import pytest
from cxrbench_siim import SiimPneumothorax, cxrbench_register_datasets
from cxrbench_siim.tables import read_rle_table

from cxrbench.dicom import write_dicom
from cxrbench.errors import UsageError
from cxrbench.interfaces import DatasetContext
from cxrbench.manager import build_plugin_manager
from cxrbench.masks import mask_to_siim_rle
from cxrbench.registry import Registry
from cxrbench.testing import DatasetContract

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_TABLE = DATA / "siim" / "train-rle.csv"
HEADER = "ImageId, EncodedPixels"  # the leading space is the release's


def kaggle_rle2mask(rle: str, height: int = 1024, width: int = 1024) -> np.ndarray:
    """The challenge's ``mask_functions.rle2mask``, as published (then ``.T``, as its users do)."""
    mask = np.zeros(width * height, np.uint8)
    if rle.strip() == "-1":
        return mask.reshape(width, height).T.astype(bool)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    current = 0
    for start, length in zip(starts, lengths, strict=True):
        current += start
        mask[current : current + length] = 255
        current += length
    return mask.reshape(width, height).T.astype(bool)


def rectangle(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((1024, 1024), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# three separate regions of one image, each its own table row
REGIONS = [rectangle(100, 300, 80, 200), rectangle(500, 700, 600, 900), rectangle(900, 1000, 100, 160)]


def write_layout(root: Path, rows: list[tuple[str, str]], images: dict[str, str | None], *, tree: bool = True,
                 side: int = 64) -> Path:
    """train-rle.csv and a DICOM per ImageId of ``images`` (ImageId -> PatientID, None: no PatientID)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train-rle.csv").write_text("\n".join([HEADER] + [f"{i},{rle}" for i, rle in rows]) + "\n")
    rng = np.random.default_rng(0)
    for k, (image_id, patient) in enumerate(images.items()):
        folder = root / "dicom-images-train" / f"study{k}" / f"series{k}" if tree else root / "flat"
        folder.mkdir(parents=True, exist_ok=True)
        write_dicom(folder / f"{image_id}.dcm", rng.integers(0, 256, (side, side)).astype(np.uint8),
                    patient_id=patient)
    return root


def load(root: Path, **options) -> tuple[SiimPneumothorax, list[str]]:
    warnings: list[str] = []
    options = SiimPneumothorax.Options(root=str(root), **options)
    return SiimPneumothorax(options, DatasetContext(warn=warnings.append)), warnings


def expected_split(patient: str, seed: int = 0, test: float = 0.2, val: float = 0.1) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient}".encode()).digest()[:8], "big") / 2.0**64
    return "test" if u < test else "val" if u < test + val else "train"


def where(dataset, image_id: str) -> tuple[str, int]:
    for name in ("train", "val", "test"):
        ids = list(dataset.split(name).ids)
        if image_id in ids:
            return name, ids.index(image_id)
    raise AssertionError(f"{image_id} in no split")


MULTI = "1.2.276.0.7230010.3.1.4.8323329.1.1.1"
SINGLE = "1.2.276.0.7230010.3.1.4.8323329.2.2.2"
NEG = "1.2.276.0.7230010.3.1.4.8323329.3.3.3"


def synthetic_rows() -> list[tuple[str, str]]:
    return [(MULTI, mask_to_siim_rle(r)) for r in REGIONS] + [(SINGLE, mask_to_siim_rle(REGIONS[0])), (NEG, "-1")]


# --------------------------------------------------------------------------- registration


def test_registers_through_the_hook_and_the_entry_point():
    assert cxrbench_register_datasets() == [SiimPneumothorax]
    pm = build_plugin_manager(plugins=[("siim", cxrbench_siim)], entry_points=False, core=False)
    assert Registry.from_plugin_manager(pm).get("dataset", "siim") is SiimPneumothorax
    assert "cxrbench_siim" in {ep.value for ep in entry_points(group="cxrbench")}


# --------------------------------------------------------------------------- every row kept


def test_an_image_with_several_rows_keeps_every_region(tmp_path):
    # everything in test, where masks are kept
    root = write_layout(tmp_path / "s", synthetic_rows(), {MULTI: "p1", SINGLE: "p2", NEG: "p3"}, side=1024)
    dataset, warnings = load(root, test_fraction=0.999999, val_fraction=0.0)
    assert warnings == []
    test = dataset.split("test")
    assert sorted(test.ids) == sorted([MULTI, SINGLE, NEG])
    row = list(test.ids).index(MULTI)
    ref = test.masks[(row, 0)]
    assert ref.size == (1024, 1024) and len(ref.payload) == 3
    np.testing.assert_array_equal(ref.decode(), REGIONS[0] | REGIONS[1] | REGIONS[2])
    # what keeping the last row only (torchxrayvision) would give: one region of three
    assert kaggle_rle2mask(mask_to_siim_rle(REGIONS[2])).sum() < ref.area() == sum(int(r.sum()) for r in REGIONS)
    # boxes: one per region, from the masks
    boxes = test.boxes[test.boxes["index"] == row][["x", "y", "w", "h"]].to_numpy()
    assert sorted(map(tuple, boxes.tolist())) == [(80.0, 100.0, 120.0, 200.0), (100.0, 900.0, 60.0, 100.0),
                                                  (600.0, 500.0, 300.0, 200.0)]
    assert test.boxes_from_masks
    # the negative is a known negative: a key with an empty mask, and no box
    neg = list(test.ids).index(NEG)
    assert test.masks[(neg, 0)].is_empty and neg not in set(test.boxes["index"])
    label = dict(zip(test.ids, test.labels[:, 0].tolist(), strict=True))
    assert label == {MULTI: 1.0, SINGLE: 1.0, NEG: 0.0}
    assert dataset.classes == ["Pneumothorax"]


def test_boxes_follow_an_image_stored_at_another_size(tmp_path):
    root = write_layout(tmp_path / "s", synthetic_rows(), {MULTI: "p1"}, side=256)
    dataset, _ = load(root, test_fraction=0.999999, val_fraction=0.0)
    test = dataset.split("test")
    assert test.image_sizes.tolist() == [[256, 256]]
    boxes = sorted(map(tuple, test.boxes[["x", "y", "w", "h"]].to_numpy().tolist()))
    assert boxes == [(20.0, 25.0, 30.0, 50.0), (25.0, 225.0, 15.0, 25.0), (150.0, 125.0, 75.0, 50.0)]
    assert test.masks[(0, 0)].size == (1024, 1024)  # the mask stays in the table's pixels


def test_train_has_labels_but_no_masks(tmp_path):
    root = write_layout(tmp_path / "s", synthetic_rows(), {MULTI: "p1", SINGLE: "p2", NEG: "p3"})
    dataset, _ = load(root, test_fraction=0.0, val_fraction=0.0)
    train = dataset.split("train")
    assert len(train) == 3 and train.masks == {} and train.boxes.empty
    assert sorted(train.labels[:, 0].tolist()) == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------------- layouts and patients


def test_tree_and_flat_layouts_give_the_same_records_and_fingerprint(tmp_path):
    images = {MULTI: "p1", SINGLE: "p2", NEG: None}
    tree = load(write_layout(tmp_path / "tree", synthetic_rows(), images, tree=True))[0]
    flat = load(write_layout(tmp_path / "flat", synthetic_rows(), images, tree=False))[0]
    for name in ("train", "val", "test"):
        assert list(tree.split(name).ids) == list(flat.split(name).ids)
    assert tree.image_path("train", 0) != flat.image_path("train", 0)
    assert tree.fingerprint() == flat.fingerprint()


def test_patients_come_from_the_dicom_header_else_the_image_id(tmp_path):
    ids = [f"1.2.3.{k}" for k in range(60)]
    # pairs of images share a patient; every fifth image has no PatientID
    images = {i: (None if k % 5 == 0 else f"patient-{k // 2}") for k, i in enumerate(ids)}
    rows = [(i, "-1" if k % 3 else mask_to_siim_rle(REGIONS[k % 3])) for k, i in enumerate(ids)]
    root = write_layout(tmp_path / "s", rows, images, side=16)
    dataset, _ = load(root, val_fraction=0.2, test_fraction=0.3, split_seed=3)
    for image_id, patient in images.items():
        name, row = where(dataset, image_id)
        split = dataset.split(name)
        assert split.patient_ids[row] == (patient or image_id)
        assert name == expected_split(patient or image_id, 3, 0.3, 0.2)
    names = {where(dataset, i)[0] for i in ids}
    assert names == {"train", "val", "test"}
    assert dataset.split("boxes") is dataset.split("test")


def test_missing_images_one_warning(tmp_path):
    root = write_layout(tmp_path / "s", synthetic_rows(), {MULTI: "p1"})
    dataset, warnings = load(root)
    assert sum(len(dataset.split(n)) for n in ("train", "val", "test")) == 1
    assert len(warnings) == 1 and "2 of 3 listed images are missing" in warnings[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ImageId,Mask\na,-1\n", "must have the columns ImageId, EncodedPixels"),
        (f"{HEADER}\na,\n", "line 2: empty ImageId or EncodedPixels"),
        (f"{HEADER}\na,-1\na,1 5\n", "image a has both a -1 row and region rows"),
    ],
)
def test_table_errors_are_one_line(tmp_path, text, message):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "train-rle.csv").write_text(text)
    with pytest.raises(UsageError, match=message) as excinfo:
        load(tmp_path / "s")[0].split("train")
    assert "\n" not in str(excinfo.value) and "train-rle.csv" in str(excinfo.value)


def test_a_malformed_rle_names_the_image(tmp_path):
    root = write_layout(tmp_path / "s", [(MULTI, "12 x 3")], {MULTI: "p1"})
    with pytest.raises(UsageError, match=rf"mask {MULTI}/Pneumothorax: .*not an integer"):
        load(root, test_fraction=0.999999, val_fraction=0.0)[0].split("test")


def test_no_table(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(UsageError, match="missing under .*train-rle.csv"):
        load(tmp_path / "s")


class TestSiimContract(DatasetContract):
    """Every dataset check on a small synthetic tree layout."""

    name = "siim"
    plugins = (("siim", cxrbench_siim),)

    @pytest.fixture(autouse=True, scope="class")
    def _options(self, request, tmp_path_factory):
        ids = [f"1.2.9.{k}" for k in range(24)]
        rows = []
        for k, i in enumerate(ids):
            rows += [(i, mask_to_siim_rle(r)) for r in REGIONS[: k % 3]] or [(i, "-1")]
        root = write_layout(tmp_path_factory.mktemp("siim"), rows, {i: f"pt{k}" for k, i in enumerate(ids)}, side=32)
        request.cls.options = {"root": str(root), "val_fraction": 0.25, "test_fraction": 0.3}


# --------------------------------------------------------------------------- the real table


def real_table() -> Path:
    if not REAL_TABLE.is_file():
        pytest.skip(f"real SIIM-ACR table not found at {REAL_TABLE}")
    return REAL_TABLE


def real_rows() -> dict[str, list[str]]:
    """ImageId -> its EncodedPixels rows, with the csv module."""
    rows: dict[str, list[str]] = defaultdict(list)
    with open(real_table(), newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["ImageId", " EncodedPixels"]
        for image_id, rle in reader:
            rows[image_id].append(rle.strip())
    return rows


@pytest.mark.realdata
def test_the_real_table_counts():
    rows = real_rows()
    positive = {i: r for i, r in rows.items() if r != ["-1"]}
    assert sum(map(len, rows.values())) == 12954
    assert len(rows) == 12047 and len(positive) == 2669 and len(rows) - len(positive) == 9378
    several = sum(len(r) > 1 for r in positive.values())
    assert several == 624  # the images whose regions a last-row-only loader loses
    table = read_rle_table(real_table())
    assert len(table.rows) == 12047 and table.positives == 2669
    assert sum(len(r) > 1 for i, r in table.rows.items() if table.is_positive(i)) == 624
    assert {i: list(r) for i, r in table.rows.items()} == dict(rows)


@pytest.mark.realdata
def test_a_real_multi_row_image_keeps_every_region(tmp_path):
    rows = real_rows()
    image_id = max(sorted(rows), key=lambda i: len(rows[i]))  # the image with most rows (10)
    negative = next(i for i in sorted(rows) if rows[i] == ["-1"])
    assert len(rows[image_id]) == 10
    root = write_layout(tmp_path / "s", [], {image_id: "real-patient", negative: "other-patient"}, side=1024)
    (root / "train-rle.csv").write_bytes(real_table().read_bytes())  # the real table in place of the empty one
    dataset, warnings = load(root, test_fraction=0.999999, val_fraction=0.0)
    test = dataset.split("test")
    assert sorted(test.ids) == sorted([image_id, negative])
    assert len(warnings) == 1 and "12,045 of 12,047 listed images are missing" in warnings[0]
    row = list(test.ids).index(image_id)
    mask = test.masks[(row, 0)].decode()
    each = [kaggle_rle2mask(rle) for rle in rows[image_id]]
    np.testing.assert_array_equal(mask, np.logical_or.reduce(each))
    last_only = each[-1]
    assert int(last_only.sum()) < int(mask.sum())
    for region in each:  # every row's pixels are in the image's mask
        assert region.any() and (mask[region]).all()
    assert test.labels[row, 0] == 1.0 and test.masks[(list(test.ids).index(negative), 0)].is_empty
    assert (test.boxes["index"] == row).sum() >= 1
