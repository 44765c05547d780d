"""The ``rsna_pneumonia`` dataset plugin: synthetic tables, then the real label table with DICOMs written here."""

from __future__ import annotations

import csv
import hashlib
import math
from collections import defaultdict
from importlib.metadata import entry_points
from pathlib import Path

import cv2
import cxrbench_rsna
import numpy as np
import pytest
from cxrbench_rsna import RsnaPneumonia, cxrbench_register_datasets
from cxrbench_rsna.tables import read_labels
from helpers import store_records

from cxrbench.config import parse_grid
from cxrbench.data import open_cache, prepare_split, resize_square
from cxrbench.dicom import write_dicom
from cxrbench.driver import run_grid
from cxrbench.errors import ConfigError, UsageError
from cxrbench.imageio import read_grey
from cxrbench.interfaces import DatasetContext
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from cxrbench.testing import DatasetContract

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_TABLE = DATA / "rsna" / "stage_2_train_labels.csv"
HEADER = "patientId,x,y,width,height,Target"


def write_layout(root: Path, rows: list[tuple], *, present: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A published-style root: the label table, and ``<id>.dcm`` of ``side`` px for each id in ``present``.

    Args:
        rows: (patientId, x, y, width, height, Target); None for an empty box cell.
        present: id -> side of the square 8-bit DICOM to write (default: every id at 64 px).

    """
    root.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [",".join("" if v is None else str(v) for v in row) for row in rows]
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    images = root / "stage_2_train_images"
    images.mkdir(exist_ok=True)
    ids = list(dict.fromkeys(row[0] for row in rows))
    rng = np.random.default_rng(seed)
    for image_id, side in (present if present is not None else {i: 64 for i in ids}).items():
        write_dicom(images / f"{image_id}.dcm", rng.integers(0, 256, (side, side)).astype(np.uint8),
                    patient_id=image_id)
    return root


def load(root: Path, **options) -> tuple[RsnaPneumonia, list[str]]:
    warnings: list[str] = []
    dataset = RsnaPneumonia(RsnaPneumonia.Options(root=str(root), **options), DatasetContext(warn=warnings.append))
    return dataset, warnings


def expected_split(patient: str, seed: int, test: float, val: float) -> str:
    """The documented rule, written out: u = sha256("seed:patient") in [0, 1); test, then val, then train."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient}".encode()).digest()[:8], "big") / 2.0**64
    return "test" if u < test else "val" if u < test + val else "train"


def all_records(dataset) -> dict[str, tuple[str, int, float]]:
    """image id -> (split, row, label) over train/val/test."""
    out = {}
    for name in ("train", "val", "test"):
        split = dataset.split(name)
        for row, image_id in enumerate(split.ids):
            out[image_id] = (name, row, float(split.labels[row, 0]))
    return out


SYNTHETIC = [
    ("pos-two", 100, 200, 300, 400, 1),
    ("pos-two", 600, 150, 200, 500, 1),
    ("pos-one", 0, 0, 1024, 1024, 1),
    ("neg-a", None, None, None, None, 0),
    ("neg-b", None, None, None, None, 0),
]


# --------------------------------------------------------------------------- registration, options


def test_registers_through_the_hook_and_the_entry_point():
    assert cxrbench_register_datasets() == [RsnaPneumonia]
    pm = build_plugin_manager(plugins=[("rsna", cxrbench_rsna)], entry_points=False, core=False)
    assert Registry.from_plugin_manager(pm).get("dataset", "rsna_pneumonia") is RsnaPneumonia
    assert "cxrbench_rsna" in {ep.value for ep in entry_points(group="cxrbench")}


def test_options_are_checked_with_their_yaml_path(tmp_path):
    from cxrbench.options import parse_options

    for bad in ({"val_fraction": 1.0}, {"test_fraction": -0.1}, {"val_fraction": 0.5, "test_fraction": 0.5}):
        with pytest.raises(ConfigError, match=r"datasets\[0\]\.options"):
            parse_options(RsnaPneumonia.Options, {"root": str(tmp_path), **bad}, "datasets[0].options",
                          "dataset 'rsna_pneumonia'")


