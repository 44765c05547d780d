"""The shared file-dataset base: pinned fingerprints of ``nih`` and ``chexpert``, and a third dataset.

The pinned values were computed with the dataset code as it was before the base existed,
on the hand-made layouts below (fixed bytes, no encoder involved): cell ids are digests
of these strings, so a change here would orphan the finished cells of existing stores.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxrbench_chexpert import CheXpert
from cxrbench_nih import NIHChestXray14

from cxrbench.errors import UsageError
from cxrbench.filedataset import FileDataset, FileLayout, LoadedSplits
from cxrbench.interfaces import DatasetContext, Split
from cxrbench.splits import patient_split


def png_bytes(height: int, width: int, value: int) -> bytes:
    """A flat 8-bit grey PNG with stored (uncompressed) deflate blocks: the same bytes everywhere."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes([value]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0)) + chunk(b"IEND", b"")


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def needs_symlinks(tmp_path: Path) -> None:
    try:
        (tmp_path / "probe-link").symlink_to(tmp_path)
    except OSError:
        pytest.skip("symbolic links are not available here")
    (tmp_path / "probe-link").unlink()


# --------------------------------------------------------------------------- pinned fingerprints

NIH_FILES = {
    "Data_Entry_2017_v2020.csv": (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Mass,0,1,50,M,PA,1024,1024,0.143,0.143\n"
        "00000001_001.png,No Finding,1,1,51,M,AP,1024,1024,0.143,0.143\n"
        "00000002_000.png,Effusion|Nodule,0,2,60,F,PA,1024,1024,0.143,0.143\n"
        "00000003_000.png,Hernia,0,3,70,F,PA,1024,1024,0.143,0.143\n"
        "00000004_000.png,No Finding,0,4,40,M,PA,1024,1024,0.143,0.143\n"
    ),
    "BBox_List_2017.csv": "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000002_000.png,Nodule,512,256,64,32\n",
    "train_val_list.txt": "00000001_000.png\n00000001_001.png\n00000003_000.png\n",
    "test_list.txt": "00000002_000.png\n00000004_000.png\n",
    "images/00000001_000.png": png_bytes(8, 8, 100),
    "images/00000002_000.png": png_bytes(16, 16, 50),
    "images_001/images/00000001_001.png": png_bytes(8, 12, 200),
    "images_002/images/00000003_000.png": png_bytes(4, 4, 7),
}  # 00000004_000.png is listed but not downloaded

RELEASE = "CheXpert-v1.0-small"
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion\n"
)
CHEXPERT_FILES = {
    f"{RELEASE}/train.csv": CHEXPERT_HEADER
    + f"{RELEASE}/train/patient00001/study1/view1_frontal.jpg,Female,60,Frontal,AP,,-1.0,1.0,0.0,-1.0,\n"
    + f"{RELEASE}/train/patient00001/study1/view2_lateral.jpg,Female,60,Lateral,,,-1.0,1.0,0.0,-1.0,\n"
    + f"{RELEASE}/train/patient00002/study1/view1_frontal.jpg,Male,70,Frontal,PA,1.0,,,,,\n"
    + f"{RELEASE}/train/patient00003/study2/view1_frontal.jpg,Male,80,Frontal,AP,,1.0,,,,1.0\n",
    f"{RELEASE}/valid.csv": CHEXPERT_HEADER
    + f"{RELEASE}/valid/patient64541/study1/view1_frontal.jpg,Female,50,Frontal,AP,0.0,1.0,0.0,0.0,1.0,0.0\n",
    # PNG bytes in .jpg files: only names and sizes enter the fingerprint, and OpenCV decodes by content.
    f"{RELEASE}/train/patient00001/study1/view1_frontal.jpg": png_bytes(12, 10, 90),
    f"{RELEASE}/train/patient00001/study1/view2_lateral.jpg": png_bytes(10, 12, 80),
    f"{RELEASE}/train/patient00003/study2/view1_frontal.jpg": png_bytes(6, 6, 30),
    f"{RELEASE}/valid/patient64541/study1/view1_frontal.jpg": png_bytes(9, 9, 60),
}  # patient00002's image is listed but not downloaded

