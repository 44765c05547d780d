"""The ``chexlocalize`` dataset plugin: the real validation sample, then a phantom export of the layout."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import cv2
import cxrbench_chexlocalize
import cxrbench_chexpert
import numpy as np
import pytest
from cxrbench_chexlocalize import Chexlocalize
from cxrbench_chexlocalize.classes import ALL10
from cxrbench_chexlocalize.tables import CHEXLOCALIZE_PATHOLOGIES, ChexlocalizeImageId, from_chexpert_name
from cxrbench_chexpert import CheXpert
from cxrbench_chexpert.labels import COMPETITION5
from cxrbench_phantom.chexlocalize_export import write_chexlocalize_layout
from helpers import store_records
from pycocotools import mask as coco_mask

from cxrbench import masks as masks_module
from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.errors import ConfigError, UsageError
from cxrbench.interfaces import DatasetContext
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from cxrbench.testing import DatasetContract, make_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHEXLOCALIZE = DATA / "chexlocalize"
REAL_SIZES = {"patient64541_study1_view1_frontal": (2320, 2828), "patient64542_study1_view1_frontal": (2022, 2021)}
ID_FORM = re.compile(r"patient\d+_study\d+_view\d+_frontal")


def real_root() -> Path:
    if not (CHEXLOCALIZE / "CheXlocalize" / "gt_segmentations_val.json").is_file():
        pytest.skip(f"real CheXlocalize sample not found under {CHEXLOCALIZE}")
    return CHEXLOCALIZE


def open_dataset(root: Path, **options) -> tuple[Chexlocalize, list[str]]:
    warnings: list[str] = []
    dataset = Chexlocalize(Chexlocalize.Options(root=str(root), **options), DatasetContext(warn=warnings.append))
    return dataset, warnings


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


# --------------------------------------------------------------------------- the real validation sample


@pytest.fixture(scope="module")
def real():
    dataset, warnings = open_dataset(real_root())
    return dataset, dataset.split("val"), warnings


@pytest.mark.realdata
def test_real_val_split_records_and_labels(real):
    dataset, val, warnings = real
    assert dataset.classes == list(ALL10) and "Lung Opacity" in dataset.classes
    assert list(val.ids) == list(REAL_SIZES) and list(val.patient_ids) == ["patient64541", "patient64542"]
    with open(CHEXLOCALIZE / "CheXpert" / "val_labels.csv", newline="") as f:
        table = {row["Path"].split("valid/", 1)[1]: row for row in csv.DictReader(f)}
    for r, image_id in enumerate(val.ids):
        row = table[image_id.replace("_", "/", 2) + ".jpg"]
        assert [float(row[c]) for c in dataset.classes] == val.labels[r].tolist()
    # The sample has no test files: one warning says so, and test / boxes are empty.
    assert len(warnings) == 1 and "no test tables" in warnings[0] and "\n" not in warnings[0]
    assert len(dataset.split("test")) == len(dataset.split("boxes")) == 0
    assert dataset.split_names == ("val", "test", "boxes")


@pytest.mark.realdata
def test_real_masks_are_image_sized_and_decode_as_pycocotools(real):
    dataset, val, _ = real
    assert sorted(val.masks) == [(r, c) for r in range(2) for c in range(10)]
    assert [tuple(s) for s in val.image_sizes] == list(REAL_SIZES.values())
    published = json.loads((CHEXLOCALIZE / "CheXlocalize" / "gt_segmentations_val.json").read_text())
    for (r, c), ref in val.masks.items():
        image_id = val.ids[r]
        assert ref.size == REAL_SIZES[image_id]
        rle = published[image_id][from_chexpert_name(dataset.classes[c])]
        expected = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(ref.decode(), expected)
    for r in range(2):
        assert dataset.read_image("val", r).shape == REAL_SIZES[val.ids[r]]


@pytest.mark.realdata
def test_real_boxes_are_the_connected_regions_of_the_masks(real):
    dataset, val, _ = real
    assert val.boxes_from_masks
    boxed = {(int(r), int(c)) for r, c in val.boxes[["index", "class_index"]].to_numpy()}
    assert boxed == {key for key, ref in val.masks.items() if not ref.is_empty}
    # Enlarged Cardiomediastinum of the first image: two polygons, two regions.
    c = dataset.classes.index("Enlarged Cardiomediastinum")
    mask = val.masks[(0, c)].decode().astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    expected = sorted(tuple(float(v) for v in s[:4]) for s in stats[1:])
    rows = val.boxes[(val.boxes["index"] == 0) & (val.boxes["class_index"] == c)]
    assert count - 1 == len(rows) == 2
    assert sorted(tuple(b) for b in rows[["x", "y", "w", "h"]].to_numpy().tolist()) == expected


@pytest.mark.realdata
def test_real_annotations_give_the_same_masks(real):
    _, val, _ = real
    polygons, _ = open_dataset(real_root(), masks="annotations")
    other = polygons.split("val")
    assert list(other.ids) == list(val.ids) and sorted(other.masks) == sorted(val.masks)
    np.testing.assert_array_equal(other.labels, val.labels)
    for key, ref in val.masks.items():
        assert other.masks[key].encoding == "polygons" and other.masks[key].size == ref.size
        assert iou(other.masks[key].decode(), ref.decode()) >= 0.99, key


@pytest.mark.realdata
def test_real_train_without_chexpert_root_is_one_clear_error(real):
    dataset, _, _ = real
    assert "train" not in dataset.split_names
    with pytest.raises(UsageError, match="no train split.*set chexpert_root") as info:
        dataset.split("train")
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="set chexpert_root"):
        dataset.read_image("train", 0)


# --------------------------------------------------------------------------- a phantom export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_chexlocalize_layout(tmp_path_factory.mktemp("chexlocalize"), num_images=48, image_size=48, seed=4,
                                     uncertain_rate=0.3, val_fraction=0.25, test_fraction=0.25)


def test_phantom_export_opens_every_split(export):
    dataset, warnings = open_dataset(export, chexpert_root=str(export / "CheXpert-v1.0-small"))
    assert warnings == []
    assert dataset.split_names == ("train", "val", "test", "boxes")
    test = dataset.split("test")
    assert dataset.split("boxes") is test and not test.boxes.empty
    for name in ("val", "test"):
        split = dataset.split(name)
        assert len(split) > 2
        assert all(ID_FORM.fullmatch(i) for i in split.ids)
        assert list(split.patient_ids) == [i.split("_", 1)[0] for i in split.ids]
        assert (split.image_sizes == 48).all() and dataset.read_image(name, 0).shape == (48, 48)
    assert not set(dataset.split("val").patient_ids) & set(test.patient_ids)
    # The export's layout, file by file.
    with open(export / "CheXpert" / "test_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["Path"].startswith("CheXpert-v1.0/test/patient") for r in rows)
    assert (export / "CheXpert" / "val_labels.csv").read_text().startswith("Path,Sex,Age,Frontal/Lateral,AP/PA,")
    # chexpert_root may also be the folder holding the release.
    same, _ = open_dataset(export, chexpert_root=str(export))
    assert list(same.split("train").ids) == list(dataset.split("train").ids)


def test_phantom_masks_are_drawn_exactly_where_the_label_is_positive(export):
    dataset, _ = open_dataset(export)
    published = json.loads((export / "CheXlocalize" / "gt_segmentations_val.json").read_text())
    drawn_any = set()
    for name in ("val", "test"):
        split = dataset.split(name)
        assert sorted(split.masks) == [(r, c) for r in range(len(split)) for c in range(10)]
        for (r, c), ref in split.masks.items():
            assert (not ref.is_empty) == (split.labels[r, c] == 1.0), (name, split.ids[r], dataset.classes[c])
            if not ref.is_empty:
                drawn_any.add(dataset.classes[c])
    assert {"Edema", "Support Devices"}.isdisjoint(drawn_any) and {"Cardiomegaly", "Lung Opacity"} <= drawn_any
    assert all(set(entry) == set(CHEXLOCALIZE_PATHOLOGIES) for entry in published.values())


def test_phantom_annotations_rasterise_to_the_segmentations(export):
    segmentations, _ = open_dataset(export)
    annotations, _ = open_dataset(export, masks="annotations")
    for name in ("val", "test"):
        a, b = segmentations.split(name), annotations.split(name)
        assert list(a.ids) == list(b.ids) and sorted(a.masks) == sorted(b.masks)
        for key, ref in a.masks.items():
            assert iou(b.masks[key].decode(), ref.decode()) >= 0.99, (name, key)


def test_phantom_train_is_the_chexpert_release_with_aligned_classes(export):
    dataset, _ = open_dataset(export, chexpert_root=str(export), uncertain="ones")
    chexpert = CheXpert(CheXpert.Options(root=str(export), classes=tuple(dataset.classes), uncertain="ones"))
    assert chexpert.classes == dataset.classes
    train = dataset.split("train")
    release = {i: lab for name in ("train", "val") for i, lab in zip(chexpert.split(name).ids,
                                                                     chexpert.split(name).labels.tolist(), strict=True)}
    assert len(train) == len(release) and len(train) > 10
    for image_id, labels in zip(train.ids, train.labels.tolist(), strict=True):
        assert labels == release[image_id]
    assert dataset.read_image("train", 0).shape == (48, 48)
    # The release's valid.csv holds CheXlocalize's val images: never trained on.
    valid = {str(ChexlocalizeImageId.from_labels_path(p)) for p in chexpert.split("test").ids}
    assert valid == set(dataset.split("val").ids)
    assert not set(train.patient_ids) & (set(dataset.split("val").patient_ids) | set(dataset.split("test").patient_ids))
    # The release's uncertain labels follow the policy; CheXlocalize's own labels have none.
    assert not np.isnan(train.labels).any()
    without_policy, _ = open_dataset(export, chexpert_root=str(export))
    assert np.isnan(without_policy.split("train").labels).any()


def test_fingerprint_follows_files_and_train_release(export, tmp_path):
    plain, _ = open_dataset(export)
    trained, _ = open_dataset(export, chexpert_root=str(export))
    assert plain.fingerprint() != trained.fingerprint()
    assert open_dataset(export)[0].fingerprint() == plain.fingerprint()
    # chexpert_root is a path: where the release is mounted does not matter, what it holds does.
    moved = tmp_path / "moved"
    shutil.copytree(export, moved)
    assert open_dataset(moved, chexpert_root=str(moved))[0].fingerprint() == trained.fingerprint()
    (moved / "CheXpert" / "test_labels.csv").write_text((moved / "CheXpert" / "test_labels.csv").read_text() + "\n")
    assert open_dataset(moved)[0].fingerprint() != plain.fingerprint()


def test_missing_segmentations_fall_back_to_annotations_with_one_warning(export, tmp_path):
    root = tmp_path / "x"
    shutil.copytree(export, root)
    (root / "CheXlocalize" / "gt_segmentations_val.json").unlink()
    dataset, warnings = open_dataset(root)
    assert len(warnings) == 1 and "gt_annotations_val.json" in warnings[0]
    val, test = dataset.split("val"), dataset.split("test")
    assert {ref.encoding for ref in val.masks.values()} == {"polygons"}
    assert {ref.encoding for ref in test.masks.values()} == {"coco_rle"}
    assert len(warnings) == 1


def test_partial_downloads_and_missing_tables(export, tmp_path):
    root = tmp_path / "x"
    shutil.copytree(export, root, ignore=shutil.ignore_patterns("CheXpert-v1.0-small"))
    full = open_dataset(export)[0].split("test")
    (root / "CheXpert" / "test" / full.ids[1].replace("_", "/", 2)).with_suffix(".jpg").unlink()
    dataset, warnings = open_dataset(root)
    test = dataset.split("test")
    assert list(test.ids) == [i for k, i in enumerate(full.ids) if k != 1]
    assert len(warnings) == 1 and f"1 of {len(full) + len(dataset.split('val'))} listed images are missing" in \
        warnings[0]
    assert len(test.masks) == 10 * len(test)
    # A table without its partner is an error naming the missing file; no table at all is one too.
    (root / "CheXpert" / "test_labels.csv").unlink()
    with pytest.raises(UsageError, match="test split: missing under .*CheXpert/test_labels.csv"):
        open_dataset(root)
    with pytest.raises(UsageError, match="no CheXlocalize tables"):
        open_dataset(tmp_path)
    with pytest.raises(UsageError, match="chexpert_root: chexpert: no train.csv"):
        open_dataset(export, chexpert_root=str(tmp_path))


def test_opening_decodes_no_mask(export, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a mask was decoded when the dataset was opened")

    monkeypatch.setattr(masks_module.coco_mask, "decode", refuse)
    monkeypatch.setattr(masks_module, "polygons_to_mask", refuse)
    dataset, _ = open_dataset(export, chexpert_root=str(export))
    assert dataset.split_names[0] == "train"


# --------------------------------------------------------------------------- options and registration


def test_classes_option(export):
    spelled, _ = open_dataset(export, classes=("Airspace Opacity", "Edema"))
    chexpert_spelled, _ = open_dataset(export, classes=("Lung Opacity", "Edema"))
    assert spelled.classes == ["Lung Opacity", "Edema"] and spelled.options.classes == ("Lung Opacity", "Edema")
    assert spelled.fingerprint() == chexpert_spelled.fingerprint()
    val = spelled.split("val")
    assert val.labels.shape == (len(val), 2) and sorted(val.masks) == [(r, c) for r in range(len(val)) for c in (0, 1)]
    assert val.masks[(0, 0)].class_name == "Airspace Opacity"  # masks keep CheXlocalize's name, for its files
    assert open_dataset(export, classes="competition5")[0].classes == list(COMPETITION5)
    uncertain, _ = open_dataset(export, classes=("Lung Opacity",), uncertain={"Airspace Opacity": "ones"})
    assert uncertain.options.uncertain == {"Lung Opacity": "ones"}


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ({"classes": ["Pneumonia"]}, "classes", "does not localize"),
        ({"classes": ["Lung Opacity", "Airspace Opacity"]}, "classes", "twice"),
        ({"classes": "all14"}, "classes", "'all10', 'competition5'"),
        ({"masks": "rle"}, "masks", "expected one of"),
        ({"uncertain": "maybe"}, "uncertain", "uncertain must be"),
        ({"chexpert_root": " "}, "chexpert_root", "must name a CheXpert release"),
    ],
)
def test_bad_options_name_the_option(export, options, path, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_dataset("chexlocalize", {"root": str(export), **options}, registry=TestChexlocalizeContract.registry())
    assert info.value.path.endswith(path) and "\n" not in str(info.value)


class TestChexlocalizeContract(DatasetContract):
    """Every dataset check, on a phantom export with its CheXpert training release."""

    name = "chexlocalize"
    plugins = (("chexlocalize", cxrbench_chexlocalize),)
    disjoint_splits = (("train", "val"), ("train", "test"), ("val", "test"))

    @pytest.fixture(autouse=True, scope="class")
    def _options(self, request, tmp_path_factory):
        root = write_chexlocalize_layout(tmp_path_factory.mktemp("contract"), num_images=24, image_size=40, seed=9)
        request.cls.options = {"root": str(root), "chexpert_root": str(root)}


# --------------------------------------------------------------------------- one grid cell


def test_a_cell_trains_on_chexpert_and_scores_chexlocalize_masks(export, tmp_path):
    # The host's mask metrics (cxrbench.maskscoring) need this module; it may not have landed yet.
    pytest.importorskip("cxrbench.locmetrics.maskmetrics", reason="cxrbench.locmetrics.maskmetrics is not there yet")
    import cxrbench_cam
    import cxrbench_executors
    import cxrbench_heads

    from tests.plugins import toy

    plugins = [("executors", cxrbench_executors), ("heads", cxrbench_heads), ("cam", cxrbench_cam),
               ("toy", toy), ("chexpert", cxrbench_chexpert), ("chexlocalize", cxrbench_chexlocalize)]
    pm = build_plugin_manager(plugins=plugins, entry_points=False)
    classes = ["Cardiomegaly", "Lung Opacity"]
    grid = {
        "name": "chexlocalize-phantom",
        "datasets": [{"name": "chexlocalize",
                      "options": {"root": str(export), "chexpert_root": str(export), "classes": classes,
                                  "uncertain": "ones"}}],
        "backbones": [{"name": "tiny", "options": {"width": 4}}],
        "heads": ["avg"],
        "localizers": ["cam"],
        "train": {"epochs": 1, "batch_size": 8, "image_size": 32, "lr": 0.01},
        "evaluation": {"bootstrap": 0},
    }
    spec = parse_grid(grid, Registry.from_plugin_manager(pm))
    with ResultsStore(tmp_path / "results") as store:
        summary = run_grid(spec, pm, store)
        records = store_records(store, spec.name)
    assert (summary.ok, summary.failed) == (1, 0), records[0]["error"] if records else summary
    metrics = records[0]["metrics"]
    assert math.isfinite(metrics["auroc_mean"])
    record = records[0]
    assert record["localizer_status"] == "ok", record["localizer_error"]
    assert math.isfinite(metrics["iou_mean"]) and 0.0 <= metrics["iou_mean"] <= 1.0
    # the masks themselves are scored too, on every annotated pair of the test split
    assert 0.0 <= metrics["mask_hit_rate"] <= 1.0 and metrics["mask_positive_pairs"] > 0
    assert metrics["mask_images"] > 0
