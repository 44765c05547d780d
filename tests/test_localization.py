"""The localization benchmark end to end: polarity, real NIH boxes, tuning, pictures.

The localizers themselves are tested in ``test_localizers.py`` and the box metrics in
``test_boxes.py``; here they run as a grid cell runs them (``cxrbench.localization``):
on a model trained on the phantom, on the real NIH images with boxes, with threshold
tuning, and drawn as PNG overlays.
"""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import store_records
from scipy.stats import binomtest

import cxrbench.localization as localization
from cxrbench.boxes import ThresholdPolicy
from cxrbench.config import ComponentSpec, TrainSpec, parse_grid
from cxrbench.data import load_split
from cxrbench.driver import run_grid
from cxrbench.interfaces import Classifier
from cxrbench.localization import boxed_pairs, compute_maps, score
from cxrbench.manager import build_plugin_manager
from cxrbench.overlays import GREEN, RED
from cxrbench.registry import Registry
from cxrbench.store import ResultsStore
from cxrbench.training import seed_everything, train_model
from tests.conftest import SHARED_DATA, builtin_plugins

CPU = torch.device("cpu")


def chance_of_hit(true_boxes: np.ndarray, size: int) -> float:
    """Probability that a uniformly random pixel centre scores a pointing-game hit.

    Uses the metric's own rule (centre inside a true box, edges included, no tolerance),
    so it is the hit rate of a localizer whose peak falls anywhere at random.
    """
    centres = np.arange(size) + 0.5
    inside = np.zeros((size, size), dtype=bool)
    for x, y, w, h in np.asarray(true_boxes, dtype=np.float64).reshape(-1, 4):
        cols = (centres >= x) & (centres <= x + w)
        rows = (centres >= y) & (centres <= y + h)
        inside |= rows[:, None] & cols[None, :]
    return float(inside.mean())


def exact_colour(picture: np.ndarray, bgr: tuple[int, int, int]) -> np.ndarray:
    """Mask of the pixels of exactly colour ``bgr``.

    A blend of grey and a JET colour never gives pure (0, 0, 255) or (0, 200, 0): a zero
    blue channel needs a black grey pixel, and then red / green stay below 0.45 * 255.
    So these pixels can only come from the drawn boxes.
    """
    return np.all(picture == np.array(bgr, dtype=np.uint8), axis=-1)


# --------------------------------------------------------------------------- 1. polarity on the phantom


@pytest.mark.slow
def test_trained_maps_peak_inside_planted_lesions_far_above_chance(toy_registry):
    """A small model trained on phantom masses points at the mass; untrained / inverted ones do not.

    Masses are placed at random in the lungs, so a peak can only land in the box often by
    looking at the lesion. The hit count is tested against a binomial with the LARGEST
    per-image chance probability, an upper bound of the Poisson-binomial of a random peak.
    """
    from cxrbench_phantom.dataset import Options, PhantomDataset

    size = 48
    dataset = PhantomDataset(Options(num_images=300, image_size=size, difficulty=0.0, classes=("Mass",)))
    train, boxed = load_split(dataset, "train", size), load_split(dataset, "boxes", size)
    backbone, head = toy_registry.get("backbone", "tiny", "b"), toy_registry.get("head", "avg", "h")
    seed_everything(0)
    untrained = Classifier.build(ComponentSpec("backbone", "tiny", backbone, backbone.Options(width=8)),
                            ComponentSpec("head", "avg", head, head.Options()), dataset.classes)
    trained = copy.deepcopy(untrained)
    train_model(trained, train, None, TrainSpec(epochs=8, batch_size=16, lr=0.01), seed=0, device=CPU)
    inverted = copy.deepcopy(trained)
    with torch.no_grad():  # the same features read with the opposite sign: maps point away from the lesion
        inverted.head.classifier.weight.neg_()

    _rows, _classes, true = boxed_pairs(boxed)
    chances = np.array([chance_of_hit(t, size) for t in true])
    assert len(true) >= 40 and chances.max() < 0.1  # small lesions: chance is low

    def hits(model, name, tolerance=0.0):
        cls = toy_registry.get("localizer", name, "l")
        run = compute_maps(model, cls(cls.Options()), boxed, batch_size=32, device=CPU)
        metrics, _ = score(run, ThresholdPolicy(), dataset.classes, hit_tolerance=tolerance)
        assert metrics["n_pairs"] == len(true)
        return round(metrics["hit_rate"] * len(true))

    n = len(true)
    # the pointing game's tolerance only ever adds hits; a tolerance of the image size hits everything
    assert hits(untrained, "cam") <= hits(untrained, "cam", tolerance=4.0) <= hits(untrained, "cam", tolerance=size)
    assert hits(untrained, "cam", tolerance=size) == n
    for name in ("cam", "gradcam", "gradcampp"):
        k = hits(trained, name)
        assert binomtest(k, n, chances.max(), alternative="greater").pvalue < 1e-9, (name, k, n)
        assert k / n >= 0.7, (name, k, n)
        for control in (untrained, inverted):
            k_control = hits(control, name)
            # the controls fail the very test the trained model passes
            assert binomtest(k_control, n, chances.max(), alternative="greater").pvalue > 1e-3, (name, k_control)
            assert k_control / n < 0.3


