"""Regression tests for issue 18's data and file faults (items 4, 6, 12 and 13), one or more per item.

Each test reproduces what the attack did (relabelled tables, swapped images, leaking split
lists, a corrupt ``last.pt``, a truncated cache, an object-array ``predictions.npz``, a
read-only results folder, concurrent prepares) on tiny data in ``tmp_path``, bounded in time.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cxrbench_phantom.export import write_chexpert_layout, write_nih_layout

from cxrbench.data import cache_folder, open_cache, prepare_split
from cxrbench.datachecks import check_splits
from cxrbench.interfaces import DatasetContext, Split
from cxrbench.store import ResultsStore
from tests.conftest import builtin_plugins, cli_with

CLASSES = ("Cardiomegaly", "Effusion")


@pytest.fixture
def data_cli():
    """The command line with the built-ins, the toy plugin and the nih and chexpert datasets."""
    import cxrbench_chexpert
    import cxrbench_nih

    from cxrbench.manager import build_plugin_manager
    from tests.plugins import toy

    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy), ("nih", cxrbench_nih),
                                       ("chexpert", cxrbench_chexpert)], entry_points=False)
    with cli_with(pm) as invoke:
        yield invoke


def nih_root(tmp_path: Path, num_images: int = 40) -> Path:
    return write_nih_layout(tmp_path / "nih", num_images=num_images, image_size=32, seed=1, classes=CLASSES)


def nih(root: Path, said: list[str] | None = None, cache: Path | None = None):
    from cxrbench_nih import NIHChestXray14

    context = DatasetContext(cache_dir=cache, warn=(said.append if said is not None else lambda m: None))
    return NIHChestXray14(NIHChestXray14.Options(root=str(root), classes=CLASSES), context)


def nih_grid(tmp_path: Path, root: Path) -> Path:
    grid = {"name": "g", "datasets": [{"name": "nih", "options": {"root": str(root), "classes": list(CLASSES)}}],
            "backbones": [{"name": "tiny", "options": {"width": 4}}], "heads": ["avg"], "localizers": [],
            "train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "image_size": 32}, "evaluation": {"bootstrap": 0}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def swap_labels_same_size(root: Path) -> None:
    """Swap the findings of two train/val images with different findings (the file keeps its byte size)."""
    table = root / "Data_Entry_2017_v2020.csv"
    lines = table.read_text().splitlines(keepends=True)
    train = set((root / "train_val_list.txt").read_text().split())
    rows = [i for i, line in enumerate(lines[1:], start=1) if line.split(",")[0] in train]
    first = rows[0]
    other = next(i for i in rows if lines[i].split(",")[1] != lines[first].split(",")[1])
    a, b = lines[first].split(","), lines[other].split(",")
    a[1], b[1] = b[1], a[1]
    before = table.stat().st_size
    lines[first], lines[other] = ",".join(a), ",".join(b)
    table.write_text("".join(lines))
    assert table.stat().st_size == before


def equal_size_pngs(root: Path, names: tuple[str, str]) -> None:
    """Give two images different pixels in files of the same byte size (stored deflate, no compression)."""
    import struct
    import zlib

    def png(value: int) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        rows = b"".join(b"\x00" + bytes([value]) * 32 for _ in range(32))
        header = struct.pack(">IIBBBBB", 32, 32, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0)) + \
            chunk(b"IEND", b"")

    for name, value in zip(names, (40, 220), strict=True):
        (root / "images" / name).write_bytes(png(value))


# --------------------------------------------------------------------------- item 4


def test_item4_relabelled_table_keeps_cell_ids_but_makes_finished_cells_stale(data_cli, tmp_path):
    root = nih_root(tmp_path)
    grid, results = nih_grid(tmp_path, root), tmp_path / "r"
    assert data_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    with ResultsStore(results) as store:
        (before,) = store.cells("g")
    swap_labels_same_size(root)  # before: every cell id the same and the cell silently "done"

    dry = data_cli("run", "--grid", grid, "--results", results, "--dry-run")
    assert dry.exit_code == 0 and before.cell_id in dry.output  # the id follows the data's identity...
    assert "stale: its data changed since it ran" in dry.output  # ...and the record is known to be outdated
    assert "1 of the done cells are stale" in dry.output and "--rerun-stale" in dry.output

    plain = data_cli("run", "--grid", grid, "--results", results, "--no-progress")
    assert plain.exit_code == 0 and "1 finished cells of grid 'g' are stale" in plain.output
    with ResultsStore(results) as store:
        assert store.cell(before.cell_id).finished_at == before.finished_at  # kept as it was, never retrained

    rerun = data_cli("run", "--grid", grid, "--results", results, "--no-progress", "--rerun-stale")
    assert rerun.exit_code == 0 and "1 ok" in rerun.output
    with ResultsStore(results) as store:
        after = store.cell(before.cell_id)
    assert after.finished_at > before.finished_at
    assert after.info["data_version"] != before.info["data_version"]
    assert "stale" not in data_cli("run", "--grid", grid, "--results", results, "--dry-run").output


def test_item4_swapped_images_change_the_version_and_invalidate_the_cache(tmp_path):
    root = nih_root(tmp_path)
    names = tuple(sorted(p.name for p in (root / "images").iterdir())[:2])
    equal_size_pngs(root, names)
    cache = tmp_path / "cache"
    first = nih(root, cache=cache)
    split = next(s for s in ("train", "val", "test") if names[0] in first.split(s).ids)
    report = prepare_split(first, split, 32, cache)
    assert report.decoded == len(first.split(split)) and open_cache(first, split, 32, cache) is not None
    a, b = (root / "images" / n for n in names)
    size = a.stat().st_size
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)  # swapped: same names, same sizes, other pixels
    assert a.stat().st_size == size == b.stat().st_size

    said: list[str] = []
    again = nih(root, said, cache=cache)
    assert again.fingerprint() == first.fingerprint()  # the cell id stays (moving data keeps cells too)
    assert again.data_version() != first.data_version()  # before: the same, so caches and cells stayed "done"
    assert open_cache(again, split, 32, cache) is None  # the cache of the other bytes is not read
    assert len(said) == 1 and "prepared from other data" in said[0] and "decoding the original images" in said[0]
    rebuilt = prepare_split(again, split, 32, cache)
    assert rebuilt.decoded == len(again.split(split)) and rebuilt.already_done == 0
    cached = open_cache(again, split, 32, cache)
    row = list(again.split(split).ids).index(names[0])
    assert int(cached.images[row].mean()) == 220  # the swapped-in pixels


def test_item4_moving_a_dataset_keeps_its_version(tmp_path):
    root = nih_root(tmp_path)
    moved = tmp_path / "elsewhere" / "nih"
    shutil.copytree(root, moved)  # copy2 keeps modification times, as mv, cp -a and rsync -a do
    assert nih(moved).data_version() == nih(root).data_version()
    assert nih(moved).fingerprint() == nih(root).fingerprint()


def test_item4_prepare_verify_finds_a_change_the_quick_key_cannot_see(tmp_path):
    from cxrbench.data import dataset_cache_dir, verify_dataset
    from cxrbench.driver import stale_cells

    root = nih_root(tmp_path)
    cache = tmp_path / "cache"
    image = sorted((root / "images").iterdir())[0]
    image.write_bytes(image.read_bytes() + bytes(range(256)) * 80)  # > 2 x 4 KiB: a middle the key skips
    v0 = nih(root, cache=cache).data_version()
    first = verify_dataset(nih(root, cache=cache), cache)
    assert first.first and first.files == len(nih(root).data_files()) and first.generation == 0
    assert (dataset_cache_dir(cache, nih(root)) / "verified.json").is_file()
    assert nih(root, cache=cache).data_version() == v0  # a first verify changes nothing

    stat = image.stat()
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size; same first and last 4 KiB
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same modification time
    assert nih(root, cache=cache).data_version() == v0  # the quick key cannot see it (documented)

    report = verify_dataset(nih(root, cache=cache), cache)
    assert report.changed == (image.name,) and report.hidden == (image.name,) and report.generation == 1
    assert "kept their size, time and sampled bytes" in report.line("nih")
    v1 = nih(root, cache=cache).data_version()
    assert v1 != v0  # the verify generation makes the version move: caches rebuild, cells go stale

    class Store:  # a record computed on the data as it was
        def data_versions(self):
            return {"c1": v0}

    class Cell:
        cell_id = "c1"

    assert stale_cells([Cell()], Store(), {"c1": v1}) == frozenset({"c1"})


def test_item4_prepare_verify_command_line(data_cli, tmp_path):
    root = nih_root(tmp_path, num_images=12)
    grid = nih_grid(tmp_path, root)
    first = data_cli("prepare", "--grid", grid, "--results", tmp_path / "r", "--verify")
    assert first.exit_code == 0 and "files hashed in full (SHA-256); recorded" in first.output
    again = data_cli("prepare", "--grid", grid, "--results", tmp_path / "r", "--verify")
    assert again.exit_code == 0 and "none changed since the last --verify" in again.output
    assert "0 decoded" in again.output  # the cache of unchanged data is kept


# --------------------------------------------------------------------------- item 6


def test_item6_check_splits_by_hand():
    """Hand-made splits: every rule once, the kept rows worked out by hand."""
    boxes = pd.DataFrame({"index": [0, 0, 1, 1, 2], "class_index": [0, 0, 0, 1, 0],
                          "x": [1.0, 2.0, 50.0, -3.0, np.nan], "y": [1.0, 2.0, 1.0, 1.0, 1.0],
                          "w": [4.0, -1.0, 5.0, 6.0, 2.0], "h": [4.0, 3.0, 0.0, 2.0, 2.0]})
    splits = {
        "train": Split(ids=["a", "b", "c", "c", "d"], patient_ids=["p1", "p2", "p3", "p3", "p4"],
                       labels=np.zeros((5, 2), np.float32)),
        "val": Split(ids=["e", "f"], patient_ids=["p5", "p4"], labels=np.zeros((2, 2), np.float32)),
        "test": Split(ids=["b", "g", "h"], patient_ids=["p2", "p1", "p6"], labels=np.zeros((3, 2), np.float32),
                      boxes=boxes, image_sizes=np.array([[20, 20], [20, 20], [20, 20]])),
    }
    checked = check_splits(splits)
    # train: b is in test (shared image), a is patient p1 who is in test, the second c repeats,
    # d is patient p4 who is in val; only c stays. val: f (p4) stays: p4 is in no split above val.
    assert list(checked.rows["train"]) == [2] and checked.splits["train"].ids == ["c"]
    assert checked.splits["val"].ids == ["e", "f"] and checked.splits["test"].ids == ["b", "g", "h"]
    r = checked.report
    assert (r.repeated, r.shared_images, r.shared_images_kept_in, r.patient_rows, r.patients) == \
        (1, 1, ("test",), 2, 2)
    # boxes: #1 w<0, #2 h=0 and x past the 20 px image, #4 NaN are dropped; #3 (x=-3) is clipped to x=0, w=3
    kept = checked.splits["test"].boxes
    assert (r.bad_boxes, r.clipped_boxes) == (3, 1) and len(kept) == 2
    assert kept.iloc[1][["x", "y", "w", "h"]].tolist() == [0.0, 1.0, 3.0, 2.0]
    assert kept.iloc[0][["x", "y", "w", "h"]].tolist() == [1.0, 1.0, 4.0, 4.0]  # untouched, exactly


def test_item6_nih_leakage_and_bad_boxes_are_dropped_with_one_warning(tmp_path):
    root = nih_root(tmp_path)
    train_val = (root / "train_val_list.txt").read_text().split()
    entry = pd.read_csv(root / "Data_Entry_2017_v2020.csv")
    patient = dict(zip(entry["Image Index"], entry["Patient ID"], strict=True))
    shared = next(n for n in train_val if sum(patient[m] == patient[n] for m in train_val) >= 2)
    siblings = [m for m in train_val if patient[m] == patient[shared] and m != shared]
    with (root / "test_list.txt").open("a") as handle:
        handle.write(shared + "\n")  # before: one patient in train and test, no warning
    boxed = (root / "BBox_List_2017.csv").read_text().splitlines()[1].split(",")[0]
    with (root / "BBox_List_2017.csv").open("a") as handle:
        handle.write(f"{boxed},Effusion,100,100,-20,50\n{boxed},Effusion,100,100,30,0\n"
                     f"{boxed},Effusion,2000,2000,30,30\n")  # before: scored as IoU 0
    clean = nih(nih_root(tmp_path / "clean"))

    said: list[str] = []
    dataset = nih(root, said)
    train_val_ids = set(dataset.split("train").ids) | set(dataset.split("val").ids)
    assert shared in dataset.split("test").ids and shared not in train_val_ids
    assert not set(siblings) & train_val_ids
    assert len(dataset.split("boxes").boxes) == len(clean.split("boxes").boxes)
    (line,) = [m for m in said if "data checks" in m]  # one line, with the counts
    assert "1 train/val images also listed in test dropped (kept there)" in line
    assert f"{len(siblings)} train/val images of 1 patients who also have images in a later split" in line
    assert "3 boxes with a size <= 0, a bad coordinate or outside their image dropped" in line


def test_item6_a_repeated_chexpert_row_is_dropped_and_an_emptied_split_is_said(tmp_path):
    from cxrbench_chexpert import CheXpert

    root = write_chexpert_layout(tmp_path / "x", num_images=24, image_size=32, seed=3, uncertain_rate=0.0)
    table = root / "CheXpert-v1.0-small" / "train.csv"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines + [lines[1]]))  # before: the row was accepted twice
    said: list[str] = []
    dataset = CheXpert(CheXpert.Options(root=str(root), val_fraction=0.0),
                       DatasetContext(warn=said.append))
    ids = dataset.split("train").ids
    assert len(ids) == len(set(ids)) == len(lines) - 1
    assert any("1 repeated rows dropped (the first kept)" in m for m in said)

    nih_data = nih_root(tmp_path / "all")
    everything = (nih_data / "train_val_list.txt").read_text() + (nih_data / "test_list.txt").read_text()
    (nih_data / "test_list.txt").write_text(everything)  # every train/val image is a test image too
    said = []
    emptied = nih(nih_data, said)
    assert len(emptied.split("train")) == len(emptied.split("val")) == 0
    (line,) = [m for m in said if "data checks" in m]
    assert "split 'train' is left empty" in line and "split 'val' is left empty" in line


def test_item6_the_real_nih_sample_passes_the_checks_untouched(tmp_path):
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "nih" / "Data_Entry_2017_v2020.csv").is_file():
        pytest.skip("no real NIH sample in ../shared/data")
    from cxrbench_nih import NIHChestXray14

    said: list[str] = []
    dataset = NIHChestXray14(NIHChestXray14.Options(root=str(SHARED_DATA / "nih")), DatasetContext(warn=said.append))
    assert len(dataset.split("test")) > 0 and not [m for m in said if "data checks" in m]


# --------------------------------------------------------------------------- item 12


def _toy_grid(tmp_path: Path, tiny_grid_dict: dict, name: str = "g.yaml") -> Path:
    tiny_grid_dict.update(heads=["avg"], localizers=[])
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_grid_dict))
    return path


def test_item12_a_corrupt_last_pt_is_moved_aside_and_the_cell_trains_from_scratch(run_cli, tmp_path,
                                                                                  tiny_grid_dict):
    grid = _toy_grid(tmp_path, tiny_grid_dict)
    assert run_cli("run", "--grid", grid, "--results", tmp_path / "fresh", "--no-progress").exit_code == 0
    with ResultsStore(tmp_path / "fresh") as store:
        (reference,) = store.cells("tiny")
    cell_dir = tmp_path / "r" / "cells" / reference.cell_id
    cell_dir.mkdir(parents=True)
    (cell_dir / "last.pt").write_bytes(b"\x80\x02 not a checkpoint")  # before: the cell failed on every rerun
    result = run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"{cell_dir / 'last.pt'}" in result.output.replace("\n", "") and "moved it to last.pt.corrupt" in \
        result.output
    assert (cell_dir / "last.pt.corrupt").read_bytes().startswith(b"\x80\x02") and not (cell_dir / "last.pt").exists()
    with ResultsStore(tmp_path / "r") as store:
        (cell,) = store.cells("tiny")
    assert cell.status == "ok" and cell.metrics["auroc_mean"] == reference.metrics["auroc_mean"]  # as a fresh run

    (cell_dir / "last.pt").write_bytes(b"garbage again")
    forced = run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--no-progress", "--force")
    assert forced.exit_code == 0 and "last.pt" not in forced.output  # --force ignores it: deleted, never read
    assert not (cell_dir / "last.pt").exists()


def test_item12_a_truncated_cache_falls_back_to_the_originals_and_prepare_rebuilds_it(run_cli, tmp_path,
                                                                                      tiny_grid_dict):
    grid = _toy_grid(tmp_path, tiny_grid_dict)
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    with ResultsStore(results) as store:
        (reference,) = store.cells("tiny")
    (images,) = [p for p in (results / "cache").rglob("images.u8") if p.parent.name.startswith("train-")]
    whole = images.stat().st_size
    with images.open("r+b") as handle:
        handle.truncate(whole // 3)  # before: "mmap length is greater than file size", the cell failed
    tiny_grid_dict["prepare"] = False  # the cells meet the damaged cache themselves
    grid = _toy_grid(tmp_path, tiny_grid_dict, "g2.yaml")
    again = run_cli("run", "--grid", grid, "--results", results, "--no-progress", "--force")
    assert again.exit_code == 0, again.output
    assert f"has {whole // 3:,} bytes, not the {whole:,} its meta.json says" in again.output.replace("\n", "")
    assert again.output.count("decoding the original images instead") == 1  # one warning, not one per use
    with ResultsStore(results) as store:
        assert store.cell(reference.cell_id).metrics["auroc_mean"] == reference.metrics["auroc_mean"]
    prepared = run_cli("prepare", "--grid", grid, "--results", results)
    assert prepared.exit_code == 0 and images.stat().st_size == whole


def test_item12_an_object_array_predictions_file_is_no_predictions_with_one_warning(run_cli, tmp_path,
                                                                                   tiny_grid_dict):
    from cxrbench.artifacts import load_predictions

    tiny_grid_dict["heads"] = ["avg", "max"]
    tiny_grid_dict["localizers"] = []
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    paths = sorted((results / "cells").glob("*/predictions.npz"))
    good = load_predictions(paths[1])
    assert good is not None and good.scores.shape == good.labels.shape and good.classes == ("Blob", "Bar")
    arrays = dict(np.load(paths[0]))
    np.savez(paths[0], **{k: np.array(list(v), dtype=object) for k, v in arrays.items()})  # needs pickle to load
    said: list[str] = []
    assert load_predictions(paths[0], said.append) is None
    assert len(said) == 1 and str(paths[0]) in said[0] and "unreadable predictions" in said[0]
    board = run_cli("leaderboard", "--results", results, "--grid", "tiny")
    assert board.exit_code == 0 and "internal error" not in board.output
    # the report too: the cell without readable predictions loses its curves, not the report
    report = run_cli("report", "--results", results, "--grid", "tiny", "--out", tmp_path / "report.html")
    assert report.exit_code == 0 and "internal error" not in report.output, report.output
    assert (tmp_path / "report.html").stat().st_size > 10_000


# --------------------------------------------------------------------------- item 13

def _read_only_child(folder: Path, commands: list[list[str]], out: Path) -> None:
    """In a forked process: make ``folder`` read-only (root: a private read-only bind mount), run ``commands``."""
    import ctypes
    import json

    from click.testing import CliRunner

    from cxrbench import cli

    try:
        if os.geteuid() == 0:  # root writes through permissions: only a read-only mount stops it
            libc = ctypes.CDLL(None, use_errno=True)
            clone_newns, ms_rdonly, ms_remount, ms_bind, ms_rec, ms_private = 0x20000, 1, 32, 4096, 16384, 1 << 18
            target = str(folder).encode()
            if (libc.unshare(clone_newns) or libc.mount(None, b"/", None, ms_rec | ms_private, None)
                    or libc.mount(target, target, None, ms_bind, None)
                    or libc.mount(None, target, None, ms_remount | ms_bind | ms_rdonly, None)):
                out.write_text(json.dumps({"skip": os.strerror(ctypes.get_errno())}))
                return
        if os.access(folder, os.W_OK):
            out.write_text(json.dumps({"skip": f"{folder} is still writable"}))
            return
        cli.STATE.reset(_toy_pm())
        results = []
        for args in commands:
            result = CliRunner().invoke(cli.cli, args)
            results.append({"code": result.exit_code, "output": result.output})
        out.write_text(json.dumps(results))
    finally:
        os._exit(0)


def _read_only(folder: Path, commands: list[list[str]]) -> list[dict]:
    """Run command lines with ``folder`` read-only (chmod for a user, a read-only mount for root), in a fork.

    Returns:
        ``{"code": exit code, "output": stdout and stderr}`` per command.

    """
    import json
    import multiprocessing

    out = folder.parent / "read-only.json"
    entries = [folder, *folder.rglob("*")] if os.geteuid() != 0 else []
    for path in entries:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        child = multiprocessing.get_context("fork").Process(target=_read_only_child, args=(folder, commands, out))
        child.start()
        child.join(timeout=120)
    finally:
        for path in entries:
            path.chmod(path.stat().st_mode | 0o200)
    answer = json.loads(out.read_text())
    if isinstance(answer, dict):
        pytest.skip(f"cannot make a folder read-only here: {answer['skip']}")
    return answer


def test_item13_a_read_only_results_folder_opens_for_reading(run_cli, tmp_path, tiny_grid_dict):
    grid = _toy_grid(tmp_path, tiny_grid_dict)
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    with ResultsStore(results) as store:
        (cell,) = store.cells("tiny")
    board, show, dry, run = _read_only(results, [
        ["leaderboard", "--results", str(results), "--format", "csv"],
        ["show", "--results", str(results), cell.cell_id[:6]],
        ["run", "--grid", str(grid), "--results", str(results), "--dry-run"],
        ["run", "--grid", str(grid), "--results", str(results), "--no-progress"],
    ])
    assert board["code"] == 0 and cell.cell_id in board["output"], board  # before: "not a cxrbench results database"
    assert show["code"] == 0 and "classification (test split" in show["output"], show
    assert dry["code"] == 0 and "done (ok)" in dry["output"], dry
    assert run["code"] == 4 and "is read-only: results cannot be recorded there" in run["output"], run
    assert run["output"].count("\n") == 1, run  # one line


def test_item13_a_store_predating_migrated_columns_reads_read_only(tmp_path):
    import sqlite3

    results = tmp_path / "r"
    with ResultsStore(results):
        pass
    conn = sqlite3.connect(results / "cxrbench.sqlite")
    conn.execute("ALTER TABLE cells DROP COLUMN provenance")  # as a store written before that column
    conn.execute("DROP TABLE IF EXISTS transfers")  # and before cross-dataset evaluations
    conn.execute("INSERT INTO cells(cell_id, dataset, backbone, head, seed, config, status) "
                 "VALUES ('c1', 'd', 'b', 'h', 0, '{}', 'ok')")
    conn.commit()
    conn.close()
    with ResultsStore(results, readonly=True) as store:  # nothing migrated: a reader writes nothing
        assert [c.cell_id for c in store.cells()] == ["c1"] and store.data_versions() == {"c1": None}
    conn = sqlite3.connect(results / "cxrbench.sqlite")
    assert "provenance" not in {row[1] for row in conn.execute("PRAGMA table_info(cells)")}
    conn.close()


def _prepare_in_child(grid: Path, results: Path, log: Path) -> None:
    """A forked process running ``cxrbench prepare`` (its output to ``log``, its exit code as its own)."""
    from click.testing import CliRunner

    from cxrbench import cli

    cli.STATE.reset(_toy_pm())
    result = CliRunner().invoke(cli.cli, ["prepare", "--grid", str(grid), "--results", str(results),
                                          "--workers", "1"])
    log.write_text(result.output + (repr(result.exception) if result.exception else ""))
    os._exit(result.exit_code)


def test_item13_concurrent_prepares_of_one_cache_are_safe(tmp_path, tiny_grid_dict):
    import multiprocessing

    tiny_grid_dict["datasets"] = [{"name": "toy", "options": {"num_images": 400, "image_size": 32}}]
    grid = _toy_grid(tmp_path, tiny_grid_dict)
    results = tmp_path / "r"
    fork = multiprocessing.get_context("fork")  # forked children start at once (no new interpreter)
    logs = [tmp_path / f"prepare{i}.log" for i in range(3)]
    from cxrbench.pipeline import open_dataset
    from cxrbench.registry import Registry

    spec = Registry.from_plugin_manager(_toy_pm()).create("dataset", tiny_grid_dict["datasets"][0], "datasets[0]")
    dataset = open_dataset(spec, results / "cache")
    train = cache_folder(results / "cache", dataset, "train", 32)
    train.mkdir(parents=True)
    procs = [fork.Process(target=_prepare_in_child, args=(grid, results, log)) for log in logs]
    with open(train / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a prepare in progress holds it
        for proc in procs:  # before: 1 of 6 trials exited 3 (meta.json.tmp shared between processes)
            proc.start()
        time.sleep(1.0)
        assert not (train / "meta.json").exists()  # all three wait for the one writing this cache
        fcntl.flock(lock, fcntl.LOCK_UN)
    for proc in procs:
        proc.join(timeout=120)
    outs = [log.read_text() if log.exists() else "(no output)" for log in logs]
    assert [p.exitcode for p in procs] == [0, 0, 0], outs
    decoded: dict[str, int] = {}
    for out in outs:
        for split, count in re.findall(r" (\w+): (\d+) decoded", out):
            decoded[split] = decoded.get(split, 0) + int(count)
    for name in ("train", "val", "test", "boxes"):
        assert decoded[name] == len(dataset.split(name))  # each image decoded once, by one of the three
        cached = open_cache(dataset, name, 32, results / "cache")
        assert cached is not None
        assert np.array_equal(cached.images[-1], np.asarray(dataset.read_image(name, len(cached) - 1)))
    assert not list((results / "cache").rglob("*.tmp"))


def _toy_pm():
    from cxrbench.manager import build_plugin_manager
    from tests.plugins import toy

    return build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy)], entry_points=False)