# --------------------------------------------------------------------------- labels, boxes, splits (synthetic)


def test_labels_and_boxes_scaled_to_each_file(tmp_path):
    # one image at the release size, one shrunk to 256, negatives at 64: boxes follow each file
    root = write_layout(tmp_path / "r", SYNTHETIC, present={"pos-two": 256, "pos-one": 1024, "neg-a": 64, "neg-b": 64})
    dataset, warnings = load(root, val_fraction=0.0, test_fraction=0.0)  # everything in train
    assert warnings == []
    assert dataset.classes == ["Lung Opacity"]
    train = dataset.split("train")
    assert sorted(train.ids) == ["neg-a", "neg-b", "pos-one", "pos-two"]
    label = dict(zip(train.ids, train.labels[:, 0].tolist(), strict=True))
    assert label == {"neg-a": 0.0, "neg-b": 0.0, "pos-one": 1.0, "pos-two": 1.0}
    assert train.labels.dtype == np.float32 and list(train.patient_ids) == list(train.ids)
    boxes = {(train.ids[r.index], r.x, r.y, r.w, r.h) for r in train.boxes.itertuples()}
    assert boxes == {("pos-two", 25.0, 50.0, 75.0, 100.0), ("pos-two", 150.0, 37.5, 50.0, 125.0),
                     ("pos-one", 0.0, 0.0, 1024.0, 1024.0)}
    assert set(train.boxes["class_index"]) == {0}
    assert dataset.split("test").boxes.empty and len(dataset.split("test")) == 0


def test_splits_follow_the_documented_hash_rule_and_ignore_presence(tmp_path):
    ids = [f"id-{i:03d}" for i in range(120)]
    rows = [(i, 10, 10, 50, 60, 1) if k % 3 == 0 else (i, None, None, None, None, 0) for k, i in enumerate(ids)]
    root = write_layout(tmp_path / "r", rows, present={i: 16 for i in ids})
    dataset, _ = load(root, val_fraction=0.2, test_fraction=0.3, split_seed=7)
    records = all_records(dataset)
    assert sorted(records) == ids  # every present image in exactly one split
    for image_id, (name, _, _) in records.items():
        assert name == expected_split(image_id, 7, 0.3, 0.2)
    counts = {n: sum(v[0] == n for v in records.values()) for n in ("train", "val", "test")}
    assert all(counts.values()) and abs(counts["test"] - 36) < 20  # fractions up to sampling noise
    # boxes = test, the same records
    assert dataset.split("boxes") is dataset.split("test")
    # another seed moves patients
    other = all_records(load(root, val_fraction=0.2, test_fraction=0.3, split_seed=8)[0])
    assert any(other[i][0] != records[i][0] for i in ids)
    # removing images keeps every other image where it was
    for i in ids[::2]:
        (root / "stage_2_train_images" / f"{i}.dcm").unlink()
    partial, warnings = load(root, val_fraction=0.2, test_fraction=0.3, split_seed=7)
    assert {i: v[0] for i, v in all_records(partial).items()} == {i: records[i][0] for i in ids[1::2]}
    assert len(warnings) == 1 and "60 of 120 listed images are missing" in warnings[0]


def test_missing_images_one_warning_and_none_present_is_an_error(tmp_path):
    root = write_layout(tmp_path / "r", SYNTHETIC, present={"pos-two": 32})
    dataset, warnings = load(root, val_fraction=0.0, test_fraction=0.0)
    assert dataset.split("train").ids == ["pos-two"]
    assert len(warnings) == 1 and "3 of 4 listed images are missing" in warnings[0]
    empty = write_layout(tmp_path / "empty", SYNTHETIC, present={})
    with pytest.raises(UsageError, match="none of the 4 listed images"):
        load(empty)[0].split("train")