# --------------------------------------------------------------------------- 2. real NIH boxes


NIH_ROOT = SHARED_DATA / "nih"
ALL_LOCALIZERS = ["cam", "pcam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam"]


def nih_csv_boxes(root) -> pd.DataFrame:
    """BBox_List_2017.csv read independently of the nih plugin (its header spans 4 columns)."""
    table = pd.read_csv(root / "BBox_List_2017.csv", header=0, usecols=range(6),
                        names=["name", "label", "x", "y", "w", "h"])
    table["label"] = table["label"].replace({"Infiltrate": "Infiltration"})
    return table


OFFICIAL_NIH_TUNE_DIGEST = "2d8714c75a876a272feafc0da7ed7bc09e2fa9e51230b0a717c11ad5951a9a73"


@pytest.mark.realdata
@pytest.mark.slow
def test_real_nih_cell_scores_every_localizer_on_boxes_scaled_to_256_px(tmp_path, monkeypatch):
    """A grid cell on the real 256 px NIH files: every localizer scores, on boxes scaled 1024 -> 256.

    The pcam head has linear class weights and a logit map, so every localizer applies to
    it. A forward pass at 256 px is not free on a shared CPU, so localizers see the first
    ``max_images`` boxed images; the box scaling is checked on all of them as well.
    """
    if not (NIH_ROOT / "BBox_List_2017.csv").is_file():
        pytest.skip(f"real NIH sample not found at {NIH_ROOT}")
    import cxrbench_nih

    from tests.plugins import toy

    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("nih", cxrbench_nih), ("toy", toy)], entry_points=False)
    registry = Registry.from_plugin_manager(pm)
    assert set(ALL_LOCALIZERS) <= set(registry.names("localizer"))
    max_images = 16
    grid = parse_grid({
        "name": "nih-real",
        "seeds": [0],
        "datasets": [{"name": "nih", "options": {"root": str(NIH_ROOT), "classes": "nih8"}}],
        "backbones": [{"name": "tiny", "options": {"width": 4}}],
        "heads": ["pcam"],
        "localizers": ALL_LOCALIZERS,
        # the point is the pipeline and the box scaling, not the model: two steps of training
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "image_size": 256, "max_steps_per_epoch": 2,
                  "select_best": False, "device": "cpu"},
        "evaluation": {"bootstrap": 0},
        # NIH boxes only images of its test list: tuning uses the pinned held-out part of the boxed split
        "localization": {"max_images": max_images, "tune": True},
    }, registry)

    seen = []  # (prepared split, run) of every compute_maps call, and the true boxes the scorer got
    scored = []
    real_compute, real_metrics = localization.compute_maps, localization.localization_metrics

    def spy_compute(model, localizer, data, **kw):
        run = real_compute(model, localizer, data, **kw)
        seen.append((data, run))
        return run

    def spy_metrics(pairs, class_names, **kw):
        scored.append([p.true_boxes for p in pairs])
        return real_metrics(pairs, class_names, **kw)

    monkeypatch.setattr(localization, "compute_maps", spy_compute)
    monkeypatch.setattr(localization, "localization_metrics", spy_metrics)
    with ResultsStore(tmp_path / "results") as store:
        summary = run_grid(grid, pm, store)
        records = store_records(store, "nih-real")
    assert (summary.ok, summary.failed) == (1, 0), summary.failures

    rows = {r["localizer"]: r for r in records}
    assert set(rows) == set(ALL_LOCALIZERS)
    for name, r in rows.items():
        assert r["localizer_status"] == "ok", (name, r["localizer_error"])
        settings = r["localizer_settings"]
        assert settings["tuned"] is True and settings["tuned_on"] == "boxes:tune"
        # the official held-out list (20% of BBox_List_2017.csv's patients, seed 0): the same everywhere
        assert settings["tune_ids_digest"] == OFFICIAL_NIH_TUNE_DIGEST
        assert (settings["tune_images"], settings["scored_images"]) == (34, 166)
        m = r["metrics"]
        assert m["loc_images"] == max_images
        for key in ("iou_mean", "iobb_mean", "hit_rate", "acc_iou@0.1", "acc_iobb@0.5", "afp_iou@0.5"):
            assert np.isfinite(m[key]), (name, key)
        assert 0 <= m["iou_mean"] <= 1 and 0 <= m["hit_rate"] <= 1 and m["afp_iou@0.7"] >= 0

    # expected: BBox_List_2017.csv (1024 px originals) divided by 4, for the images present
    table = nih_csv_boxes(NIH_ROOT)
    table = table[table["name"].isin({p.name for p in (NIH_ROOT / "images").glob("*.png")})]
    expected = {key: np.sort(g[["x", "y", "w", "h"]].to_numpy() / 4.0, axis=0)
                for key, g in table.groupby(["name", "label"])}
    classes = records[0]["info"]["classes"]
    tuned = [(d, r) for d, r in seen if d.name == "boxes:tune"]
    seen = [(d, r) for d, r in seen if d.name == "boxes:test"]
    assert len(seen) == len(tuned) == len(ALL_LOCALIZERS)
    assert len(scored) == len(seen)  # the scorer sees the scored part only (tuning scores its own part)
    data, tune_data = seen[0][0], tuned[0][0]
    assert data.size == 256 and len(data) == 166 and len(tune_data) == 34
    ids = [str(i) for i in data.split.ids]
    # patient-disjoint: no patient is both tuned on and scored
    assert not set(data.split.patient_ids) & set(tune_data.split.patient_ids)
    tune_ids = {str(i) for i in tune_data.split.ids}
    expected_all = expected
    expected = {key: v for key, v in expected_all.items() if key[0] not in tune_ids}
    # the whole boxed split, at the model's input size
    every = {}
    for (row, c), g in data.boxes.groupby(["index", "class_index"]):
        every[(ids[row], classes[c])] = np.sort(g[["x", "y", "w", "h"]].to_numpy(), axis=0)
    assert set(every) == set(expected)
    for key, boxes in every.items():
        np.testing.assert_allclose(boxes, expected[key], rtol=1e-9, err_msg=str(key))
    # what each localizer's scorer received: the pairs of the first images, those same boxes
    first = set(ids[:max_images])
    for (_data, run), received in zip(seen, scored, strict=True):
        pairs = [(ids[row], classes[c]) for row, c in zip(run.pair_rows, run.pair_classes, strict=True)]
        assert set(pairs) == {key for key in expected if key[0] in first}
        assert len(received) == len(pairs)
        for key, given in zip(pairs, received, strict=True):
            np.testing.assert_allclose(np.sort(given, axis=0), expected[key], rtol=1e-9, err_msg=str(key))
        assert run.maps.shape[1:] == (256, 256)


