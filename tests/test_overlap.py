"""The overlap audit: perceptual hashes, the RSNA -> NIH mapping, and exclusion in cross-dataset grids."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from cxrbench_rsna import RsnaPneumonia
from cxrbench_rsna.mapping import MAPPING_FILE, nih_patient, read_mapping
from sklearn.metrics import roc_auc_score

import cxrbench
from cxrbench import overlap as overlap_module
from cxrbench.config import parse_grid
from cxrbench.data import PHASH_FILE, _meta, cache_folder, cached_hashes, prepare_split
from cxrbench.dicom import read_dicom, write_dicom
from cxrbench.driver import RunDisplay, run_grid
from cxrbench.errors import UsageError
from cxrbench.interfaces import Classifier, DatasetContext
from cxrbench.manager import build_plugin_manager
from cxrbench.overlap import OverlapKeys
from cxrbench.phash import HASH_METHOD, MATCH_DISTANCE, brute_force_matches, hamming, matches, phash, phashes
from cxrbench.pipeline import open_dataset
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from tests.conftest import SHARED_DATA, builtin_plugins, cli_with
from tests.plugins.toy import ToyDataset, ToyOptions

NIH_SMALL = SHARED_DATA / "nih" / "images"
NIH_FULL = SHARED_DATA / "nih-full-sample" / "images"


def radiograph_like(seed: int, side: int = 1024) -> np.ndarray:
    """A smooth random grey image with some sharp structure (not noise: it survives downscaling)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((16, 16)).astype(np.float32)
    image = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):  # a few bright discs ("bones", "nodules")
        x, y, r = rng.integers(side // 8, 7 * side // 8, 2).tolist() + [int(rng.integers(side // 40, side // 10))]
        cv2.circle(image, (x, y), r, float(rng.random() + 1.0), -1)
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).astype(np.uint8)


def reencode(image: np.ndarray, ext: str, *params: int) -> np.ndarray:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


# --------------------------------------------------------------------------- the hash


def test_hash_survives_resizing_and_reencoding_and_separates_different_images():
    for seed in range(4):
        big = radiograph_like(seed)
        small = cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)
        variants = [small, reencode(small, ".png"), reencode(small, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 75),
                    cv2.resize(big, (224, 224), interpolation=cv2.INTER_AREA),
                    np.clip(small.astype(np.float32) * 0.8 + 20, 0, 255).astype(np.uint8)]  # contrast change
        reference = phash(big)
        for variant in variants:
            assert hamming(reference, phash(variant)) <= 4
    hashes = phashes([radiograph_like(s, 256) for s in range(12)])
    distances = hamming(hashes[:, None], hashes[None, :])[np.triu_indices(12, 1)]
    assert distances.min() > 3 * MATCH_DISTANCE


def test_hash_layout_is_the_median_rule_written_out():
    image = radiograph_like(7, 32)  # already 32 x 32: the DCT is of the image itself
    coefficients = cv2.dct(image.astype(np.float32))[1:17, 1:17]
    bits = (coefficients > np.median(coefficients)).ravel()
    expected = bytes(int("".join("1" if b else "0" for b in bits[i : i + 8]), 2) for i in range(0, 256, 8))
    assert phash(image).tobytes() == expected


@pytest.mark.skipif(not (NIH_FULL.is_dir() and NIH_SMALL.is_dir()), reason="needs ../shared/data/nih images")
def test_real_nih_images_as_1024_dicom_and_256_png_hash_alike(tmp_path):
    names = sorted(p.name for p in NIH_FULL.glob("*.png"))[:8]
    for name in names:
        full = cv2.imread(str(NIH_FULL / name), cv2.IMREAD_GRAYSCALE)
        write_dicom(tmp_path / "x.dcm", full)  # RSNA's copies of NIH images are DICOMs
        as_dicom = read_dicom(tmp_path / "x.dcm")
        small = cv2.imread(str(NIH_SMALL / name), cv2.IMREAD_GRAYSCALE)
        assert hamming(phash(as_dicom), phash(small)) <= 4, name
    # different real radiographs (many of one patient among them) are far apart
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(NIH_SMALL.glob("*.png"))[:300]]
    hashes = phashes(images)
    distances = hamming(hashes[:, None], hashes[None, :])[np.triu_indices(len(hashes), 1)]
    assert distances.min() > 2 * MATCH_DISTANCE
    assert not matches(hashes[150:], hashes[:150]).any()