NIH_DEFAULTS = '{"classes": "nih8", "split_seed": 0, "task": "multilabel", "val_fraction": 0.1, "views": "all"}'
CHEXPERT_DEFAULTS = (
    '{"classes": "competition5", "frontal_only": true, "oversample_positives": false, "split_seed": 0, '
    '"uncertain": "ignore", "val_fraction": 0.1}'
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, f"nih:{NIH_DEFAULTS}:8fabd0714e1834a7"),
        ({"follow_symlinks": True}, f"nih:{NIH_DEFAULTS}:8fabd0714e1834a7"),
        (
            {"views": "PA", "classes": ("Mass", "Nodule")},
            'nih:{"classes": ["Mass", "Nodule"], "split_seed": 0, "task": "multilabel", "val_fraction": 0.1, '
            '"views": "PA"}:26f9a3ebf3a5500f',
        ),
        (
            {"task": "binary", "val_fraction": 0.5},
            'nih:{"classes": "nih8", "split_seed": 0, "task": "binary", "val_fraction": 0.5, "views": "all"}'
            ":8fabd0714e1834a7",
        ),
    ],
    ids=["defaults", "follow_symlinks", "views-classes", "binary"],
)
def test_nih_fingerprint_is_pinned(tmp_path, options, expected):
    root = write(tmp_path / "nih", NIH_FILES)
    assert NIHChestXray14(NIHChestXray14.Options(root=str(root), **options)).fingerprint() == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, f"chexpert:{CHEXPERT_DEFAULTS}:b986ae1a1d55db76"),
        ({"follow_symlinks": True}, f"chexpert:{CHEXPERT_DEFAULTS}:b986ae1a1d55db76"),
        (
            {"frontal_only": False, "uncertain": "seed", "oversample_positives": True},
            'chexpert:{"classes": "competition5", "frontal_only": false, "oversample_positives": true, '
            '"split_seed": 0, "uncertain": "seed", "val_fraction": 0.1}:43b96d5b5736f7ab',
        ),
    ],
    ids=["defaults", "follow_symlinks", "all-views-seed-oversampled"],
)
def test_chexpert_fingerprint_is_pinned(tmp_path, options, expected):
    root = write(tmp_path / "chexpert", CHEXPERT_FILES)
    assert CheXpert(CheXpert.Options(root=str(root), **options)).fingerprint() == expected


def test_pinned_fingerprints_with_links_inside_the_root(tmp_path):
    needs_symlinks(tmp_path)
    # NIH names an image reached through a link by its real file's name, as it always has.
    nih = write(tmp_path / "nih", {**NIH_FILES, "store/blob.png": png_bytes(5, 5, 1)})
    (nih / "images" / "00000004_000.png").symlink_to("../store/blob.png")
    dataset = NIHChestXray14(NIHChestXray14.Options(root=str(nih)))
    assert dataset.fingerprint() == f"nih:{NIH_DEFAULTS}:7e4f131275704729"
    assert dataset.image_path("test", 1) == str((nih / "store" / "blob.png").resolve())
    # A release folder that is a link to a path 5 characters longer: CheXpert's listing
    # cuts the link's path length off the real paths, and must keep doing so.
    write(tmp_path / "data" / "c", CHEXPERT_FILES)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / RELEASE).symlink_to(tmp_path / "data" / "c" / RELEASE, target_is_directory=True)
    linked = CheXpert(CheXpert.Options(root=str(tmp_path / "a")))
    assert linked.fingerprint() == f"chexpert:{CHEXPERT_DEFAULTS}:ed254208c9e39e77"
    assert linked.read_image("train", 0).shape == (12, 10)


# --------------------------------------------------------------------------- a third dataset


