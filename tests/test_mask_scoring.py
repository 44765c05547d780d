"""Masks in a grid cell and in ``cxrbench score``: the toy dataset's masks-only splits.

The toy dataset (``tests/plugins/toy.py``) with ``masks: true`` gives every (image, class) of
its val and boxes splits a COCO RLE mask (empty where the finding is absent) and no boxes,
so the host derives the boxes from the masks and every box metric runs too.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.store import ResultsStore

TOY_MASKS = {"name": "toy", "options": {"num_images": 64, "image_size": 32, "masks": True}}


def _grid(tiny_grid_dict, **localization):
    tiny_grid_dict.update(datasets=[TOY_MASKS], heads=["avg"], localizers=["cam"],
                          localization={"box_thresholds": 30, **localization})
    return tiny_grid_dict


def _run(toy_pm, toy_registry, grid_dict, root):
    grid = parse_grid(grid_dict, toy_registry)
    with ResultsStore(root) as store:
        run_grid(grid, toy_pm, store)
        (cell,) = store.cells(grid.name)
    return cell


def _toy_positives(toy_registry, split="boxes"):
    from cxrbench.pipeline import open_dataset

    dataset = open_dataset(toy_registry.create("dataset", TOY_MASKS))
    s = dataset.split(split)
    return s, int(sum(not ref.is_empty for ref in s.masks.values()))


def test_a_masks_only_dataset_gets_mask_and_box_metrics(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    cell = _run(toy_pm, toy_registry, _grid(tiny_grid_dict), tmp_path)
    (loc,) = cell.localizations
    assert loc.ok, loc.error
    m = loc.metrics
    split, positives = _toy_positives(toy_registry)
    assert m["mask_positive_pairs"] == positives
    assert m["mask_images"] == len(split.ids)  # negatives-only images are scored too
    for key in ("mask_miou", "mask_hit_rate", "mask_pxap", "mask_miou/Blob", "mask_hit_rate/Bar"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["mask_miou_ci_low"] <= m["mask_miou"] <= m["mask_miou_ci_high"]
    # the box metrics run on the boxes of the masks' regions
    assert m["n_pairs"] == positives and 0.0 <= m["maxboxacc_v2"] <= 1.0
    assert loc.settings["boxes_from_masks"] is True
    assert loc.settings["masks"]["threshold"]["policy"] == "otsu"
    assert loc.settings["masks"]["true_pos_only"] is True


def test_mask_tuning_and_gating_choose_on_val_masks(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    grid = _grid(tiny_grid_dict, masks={"tune": True, "gate": True, "tune_grid": [0.3, 0.5], "true_pos_only": False})
    cell = _run(toy_pm, toy_registry, grid, tmp_path)
    (loc,) = cell.localizations
    assert loc.ok, loc.error
    masks = loc.settings["masks"]
    assert masks["tuned_on"] == "val" and masks["true_pos_only"] is False
    assert set(masks["fractions"]) == {"Blob", "Bar"} and set(masks["fractions"].values()) <= {0.3, 0.5}
    assert set(masks["cutoffs"]) == {"Blob", "Bar"}
    assert all(c is None or 0.0 <= c <= 0.8 for c in masks["cutoffs"].values())


def test_mask_settings_are_part_of_the_localizer_key(toy_registry, tiny_grid_dict):
    from cxrbench.grid import localizer_key
    from cxrbench.options import options_to_dict

    keys = []
    for masks in (None, {"true_pos_only": True}, {"true_pos_only": False}):
        loc = {} if masks is None else {"masks": masks}
        grid = parse_grid(_grid(dict(tiny_grid_dict), **loc), toy_registry)
        keys.append(localizer_key(grid.localizers[0], None, options_to_dict(grid.localization)))
    assert keys[0] == keys[1]  # the defaults leave the key as it was before masks existed
    assert keys[2] != keys[0]


def _saved_maps(toy_pm, toy_registry, tiny_grid_dict, root):
    grid = _grid(tiny_grid_dict, save_maps=True, hit_tolerance=0)
    grid["localizers"] = [{"name": "cam", "threshold": {"policy": "otsu"}}]
    cell = _run(toy_pm, toy_registry, grid, root)
    (loc,) = cell.localizations
    with ResultsStore(root) as store:
        path = store.artifacts(cell.cell_id).maps(loc.key)
    return cell, loc, path


def test_score_reproduces_a_cells_numbers_from_its_saved_maps(toy_pm, toy_registry, tiny_grid_dict, tmp_path,
                                                             run_cli):
    import yaml

    cell, loc, path = _saved_maps(toy_pm, toy_registry, tiny_grid_dict, tmp_path / "run")
    out = tmp_path / "scored"
    result = run_cli("score", "--results", out, "--dataset", yaml.safe_dump(TOY_MASKS, default_flow_style=True),
                     "--maps", path, "--name", "my-cam", "--hit-tolerance", "0", "--bootstrap", "20")
    assert result.exit_code == 0, result.output
    with ResultsStore(out) as store:
        (row,) = store.cells("scored")
    (scored,) = row.localizations
    assert row.axes.backbone == "my-cam" and scored.name == "my-cam"
    # float16 storage moves a map by < 1e-3: the numbers agree to that precision
    for key in ("mask_miou", "mask_hit_rate", "mask_pxap", "maxboxacc_v2"):
        assert scored.metrics[key] == pytest.approx(loc.metrics[key], abs=0.03), key
    assert scored.metrics["mask_positive_pairs"] == loc.metrics["mask_positive_pairs"]
    assert scored.settings["maps_sha256"] and scored.settings["masks"]["threshold"]["policy"] == "otsu"
    board = run_cli("leaderboard", "--results", out)
    assert board.exit_code == 0 and "my-cam" in board.output
    # a maps file has no classifier: its row is in the localization table only
    assert "Classification leaderboard" not in board.output and "Localization leaderboard" in board.output


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture
def toy_ids(toy_registry):
    split, _ = _toy_positives(toy_registry)
    return [str(i) for i in split.ids]


@pytest.mark.parametrize("case, expected", [
    ("unknown ids", "ids are not images of dataset 'toy' split 'boxes': 'nope1', 'nope2', 'nope3' and 1 more"),
    ("unknown classes", "classes unknown to dataset 'toy': 'Ghost'"),
    ("nan", "contain NaN or inf (first: "),
    ("range", "values outside [0, 1]"),
    ("shape", "'maps' must be a float N x K x H x W array"),
])
def test_score_refuses_bad_maps_files_in_one_line(run_cli, tmp_path, toy_ids, case, expected):
    import yaml

    ids = np.array(toy_ids[:4])
    maps = np.random.default_rng(0).random((4, 2, 8, 8)).astype(np.float32)
    classes = np.array(["Blob", "Bar"])
    if case == "unknown ids":
        ids = np.array(["nope1", "nope2", "nope3", "nope4"])
    elif case == "unknown classes":
        classes = np.array(["Blob", "Ghost"])
    elif case == "nan":
        maps[1, 0, 2, 2] = np.nan
    elif case == "range":
        maps[2, 1] *= 7
    elif case == "shape":
        maps = maps[:, 0]
    path = _write(tmp_path / "maps.npz", maps=maps, ids=ids, classes=classes)
    result = run_cli("score", "--results", tmp_path / "r", "--dataset", yaml.safe_dump(TOY_MASKS,
                     default_flow_style=True), "--maps", path, "--name", "x", "--bootstrap", "0")
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output


def test_score_rejects_a_pickled_maps_file(run_cli, tmp_path, toy_ids):
    path = tmp_path / "maps.npz"
    np.savez(path, maps=np.zeros((1, 1, 4, 4), np.float32), ids=np.array([{"evil": 1}], dtype=object),
             classes=np.array(["Blob"]))
    result = run_cli("score", "--results", tmp_path / "r", "--dataset", "toy", "--maps", path, "--name", "x")
    assert result.exit_code != 0 and "not a readable .npz file" in result.output


REAL = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "chexlocalize"


@pytest.mark.realdata
def test_score_on_the_real_chexlocalize_validation_masks(tmp_path):
    """Smooth random maps named in CheXlocalize's spelling, scored against the 2 real images' masks."""
    import json

    import cxrbench_chexlocalize
    import torch
    import torch.nn.functional as F
    from pycocotools import mask as coco_mask

    from cxrbench.manager import build_plugin_manager
    from tests.conftest import cli_with

    if not (REAL / "CheXlocalize" / "gt_segmentations_val.json").is_file():
        pytest.skip(f"no CheXlocalize files at {REAL}")
    truth = json.loads((REAL / "CheXlocalize" / "gt_segmentations_val.json").read_text())
    ids = sorted(truth)
    pathologies = sorted(truth[ids[0]])
    rng = np.random.default_rng(3)
    coarse = torch.from_numpy(rng.random((len(ids), len(pathologies), 7, 7)).astype(np.float32))
    maps = F.interpolate(coarse, size=(56, 56), mode="bilinear", align_corners=False).numpy()
    maps = (maps - maps.min(axis=(2, 3), keepdims=True)) / np.ptp(maps, axis=(2, 3), keepdims=True)
    path = tmp_path / "maps.npz"
    np.savez(path, maps=maps.astype(np.float32), ids=np.array(ids), classes=np.array(pathologies))
    # independently: which masks are non-empty, and the tolerance-0 hits of the resized maps' argmax
    positives, hits = 0, {}
    for i, image in enumerate(ids):
        for k, name in enumerate(pathologies):
            gt = coco_mask.decode({"size": truth[image][name]["size"],
                                   "counts": truth[image][name]["counts"].encode()})
            if gt.sum():
                positives += 1
                big = F.interpolate(torch.from_numpy(maps[i, k])[None, None], size=gt.shape, mode="bilinear",
                                    align_corners=False)[0, 0].numpy()
                y, x = np.unravel_index(np.argmax(big), big.shape)
                hits.setdefault(name, []).append(bool(gt[y, x]))
    expected_hit = np.mean([np.mean(v) for v in hits.values()])
    pm = build_plugin_manager(plugins=[("chexlocalize", cxrbench_chexlocalize), ("chexpert", __import__(
        "cxrbench_chexpert"))], entry_points=False)
    with cli_with(pm) as invoke:
        result = invoke("score", "--results", tmp_path / "r", "--dataset",
                        f"{{name: chexlocalize, options: {{root: '{REAL}'}}}}", "--split", "val", "--maps", path,
                        "--name", "random-smooth", "--hit-tolerance", "0", "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    with ResultsStore(tmp_path / "r") as store:
        (row,) = store.cells("scored")
    m = row.localizations[0].metrics
    assert m["mask_positive_pairs"] == positives and m["mask_images"] == len(ids)
    assert m["mask_hit_rate"] == pytest.approx(expected_hit)
    assert 0.0 <= m["mask_miou"] <= 1.0