def test_matches_are_exactly_the_brute_force_ones():
    rng = np.random.default_rng(0)
    bits = np.zeros((3000, 256), dtype=bool)
    for row in bits:
        row[rng.permutation(256)[:128]] = True
    references = np.packbits(bits[:2000], axis=1)
    queries = np.packbits(bits[2000:], axis=1)
    for k in range(60):  # planted near-copies at 0..19 flipped bits
        flipped = np.unpackbits(references[k])
        flipped[rng.choice(256, k % 20, replace=False)] ^= 1
        queries[k] = np.packbits(flipped)
    found = matches(queries, references)
    np.testing.assert_array_equal(found, brute_force_matches(queries, references))
    np.testing.assert_array_equal(np.flatnonzero(found), [k for k in range(60) if k % 20 <= MATCH_DISTANCE])
    # the crowded-bucket fallback gives the same answer
    np.testing.assert_array_equal(matches(queries, references, max_candidates=0), found)


def test_flat_images_are_never_matched():
    black = phashes([np.zeros((64, 64), np.uint8), np.full((64, 64), 128, np.uint8)])
    assert not matches(black, black).any()


# --------------------------------------------------------------------------- the cache


def test_prepare_stores_the_hashes_and_an_old_cache_gets_them_lazily(tmp_path):
    dataset = ToyDataset(ToyOptions(num_images=24, image_size=32), DatasetContext())
    prepare_split(dataset, "train", 32, tmp_path)
    folder = cache_folder(tmp_path, dataset, "train", 32)
    stored = np.load(folder / PHASH_FILE, allow_pickle=False)
    images = np.stack([dataset.read_image("train", i) for i in range(len(dataset.split("train")))])
    np.testing.assert_array_equal(stored, phashes(images))
    assert _meta(folder)["phash"] == HASH_METHOD
    np.testing.assert_array_equal(cached_hashes(dataset, "train", 32, tmp_path), stored)
    # a cache prepared before hashes existed: no file, no meta entry
    (folder / PHASH_FILE).unlink()
    meta = _meta(folder)
    del meta["phash"]
    (folder / "meta.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(cached_hashes(dataset, "train", 32, tmp_path), stored)
    assert (folder / PHASH_FILE).is_file() and _meta(folder)["phash"] == HASH_METHOD
    assert cached_hashes(dataset, "val", 32, tmp_path) is None  # not prepared: no cache, no hashes


def test_a_rebuilt_cache_does_not_keep_old_hashes(tmp_path):
    dataset = ToyDataset(ToyOptions(num_images=24, image_size=32), DatasetContext())
    prepare_split(dataset, "train", 32, tmp_path)
    folder = cache_folder(tmp_path, dataset, "train", 32)
    np.save(folder / PHASH_FILE, np.zeros((12, 32), np.uint8))  # stale hashes of other images
    meta = _meta(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "ids": "other"}))  # so prepare starts again
    prepare_split(dataset, "train", 32, tmp_path)
    images = np.stack([dataset.read_image("train", i) for i in range(12)])
    np.testing.assert_array_equal(np.load(folder / PHASH_FILE), phashes(images))


# --------------------------------------------------------------------------- in a grid


SOURCE_OPTIONS = {"num_images": 48, "image_size": 32}


