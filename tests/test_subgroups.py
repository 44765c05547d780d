"""Subgroups (``leaderboard --by``): covariates in the contract and in a cell's files, per-group
AUROC / localization with patient-level bootstrap CIs, the gap, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from cxrbench.artifacts import CellArtifacts
from cxrbench.covariates import covariate_frame, load_covariates, save_covariates
from cxrbench.interfaces import DatasetContext, Split
from cxrbench.locmetrics.bootstrap import bootstrap_max_accuracy, bootstrap_mean
from cxrbench.metrics import bootstrap_counts, classification_metrics
from cxrbench.subgroups import (
    MIN_CLASS_COUNT,
    UNKNOWN,
    Grouping,
    Intersection,
    parse_by,
    subgroup_auroc,
    subgroup_localization,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _data(n=120, k=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < 0.4).astype(np.float64)
    labels[:7, 1] = np.nan  # unknown labels are masked class by class
    scores = np.clip(0.4 * np.nan_to_num(labels) + 0.6 * rng.random((n, k)), 0, 1)
    patients = np.asarray([f"p{i // 3}" for i in range(n)])  # three images per patient
    sex = np.where((np.arange(n) // 3) % 2 == 0, "F", "M")  # constant per patient
    return labels, scores, patients, sex


# --------------------------------------------------------------------------- AUROC per group


def test_group_auroc_is_sklearns_on_the_group_and_small_classes_are_nan():
    labels, scores, patients, sex = _data()
    labels[sex == "M", 0] = 0.0
    labels[np.flatnonzero(sex == "M")[:MIN_CLASS_COUNT - 1], 0] = 1.0  # one positive too few for class 0 in M
    result = subgroup_auroc(labels, scores, patients, sex.astype(object), ["F", "M"], ["A", "B"], n_boot=0, seed=0,
                            ci=0.95)
    by = {g.group: g for g in result.groups}
    for group in ("F", "M"):
        rows = sex == group
        known = ~np.isnan(labels[rows, 1])
        assert by[group].metrics["auroc/B"] == pytest.approx(roc_auc_score(labels[rows, 1][known],
                                                                           scores[rows, 1][known]))
        assert by[group].n_images == rows.sum() and by[group].n_patients == len(set(patients[rows]))
    rows = sex == "F"
    assert by["F"].metrics["auroc/A"] == pytest.approx(roc_auc_score(labels[rows, 0], scores[rows, 0]))
    assert math.isnan(by["M"].metrics["auroc/A"])
    # the mean compares like with like: only the class every group can score
    assert result.mean_classes == ("B",)
    assert by["F"].metrics["auroc_mean"] == pytest.approx(by["F"].metrics["auroc/B"])


def _independent_bootstrap(labels, scores, patients, groups, group, n_boot, seed, ci):
    """Per replicate: repeat every image by its patient's draw count, keep the group, sklearn AUROC."""
    counts = bootstrap_counts(patients, n_boot, seed)  # R x N, the documented resamples
    means = []
    for w in counts:
        rows = np.repeat(np.arange(len(labels)), w)
        rows = rows[groups[rows] == group]
        per_class = []
        for j in range(labels.shape[1]):
            y, s = labels[rows, j], scores[rows, j]
            known = ~np.isnan(y)
            if len(set(y[known])) == 2:
                per_class.append(roc_auc_score(y[known], s[known]))
        means.append(np.mean(per_class) if per_class else np.nan)
    means = np.asarray(means)
    return means, np.nanpercentile(means, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])