class PairsDataset(FileDataset):
    """A made-up dataset: ``labels.csv`` (file, patient, finding, split) and ``images/``.

    All it implements is where its table is and how to read it: the base does the rest.
    """

    NAME = "pairs"

    @dataclasses.dataclass(frozen=True)
    class Options:
        root: str
        val_fraction: float = 0.5
        follow_symlinks: bool = False

    classes = ["Finding"]

    def locate(self, root: Path) -> FileLayout:
        if not (root / "labels.csv").is_file():
            raise UsageError(f"pairs: missing under {root}: labels.csv")
        return FileLayout(root=root, tables={"labels": root / "labels.csv"})

    def build(self) -> dict[str, tuple[Split, list[str]]]:
        table = pd.read_csv(self.tables["labels"], dtype=str)
        listed = len(table.index)
        table = table.assign(path=self.paths_of(table["file"])).dropna(subset=["path"])
        self.report_missing(listed, len(table.index))
        train = table["split"] == "train"
        val = train & table["patient"].isin(patient_split(table["patient"][train], self.options.val_fraction, 0))
        table.loc[val, "split"] = "val"
        built = {}
        for name in self.SPLITS:
            rows = table[table["split"] == name]
            labels = rows["finding"].to_numpy(np.float32)[:, None]
            built[name] = (Split(list(rows["file"]), list(rows["patient"]), labels), list(rows["path"]))
        return built

    def paths_of(self, files: pd.Series) -> pd.Series:
        """Table entries -> paths of the files present (looked up in one walk), NaN for absent ones."""
        return files.map(self.find_images(["images"], suffixes=(".png",)))


class RawPathsDataset(PairsDataset):
    """The same, trusting the table's paths as they are (no lookup): the base still checks them."""

    def paths_of(self, files: pd.Series) -> pd.Series:
        return files


PAIRS_TABLE = (
    "file,patient,finding,split\n"
    "images/a.png,p1,1,train\nimages/b.png,p2,0,train\nimages/c.png,p3,1,train\nimages/d.png,p4,0,train\n"
    "images/e.png,p5,1,test\nimages/f.png,p6,0,test\n"
)


def pairs_root(root: Path, table: str = PAIRS_TABLE, absent: tuple[str, ...] = ()) -> Path:
    names = [line.split(",")[0] for line in table.splitlines()[1:]]
    images = {name: png_bytes(4 + i, 6, 10 * i) for i, name in enumerate(names) if name not in absent}
    return write(root, {"labels.csv": table, **images})


def load(cls: type[FileDataset], root: Path, **options) -> tuple[FileDataset, list[str]]:
    warnings: list[str] = []
    return cls(cls.Options(root=str(root), **options), DatasetContext(warn=warnings.append)), warnings


def test_a_new_dataset_needs_only_its_table_reading(tmp_path):
    root = pairs_root(tmp_path / "pairs")
    dataset, warnings = load(PairsDataset, root)
    assert [len(dataset.split(name)) for name in dataset.split_names] == [2, 2, 2]
    assert warnings == []
    test = dataset.split("test")
    assert list(test.ids) == ["images/e.png", "images/f.png"] and test.labels[:, 0].tolist() == [1.0, 0.0]
    assert dataset.image_path("test", 1) == str((root / "images" / "f.png").resolve())
    assert dataset.read_image("test", 1).shape == (9, 6)
    with pytest.raises(UsageError, match="pairs has no split 'boxes'"):
        dataset.split("boxes")
    with pytest.raises(UsageError, match="missing under .*labels.csv"):
        load(PairsDataset, tmp_path)
    with pytest.raises(UsageError, match="pairs: root .* is not a folder"):
        load(PairsDataset, tmp_path / "absent")


def test_splits_are_built_once_for_many_threads(tmp_path, monkeypatch):
    dataset, _ = load(PairsDataset, pairs_root(tmp_path / "pairs"))
    builds = []
    original = PairsDataset.build
    monkeypatch.setattr(PairsDataset, "build", lambda self: builds.append(1) or original(self))
    start = threading.Barrier(8)

    def read(i: int) -> tuple[int, ...]:
        start.wait()
        return dataset.read_image("train", i % 2).shape

    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(read, range(8)))
    assert builds == [1] and len(set(shapes)) == 2