def test_a_converted_png_copy_is_found_and_the_dicom_preferred(tmp_path):
    root = write_layout(tmp_path / "r", SYNTHETIC, present={"pos-two": 64})
    images = root / "stage_2_train_images"
    assert cv2.imwrite(str(images / "pos-one.png"), np.full((128, 128), 7, np.uint8))
    assert cv2.imwrite(str(images / "pos-two.png"), np.full((10, 10), 7, np.uint8))
    dataset, _ = load(root, val_fraction=0.0, test_fraction=0.0)
    train = dataset.split("train")
    paths = {train.ids[i]: dataset.image_path("train", i) for i in range(len(train))}
    assert paths["pos-two"].endswith("pos-two.dcm") and paths["pos-one"].endswith("pos-one.png")
    one = train.boxes[train.boxes["index"] == train.ids.index("pos-one")]
    assert one[["x", "y", "w", "h"]].to_numpy().tolist() == [[0.0, 0.0, 128.0, 128.0]]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", 1, 2, 3, 4, 2)], "Target must be 0 or 1"),
        ([("a", None, None, None, None, 1)], r"line 2 \(a\): a Target 1 row needs a box"),
        ([("a", 1, 2, 0, 4, 1)], "width, height > 0"),
        ([("a", 1, 2, 3, 4, 0)], "a Target 0 row must have an empty box"),
        ([("a", 1, 2, 3, 4, 1), ("a", None, None, None, None, 0)], "image a has both Target 0 and Target 1 rows"),
    ],
)
def test_table_errors_are_one_line_naming_the_file(tmp_path, rows, message):
    root = write_layout(tmp_path / "r", rows, present={})
    with pytest.raises(UsageError, match=message) as excinfo:
        load(root)[0].split("train")
    assert "stage_2_train_labels.csv" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_missing_table_or_column(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(UsageError, match="missing under .*stage_2_train_labels.csv"):
        load(tmp_path / "r")
    (tmp_path / "r" / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height\na,,,,\n")
    with pytest.raises(UsageError, match="lacks column.*Target"):
        load(tmp_path / "r")[0].split("train")


def test_prepare_caches_the_dicom_images(tmp_path):
    root = write_layout(tmp_path / "r", SYNTHETIC, present={"pos-two": 48, "pos-one": 40, "neg-a": 36, "neg-b": 30})
    dataset, _ = load(root, val_fraction=0.0, test_fraction=0.0)
    report = prepare_split(dataset, "train", 24, tmp_path / "cache", workers=2)
    assert report.failed == [] and report.decoded == 4
    cached = open_cache(dataset, "train", 24, tmp_path / "cache")
    for row in range(len(cached)):
        original = read_grey(dataset.image_path("train", row))
        np.testing.assert_array_equal(cached.images[row], resize_square(original, 24))
    # boxes scaled from each file to the cache's 24 px
    row = list(cached.split.ids).index("pos-one")
    assert cached.boxes[cached.boxes["index"] == row][["w", "h"]].to_numpy().tolist() == [[24.0, 24.0]]


class TestRsnaContract(DatasetContract):
    """Every dataset check on a small synthetic layout."""

    name = "rsna_pneumonia"
    plugins = (("rsna", cxrbench_rsna),)

    @pytest.fixture(autouse=True, scope="class")
    def _options(self, request, tmp_path_factory):
        ids = [f"c{i:02d}" for i in range(30)]
        rows = [(i, 100 + k, 200, 300, 400, 1) if k % 2 else (i, None, None, None, None, 0) for k, i in enumerate(ids)]
        root = write_layout(tmp_path_factory.mktemp("rsna"), rows, present={i: 40 for i in ids})
        request.cls.options = {"root": str(root), "val_fraction": 0.25, "test_fraction": 0.25}


# --------------------------------------------------------------------------- the real table


def real_table() -> Path:
    if not REAL_TABLE.is_file():
        pytest.skip(f"real RSNA label table not found at {REAL_TABLE}")
    return REAL_TABLE


def parse_independently(path: Path) -> tuple[dict[str, int], dict[str, list[tuple[float, ...]]]]:
    """image -> Target, image -> boxes, with the csv module."""
    target: dict[str, int] = {}
    boxes: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            target[row["patientId"]] = max(target.get(row["patientId"], 0), int(row["Target"]))
            if row["Target"] == "1":
                boxes[row["patientId"]].append(tuple(float(row[k]) for k in ("x", "y", "width", "height")))
    return target, boxes


@pytest.mark.realdata
def test_the_real_table_in_full():
    path = real_table()
    target, boxes = parse_independently(path)
    labels = read_labels(path)
    assert len(labels.image_ids) == len(target) == 26684
    assert labels.positives == sum(target.values()) == 6012
    assert len(labels.image_ids) - labels.positives == 20672
    assert len(labels.boxes) == sum(map(len, boxes.values())) == 9555
    per_image = np.bincount(labels.boxes["image"], minlength=len(labels.image_ids))
    assert dict(zip(*np.unique(per_image[per_image > 0], return_counts=True), strict=True)) == {
        1: 2614, 2: 3266, 3: 119, 4: 13}
    assert dict(zip(labels.image_ids, labels.target.tolist(), strict=True)) == target


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory) -> tuple[Path, list[str], dict[str, int], dict[str, list[tuple[float, ...]]]]:
    """The real table with DICOMs (128 px, so boxes scale by 1/8) for 40 real ids of every kind."""
    path = real_table()
    target, boxes = parse_independently(path)
    by_count: dict[int, list[str]] = defaultdict(list)
    for image_id in sorted(target):
        by_count[len(boxes.get(image_id, []))].append(image_id)
    chosen = by_count[0][:16] + by_count[1][:8] + by_count[2][:8] + by_count[3][:4] + by_count[4][:4]
    root = tmp_path_factory.mktemp("rsna_real")
    (root / "stage_2_train_labels.csv").write_bytes(path.read_bytes())
    images = root / "stage_2_train_images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for image_id in chosen:
        pixels = rng.integers(0, 60, (128, 128)).astype(np.uint8)
        for x, y, w, h in boxes.get(image_id, []):  # bright boxes, so a model can learn the finding
            pixels[int(y / 8) : int((y + h) / 8), int(x / 8) : int((x + w) / 8)] = 220
        write_dicom(images / f"{image_id}.dcm", pixels, patient_id=image_id)
    return root, chosen, target, boxes


@pytest.mark.realdata
def test_real_ids_labels_boxes_and_splits(real_subset):
    root, chosen, target, boxes = real_subset
    dataset, warnings = load(root)
    records = all_records(dataset)
    assert len(warnings) == 1 and f"{26684 - 40:,} of 26,684 listed images are missing" in warnings[0]
    assert sorted(records) == sorted(chosen)
    for image_id, (name, row, label) in records.items():
        assert label == target[image_id]
        assert name == expected_split(image_id, 0, 0.2, 0.1)
        split = dataset.split(name)
        got = split.boxes[split.boxes["index"] == row][["x", "y", "w", "h"]].to_numpy()
        want = np.array([[v / 8 for v in box] for box in boxes.get(image_id, [])]).reshape(-1, 4)
        np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])
    assert sum(len(dataset.split(n).boxes) for n in ("train", "val", "test")) == sum(
        len(boxes.get(i, [])) for i in chosen) == 8 + 16 + 12 + 16


@pytest.mark.realdata
@pytest.mark.slow
def test_a_cell_trains_and_localizes_on_real_ids(real_subset, tmp_path):
    import cxrbench_cam
    import cxrbench_executors
    import cxrbench_heads

    from tests.plugins import toy

    root = real_subset[0]
    pm = build_plugin_manager(plugins=[("executors", cxrbench_executors), ("heads", cxrbench_heads),
                                       ("cam", cxrbench_cam), ("toy", toy), ("rsna", cxrbench_rsna)],
                              entry_points=False)
    grid = {
        "name": "rsna-real-ids",
        "datasets": [{"name": "rsna_pneumonia", "options": {"root": str(root), "val_fraction": 0.25,
                                                            "test_fraction": 0.35}}],
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
    record = records[0]
    assert math.isfinite(record["metrics"]["auroc_mean"])
    assert record["localizer_status"] == "ok", record["localizer_error"]
    assert 0.0 <= record["metrics"]["iou_mean"] <= 1.0