# --------------------------------------------------------------------------- 3. tuning on val only


@pytest.fixture
def run_toy(toy_pm, toy_registry, tmp_path):
    def go(grid_dict, folder):
        grid = parse_grid(grid_dict, toy_registry)
        with ResultsStore(tmp_path / folder) as store:
            summary = run_grid(grid, toy_pm, store)
            return summary, store_records(store, grid.name)

    return go


def whole_image_boxes(monkeypatch):
    """Make the toy's ``boxes`` split adversarial: every true box is the whole image.

    On such boxes the best threshold is the lowest one (one box covering everything),
    which the toy's small validation squares do not prefer (the test checks it).
    """
    from tests.plugins import toy

    real_split = toy.ToyDataset.split

    def split(self, name):
        out = real_split(self, name)
        if name == "boxes" and not out.boxes.empty:
            s = float(self.options.image_size)
            out.boxes = out.boxes.assign(x=0.0, y=0.0, w=s, h=s)
        return out

    monkeypatch.setattr(toy.ToyDataset, "split", split)


def test_threshold_tuning_reads_validation_boxes_only_and_is_stored(run_toy, tiny_grid_dict, toy_registry,
                                                                    monkeypatch):
    tiny_grid_dict["heads"] = ["avg"]
    tiny_grid_dict["localizers"] = ["cam"]
    tiny_grid_dict["localization"] = {"tune": True}

    tuned_on = []  # the true boxes tune_policy was handed
    maps_of = {}  # split name -> (prepared split, LocalizationRun) of the last compute_maps on it
    real_tune, real_compute = localization.tune_policy, localization.compute_maps

    def spy_tune(heatmaps, true_boxes, classes, base, *args, **kw):
        tuned_on.append([np.array(t) for t in true_boxes])
        return real_tune(heatmaps, true_boxes, classes, base, *args, **kw)

    def spy_compute(model, localizer, data, **kw):
        run = real_compute(model, localizer, data, **kw)
        maps_of[data.name] = (data, run)
        return run

    monkeypatch.setattr(localization, "tune_policy", spy_tune)
    monkeypatch.setattr(localization, "compute_maps", spy_compute)

    summary, honest = run_toy(tiny_grid_dict, "honest")
    assert summary.ok == 1
    toy = toy_registry.get("dataset", "toy", "d")
    dataset = toy(toy.Options(num_images=64, image_size=32), None)
    val_data, boxed_data = load_split(dataset, "val", 32), load_split(dataset, "boxes", 32)
    _, _, val_boxes = boxed_pairs(val_data)
    _, _, test_boxes = boxed_pairs(boxed_data)
    assert len(tuned_on) == 1 and len(tuned_on[0]) == len(val_boxes)
    for given, expected in zip(tuned_on[0], val_boxes, strict=True):
        np.testing.assert_array_equal(given, expected)
    assert test_boxes and set(val_data.split.ids).isdisjoint(boxed_data.split.ids)

    # the chosen values are stored with the result and exported with the leaderboard JSON
    settings = honest[0]["localizer_settings"]
    assert settings["tuned"] is True and settings["tuned_on"] == "val"
    chosen = settings["policy"]
    assert chosen["policy"] == "seed" and chosen["factor"] in {row["factor"] for row in settings["tuning"]}
    best = max(settings["tuning"], key=lambda row: row["iou_mean"])
    assert chosen["factor"] == best["factor"]
    exported = json.loads(json.dumps(honest))  # the exported JSON form already
    assert exported[0]["localizer_settings"]["policy"] == chosen

    # adversarial test boxes: the scores move, the tuned value does not
    whole_image_boxes(monkeypatch)
    tuned_on.clear()
    summary, adversarial = run_toy(tiny_grid_dict, "adversarial")
    assert summary.ok == 1
    assert adversarial[0]["localizer_settings"]["policy"] == chosen
    assert adversarial[0]["metrics"]["iou_mean"] != honest[0]["metrics"]["iou_mean"]
    assert adversarial[0]["metrics"]["auroc_mean"] == honest[0]["metrics"]["auroc_mean"]  # the same model
    # ...while tuning on those boxes WOULD have chosen differently: the check has teeth
    _, run = maps_of["boxes"]
    leaked, _ = real_tune(run.maps, run.true_boxes, run.pair_classes, ThresholdPolicy())
    assert leaked.factor != chosen["factor"]