def test_partial_download_is_one_warning_and_nothing_present_an_error(tmp_path):
    dataset, warnings = load(PairsDataset, pairs_root(tmp_path / "a", absent=("images/a.png", "images/e.png")))
    assert sum(len(dataset.split(name)) for name in dataset.split_names) == 4
    assert warnings == [f"pairs: 2 of 6 listed images are missing under {tmp_path.resolve() / 'a'} "
                        "(partial download?); using the 4 present"]
    everything = tuple(f"images/{c}.png" for c in "abcdef")
    with pytest.raises(UsageError, match="pairs: none of the 6 listed images is under"):
        load(PairsDataset, pairs_root(tmp_path / "b", absent=everything))[0].split("train")


def test_fingerprint_follows_the_data_not_the_location(tmp_path):
    root = pairs_root(tmp_path / "a")
    first = load(PairsDataset, root)[0].fingerprint()
    assert first.startswith('pairs:{"val_fraction": 0.5}:') and str(tmp_path) not in first
    assert load(PairsDataset, pairs_root(tmp_path / "b"))[0].fingerprint() == first
    assert load(PairsDataset, root, follow_symlinks=True)[0].fingerprint() == first
    assert load(PairsDataset, root, val_fraction=0.25)[0].fingerprint() != first
    (root / "images" / "a.png").write_bytes(png_bytes(30, 30, 0))
    assert load(PairsDataset, root)[0].fingerprint() != first


def test_table_paths_leaving_the_root_are_refused_naming_the_file(tmp_path):
    (tmp_path / "secret.png").write_bytes(png_bytes(4, 4, 0))
    for bad in ("../secret.png", str(tmp_path / "secret.png")):
        root = pairs_root(tmp_path / "r", PAIRS_TABLE + f"{bad},p9,1,test\n", absent=(bad,))
        # Looked up among the files present, such a path is merely missing ...
        dataset, warnings = load(PairsDataset, root)
        assert len(dataset.split("test")) == 2 and "1 of 7 listed images are missing" in warnings[0]
        # ... and taken as it is, it is refused in one line naming it.
        refusal = re.escape(f"pairs: image path '{bad}' leads outside the dataset root")
        with pytest.raises(UsageError, match=refusal) as info:
            load(RawPathsDataset, root)[0].split("test")
        assert "\n" not in str(info.value)


def test_links_leaving_the_root_need_follow_symlinks(tmp_path):
    needs_symlinks(tmp_path)
    elsewhere = write(tmp_path / "elsewhere", {"x.png": png_bytes(7, 7, 70)})
    root = pairs_root(tmp_path / "pairs", absent=("images/a.png",))
    (root / "images" / "a.png").symlink_to(elsewhere / "x.png")
    for cls in (PairsDataset, RawPathsDataset):  # found by the walk, or taken from the table
        with pytest.raises(UsageError, match="'images/a.png'.*outside.*set follow_symlinks: true") as info:
            load(cls, root)[0].split("train")
        assert "\n" not in str(info.value)
        dataset, warnings = load(cls, root, follow_symlinks=True)
        shapes = {dataset.read_image(name, i).shape for name in ("train", "val") for i in range(2)}
        assert (7, 7) in shapes and warnings == []
    # A followed link keeps its own path in the fingerprint: moving the linked data changes nothing.
    fingerprint = load(PairsDataset, root, follow_symlinks=True)[0].fingerprint()
    moved = elsewhere.rename(tmp_path / "moved")
    (root / "images" / "a.png").unlink()
    (root / "images" / "a.png").symlink_to(moved / "x.png")
    assert load(PairsDataset, root, follow_symlinks=True)[0].fingerprint() == fingerprint
    # A linked image folder, and a link cycle, are walked once.
    (root / "images" / "loop").symlink_to(root / "images", target_is_directory=True)
    os.rename(root / "images", tmp_path / "images-real")
    (root / "images").symlink_to(tmp_path / "images-real", target_is_directory=True)
    assert len(load(PairsDataset, root, follow_symlinks=True)[0].split("train")) == 2


def test_built_paths_must_match_the_records():
    split = Split(ids=["a", "b"], patient_ids=["p", "q"], labels=np.zeros((2, 1), np.float32))
    assert LoadedSplits.from_built({"train": (split, ["a.png", "b.png"])}).paths == {"train": ("a.png", "b.png")}
    with pytest.raises(ValueError, match="'train' has 2 records but 1 image paths"):
        LoadedSplits.from_built({"train": (split, ["a.png"])})