@dataclasses.dataclass(frozen=True)
class CopyOptions(ToyOptions):
    copies: int = 0  # test (= boxes) rows 0..copies-1 are the source's train images 0..copies-1, upscaled


class CopyToy(ToyDataset):
    """Another toy 'hospital' whose first test images are the source toy's training images, re-encoded."""

    NAME = "toy_copies"
    Options = CopyOptions

    def read_image(self, split, index):
        if split in ("test", "boxes") and index < self.options.copies:  # boxes = the test images
            source = ToyDataset(ToyOptions(**SOURCE_OPTIONS), self.context)
            image = source.read_image("train", index)
            return cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR)  # a copy at another size
        return super().read_image(split, index)


@dataclasses.dataclass(frozen=True)
class NamedOptions(ToyOptions):
    classes: tuple[str, ...] = ("Lung Opacity", "Bar")


class NamedToy(ToyDataset):
    """A toy whose images carry NIH-style names (row r is ``<r:08d>_000.png`` of patient ``<r:08d>``)."""

    NAME = "toy_named"
    Options = NamedOptions

    def __init__(self, options, context):
        super().__init__(options, context)
        self.classes = list(options.classes)

    def overlap_keys(self, split_name):
        rows = self._splits[split_name]
        return OverlapKeys("nih", tuple(f"{r:08d}_000.png" for r in rows), tuple(f"{r:08d}" for r in rows),
                           "toy names")


class TargetsPlugin:
    @cxrbench.hookimpl
    def cxrbench_register_datasets(self):
        return [CopyToy, NamedToy]


@pytest.fixture
def pm():
    from tests.plugins import toy

    overlap_module._WARNED.clear()
    overlap_module._MEMO.clear()
    return build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy), ("targets", TargetsPlugin())],
                                entry_points=False)


@pytest.fixture
def registry(pm):
    return Registry.from_plugin_manager(pm)


BASE = {"name": "ov", "seeds": [0], "datasets": [{"name": "toy", "options": SOURCE_OPTIONS}],
        "backbones": [{"name": "tiny", "options": {"width": 4}}], "heads": ["avg"], "localizers": ["cam"],
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.01}, "evaluation": {"bootstrap": 20}}


class Warnings(RunDisplay):
    """The run's warning lines, kept."""

    def __init__(self):
        self.lines = []

    def warning(self, cell_id, message):
        self.lines.append(message)


def probabilities(store, cell_id, registry, dataset, split):
    """The cell's probabilities on a split, computed here from its best.pt."""
    model = Classifier.build(registry.create("backbone", BASE["backbones"][0], "b"),
                             registry.create("head", "avg", "h"), store.cell(cell_id).info["classes"])
    model.load_state_dict(torch.load(store.artifacts(cell_id).best, weights_only=True)["model"])
    model.eval()
    images = np.stack([cv2.resize(dataset.read_image(split, i), (32, 32), interpolation=cv2.INTER_AREA)
                       for i in range(len(dataset.split(split)))])
    x = (torch.as_tensor(images, dtype=torch.float32)[:, None] / 255 - 0.449) / 0.226
    with torch.no_grad():
        return torch.sigmoid(model(x)).numpy()


def run_with_events(grid, pm, store):
    events = Warnings()
    return run_grid(grid, pm, store, display=events), events.lines