def test_interval_comes_from_patient_resamples_of_the_whole_split():
    labels, scores, patients, sex = _data(n=60)
    counts = bootstrap_counts(patients, 30, 7)
    # patient-level: every image of a patient is drawn the same number of times
    for p in np.unique(patients):
        assert (counts[:, patients == p] == counts[:, patients == p][:, :1]).all()
    result = subgroup_auroc(labels, scores, patients, sex.astype(object), ["F", "M"], ["A", "B"], n_boot=30, seed=7,
                            ci=0.9, min_count=1)
    by = {g.group: g for g in result.groups}
    reps = {}
    for group in ("F", "M"):
        reps[group], (low, high) = _independent_bootstrap(labels, scores, patients, sex, group, 30, 7, 0.9)
        assert by[group].metrics["auroc_ci_low"] == pytest.approx(low)
        assert by[group].metrics["auroc_ci_high"] == pytest.approx(high)
    (gap,) = result.gaps
    assert {gap.best, gap.worst} == {"F", "M"}
    assert gap.value == pytest.approx(by[gap.best].metrics["auroc_mean"] - by[gap.worst].metrics["auroc_mean"])
    assert gap.value >= 0
    diff = reps[gap.best] - reps[gap.worst]
    low, high = np.nanpercentile(diff, [5, 95])
    assert (gap.low, gap.high) == (pytest.approx(low), pytest.approx(high))


def test_one_group_of_everything_reproduces_the_cells_own_interval():
    labels, scores, patients, _ = _data()
    everyone = np.full(len(labels), "all", dtype=object)
    result = subgroup_auroc(labels, scores, patients, everyone, ["all"], ["A", "B"], n_boot=40, seed=3, ci=0.95,
                            min_count=1)
    cell = classification_metrics(labels, scores, ["A", "B"], groups=patients, n_boot=40, seed=3)
    (group,) = result.groups
    for key in ("auroc_mean", "auroc_ci_low", "auroc_ci_high", "auroc/A", "auroc_ci_high/B"):
        assert group.metrics[key] == pytest.approx(cell[key])
    assert result.gaps == ()  # one group: no gap


def test_unknown_values_form_their_own_group_outside_the_gap():
    labels, scores, patients, sex = _data()
    groups, order = parse_by("sex").assign(np.where(np.arange(len(sex)) < 30, "", sex))
    assert order == ["F", "M", UNKNOWN] and (groups[:30] == UNKNOWN).all()
    result = subgroup_auroc(labels, scores, patients, groups, order, ["A", "B"], n_boot=10, seed=0, ci=0.95,
                            min_count=1)
    assert [g.group for g in result.groups] == order
    assert UNKNOWN not in (result.gaps[0].best, result.gaps[0].worst)


# --------------------------------------------------------------------------- localization per group


def test_localization_groups_match_the_cells_localization_bootstrap():
    rng = np.random.default_rng(2)
    n = 80
    patients = np.asarray([f"p{i // 2}" for i in range(n)])
    ids = np.asarray([f"img{i // 2}_{i % 2}" for i in range(n)])
    classes = rng.integers(0, 3, n)
    best_iou = rng.random(n)
    hits = rng.random(n) < 0.6
    correct = best_iou[:, None, None] >= np.linspace(0, 1, 3)[None, :, None] * rng.random((1, 1, 11))
    everyone = np.full(n, "all", dtype=object)
    result = subgroup_localization(patients, best_iou, hits, correct, classes, everyone, ids, ["all"], n_boot=50,
                                   seed=4, ci=0.9)
    m = result.groups[0].metrics
    for key, reference in (("iou_mean", bootstrap_mean(best_iou, patients, n_boot=50, seed=4, ci=0.9)),
                           ("hit_rate", bootstrap_mean(hits, patients, classes=classes, n_boot=50, seed=4, ci=0.9)),
                           ("maxboxacc_v2", bootstrap_max_accuracy(correct, patients, n_boot=50, seed=4, ci=0.9))):
        assert m[key] == pytest.approx(reference.estimate)
        assert (m[f"{key}_ci_low"], m[f"{key}_ci_high"]) == (pytest.approx(reference.low),
                                                             pytest.approx(reference.high))
    # a group: the statistic on its own pairs, its threshold chosen on them
    half = np.where(np.arange(n) < 30, "a", "b").astype(object)
    split = subgroup_localization(patients, best_iou, hits, correct, classes, half, ids, ["a", "b"], n_boot=0,
                                  seed=0, ci=0.9)
    a = split.groups[0]
    assert a.n_pairs == 30 and a.n_images == 30 and a.n_patients == 15
    assert a.metrics["iou_mean"] == pytest.approx(best_iou[:30].mean())
    assert a.metrics["maxboxacc_v2"] == pytest.approx(correct[:30].mean(axis=0).max(axis=1).mean())
    hit_by_class = [hits[:30][classes[:30] == c].mean() for c in np.unique(classes[:30])]
    assert a.metrics["hit_rate"] == pytest.approx(np.mean(hit_by_class))
    assert {g.metric for g in split.gaps} == {"maxboxacc_v2", "iou_mean", "hit_rate"}


