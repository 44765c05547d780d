"""Leaderboard analysis outputs on a small synthetic store: calibration columns, DeLong per class,
published baselines as reference rows, and the LaTeX export."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from rich.console import Console

from cxrbench import cli as cli_module
from cxrbench import reporting
from cxrbench.baselines import SPLITS, load_baselines, parse_baselines, table_version
from cxrbench.calibration import calibration_metrics
from cxrbench.delong import delong_test, holm
from cxrbench.errors import ConfigError
from cxrbench.metrics import classification_metrics
from cxrbench.records import CellAxes, CellResult, Provenance
from cxrbench.reporting.latex import escape, latex_tables
from cxrbench.store import ResultsStore

CLASSES = ["Effusion", "Mass", "Pleural_Thickening"]
N = 240
EVALUATION = {"bootstrap": 40, "bootstrap_seed": 3, "ci": 0.9}


@pytest.fixture
def data():
    rng = np.random.default_rng(11)
    labels = (rng.random((N, len(CLASSES))) < 0.35).astype(np.float32)
    labels[:30, 1] = np.nan
    patients = np.asarray([f"p{i // 3}" for i in range(N)])  # three images per patient
    good = np.clip(0.55 * labels + 0.45 * rng.random(labels.shape), 0, 1)
    good = np.nan_to_num(good, nan=0.5)
    weak = np.clip(0.15 * np.nan_to_num(labels) + 0.85 * rng.random(labels.shape), 0, 1)
    return labels, patients, {"aaaagood0000": good, "bbbbweak0000": weak}


def build_store(root, labels, patients, cells, dataset="nih"):
    store = ResultsStore(root)
    store.register_grid("syn", {"name": "syn"}, list(cells))
    for i, (cell_id, scores) in enumerate(cells.items()):
        metrics = classification_metrics(labels, scores, CLASSES, groups=patients, n_boot=20)
        store.write_result("syn", CellResult(
            cell_id=cell_id, grid="syn", axes=CellAxes(dataset=dataset, backbone=f"net_{i}", head="avg", seed=0),
            config={}, status="ok", metrics=metrics, localizations=(),
            provenance=Provenance(evaluation=dict(EVALUATION)),
            info={"parameters": 1000, "train_images_per_s": 1.0, "inference_images_per_s": 1.0}))
        folder = store.cell_dir(cell_id)
        folder.mkdir(parents=True)
        np.savez(folder / "predictions.npz", ids=np.asarray([f"img{j}" for j in range(N)]), patient_ids=patients,
                 labels=labels, scores=scores.astype(np.float32), classes=np.asarray(CLASSES))
    store.close()
    return root


@pytest.fixture
def store_root(tmp_path, data):
    labels, patients, cells = data
    return build_store(tmp_path / "results", labels, patients, cells)


@pytest.fixture
def cli(run_cli, monkeypatch):
    monkeypatch.setattr(cli_module, "console", Console(width=400, color_system=None))
    return run_cli


def _json(cli, root, *args):
    result = cli("leaderboard", "--results", root, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# --------------------------------------------------------------------------- calibration columns


def test_calibration_columns_come_from_the_saved_predictions(cli, store_root, data):
    labels, patients, cells = data
    records = {r["cell_id"]: r for r in _json(cli, store_root)}
    for cell_id, scores in cells.items():
        expected = calibration_metrics(labels, scores.astype(np.float32), CLASSES, groups=patients, **{
            "n_boot": EVALUATION["bootstrap"], "seed": EVALUATION["bootstrap_seed"], "ci": EVALUATION["ci"]})
        got = records[cell_id]["metrics"]
        for key in ("ece", "brier", "ece_ci_low", "ece_ci_high", "brier_ci_low", "ece/Mass", "brier_ci_high/Effusion"):
            assert got[key] == pytest.approx(expected[key]), key
    assert records["aaaagood0000"]["metrics"]["brier"] < records["bbbbweak0000"]["metrics"]["brier"]
    table = cli("leaderboard", "--results", store_root).output
    header = next(line for line in table.splitlines() if "AUROC" in line and "ECE" in line)
    assert "Brier" in header
    by_brier = _json(cli, store_root, "--sort", "brier")
    assert [r["cell_id"] for r in by_brier] == ["aaaagood0000", "bbbbweak0000"]  # lower is better


def test_a_cell_without_predictions_gets_no_calibration_columns(store_root):
    (store_root / "cells" / "bbbbweak0000" / "predictions.npz").unlink()
    with ResultsStore(store_root) as store:
        rows = reporting.add_calibration(reporting.rows_from_cells(store.cells("syn")), store_root)
    by_id = {r.cell_id: r for r in rows}
    assert "ece" in by_id["aaaagood0000"].metrics and "ece" not in by_id["bbbbweak0000"].metrics


# --------------------------------------------------------------------------- DeLong per class


def test_delong_option_prints_the_method_and_holm_adjusted_p_values(cli, store_root, data):
    labels, patients, cells = data
    out = cli("leaderboard", "--results", store_root, "--test", "delong").output
    assert "paired bootstrap over patients" in out  # the mean AUROC stays the bootstrap
    assert "DeLong's test clustered by patient (Obuchowski 1997)" in out and "Holm-adjusted over 3 classes" in out
    expected = [delong_test(labels[:, j], cells["aaaagood0000"][:, j].astype(np.float32),
                            cells["bbbbweak0000"][:, j].astype(np.float32), groups=patients) for j in range(3)]
    adjusted = holm([e.p for e in expected])
    for name, e, p_holm in zip(CLASSES, expected, adjusted, strict=True):
        line = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
        assert f"{e.diff:+.4f}" in line and f"{p_holm:.3g}" in line
    assert "Per-class DeLong" not in cli("leaderboard", "--results", store_root).output  # bootstrap by default


def test_delong_comparison_record(store_root):
    with ResultsStore(store_root) as store:
        comparison = reporting.delong_comparison(reporting.rows_from_cells(store.cells("syn")), store_root)
    assert comparison.best == "aaaagood0000" and comparison.method == "obuchowski"
    assert [t.name for t in comparison.classes] == CLASSES
    assert all(t.p_holm >= t.result.p for t in comparison.classes)
    better, worse = comparison.wins()
    assert set(better) == set(CLASSES) and worse == []  # the strong model wins every class


# --------------------------------------------------------------------------- published baselines


def test_the_shipped_table_loads_with_a_source_and_split_per_row():
    baselines = load_baselines()
    assert table_version() >= 1 and len(baselines) >= 5
    keys = {b.key for b in baselines}
    assert {"chexnet2017", "wang2017-x14"} <= keys
    for base in baselines:
        assert base.split in SPLITS and base.dataset == "nih" and base.values
        for metric in {k.split("/")[0] for k in base.values}:
            assert base.source(metric), (base.key, metric)
            if base.split != "official":
                assert base.caveat(metric), (base.key, metric)
        assert all(0.0 <= v <= 1.0 for v in base.values.values())
    chexnet = next(b for b in baselines if b.key == "chexnet2017")
    assert chexnet.values["auroc/Pneumonia"] == pytest.approx(0.7680) and chexnet.split == "random"
    wang = next(b for b in baselines if b.key == "wang2017-x14")
    assert wang.split == "official" and wang.values["auroc/Hernia"] == pytest.approx(0.8717)
    assert wang.values["acc_iobb@0.5/Cardiomegaly"] == pytest.approx(0.9452)


@pytest.mark.parametrize("row, fragment", [
    ("b,m,nih,random,auroc,Mass,0.8,src,T1,", "needs a caveat"),
    ("b,m,nih,somewhere,auroc,Mass,0.8,src,T1,x", "split must be"),
    ("b,m,nih,official,auroc,Mass,0.8,,T1,", "every column"),
    ("b,m,nih,official,nonsense,Mass,0.8,src,T1,", "not in the catalogue"),
    ("b,m,nih,official,auroc,Mass,1.8,src,T1,", "outside [0, 1]"),
])
def test_a_malformed_table_row_is_named(row, fragment):
    text = "# baselines, version 3\nbaseline,model,dataset,split,metric,class,value,source,table,caveat\n" + row
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        parse_baselines(text, "x.csv")
    assert "x.csv:3" in str(info.value)


def test_baselines_are_shown_as_references_and_never_ranked(cli, store_root):
    out = cli("leaderboard", "--results", store_root, "--baselines").output
    assert "Published baselines (references: not ranked" in out
    ref_line = next(line for line in out.splitlines() if "CheXNet (DenseNet-121)" in line)
    assert "0.864" in ref_line and "0.868" in ref_line and "0.806" in ref_line  # Effusion, Mass, P. thickening
    ranked = [line for line in out.splitlines() if re.match(r"│ \d+ ", line)]
    assert len(ranked) == 2 and not any("CheXNet" in line for line in ranked)
    records = _json(cli, store_root, "--baselines", "--sort", "auroc_mean")
    kinds = [r["kind"] for r in records]
    assert kinds[:2] == ["cell", "cell"] and set(kinds[2:]) == {"reference"}  # after the ranked cells, always
    chexnet = next(r for r in records if r["cell_id"] == "ref:chexnet2017")
    assert chexnet["status"] == "reference" and chexnet["columns"]["reference split"] == "random"
    assert chexnet["metrics"]["auroc_mean"] == pytest.approx((0.8638 + 0.8676 + 0.8062) / 3)
    assert "auroc_mean" not in next(r for r in records if r["cell_id"] == "ref:wang2017-x8")["metrics"]  # no P.T.
    # --top keeps the best cell only, and the references still follow it unranked
    top = _json(cli, store_root, "--baselines", "--top", "1")
    assert [r["kind"] for r in top][0] == "cell" and sum(r["kind"] == "cell" for r in top) == 1


def test_baselines_never_enter_the_significance_test(store_root):
    with ResultsStore(store_root) as store:
        rows = reporting.rows_from_cells(store.cells("syn"))
    refs = reporting.reference_rows(rows)
    perfect = [r.replace(metrics={**r.metrics, "auroc_mean": 0.999}) for r in refs]
    sig = reporting.significance([*perfect, *rows], store_root)
    assert sig.best == "aaaagood0000" and sig.next == "bbbbweak0000"


def test_no_baseline_matches_another_dataset(cli, tmp_path, data):
    labels, patients, cells = data
    root = build_store(tmp_path / "other", labels, patients, cells, dataset="phantom")
    out = cli("leaderboard", "--results", root, "--baselines").output
    assert "No published baseline matches" in out
    assert all(r["kind"] == "cell" for r in _json(cli, root, "--baselines"))


# --------------------------------------------------------------------------- LaTeX


def test_latex_export_is_booktabs_with_the_best_bold(cli, store_root):
    result = cli("leaderboard", "--results", store_root, "--format", "latex")
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.count(r"\toprule") == 2 and text.count(r"\midrule") == 2 and text.count(r"\bottomrule") == 2
    assert r"Pleural\_Thickening" in text and "Pleural_Thickening" not in text.replace(r"Pleural\_Thickening", "")
    records = {r["cell_id"]: r for r in _json(cli, store_root)}
    good, weak = records["aaaagood0000"]["metrics"], records["bbbbweak0000"]["metrics"]
    half = (good["auroc_ci_high"] - good["auroc_ci_low"]) / 2
    assert rf"\textbf{{{good['auroc_mean']:.3f}}} $\pm$ {half:.3f}" in text
    assert rf"\textbf{{{good['brier']:.3f}}}" in text  # lower Brier is better: the good model's is bold
    assert f"{weak['auroc_mean']:.3f} $\\pm$" in text and rf"\textbf{{{weak['auroc_mean']:.3f}}}" not in text
    assert r"90\% CI" in text  # the cells' evaluation.ci, escaped
    _check_structure(text)
    interval = cli("leaderboard", "--results", store_root, "--format", "latex", "--ci-style", "interval").output
    assert rf"\textbf{{{good['auroc_mean']:.3f}}} [{good['auroc_ci_low']:.3f}, {good['auroc_ci_high']:.3f}]" in interval
    assert r"$\pm$" not in interval.split("tab:cxrbench-per-class-auroc")[0]


def _check_structure(text):
    """Balanced braces (escaped ones aside) and, in every tabular, as many cells per row as columns."""
    bare = text.replace(r"\{", "").replace(r"\}", "")
    assert bare.count("{") == bare.count("}")
    tables = re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", text, flags=re.S)
    assert len(tables) >= 2
    for spec, body in tables:
        for line in body.splitlines():
            if line.endswith(r"\\") and not line.startswith(r"\multicolumn"):
                assert line.count(" & ") == len(spec) - 1, line


def test_latex_reference_rows_are_marked_and_never_bold(cli, store_root):
    text = cli("leaderboard", "--results", store_root, "--format", "latex", "--baselines").output
    _check_structure(text)
    assert "Published baselines (reference, not ranked)" in text
    summary, per_class = text.split("tab:cxrbench-per-class-auroc")
    ref = next(line for line in summary.splitlines() if line.startswith("ref.") and "CheXNet" in line)
    assert r"\textbf" not in ref and f"{(0.8638 + 0.8676 + 0.8062) / 3:.3f}" in ref  # mean over the shared classes
    ref = next(line for line in per_class.splitlines() if line.startswith("ref.") and "CheXNet" in line)
    assert r"\textbf" not in ref and "0.868" in ref and "0.806" in ref
    assert r"arXiv:1711.05225v3, Table 2" in text  # the source under the table


def test_latex_escapes_special_characters_and_refuses_unknown_styles():
    assert escape(r"a_b&c%d$e#f{g}h~i^j\k") == \
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    with pytest.raises(ValueError, match="ci_style"):
        latex_tables([], ci_style="brackets")
    assert "% no results" in latex_tables([])


def test_latex_group_rows_show_mean_and_std(store_root):
    with ResultsStore(store_root) as store:
        rows = reporting.group_for_tables(reporting.rows_from_cells(store.cells("syn")), ["head"])
    text = latex_tables(rows)
    mean, std = rows[0].metrics["auroc_mean"], rows[0].spread["auroc_mean"]
    assert rf"\textbf{{{mean:.3f}}} $\pm$ {std:.3f}" in text and "mean $\\pm$ std over the group" in text
    assert not math.isnan(std)


def test_reference_rows_carry_the_localization_metrics_the_cells_report():
    cell = reporting.LeaderboardRow(
        kind="cell", cell_id="c1", grid="g", dataset="nih[classes=nih8]", backbone="b", head="h", localizer="cam",
        seed=0, status="ok", metrics={"auroc_mean": 0.8, "auroc/Mass": 0.8, "auroc/Nodule": 0.7, "acc_iobb@0.5": 0.3})
    refs = {r.cell_id: r for r in reporting.reference_rows([cell])}
    wang = refs["ref:wang2017-x14"]
    assert wang.metrics["acc_iobb@0.5/Mass"] == pytest.approx(0.3058) and "acc_iobb@0.1/Mass" not in wang.metrics
    assert wang.metrics["auroc_mean"] == pytest.approx((0.6933 + 0.6687) / 2)
    assert "acc_iobb@0.5/Mass" not in refs["ref:chexnet2017"].metrics  # CheXNet reports no localization
    assert reporting.reference_localization_table(list(refs.values())) is not None