def test_copies_of_training_images_are_excluded_from_the_transfer(pm, registry, tmp_path):
    target = {"name": "toy_copies", "options": {"num_images": 64, "image_size": 32, "seed": 3, "copies": 5}}
    grid = copy.deepcopy(BASE) | {"evaluate_on": [target]}
    with ResultsStore(tmp_path / "r") as store:
        summary, lines = run_with_events(parse_grid(grid, registry), pm, store)
        assert (summary.ok, summary.transfers_failed) == (1, 0)
        (cell,) = store.cells("ov")
        (transfer,) = cell.transfers
        dataset = open_dataset(registry.create("dataset", target, "t"))
        test = dataset.split("test")
        # the 5 copies, and the test images of their patients (the toy has two images per patient)
        copied_patients = set(test.patient_ids[:5])
        expected = np.array([i < 5 or p in copied_patients for i, p in enumerate(test.patient_ids)])
        assert expected.sum() == 6  # rows 0-4 by image, row 5 (row 4's patient partner) by patient
        (on_test, on_boxes) = transfer.settings["overlap"]
        assert on_test == {"split": "test", "images": 16, "excluded": 6, "by_image": 5, "by_patient": 1,
                           "method": "perceptual hash", "evidence": on_test["evidence"]}
        assert on_boxes["split"] == "boxes" and on_boxes["excluded"] == 6
        assert transfer.metrics["overlap_excluded"] == 6 and transfer.settings["images"] == 10
        probs = probabilities(store, cell.cell_id, registry, dataset, "test")
        kept = ~expected
        for k, name in enumerate(("Blob", "Bar")):
            independent = roc_auc_score(test.labels[kept, k], probs[kept, k])
            assert transfer.metrics[f"auroc/{name}"] == pytest.approx(independent, abs=1e-6)
        saved = np.load(store.cell_dir(cell.cell_id) / "transfers" / f"{transfer.key}.npz")
        assert saved["ids"].tolist() == [i for i, keep in zip(test.ids, kept, strict=True) if keep]
    with cli_with(pm) as invoke:  # the count reaches the leaderboard's JSON and its Cross-dataset table
        records = json.loads(invoke("leaderboard", "--results", tmp_path / "r", "--format", "json").output)
        table = invoke("leaderboard", "--results", tmp_path / "r").output
    (row,) = [r for r in records if r["kind"] == "transfer"]
    assert row["metrics"]["overlap_excluded"] == 6 and row["provenance"]["transfer"]["overlap"][0]["excluded"] == 6
    assert "excluded" in table
    said = [line for line in lines if "also training images" in line]
    assert said == ["toy -> toy_copies: 5 of 16 test images are also training images of toy (by perceptual hash, "
                    f"at most {MATCH_DISTANCE} of 256 bits apart), 1 more are of patients with training images; "
                    "5 of 16 boxes images are also training images of toy (by perceptual hash, at most "
                    f"{MATCH_DISTANCE} of 256 bits apart), 1 more are of patients with training images: excluded"]


def test_no_copies_no_exclusion(pm, registry, tmp_path):
    target = {"name": "toy_copies", "options": {"num_images": 64, "image_size": 32, "seed": 3}}
    with ResultsStore(tmp_path / "r") as store:
        _, lines = run_with_events(parse_grid(copy.deepcopy(BASE) | {"evaluate_on": [target]}, registry), pm,
                                      store)
        (transfer,) = store.cells("ov")[0].transfers
    assert transfer.metrics["overlap_excluded"] == 0 and transfer.settings["images"] == 16
    assert not [line for line in lines if "also training images" in line]


def test_a_target_made_only_of_training_images_fails_its_row(pm, registry, tmp_path):
    target = {"name": "toy_copies", "options": {"num_images": 64, "image_size": 32, "seed": 3, "copies": 16}}
    with ResultsStore(tmp_path / "r") as store:
        summary, _ = run_with_events(parse_grid(copy.deepcopy(BASE) | {"evaluate_on": [target]}, registry), pm,
                                     store)
        (cell,) = store.cells("ov")
    assert cell.ok and summary.transfers_failed == 1
    (transfer,) = cell.transfers
    assert "every one of the 16 test images" in transfer.error and "\n" not in transfer.error