# --------------------------------------------------------------------------- --by values


def test_age_bins_are_left_closed():
    grouping = parse_by("age:40,60")
    assert grouping == Grouping("age", (40.0, 60.0)) and grouping.text == "age:40,60"
    assert grouping.bin_labels() == ["<40", "40-59", ">=60"]
    groups, order = grouping.assign(np.asarray([39.9, 40, 59, 59.5, 60, np.nan, 412]))
    assert groups.tolist() == ["<40", "40-59", "40-59", "40-59", ">=60", UNKNOWN, ">=60"]
    assert order == ["<40", "40-59", ">=60", UNKNOWN]
    assert parse_by("age:40.5,60").bin_labels() == ["<40.5", "40.5-<60", ">=60"]
    assert parse_by("age:65").bin_labels() == ["<65", ">=65"]


@pytest.mark.parametrize("text, message", [("age:60,40", "strictly increasing"), ("age:4x", "numbers"),
                                           ("9lives", "covariate name"), ("age:", "strictly increasing")])
def test_bad_by_values_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        parse_by(text)


def test_numeric_without_edges_and_edges_on_text_are_refused():
    with pytest.raises(ValueError, match="give bin edges"):
        parse_by("age").assign(np.asarray([30.0, 50.0]))
    with pytest.raises(ValueError, match="holds text"):
        parse_by("sex:1,2").assign(np.asarray(["F", "M"]))


def test_intersections_combine_labels_in_order_and_any_missing_part_is_unknown():
    grouping = parse_by("sex+age:40")
    assert grouping == Intersection((Grouping("sex"), Grouping("age", (40.0,))))
    assert grouping.text == "sex+age:40" and grouping.columns == ("sex", "age")
    sex = np.asarray(["M", "F", "F", "", "M", "F"])
    age = np.asarray([30.0, 50.0, 20.0, 45.0, np.nan, 41.0])
    groups, order = grouping.assign_columns([sex, age])
    assert groups.tolist() == ["M / <40", "F / >=40", "F / <40", UNKNOWN, UNKNOWN, "F / >=40"]
    # the first part varies slowest; a combination no image has ("M / >=40") is left out
    assert order == ["F / <40", "F / >=40", "M / <40", UNKNOWN]
    with pytest.raises(ValueError, match="holds text"):
        parse_by("age:40+sex:1").assign_columns([age, sex])


@pytest.mark.parametrize("text, message", [("sex+sex", "each covariate may appear once"),
                                           ("sex+view+age:40+race", "at most 3"), ("sex+", "covariate name")])
def test_bad_intersections_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        parse_by(text)


# --------------------------------------------------------------------------- the contract and the file


