"""The built-in phantom dataset: determinism, exact boxes, splits, options, exports, CLI."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import cv2
import cxrbench_phantom
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from cxrbench_phantom import CLASSES, Options, PhantomDataset, PhantomGenerator
from cxrbench_phantom import render as phantom_render
from cxrbench_phantom.cohort import STREAM_PIXELS
from cxrbench_phantom.export import (
    NIH_BBOX_HEADER,
    NIH_DATA_ENTRY_HEADER,
    write_chexpert_layout,
    write_nih_layout,
)
from sklearn.metrics import roc_auc_score

from cxrbench.errors import ConfigError, UsageError
from cxrbench.interfaces import BOX_COLUMNS
from cxrbench.manager import build_plugin_manager
from cxrbench.options import parse_options
from cxrbench.registry import Registry

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SMALL = {"num_images": 60, "image_size": 64, "seed": 3}


def dataset(**overrides) -> PhantomDataset:
    return PhantomDataset(Options(**{**SMALL, **overrides}))


@pytest.fixture(scope="module")
def small() -> PhantomDataset:
    return dataset()


# --------------------------------------------------------------------------- registration


def test_registers_through_the_public_hook():
    pm = build_plugin_manager(plugins=[("phantom", cxrbench_phantom)], entry_points=False, core=False)
    registry = Registry.from_plugin_manager(pm)
    cls = registry.get("dataset", "phantom")
    assert cls is PhantomDataset
    assert cls.HAS_BOXES and set(cls(Options(num_images=5, image_size=32)).split_names) == {
        "train",
        "val",
        "test",
        "boxes",
    }


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_pixels_other_seed_other_pixels():
    a, b, c = dataset(), dataset(), dataset(seed=4)
    img_a = a.read_image("train", 0)
    assert img_a.dtype == np.uint8 and img_a.shape == (64, 64)
    np.testing.assert_array_equal(img_a, b.read_image("train", 0))
    # Another seed: other images (compare the same generator row, not the same split row).
    assert not np.array_equal(a.generator.image(0), c.generator.image(0))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_random_access_and_threads_equal_sequential(small):
    n = len(small.split("test"))
    sequential = [small.read_image("test", i) for i in range(n)]
    backwards = [small.read_image("test", i) for i in reversed(range(n))][::-1]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda i: small.read_image("test", i), range(n)))
    fresh = dataset()  # a new object, image read alone, never after its neighbours
    for i in range(n):
        np.testing.assert_array_equal(sequential[i], backwards[i])
        np.testing.assert_array_equal(sequential[i], threaded[i])
    np.testing.assert_array_equal(sequential[-1], fresh.read_image("test", n - 1))


def test_images_differ_between_rows(small):
    images = [small.read_image("train", i) for i in range(5)]
    assert all(not np.array_equal(images[0], other) for other in images[1:])


def test_fingerprint_covers_every_option():
    base = Options()
    changed = {
        "num_images": 7,
        "image_size": 128,
        "seed": 1,
        "difficulty": 0.5,
        "classes": ("Mass",),
        "no_finding_fraction": 0.5,
        "val_fraction": 0.1,
        "test_fraction": 0.3,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(Options)}
    prints = {PhantomDataset(base).fingerprint()}
    for name, value in changed.items():
        prints.add(PhantomDataset(dataclasses.replace(base, **{name: value})).fingerprint())
    assert len(prints) == len(changed) + 1


# --------------------------------------------------------------------------- boxes


def _tight_rect(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Reference bounding rectangle from numpy (independent of cv2.boundingRect)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def test_boxes_are_tight_rectangles_of_the_drawn_masks():
    gen = PhantomGenerator(80, image_size=96, seed=5)
    seen = set()
    for i in range(len(gen)):
        boxes, masks = gen.boxes(i), gen.masks(i)
        assert [b[0] for b in boxes] == [m[0] for m in masks]
        for (name, x, y, w, h), (_, mask) in zip(boxes, masks, strict=True):
            assert mask.any()
            assert (x, y, w, h) == _tight_rect(mask)
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 96 and y + h <= 96
            seen.add(name)
    assert seen == set(CLASSES)


def test_each_lesion_changes_pixels_only_around_its_box():
    """Remove one lesion from a scene and re-render: the pixels that change are the lesion's.

    This checks the box against the pixels themselves, not against the mask the box
    was computed from.
    """
    gen = PhantomGenerator(60, image_size=96, seed=2, difficulty=0.0)
    checked = set()
    for i in range(len(gen)):
        scene = gen.scene(i)
        for k, (name, x, y, w, h) in enumerate(gen.boxes(i)):
            if name == "Cardiomegaly":
                continue  # the enlarged heart is anatomy: its mask test is above
            without = dataclasses.replace(scene, lesions=scene.lesions[:k] + scene.lesions[k + 1 :])
            full = phantom_render.render(scene, 96, 0.0, np.random.default_rng([2, STREAM_PIXELS, i]))
            ref = phantom_render.render(without, 96, 0.0, np.random.default_rng([2, STREAM_PIXELS, i]))
            diff = np.abs(full.astype(int) - ref.astype(int))
            pad = 6  # lesion edges are blurred by a few pixels
            outside = diff.copy()
            outside[max(0, y - pad) : y + h + pad, max(0, x - pad) : x + w + pad] = 0
            assert outside.max() == 0, f"{name} of image {i} changed pixels outside its box"
            inside = diff[y : y + h, x : x + w]
            assert inside.mean() > 2.0, f"{name} of image {i} is invisible at difficulty 0"
            checked.add(name)
    assert checked == set(CLASSES) - {"Cardiomegaly"}


def test_cardiomegaly_box_is_the_enlarged_heart():
    gen = PhantomGenerator(300, image_size=128, seed=0, classes=("Cardiomegaly",), no_finding_fraction=0.5)
    ratio = {True: [], False: []}
    for i in range(120):
        scene = gen.scene(i)
        heart = np.concatenate(scene.heart)
        lungs = np.concatenate(scene.lungs)
        ctr = np.ptp(heart[:, 0]) / np.ptp(lungs[:, 0])
        ill = "Cardiomegaly" in gen.findings(i)
        ratio[ill].append(ctr)
        if ill:
            ((_, x, y, w, h),) = gen.boxes(i)
            heart_mask = phantom_render.g.mask_of(128, list(scene.heart), scene.matrix(128))
            assert (x, y, w, h) == _tight_rect(heart_mask)
    # The cardiothoracic ratio separates the classes at the default difficulty.
    assert min(ratio[True]) > max(ratio[False]) - 0.05
    assert np.mean(ratio[True]) > 0.5 > np.mean(ratio[False])


def test_difficulty_lowers_lesion_contrast():
    def lesion_signal(difficulty: float) -> float:
        gen = PhantomGenerator(40, image_size=64, seed=9, difficulty=difficulty, classes=("Mass",))
        total = []
        for i in range(len(gen)):
            scene = gen.scene(i)
            if not scene.lesions:
                continue
            rng = [9, STREAM_PIXELS, i]
            full = phantom_render.render(scene, 64, difficulty, np.random.default_rng(rng))
            bare = dataclasses.replace(scene, lesions=())
            ref = phantom_render.render(bare, 64, difficulty, np.random.default_rng(rng))
            total.append(np.abs(full.astype(float) - ref).sum())
        return float(np.mean(total))

    easy, default, hard = lesion_signal(0.0), lesion_signal(0.3), lesion_signal(1.0)
    assert easy > default > hard > 0
    assert hard < easy / 5


def test_no_global_brightness_shortcut():
    """Mean image brightness must not give a finding away (AUROC near 0.5 for each)."""
    ds = dataset(num_images=160, image_size=48, test_fraction=0.0, val_fraction=0.0)
    split = ds.split("train")
    brightness = np.array([ds.read_image("train", i).mean() for i in range(len(split))])
    for k, name in enumerate(ds.classes):
        auc = roc_auc_score(split.labels[:, k], brightness)
        assert abs(auc - 0.5) < 0.2, f"{name}: brightness AUROC {auc:.2f}"


# --------------------------------------------------------------------------- labels and splits


def test_labels_match_boxes_in_the_boxes_split(small):
    split = small.split("boxes")
    assert list(split.boxes.columns) == list(BOX_COLUMNS)
    assert split.labels.dtype == np.float32 and set(np.unique(split.labels)) <= {0.0, 1.0}
    assert len(split) > 0 and (split.labels.sum(1) > 0).all()
    for row in range(len(split)):
        boxed = set(split.boxes.loc[split.boxes["index"] == row, "class_index"])
        assert boxed == set(np.flatnonzero(split.labels[row]))
    assert split.image_sizes.shape == (len(split), 2) and (split.image_sizes == 64).all()


def test_splits_are_patient_disjoint_and_cover_everything(small):
    sets = {name: set(small.split(name).patient_ids) for name in ("train", "val", "test")}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    ids = [i for name in ("train", "val", "test") for i in small.split(name).ids]
    assert len(ids) == len(set(ids)) == 60
    assert set(small.split("boxes").ids) <= set(small.split("test").ids)
    # Patients have one to three images, numbered as NIH follow-ups.
    counts = pd.Series([i.split("_")[0] for i in ids]).value_counts()
    assert counts.between(1, 3).all() and counts.max() > 1
    for name in small.split_names:
        s = small.split(name)
        assert all(pid == i.split("_")[0] for pid, i in zip(s.patient_ids, s.ids, strict=True))


def test_split_fractions_and_no_finding_fraction():
    ds = dataset(num_images=2000, image_size=32, no_finding_fraction=0.3)
    n = {name: len(ds.split(name)) for name in ("train", "val", "test")}
    assert abs(n["test"] / 2000 - 0.2) < 0.01 and abs(n["val"] / 2000 - 0.15) < 0.01
    labels = np.concatenate([ds.split(s).labels for s in ("train", "val", "test")])
    assert abs((labels.sum(1) == 0).mean() - 0.3) < 0.04
    prevalence = labels.mean(0)
    assert (prevalence > 0.05).all(), prevalence  # every finding is common enough to learn
    assert (labels.sum(1) >= 2).mean() > 0.1  # findings co-occur


def test_class_subset():
    ds = dataset(num_images=80, classes=("Nodule", "Effusion"))
    assert ds.classes == ["Nodule", "Effusion"]
    for name in ds.split_names:
        assert ds.split(name).labels.shape[1] == 2
    findings = {f for i in range(80) for f in ds.generator.findings(i)}
    assert findings == {"Nodule", "Effusion"}
    boxes = ds.split("boxes").boxes
    assert len(boxes) and set(boxes["class_index"]) <= {0, 1}


def test_direct_construction_is_validated_too():
    with pytest.raises(UsageError, match="unknown class 'Hernia'"):
        PhantomDataset(Options(classes=("Hernia",)))


def test_unknown_split_and_index(small):
    with pytest.raises(UsageError, match="no split 'validation'"):
        small.split("validation")
    with pytest.raises(IndexError):
        small.read_image("test", len(small.split("test")))


# --------------------------------------------------------------------------- options


def test_options_parse_from_yaml_values():
    opts = parse_options(Options, {"classes": ["Mass", "Nodule"], "difficulty": 1}, "datasets[0].options", "dataset")
    assert opts.classes == ("Mass", "Nodule") and opts.difficulty == 1.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"classes": ["Nodul"]}, "did you mean 'Nodule'"),
        ({"classes": []}, "at least one finding"),
        ({"classes": ["Mass", "Mass"]}, "twice"),
        ({"difficulty": 1.5}, "difficulty must be between 0 and 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"image_size": 8}, "image_size"),
        ({"num_images": 0}, "num_images"),
        ({"colour": "red"}, "unknown option"),
        ({"seed": "zero"}, "expected an integer"),
    ],
)
def test_bad_options_are_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_options(Options, raw, "datasets[0].options", "dataset 'phantom'")


# --------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def nih_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    return write_nih_layout(root, num_images=40, image_size=32, seed=1)


def test_nih_export_layout(nih_export):
    root = nih_export
    lines = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    assert lines[0] == NIH_DATA_ENTRY_HEADER
    entries = pd.read_csv(root / "Data_Entry_2017_v2020.csv")
    assert entries.shape == (40, 11)
    assert list(entries.columns[:7]) == [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
    ]
    assert entries["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert set(entries["View Position"]) <= {"PA", "AP"} and set(entries["Patient Gender"]) <= {"M", "F"}
    assert (entries.iloc[:, 7] == 1024).all() and (entries.iloc[:, 8] == 1024).all()
    for labels in entries["Finding Labels"]:
        assert labels == "No Finding" or set(labels.split("|")) <= set(CLASSES)
    for name in entries["Image Index"]:
        img = cv2.imread(str(root / "images" / name), cv2.IMREAD_UNCHANGED)
        assert img.shape == (32, 32) and img.dtype == np.uint8

    train = (root / "train_val_list.txt").read_text().split()
    test = (root / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(entries["Image Index"])
    patient = entries.set_index("Image Index")["Patient ID"]
    assert not set(patient[train]) & set(patient[test])


def test_nih_export_boxes_are_the_dataset_boxes_in_1024_pixels(nih_export):
    root = nih_export
    assert (root / "BBox_List_2017.csv").read_text().splitlines()[0] == NIH_BBOX_HEADER
    boxes = pd.read_csv(root / "BBox_List_2017.csv")
    assert list(boxes.columns[:6]) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    assert "Infiltration" not in set(boxes["Finding Label"])
    test = set((root / "test_list.txt").read_text().split())
    assert set(boxes["Image Index"]) <= test

    ds = PhantomDataset(Options(num_images=40, image_size=32, seed=1))
    split = ds.split("boxes")
    expected = split.boxes.assign(
        image=[split.ids[i] + ".png" for i in split.boxes["index"]],
        label=[ds.classes[k].replace("Infiltration", "Infiltrate") for k in split.boxes["class_index"]],
    )
    assert len(boxes) == len(expected) > 0
    np.testing.assert_array_equal(boxes["Image Index"], expected["image"])
    np.testing.assert_array_equal(boxes["Finding Label"], expected["label"])
    np.testing.assert_allclose(boxes.iloc[:, 2:6].to_numpy(), expected[["x", "y", "w", "h"]].to_numpy() * 32)
    # The written pixels are the dataset's pixels.
    name = split.ids[0]
    png = cv2.imread(str(root / "images" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, ds.read_image("boxes", 0))


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_DATA / "nih").is_dir(), reason="needs ../shared/data")
def test_nih_export_headers_match_the_real_files(nih_export):
    for name in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"):
        with open(SHARED_DATA / "nih" / name) as f:
            real = f.readline().rstrip("\n")
        assert (nih_export / name).read_text().splitlines()[0] == real
        real_cols = list(pd.read_csv(SHARED_DATA / "nih" / name, nrows=2).columns)
        assert list(pd.read_csv(nih_export / name, nrows=2).columns) == real_cols


@pytest.fixture(scope="module")
def chexpert_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    return write_chexpert_layout(root, num_images=60, image_size=40, seed=2, uncertain_rate=0.5)


def test_chexpert_export_layout(chexpert_export):
    base = chexpert_export / "CheXpert-v1.0-small"
    train, valid = pd.read_csv(base / "train.csv"), pd.read_csv(base / "valid.csv")
    header = (base / "train.csv").read_text().splitlines()[0]
    assert header.startswith("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,")
    assert header.endswith(",Pleural Effusion,Pleural Other,Fracture,Support Devices")
    assert len(train) + len(valid) == 60 and len(valid) > 0
    findings = train.columns[5:]
    assert len(findings) == 14
    assert set(np.unique(train[findings].to_numpy()[~np.isnan(train[findings].to_numpy())])) <= {-1.0, 0.0, 1.0}
    assert (train[findings] == -1.0).to_numpy().sum() > 0  # uncertain labels in train
    assert (train[findings] == 1.0).to_numpy().sum() > 0
    assert valid[findings].isin([0.0, 1.0]).all().all()  # valid: no uncertain, no blanks
    for path in list(train["Path"]) + list(valid["Path"]):
        assert path.startswith("CheXpert-v1.0-small/") and path.endswith("/view1_frontal.jpg")
        img = cv2.imread(str(chexpert_export / path), cv2.IMREAD_GRAYSCALE)
        assert img is not None and img.shape == (40, 40)
    assert train["Path"].str.contains("/train/patient").all() and valid["Path"].str.contains("/valid/patient").all()
    patients = lambda df: set(df["Path"].str.extract(r"patient(\d+)")[0])  # noqa: E731
    assert not patients(train) & patients(valid)
    # No Finding is set exactly when no finding column is positive (valid is exhaustive).
    positive = (valid[findings[1:]] == 1.0).any(axis=1)
    assert ((valid["No Finding"] == 1.0) == ~positive).all()


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_DATA / "chexpert").is_dir(), reason="needs ../shared/data")
def test_chexpert_export_header_matches_the_real_files(chexpert_export):
    for name in ("train.csv", "valid.csv"):
        with open(SHARED_DATA / "chexpert" / "CheXpert-v1.0-small" / name) as f:
            real = f.readline().rstrip("\n")
        assert (chexpert_export / "CheXpert-v1.0-small" / name).read_text().splitlines()[0] == real


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_group():
    @click.group()
    def root() -> None:
        """Stand-in for the cxrbench root command."""

    pm = build_plugin_manager(plugins=[("phantom", cxrbench_phantom)], entry_points=False, core=False)
    pm.hook.cxrbench_add_commands(cli=root)
    return root


def test_cli_export_and_preview(cli_group, tmp_path):
    runner = CliRunner()
    args = ["--layout", "nih", "--out", str(tmp_path / "nih"), "--num-images", "12", "--image-size", "32"]
    result = runner.invoke(cli_group, ["phantom", "export", *args])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "nih" / "images").glob("*.png"))) == 12
    result = runner.invoke(
        cli_group, ["phantom", "preview", "--out", str(tmp_path / "p.png"), "--count", "3", "--image-size", "32"]
    )
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(tmp_path / "p.png"))
    assert sheet is not None and sheet.shape[1] == 3 * 256


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layout", "nih", "--difficulty", "2"], "--difficulty"),
        (["--layout", "nih", "--uncertain-rate", "0.2"], "only the chexpert layout"),
        (["--layout", "chexpert", "--uncertain-rate", "1.5"], "--uncertain-rate"),
        (["--layout", "nih", "--num-images", "0"], "--num-images"),
    ],
)
def test_cli_usage_errors(cli_group, tmp_path, args, message):
    result = CliRunner().invoke(cli_group, ["phantom", "export", "--out", str(tmp_path / "x"), *args])
    assert isinstance(result.exception, UsageError)
    assert message in str(result.exception)


def test_cli_help_teaches(cli_group):
    result = CliRunner().invoke(cli_group, ["phantom", "--help"])
    assert result.exit_code == 0 and "cxrbench phantom export --layout nih" in result.output