def write_rsna(root: Path, n: int = 40) -> list[str]:
    """A small RSNA root (8-bit DICOMs of noise); returns the ids."""
    root.mkdir(parents=True)
    images = root / "stage_2_train_images"
    images.mkdir()
    ids = [f"rsna-{i:03d}" for i in range(n)]
    rows = ["patientId,x,y,width,height,Target"]
    rng = np.random.default_rng(0)
    for i, image_id in enumerate(ids):
        rows.append(f"{image_id},100,100,300,300,1" if i % 2 else f"{image_id},,,,,0")
        write_dicom(images / f"{image_id}.dcm", radiograph_like(i, 64) // 2 + rng.integers(0, 4, (64, 64),
                                                                                             dtype=np.uint8))
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    return ids


def test_a_published_mapping_excludes_by_image_and_by_patient(pm, registry, tmp_path):
    import cxrbench_rsna

    pm.register(cxrbench_rsna, "rsna")
    registry = Registry.from_plugin_manager(pm)
    root = tmp_path / "rsna"
    write_rsna(root)
    test_ids = RsnaPneumonia(RsnaPneumonia.Options(root=str(root)), DatasetContext()).split("test").ids
    assert len(test_ids) >= 4
    source = NamedToy(NamedOptions(**SOURCE_OPTIONS), DatasetContext())
    train_row, val_row = int(source._splits["train"][3]), int(source._splits["val"][0])
    mapping = [{"subset_img_id": test_ids[0], "img_id": f"{train_row:08d}_000.png"},  # a training image
               {"subset_img_id": test_ids[1], "img_id": f"{val_row:08d}_004.png"},  # a training patient's other image
               {"subset_img_id": test_ids[2], "img_id": "99999999_000.png"}]  # an NIH image not trained on
    (root / MAPPING_FILE).write_text(json.dumps(mapping))
    grid = copy.deepcopy(BASE) | {"datasets": [{"name": "toy_named", "options": SOURCE_OPTIONS}],
                                  "evaluate_on": [{"name": "rsna_pneumonia", "options": {"root": str(root)}}]}
    with ResultsStore(tmp_path / "r") as store:
        _, lines = run_with_events(parse_grid(grid, registry), pm, store)
        (cell,) = store.cells("ov")
        (transfer,) = cell.transfers
    assert transfer.ok, transfer.error
    on_test = transfer.settings["overlap"][0]
    assert (on_test["method"], on_test["evidence"]) == ("mapping", MAPPING_FILE)
    assert (on_test["by_image"], on_test["by_patient"], on_test["images"]) == (1, 1, len(test_ids))
    assert transfer.settings["images"] == len(test_ids) - 2
    assert any(line.startswith(f"toy_named -> rsna_pneumonia: 1 of {len(test_ids)} test images are also training "
                               f"images of toy_named (by {MAPPING_FILE}), 1 more are of patients with training "
                               "images") for line in lines)


def test_read_mapping(tmp_path):
    path = tmp_path / MAPPING_FILE
    path.write_text(json.dumps([{"subset_img_id": "a", "img_id": "00000001_000.png", "dataset": "x"},
                                {"subset_img_id": "b", "orig_img_id": "00000002_001"}]))
    assert read_mapping(path) == {"a": "00000001_000.png", "b": "00000002_001.png"}
    assert nih_patient("00000002_001.png") == "00000002" and nih_patient("other.png") is None
    for bad in ('{"a": 1}', '[{"subset_img_id": "a"}]', "not json",
                json.dumps([{"subset_img_id": "a", "img_id": "x.png"}, {"subset_img_id": "a", "img_id": "y.png"}])):
        path.write_text(bad)
        with pytest.raises(UsageError) as excinfo:
            read_mapping(path)
        assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_rsna_without_a_mapping_has_no_names(tmp_path):
    root = tmp_path / "rsna"
    write_rsna(root, 12)
    dataset = RsnaPneumonia(RsnaPneumonia.Options(root=str(root)), DatasetContext())
    assert dataset.overlap_keys("test") is None


NIH_ROOT = SHARED_DATA / "nih"


