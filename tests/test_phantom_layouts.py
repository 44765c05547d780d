"""The phantom's DICOM layouts (vindr, rsna_pneumonia, siim) read by their own dataset plugins.

Each layout is exported into tmp_path, the matching dataset is built through the registry
as a grid builds it, and what it reads is checked against the phantom's ground truth,
computed here from the generator (class mapping written out by hand, masks enlarged with
``np.kron``, regions labelled with scipy rather than OpenCV).
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import cxrbench_phantom
import cxrbench_rsna
import cxrbench_siim
import cxrbench_vindr
import numpy as np
import pandas as pd
import pydicom
import pytest
from click.testing import CliRunner
from cxrbench_phantom.dataset import Options, generator_for
from cxrbench_phantom.rsna_export import rsna_patient_id, write_rsna_layout
from cxrbench_phantom.siim_export import siim_image_id, write_siim_layout
from cxrbench_phantom.vindr_export import BOX_JITTER, vindr_image_id, write_vindr_layout
from cxrbench_siim.tables import read_rle_table
from helpers import store_records
from scipy import ndimage

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.errors import UsageError
from cxrbench.imageio import read_grey
from cxrbench.interfaces import DatasetContext
from cxrbench.manager import build_plugin_manager
from cxrbench.masks import combine_siim_rles
from cxrbench.options import parse_options
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore

SIZE = 64
N = 32
SEED = 5

# The VinDr-CXR challenge's spelling of each phantom finding, written out from its class list.
VINDR_SPELLING = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural effusion",
    "Infiltration": "Infiltration",
    "Mass": "Nodule/Mass",
    "Nodule": "Nodule/Mass",
    "Pneumothorax": "Pneumothorax",
}
PLUGINS = [("vindr", cxrbench_vindr), ("rsna", cxrbench_rsna), ("siim", cxrbench_siim)]


def build(name: str, root: Path, **options):
    """The dataset ``name`` on ``root``, found in the registry and its options parsed as a grid does."""
    pm = build_plugin_manager(plugins=PLUGINS, entry_points=False, core=False)
    cls = Registry.from_plugin_manager(pm).get("dataset", name)
    opts = parse_options(cls.Options, {"root": str(root), **options}, "datasets[0].options", f"dataset {name!r}")
    warnings: list[str] = []
    return cls(opts, DatasetContext(warn=warnings.append)), warnings


def generator(**kwargs):
    return generator_for(Options(**{"num_images": N, "image_size": SIZE, "seed": SEED, **kwargs}))


def located(dataset) -> dict[str, tuple[str, int]]:
    """image id -> (split, row) over train / val / test."""
    return {image_id: (name, row) for name in ("train", "val", "test")
            for row, image_id in enumerate(dataset.split(name).ids)}


def split_boxes(dataset, name: str) -> dict[str, np.ndarray]:
    """image id -> its ``x, y, w, h, class`` rows in split ``name``, sorted."""
    split = dataset.split(name)
    out = {}
    for row, image_id in enumerate(split.ids):
        rows = split.boxes[split.boxes["index"] == row]
        table = rows[["x", "y", "w", "h", "class_index"]].to_numpy(dtype=np.float64)
        out[image_id] = table[np.lexsort(table.T[::-1])]
    return out


def sorted_rows(rows: list[tuple[float, ...]]) -> np.ndarray:
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return table[np.lexsort(table.T[::-1])]


# --------------------------------------------------------------------------- vindr


@pytest.fixture(scope="module")
def vindr(tmp_path_factory):
    root = write_vindr_layout(tmp_path_factory.mktemp("vindr"), num_images=N, image_size=SIZE, seed=SEED)
    gen = generator(classes=tuple(VINDR_SPELLING))
    ids = {vindr_image_id(SEED, gen.cohort.image_id(i)): i for i in range(N)}
    return root, gen, ids


def test_vindr_table_is_the_challenge_layout(vindr):
    root, gen, ids = vindr
    assert (root / "train.csv").read_text().splitlines()[0] == \
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
    table = pd.read_csv(root / "train.csv")
    assert set(table["image_id"]) == set(ids) and len(list((root / "train").glob("*.dicom"))) == N
    kaggle = cxrbench_vindr.tables.KAGGLE14
    for image_id, rows in table.groupby("image_id"):
        readers = set(rows["rad_id"])
        assert len(readers) == 3 and readers <= {f"R{k}" for k in range(1, 18)}
        findings = gen.findings(ids[image_id])
        if findings:
            assert set(rows["class_name"]) == {VINDR_SPELLING[f] for f in findings}
            assert (rows["class_id"] == [kaggle.index(c) for c in rows["class_name"]]).all()
            # each reader draws one box per lesion
            assert (rows.groupby("rad_id").size() == len(gen.boxes(ids[image_id]))).all()
        else:
            assert (rows["class_name"] == "No finding").all() and (rows["class_id"] == 14).all()
            assert len(rows) == 3 and rows[["x_min", "y_min", "x_max", "y_max"]].isna().all().all()


def test_vindr_reader_boxes_are_jittered_around_the_truth_and_average_to_it(vindr):
    root, gen, ids = vindr
    table = pd.read_csv(root / "train.csv").dropna()
    moved = 0.0
    for image_id, i in ids.items():
        rows = table[table["image_id"] == image_id]
        for k, (_finding, x, y, w, h) in enumerate(gen.boxes(i)):
            # the k-th box of each reader is lesion k (readers write their lesions in one order)
            boxes = np.stack([r[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64)[k]
                              for _, r in rows.groupby("rad_id", sort=False)])
            truth = np.array([x, y, x + w, y + h], dtype=np.float64)
            side = np.array([w, h, w, h], dtype=np.float64)
            assert np.all(np.abs(boxes - truth) <= 2 * BOX_JITTER * side + 1e-9)
            assert np.all((boxes >= 0) & (boxes <= SIZE))
            np.testing.assert_allclose(boxes.mean(axis=0), truth, atol=1e-9)
            moved = max(moved, float(np.abs(boxes - truth).max()))
    assert moved > 0.1  # the readers do disagree


def test_vindr_dataset_reads_the_phantom_labels_boxes_and_pixels(vindr):
    root, gen, ids = vindr
    dataset, warnings = build("vindr", root, val_fraction=0.3, test_fraction=0.4)
    assert warnings == []
    where = located(dataset)
    assert sorted(where) == sorted(ids)
    classes = dataset.classes
    for image_id, (name, row) in where.items():
        want = {VINDR_SPELLING[f] for f in gen.findings(ids[image_id])}
        got = {c for c, v in zip(classes, dataset.split(name).labels[row], strict=True) if v}
        assert got == want, image_id
    checked = 0
    for name in ("val", "test"):
        for image_id, got in split_boxes(dataset, name).items():
            i = ids[image_id]
            want = sorted_rows([(x, y, w, h, classes.index(VINDR_SPELLING[f])) for f, x, y, w, h in gen.boxes(i)])
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=image_id)
            checked += len(want)
    assert checked >= 10
    # every reader's box with readers: all
    every, _ = build("vindr", root, val_fraction=0.3, test_fraction=0.4, readers="all")
    assert len(every.split("test").boxes) == 3 * len(dataset.split("test").boxes)
    photometric = set()
    for image_id, i in ids.items():
        path = root / "train" / f"{image_id}.dicom"
        np.testing.assert_array_equal(read_grey(path), gen.image(i))
        photometric.add(str(pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation))
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_vindr_refuses_a_finding_without_a_challenge_class(tmp_path):
    with pytest.raises(ValueError, match="Pneumonia"):
        write_vindr_layout(tmp_path, num_images=4, image_size=32, classes=("Pneumonia", "Nodule"))


# --------------------------------------------------------------------------- rsna_pneumonia


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    root = write_rsna_layout(tmp_path_factory.mktemp("rsna"), num_images=N, image_size=SIZE, seed=SEED,
                             no_finding_fraction=0.4)
    gen = generator(classes=("Pneumonia",), no_finding_fraction=0.4)
    ids = {rsna_patient_id(SEED, gen.cohort.image_id(i)): i for i in range(N)}
    return root, gen, ids


def test_rsna_table_rows_are_one_per_box_and_one_per_negative(rsna):
    root, gen, ids = rsna
    assert (root / "stage_2_train_labels.csv").read_text().splitlines()[0] == "patientId,x,y,width,height,Target"
    table = pd.read_csv(root / "stage_2_train_labels.csv")
    assert set(table["patientId"]) == set(ids)
    for patient, rows in table.groupby("patientId"):
        boxes = gen.boxes(ids[patient])
        if boxes:
            assert len(rows) == len(boxes) and (rows["Target"] == 1).all()
            want = sorted((x * 16.0, y * 16.0, w * 16.0, h * 16.0) for _, x, y, w, h in boxes)  # 1024 / 64
            assert sorted(map(tuple, rows[["x", "y", "width", "height"]].to_numpy())) == want
        else:
            assert len(rows) == 1 and rows["Target"].iloc[0] == 0 and rows[["x", "y"]].isna().all().all()
    assert table.groupby("patientId").size().max() >= 2  # some images have two opacities


def test_rsna_dataset_reads_the_phantom_labels_boxes_and_pixels(rsna):
    root, gen, ids = rsna
    dataset, warnings = build("rsna_pneumonia", root, val_fraction=0.3, test_fraction=0.4)
    assert warnings == [] and dataset.classes == ["Lung Opacity"]
    where = located(dataset)
    assert sorted(where) == sorted(ids)
    for patient, (name, row) in where.items():
        assert dataset.split(name).labels[row, 0] == float("Pneumonia" in gen.findings(ids[patient]))
    checked = 0
    for name in ("train", "val", "test"):
        for patient, got in split_boxes(dataset, name).items():
            want = sorted_rows([(x, y, w, h, 0) for _, x, y, w, h in gen.boxes(ids[patient])])
            np.testing.assert_allclose(got, want, atol=1e-9)
            checked += len(want)
    assert checked == sum(len(gen.boxes(i)) for i in range(N)) > 0
    for patient, i in ids.items():
        path = root / "stage_2_train_images" / f"{patient}.dcm"
        np.testing.assert_array_equal(read_grey(path), gen.image(i))
        assert pydicom.dcmread(path, stop_before_pixels=True).PatientID == patient


def test_rsna_another_phantom_finding_can_be_the_opacity(tmp_path):
    write_rsna_layout(tmp_path, num_images=12, image_size=32, seed=2, finding="Infiltration")
    gen = generator_for(Options(num_images=12, image_size=32, seed=2, classes=("Infiltration",),
                                no_finding_fraction=0.7))
    table = pd.read_csv(tmp_path / "stage_2_train_labels.csv")
    target = table.groupby("patientId")["Target"].max()
    assert {p: bool(t) for p, t in target.items()} == {
        rsna_patient_id(2, gen.cohort.image_id(i)): bool(gen.findings(i)) for i in range(12)}


# --------------------------------------------------------------------------- siim


@pytest.fixture(scope="module")
def siim(tmp_path_factory):
    root = write_siim_layout(tmp_path_factory.mktemp("siim"), num_images=N, image_size=SIZE, seed=SEED,
                             no_finding_fraction=0.3)
    gen = generator(classes=("Pneumothorax",), no_finding_fraction=0.3)
    ids = {siim_image_id(SEED, gen.cohort.image_id(i)): i for i in range(N)}
    masks = {}
    for image_id, i in ids.items():
        mask = np.zeros((SIZE, SIZE), bool)
        for finding, m in gen.masks(i):
            mask |= (m > 0) & (finding == "Pneumothorax")
        masks[image_id] = mask
    return root, gen, ids, masks


def regions(mask: np.ndarray) -> int:
    """8-connected regions, by scipy (the exporter labels with OpenCV)."""
    return int(ndimage.label(mask, structure=np.ones((3, 3)))[1])


def test_siim_table_has_one_row_per_region_and_the_tree_of_uids(siim):
    root, gen, ids, masks = siim
    assert (root / "train-rle.csv").read_text().splitlines()[0] == "ImageId, EncodedPixels"
    table = read_rle_table(root / "train-rle.csv")
    assert set(table.rows) == set(ids)
    several = 0
    for image_id, rles in table.rows.items():
        want = masks[image_id]
        assert len(rles) == max(regions(want), 1)
        assert (rles == ("-1",)) == (not want.any())
        # every row kept: their union is the phantom's mask, enlarged 16x to the release's 1024 px
        np.testing.assert_array_equal(combine_siim_rles(rles, 1024, 1024), np.kron(want, np.ones((16, 16), bool)))
        several += len(rles) > 1
    assert several >= 3
    files = sorted((root / "dicom-images-train").rglob("*.dcm"))
    assert len(files) == N
    patient_of = {}
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        study, series = path.relative_to(root / "dicom-images-train").parts[:2]
        assert (header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID + ".dcm") == \
            (study, series, path.name)
        i = ids[path.stem]
        np.testing.assert_array_equal(read_grey(path), gen.image(i))
        patient_of.setdefault(int(gen.cohort.patient[i]), set()).add(str(header.PatientID))
    assert all(len(p) == 1 for p in patient_of.values())  # a patient's follow-ups share PatientID
    assert len({next(iter(p)) for p in patient_of.values()}) == len(patient_of)


def test_siim_dataset_reads_the_phantom_labels_masks_and_region_boxes(siim):
    root, gen, ids, masks = siim
    dataset, warnings = build("siim", root, val_fraction=0.45, test_fraction=0.45)
    assert warnings == []
    where = located(dataset)
    assert sorted(where) == sorted(ids)
    several = 0
    for image_id, (name, row) in where.items():
        split = dataset.split(name)
        assert split.labels[row, 0] == float(masks[image_id].any())
        if name == "train":
            continue
        ref = split.masks[(row, 0)]
        np.testing.assert_array_equal(ref.decode_resized(SIZE, SIZE, "nearest"), masks[image_id])
        several += len(ref.payload) > 1
        boxes = split.boxes[split.boxes["index"] == row][["x", "y", "w", "h"]].to_numpy()
        labelled, _ = ndimage.label(masks[image_id], structure=np.ones((3, 3)))
        want = [(s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start)
                for s in ndimage.find_objects(labelled)]
        assert sorted(map(tuple, boxes.tolist())) == sorted(want)
    assert several >= 1  # an image with several regions reached a masked split with all of them


def test_siim_image_size_limit(tmp_path):
    with pytest.raises(ValueError, match="at most 1024"):
        write_siim_layout(tmp_path, num_images=2, image_size=2048)


# --------------------------------------------------------------------------- all three


@pytest.mark.parametrize(("writer", "table"), [(write_vindr_layout, "train.csv"),
                                               (write_rsna_layout, "stage_2_train_labels.csv"),
                                               (write_siim_layout, "train-rle.csv")])
def test_same_seed_same_files_other_seed_other_files(tmp_path, writer, table):
    def files(seed: int, name: str) -> dict[str, bytes]:
        root = writer(tmp_path / name, num_images=6, image_size=32, seed=seed)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, again, other = files(1, "a"), files(1, "b"), files(2, "c")
    assert first == again and table in first
    assert set(first) != set(other) and first[table] != other[table]


@pytest.fixture
def cli_group():
    @click.group()
    def root() -> None:
        """Stand-in for the cxrbench root command."""

    pm = build_plugin_manager(plugins=[("phantom", cxrbench_phantom)], entry_points=False, core=False)
    pm.hook.cxrbench_add_commands(cli=root)
    return root


@pytest.mark.parametrize(("layout", "found"), [("vindr", "train/*.dicom"),
                                               ("rsna_pneumonia", "stage_2_train_images/*.dcm"),
                                               ("siim", "dicom-images-train/*/*/*.dcm")])
def test_cli_writes_each_layout(cli_group, tmp_path, layout, found):
    args = ["phantom", "export", "--layout", layout, "--out", str(tmp_path), "--num-images", "5", "--image-size", "32"]
    result = CliRunner().invoke(cli_group, args)
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob(found))) == 5


@pytest.mark.parametrize(("args", "message"), [
    (["--layout", "siim", "--image-size", "2048"], "--image-size: the siim layout"),
    (["--layout", "vindr", "--uncertain-rate", "0.1"], "--uncertain-rate"),
    (["--layout", "rsna_pneumonia", "--num-images", "0"], "--num-images"),
])
def test_cli_usage_errors_are_one_line(cli_group, tmp_path, args, message):
    result = CliRunner().invoke(cli_group, ["phantom", "export", "--out", str(tmp_path / "x"), *args])
    assert isinstance(result.exception, UsageError)
    assert message in str(result.exception) and "\n" not in str(result.exception)


# --------------------------------------------------------------------------- a grid cell


def test_a_grid_cell_trains_and_localizes_on_an_exported_layout(rsna, tmp_path):
    import cxrbench_cam
    import cxrbench_executors
    import cxrbench_heads

    from tests.plugins import toy

    root = rsna[0]
    pm = build_plugin_manager(plugins=[("executors", cxrbench_executors), ("heads", cxrbench_heads),
                                       ("cam", cxrbench_cam), ("toy", toy), *PLUGINS], entry_points=False)
    grid = {
        "name": "phantom-rsna",
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