# --------------------------------------------------------------------------- 4. pictures


def pairs_of_first_images(data, count: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Image id -> [(class, T x 4 boxes)] of the first ``count`` boxed images of a split."""
    rows, classes, true = boxed_pairs(data)
    keep = list(dict.fromkeys(rows.tolist()))[:count]
    out: dict[str, list] = {}
    for r, c, t in zip(rows, classes, true, strict=True):
        if r in keep:
            out.setdefault(str(data.split.ids[r]), []).append((["Blob", "Bar"][c], t))
    return out


def assert_overlay(path, boxes: np.ndarray, scale: int) -> bool:
    """A readable PNG with the true boxes' corners in red; returns whether green boxes are drawn."""
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert picture is not None, path
    red, green = exact_colour(picture, RED), exact_colour(picture, GREEN)
    for x, y, w, h in np.asarray(boxes).reshape(-1, 4) * scale:
        corners = [(int(round(y)), int(round(x))), (int(round(y + h)) - 1, int(round(x + w)) - 1)]
        assert any(red[r, c] for r, c in corners), (path, corners)  # drawn last: its corners stay red
    return bool(green.any())


def test_run_option_saves_overlays_for_a_sample_of_the_boxed_split(run_toy, tiny_grid_dict, toy_registry, tmp_path):
    tiny_grid_dict["heads"] = ["avg"]
    tiny_grid_dict["localization"] = {"save_overlays": 3}
    summary, records = run_toy(tiny_grid_dict, "r")
    assert summary.ok == 1
    cell_dir = tmp_path / "r" / "cells" / records[0]["cell_id"]
    dataset = toy_registry.get("dataset", "toy", "d")
    data = load_split(dataset(dataset.Options(num_images=64, image_size=32), None), "boxes", 32)
    wanted = pairs_of_first_images(data, 3)
    assert len(wanted) == 3
    for name in ("cam", "gradcam"):
        files = sorted((cell_dir / "overlays" / name).glob("*.png"))
        expected = {f"{image}_{cls}.png": boxes for image, pairs in wanted.items() for cls, boxes in pairs}
        assert sorted(p.name for p in files) == sorted(expected)
        green = []
        for path in files:
            picture = cv2.imread(str(path))
            assert picture.shape == (256, 256, 3)  # 32 px toy images drawn 8x larger
            green.append(assert_overlay(path, expected[path.name], scale=8))
        # a min-max normalised CAM always has pixels above the seed threshold (capped at 0.7666);
        # a Grad-CAM map can be all zero after its ReLU, and then has no predicted box
        assert all(green) if name == "cam" else any(green), (name, green)


def test_heatmap_command_draws_a_finished_cell(run_cli, tiny_grid_dict, tmp_path, toy_registry, monkeypatch):
    tiny_grid_dict["heads"] = ["avg"]
    tiny_grid_dict["localization"] = {"tune": True}
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid_file, "--results", results, "--no-progress").exit_code == 0
    records = json.loads(run_cli("leaderboard", "--results", results, "--format", "json").output)
    cell_id = records[0]["cell_id"]
    stored = {r["localizer"]: r["localizer_settings"]["policy"] for r in records}
    assert all(r["localizer_settings"]["tuned"] for r in records)

    dataset = toy_registry.get("dataset", "toy", "d")
    data = load_split(dataset(dataset.Options(num_images=64, image_size=32), None), "boxes", 32)
    wanted = pairs_of_first_images(data, 2)
    images = list(wanted)

    import cxrbench.boxes as boxes_module

    policies = []
    real_to_boxes = boxes_module.heatmap_to_boxes

    def spy(heatmap, policy=None):
        policies.append(policy)
        return real_to_boxes(heatmap, policy)

    monkeypatch.setattr(boxes_module, "heatmap_to_boxes", spy)
    out = tmp_path / "pictures"
    result = run_cli("heatmap", "--results", results, cell_id[:10], "--image", images[0], "--image", images[1],
                     "--out", out)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.png"))
    expected = {f"{image}_{cls}_{loc}.png": boxes for image, pairs in wanted.items() for cls, boxes in pairs
                for loc in ("cam", "gradcam")}
    assert sorted(p.name for p in files) == sorted(expected)
    assert f"wrote {len(files)} pictures" in result.output
    green = {path.name: assert_overlay(path, expected[path.name], scale=8) for path in files}
    assert all(v for k, v in green.items() if k.endswith("_cam.png")), green
    # the predicted boxes drawn are the ones that were scored: the cell's stored (tuned) policy
    assert {json.dumps(dataclass_dict(p), sort_keys=True) for p in policies} == \
        {json.dumps(p, sort_keys=True) for p in stored.values()}

    unknown_cell = run_cli("heatmap", "--results", results, "ffffffffff", "--out", out)
    assert unknown_cell.exit_code == 4
    assert unknown_cell.output.strip().count("\n") == 0 and "no cells match 'ffffffffff'" in unknown_cell.output
    unknown_image = run_cli("heatmap", "--results", results, cell_id, "--image", "nope.png", "--out", out)
    assert unknown_image.exit_code == 4
    assert unknown_image.output.strip().count("\n") == 0 and "'nope.png'" in unknown_image.output
    no_box = next(str(i) for n, i in enumerate(data.split.ids) if n not in set(data.boxes["index"]))
    unboxed = run_cli("heatmap", "--results", results, cell_id, "--image", no_box, "--out", out)
    assert unboxed.exit_code == 4
    assert unboxed.output.strip().count("\n") == 0 and f"image '{no_box}' has no boxes" in unboxed.output
    assert "Traceback" not in unknown_cell.output + unknown_image.output + unboxed.output


def dataclass_dict(policy) -> dict:
    import dataclasses

    return dataclasses.asdict(policy)


def test_heatmap_draws_what_works_and_says_what_it_skipped(run_cli, tmp_path, tiny_grid_dict):
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid_file, "--results", results, "--no-progress").exit_code == 0
    cell_id = json.loads(run_cli("leaderboard", "--results", results, "--format", "json").output)[0]["cell_id"]
    out = tmp_path / "pictures"
    # pcam needs a head with a logit map; avg has none: cam is drawn, pcam skipped with its reason
    both = run_cli("heatmap", "--results", results, cell_id, "-l", "cam", "-l", "pcam", "--count", "1", "--out", out)
    assert both.exit_code == 0, both.output
    assert "localizer 'pcam' cannot explain cell" in both.output and "skipped" in both.output
    drawn = sorted(p.name for p in out.glob("*.png"))
    assert drawn and all(name.endswith("_cam.png") for name in drawn)
    alone = run_cli("heatmap", "--results", results, cell_id, "-l", "pcam", "--out", tmp_path / "none")
    assert alone.exit_code == 4 and "localizer 'pcam' cannot explain cell" in alone.output
    assert alone.output.strip().count("\n") == 0