@pytest.mark.skipif(not (NIH_ROOT / "Data_Entry_2017_v2020.csv").is_file(), reason="needs ../shared/data/nih")
def test_nih_names_its_images_and_patients():
    from cxrbench_nih.dataset import NIHChestXray14

    dataset = NIHChestXray14(NIHChestXray14.Options(root=str(NIH_ROOT)), DatasetContext())
    keys = dataset.overlap_keys("test")
    split = dataset.split("test")
    assert keys.namespace == "nih" and keys.images == tuple(split.ids) and len(keys.images) > 0
    assert all(nih_patient(name) == patient for name, patient in zip(keys.images, keys.patients, strict=True))


def test_audit_gives_the_runs_counts_before_anything_trains(pm, registry, tmp_path):
    target = {"name": "toy_copies", "options": {"num_images": 64, "image_size": 32, "seed": 3, "copies": 5}}
    unrelated = {"name": "toy_named", "label": "named", "options": {"num_images": 32, "image_size": 32,
                                                                       "classes": ["Effusion"]}}
    path, results = tmp_path / "g.yaml", tmp_path / "r"
    path.write_text(yaml.safe_dump(copy.deepcopy(BASE) | {"evaluate_on": [target, unrelated]}))
    with cli_with(pm) as invoke:
        out = invoke("audit", "--grid", path, "--results", results, "--format", "json")
        assert out.exit_code == 0, out.output
        table = invoke("audit", "--grid", path, "--results", results)
    copies, named = json.loads(out.output)
    assert (copies["source"], copies["target"], copies["skipped"]) == ("toy", "toy_copies", None)
    # the counts test_copies_of_training_images_are_excluded_from_the_transfer finds in the run
    assert [(s["split"], s["images"], s["by_image"], s["by_patient"], s["excluded"]) for s in copies["splits"]] == \
        [("test", 16, 5, 1, 6), ("boxes", 16, 5, 1, 6)]
    assert named["splits"] == [] and "no class in common" in named["skipped"]
    assert not (results / "cxrbench.sqlite").exists()  # nothing trained, nothing recorded
    assert "toy -> toy_copies" in table.output and "never scored" in table.output


def test_audit_by_a_published_mapping_decodes_nothing(pm, registry, tmp_path):
    import cxrbench_rsna

    pm.register(cxrbench_rsna, "rsna")
    root = tmp_path / "rsna"
    write_rsna(root)
    test_ids = RsnaPneumonia(RsnaPneumonia.Options(root=str(root)), DatasetContext()).split("test").ids
    source = NamedToy(NamedOptions(**SOURCE_OPTIONS), DatasetContext())
    train_row = int(source._splits["train"][0])
    (root / MAPPING_FILE).write_text(json.dumps([{"subset_img_id": test_ids[0], "img_id": f"{train_row:08d}_000.png"}]))
    grid = copy.deepcopy(BASE) | {"datasets": [{"name": "toy_named", "options": SOURCE_OPTIONS}],
                                  "evaluate_on": [{"name": "rsna_pneumonia", "options": {"root": str(root)}}]}
    path, results = tmp_path / "g.yaml", tmp_path / "r"
    path.write_text(yaml.safe_dump(grid))
    with cli_with(pm) as invoke:
        out = invoke("audit", "--grid", path, "--results", results, "--format", "json")
    assert out.exit_code == 0, out.output
    (pair,) = json.loads(out.output)
    on_test = pair["splits"][0]
    assert (on_test["split"], on_test["method"], on_test["by_image"]) == ("test", "mapping", 1)
    assert not (results / "cache").exists()  # names compared: no image decoded, no cache written


def test_audit_without_targets_is_one_line(pm, tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(BASE)))
    with cli_with(pm) as invoke:
        out = invoke("audit", "--grid", path, "--results", tmp_path / "r")
    assert out.exit_code == 4 and len(out.output.strip().splitlines()) == 1
    assert "has no evaluate_on: targets" in out.output