def test_split_subset_keeps_covariates_and_checks_their_length():
    covariates = covariate_frame(4, sex=["Female", "M", "Unknown", ""], age=["058Y", 30, None, 101],
                                 view=["PA", "AP", " ", "LAT"], frontal_lateral=["Frontal"] * 3 + ["Lateral"])
    assert covariates["sex"].tolist() == ["F", "M", None, None]
    assert covariates["age"].tolist()[:2] == [58.0, 30.0] and math.isnan(covariates["age"][2])
    assert covariates["view"].tolist() == ["PA", "AP", None, "LAT"]
    split = Split(ids=list("abcd"), patient_ids=list("ppqq"), labels=np.zeros((4, 1), np.float32),
                  covariates=covariates)
    part = split.subset(np.asarray([3, 1]))
    assert part.covariates["view"].tolist() == ["LAT", "AP"] and part.covariates.index.tolist() == [0, 1]
    with pytest.raises(ValueError, match="3 rows for 4 images"):
        Split(ids=list("abcd"), patient_ids=list("ppqq"), labels=np.zeros((4, 1)), covariates=covariates.head(3))


def test_saved_covariates_read_without_pickle_and_roles_are_kept(tmp_path):
    path = tmp_path / "covariates.npz"
    frame = covariate_frame(3, sex=["F", None, "M"], age=[40, np.nan, 70], view=["PA", "AP", "PA"])
    save_covariates(path, "test", "test", ["a", "b", "c"], frame)
    save_covariates(path, "localization", "boxes:test", ["b"], frame.iloc[[1]].reset_index(drop=True))
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert data["test__col__sex"].tolist() == ["F", "", "M"]
    saved = load_covariates(path)
    assert saved["test"].ids.tolist() == ["a", "b", "c"] and saved["localization"].split == "boxes:test"
    assert np.isnan(saved["test"].columns["age"][1]) and saved["test"].columns["age"][2] == 70
    save_covariates(path, "localization", "boxes", ["c"], None)  # a dataset without covariates: ids only
    again = load_covariates(path)
    assert again["localization"].columns == {} and again["test"].ids.tolist() == ["a", "b", "c"]


# --------------------------------------------------------------------------- datasets


ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def test_nih_covariates_from_a_synthetic_table(tmp_path):
    from cxrbench_nih import NIHChestXray14

    rows = [("00000001_000.png", "Mass", 1, "57", "M", "PA"), ("00000002_000.png", "No Finding", 2, "412", "F", "AP"),
            ("00000003_000.png", "Effusion", 3, "033Y", "F", "PA")]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(
        [ENTRY_HEADER] + [f"{n},{f},0,{p},{a},{s},{v},1024,1024,0.143,0.143" for n, f, p, a, s, v in rows]) + "\n")
    (tmp_path / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    (tmp_path / "train_val_list.txt").write_text("")
    (tmp_path / "test_list.txt").write_text("\n".join(r[0] for r in rows) + "\n")
    (tmp_path / "images").mkdir()
    for name, *_ in rows:
        cv2.imwrite(str(tmp_path / "images" / name), np.full((8, 8), 100, np.uint8))
    dataset = NIHChestXray14(NIHChestXray14.Options(root=str(tmp_path)), DatasetContext())
    test = dataset.split("test")
    by_id = test.covariates.assign(id=test.ids).set_index("id")
    assert by_id.loc["00000002_000.png"].tolist() == ["F", 412.0, "AP"]  # a data-entry error, kept as given
    assert by_id.loc["00000003_000.png", "age"] == 33.0 and by_id.loc["00000001_000.png", "sex"] == "M"


@pytest.mark.skipif(not (DATA / "nih" / "Data_Entry_2017_v2020.csv").is_file(), reason="no shared NIH data")
def test_nih_covariates_from_the_real_table():
    from cxrbench_nih import NIHChestXray14

    dataset = NIHChestXray14(NIHChestXray14.Options(root=str(DATA / "nih")), DatasetContext())
    table = pd.read_csv(DATA / "nih" / "Data_Entry_2017_v2020.csv", index_col=0,
                        usecols=["Image Index", "Patient Age", "Patient Gender", "View Position"])
    for name in ("test", "boxes"):
        split = dataset.split(name)
        expected = table.loc[list(split.ids)]
        assert split.covariates["sex"].tolist() == expected["Patient Gender"].tolist()
        assert split.covariates["age"].tolist() == expected["Patient Age"].astype(float).tolist()
        assert split.covariates["view"].tolist() == expected["View Position"].tolist()
        assert set(split.covariates["sex"]) == {"F", "M"}


def test_chexpert_covariates_map_sex_and_views():
    from cxrbench_chexpert.dataset import table_covariates

    frame = pd.DataFrame({"Sex": ["Female", "Male", "Unknown"], "Age": [0, 90, 41],
                          "Frontal/Lateral": ["Frontal", "Lateral", "Frontal"], "AP/PA": ["AP", np.nan, "PA"]})
    covariates = table_covariates(frame)
    assert covariates["sex"].tolist() == ["F", "M", None]
    assert covariates["view"].tolist() == ["AP", "LAT", "PA"]
    assert covariates["frontal_lateral"].tolist() == ["Frontal", "Lateral", "Frontal"]
    assert covariates["age"].tolist() == [0.0, 90.0, 41.0]


# --------------------------------------------------------------------------- the command line


GRID = {
    "name": "sub", "seeds": [0],
    "datasets": [{"name": "toy", "options": {"num_images": 160, "image_size": 32}}],
    "backbones": [{"name": "tiny", "options": {"width": 4}}], "heads": ["avg"], "localizers": ["cam"],
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.01}, "evaluation": {"bootstrap": 30},
}


def test_toy_grid_then_leaderboard_by_sex(run_cli, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    out = run_cli("leaderboard", "--results", results, "--by", "sex", "--format", "json")
    assert out.exit_code == 0, out.output
    records = json.loads(out.stdout)
    cell_id = records[0]["cell_id"]
    classification = [r for r in records if r["kind"] == "subgroup" and r["localizer"] is None]
    assert [r["group"] for r in classification] == ["F", "M"]
    assert sum(r["n_images"] for r in classification) == 40  # the toy's test split: the last quarter
    predictions = np.load(CellArtifacts.of(results, cell_id).predictions, allow_pickle=False)
    female = np.asarray([(int(i[3:]) // 2) % 2 == 0 for i in predictions["ids"]])  # the toy's rule
    f = classification[0]["metrics"]
    assert f["auroc/Blob"] == pytest.approx(roc_auc_score(predictions["labels"][female, 0],
                                                          predictions["scores"][female, 0]))
    gaps = [r for r in records if r["kind"] == "gap"]
    assert {(g["localizer"], g["metric"]) for g in gaps} >= {(None, "auroc_mean"), ("cam", "maxboxacc_v2")}
    auroc_gap = next(g for g in gaps if g["metric"] == "auroc_mean")
    by_group = {r["group"]: r["metrics"]["auroc_mean"] for r in classification}
    gap = auroc_gap["metrics"]
    assert gap["gap"] == pytest.approx(by_group[auroc_gap["best"]] - by_group[auroc_gap["worst"]])
    assert auroc_gap["group"] == f"{auroc_gap['best']} - {auroc_gap['worst']}" and "n_images" not in auroc_gap
    assert gap["gap_ci_low"] < gap["gap_ci_high"]
    located = [r for r in records if r["kind"] == "subgroup" and r["localizer"] == "cam"]
    assert {"maxboxacc_v2", "maxboxacc_v2_ci_low", "iou_mean", "hit_rate"} <= set(located[0]["metrics"])
    csv = run_cli("leaderboard", "--results", results, "--by", "age:40,60", "--format", "csv").stdout
    assert csv.startswith("kind,cell_id") and ",40-59," in csv
    table = run_cli("leaderboard", "--results", results, "--by", "view")
    assert "Classification by view" in table.output and "gap" in table.output
    flat = " ".join(table.output.split())
    # one cell: its axes and id in the titles, the per-class AUROCs in a table of their own
    assert f"Classification by view (test split): toy / tiny / avg / seed 0 (cell {cell_id[:12]})" in flat
    assert "Per-class AUROC by view (test split)" in flat
    both = json.loads(run_cli("leaderboard", "--results", results, "--by", "sex+view", "--format", "json").stdout)
    combined = [r for r in both if r["kind"] == "subgroup" and r["localizer"] is None]
    assert [r["group"] for r in combined] == ["F / AP", "F / PA", "M / AP", "M / PA"]
    assert all(r["by"] == "sex+view" for r in both)
    ap = np.asarray([int(i[3:]) % 3 == 0 for i in predictions["ids"]])  # the toy's view rule
    chosen = female & ~ap
    assert combined[1]["n_images"] == chosen.sum()
    labels, scores = predictions["labels"][chosen, 0], predictions["scores"][chosen, 0]
    assert min(labels.sum(), (1 - labels).sum()) >= MIN_CLASS_COUNT  # the toy's fixed data: scorable
    assert combined[1]["metrics"]["auroc/Blob"] == pytest.approx(roc_auc_score(labels, scores))
    markdown = run_cli("leaderboard", "--results", results, "--by", "sex", "--format", "markdown").stdout
    lines = markdown.splitlines()
    assert lines[0] == "**Classification by sex (test split)**" and "**Localization by sex" in markdown
    female_row = next(line for line in lines if line.split(" | ")[4:5] == ["F"])
    assert f"{f['auroc_mean']:.3f}" in female_row and f"{f['auroc_ci_low']:.3f}-{f['auroc_ci_high']:.3f}" in female_row
    gap_row = next(line for line in lines if "| **gap** |" in line)
    assert f"{gap['gap']:+.3f}" in gap_row
    latex = run_cli("leaderboard", "--results", results, "--by", "sex", "--format", "latex").stdout
    assert latex.count(r"\begin{table}") == 2 and "tab:cxrbench-subgroups-classification" in latex
    assert r"\emph{gap}" in latex and f"[{gap['gap_ci_low']:+.3f}, {gap['gap_ci_high']:+.3f}]" in latex
    html = run_cli("leaderboard", "--results", results, "--by", "sex", "--format", "html")
    assert html.exit_code == 4 and "markdown or latex" not in html.output and "latex" in html.output
    page = tmp_path / "report.html"
    assert run_cli("report", "--results", results, "--by", "sex", "--by", "sex+view", "--out", page).exit_code == 0
    section = page.read_text(encoding="utf-8").split("<section id='subgroups'>", 1)[1].split("</section>", 1)[0]
    assert "Classification by sex (test split)" in section and "Localization by sex+view (boxes split)" in section
    female_html = next(tr for tr in section.split("<tr>") if "<td class='text'>F</td>" in tr)
    assert f"{f['auroc_mean']:.3f}" in female_html
    assert f"{f['auroc_ci_low']:.3f}-{f['auroc_ci_high']:.3f}" in female_html
    assert f"<b>{gap['gap']:+.3f}" in section
    refused = run_cli("report", "--results", results, "--by", "age", "--out", tmp_path / "no.html")
    assert refused.exit_code == 4 and "give bin edges" in refused.output and not (tmp_path / "no.html").exists()
    bad = run_cli("leaderboard", "--results", results, "--by", "age")
    assert bad.exit_code == 4 and "give bin edges" in bad.output and len(bad.output.strip().splitlines()) == 1

    # a cell run before covariates were saved is named in one line, not dropped silently
    CellArtifacts.of(results, cell_id).covariates.unlink()
    old = run_cli("leaderboard", "--results", results, "--by", "sex")
    assert old.exit_code == 0
    lines = [line for line in old.output.splitlines() if cell_id in line]
    assert len(lines) == 1 and "without covariates" in lines[0]
    exported = run_cli("leaderboard", "--results", results, "--by", "sex", "--format", "json")
    assert json.loads(exported.stdout) == [] and "without covariates" in exported.stderr
