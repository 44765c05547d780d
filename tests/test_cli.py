import json

import pytest
import yaml


@pytest.fixture
def grid_file(tmp_path, tiny_grid_dict):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict))
    return path


def test_help_teaches(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    assert "cxrbench run --grid" in result.output
    assert "--dry-run" in run_cli("run", "--help").output


def test_validate_ok_and_errors(run_cli, grid_file, tmp_path):
    result = run_cli("validate", grid_file)
    assert result.exit_code == 0, result.output
    assert "2 cells" in result.output
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(grid_file.read_text())
    data["backbones"] = ["tiny", "densnet121"]
    bad.write_text(yaml.safe_dump(data))
    result = run_cli("validate", bad)
    assert result.exit_code == 4
    assert "backbones[1]: unknown backbone 'densnet121'; did you mean 'densenet121'?" in result.output
    assert "Traceback" not in result.output
    # the --grid spelling of run / prepare / audit works too; none, or two different files, is one line
    assert run_cli("validate", "--grid", grid_file).output == run_cli("validate", grid_file).output
    for args, message in ((("validate",), "give the grid file to check"),
                          (("validate", grid_file, "--grid", bad), "two grid files given")):
        refused = run_cli(*args)
        assert refused.exit_code == 4 and message in refused.output
        assert len(refused.output.strip().splitlines()) == 1


def test_usage_errors_exit_4(run_cli, tmp_path):
    assert run_cli("run", "--grid", tmp_path / "missing.yaml").exit_code == 4
    assert run_cli("run").exit_code == 4  # missing --grid
    assert run_cli("leaderboard", "--results", tmp_path / "nothing").exit_code == 4
    assert run_cli("list", "gadgets").exit_code == 4


def test_dry_run_lists_cells(run_cli, grid_file, tmp_path):
    result = run_cli("run", "--grid", grid_file, "--results", tmp_path / "r", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("to train") == 3  # 2 cells, and the summary line
    assert "2 cells: 2 to train, 0 done" in result.output
    assert not (tmp_path / "r" / "cxrbench.sqlite").exists()


def test_executor_override_takes_a_name_or_a_yaml_mapping(run_cli, grid_file, tmp_path):
    dry = ("run", "--grid", grid_file, "--results", tmp_path / "r", "--dry-run")
    assert "executor: process" in run_cli(*dry, "--executor", "process").output
    ok = run_cli(*dry, "--executor", "{name: process, options: {workers: 2}}")
    assert ok.exit_code == 0 and "executor: process" in ok.output
    for bad, message in [("{name: process, options: {workerz: 2}}", "--executor.options.workerz"),
                         ("{name: process", "--executor:"), ("procss", "did you mean 'process'")]:
        result = run_cli(*dry, "--executor", bad)
        assert result.exit_code == 4 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_list_and_plugins(run_cli):
    result = run_cli("list", "heads")
    assert result.exit_code == 0
    for name in ("avg", "max", "lse", "pcam"):
        assert name in result.output
    result = run_cli("plugins")
    assert result.exit_code == 0
    assert "toy" in result.output and "third-party" in result.output and "built-in" in result.output


def test_run_then_leaderboard_then_resume(run_cli, grid_file, tmp_path):
    results = tmp_path / "r"
    result = run_cli("run", "--grid", grid_file, "--results", results, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "Classification leaderboard" in result.output
    out = run_cli("leaderboard", "--results", results, "--grid", "tiny", "--format", "json")
    records = json.loads(out.output)
    assert len(records) == 4  # 2 cells x 2 localizers
    for r in records:
        assert {"cell_id", "grid", "dataset", "backbone", "head", "localizer", "seed", "status", "metrics"} <= set(r)
        assert r["status"] == "ok"
        assert {"auroc_mean", "auroc/Blob", "auroc/Bar", "iou_mean", "iobb_mean"} <= set(r["metrics"])
    csv = run_cli("leaderboard", "--results", results, "--format", "csv").output
    assert csv.splitlines()[0].startswith("cell_id,grid,dataset,backbone,head,localizer,seed,status")
    md = run_cli("leaderboard", "--results", results, "--format", "markdown").output
    assert md.startswith("| cell_id |")
    again = run_cli("run", "--grid", grid_file, "--results", results, "--no-progress")
    assert again.exit_code == 0
    assert "0 ok, 0 failed, 2 already done" in again.output
    assert run_cli("leaderboard", "--results", results, "--grid", "nope").exit_code == 4


def test_failing_cell_is_recorded_and_grid_goes_on(run_cli, tmp_path, tiny_grid_dict):
    tiny_grid_dict["backbones"] = ["tiny", "exploding"]
    tiny_grid_dict["heads"] = ["avg"]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    result = run_cli("run", "--grid", path, "--results", results, "--no-progress")
    assert result.exit_code == 1
    assert "1 ok, 1 failed" in result.output
    records = json.loads(run_cli("leaderboard", "--results", results, "--format", "json").output)
    failed = [r for r in records if r["status"] == "failed"]
    assert failed and "boom in forward" in failed[0]["error"]
    shown = run_cli("show", "--results", results, failed[0]["cell_id"][:8])
    assert "Traceback" in shown.output and "boom in forward" in shown.output


def test_a_failed_localizer_makes_the_run_exit_1(run_cli, tmp_path, tiny_grid_dict):
    tiny_grid_dict["heads"] = ["avg"]
    # a layer the model does not have: the localizer fails when it runs (not a pair known impossible)
    tiny_grid_dict["localizers"] = ["cam", {"name": "gradcam", "options": {"target_layer": "backbone.nowhere"}}]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict))
    result = run_cli("run", "--grid", path, "--results", tmp_path / "r", "--no-progress")
    assert result.exit_code == 1, result.output
    assert "1 ok, 0 failed, 0 already done, 1 localizer runs failed" in result.output


def test_help_keeps_the_typical_session_lines(run_cli):
    out = run_cli("--help").output
    assert "\\b" not in out and "\b" not in out  # click's no-rewrap marker is consumed, not printed
    assert "\n    cxrbench validate grids/quickstart.yaml\n" in out


def test_interrupted_run_exits_2_and_keeps_finished_cells(run_cli, grid_file, tmp_path, monkeypatch):
    from cxrbench import pipeline as runner

    real, calls = runner.run_cell_core, []

    def second_cell_interrupted(task, reporter):
        calls.append(task.cell.cell_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task, reporter)

    monkeypatch.setattr(runner, "run_cell_core", second_cell_interrupted)
    results = tmp_path / "r"
    result = run_cli("run", "--grid", grid_file, "--results", results, "--no-progress")
    assert result.exit_code == 2
    assert "interrupted" in result.output and "Traceback" not in result.output
    from cxrbench.store import ResultsStore

    with ResultsStore(results) as store:
        assert store.statuses() == {calls[0]: "ok"}  # the interrupted cell left no record
    monkeypatch.setattr(runner, "run_cell_core", real)
    again = run_cli("run", "--grid", grid_file, "--results", results, "--no-progress")
    assert again.exit_code == 0 and "1 ok, 0 failed, 1 already done" in again.output


def test_prepare_refuses_bad_options_before_decoding(run_cli, grid_file, tmp_path):
    cache = tmp_path / "cache"
    result = run_cli("prepare", "--grid", grid_file, "--cache", cache, "--workers", 0)
    assert result.exit_code == 4 and "--workers" in result.output
    result = run_cli("prepare", "--grid", grid_file, "--cache", cache, "--split", "train", "--split", "nope")
    assert result.exit_code == 4
    assert "dataset 'toy' has no split 'nope' (splits: " in result.output
    assert not cache.exists()  # nothing decoded for the valid split listed first


def test_run_prepares_the_cache_first_and_the_numbers_do_not_change(run_cli, tiny_grid_dict, tmp_path):
    """``prepare: true`` (the default) decodes every split once into results/cache before any cell."""
    import json

    import yaml

    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    records = {}
    for prepare in (True, False):
        grid = tmp_path / f"grid-{prepare}.yaml"
        grid.write_text(yaml.safe_dump({**tiny_grid_dict, "prepare": prepare}))
        results = tmp_path / f"r-{prepare}"
        result = run_cli("run", "--grid", grid, "--results", results, "--no-progress")
        assert result.exit_code == 0, result.output
        cached = sorted(p.parent.name for p in (results / "cache").rglob("meta.json")) if prepare else []
        if prepare:
            assert len(cached) == 4  # train, val, test, boxes of the toy dataset
            metas = [json.loads(p.read_text()) for p in (results / "cache").rglob("meta.json")]
            assert all(m.get("complete") for m in metas)
        else:
            assert not (results / "cache").exists() or not list((results / "cache").rglob("meta.json"))
        out = run_cli("leaderboard", "--results", results, "--format", "json")
        records[prepare] = [(r["metrics"].get("auroc_mean"), r["metrics"].get("iou_mean"))
                            for r in json.loads(out.output)]
    assert records[True] == records[False]  # the cache holds exactly the images a cell would decode


def test_show_prints_the_training_history_and_each_localizers_scores_and_failure(run_cli, tmp_path, tiny_grid_dict):
    tiny_grid_dict["heads"] = ["avg"]
    tiny_grid_dict["localizers"] = ["cam", {"name": "gradcam", "options": {"target_layer": "backbone.nowhere"}}]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict))
    run_cli("run", "--grid", path, "--results", tmp_path / "r", "--no-progress")
    from cxrbench.store import ResultsStore

    with ResultsStore(tmp_path / "r") as store:
        (cell,) = store.cells()
    out = run_cli("show", cell.cell_id[:6], "--results", tmp_path / "r").output
    epochs = tiny_grid_dict["train"]["epochs"]
    assert f"training: {epochs} epochs, kept epoch {cell.info['best_epoch']}" in out and "kept" in out
    assert "val AUROC" in out and "MaxBoxAccV2" in out
    assert "failed: " in out and "nowhere" in out  # the failed localizer's one-line reason
    # the configuration as settings, and every class with its interval and operating point
    assert "configuration" in out and f"epochs={epochs}" in out and "torch=" in out
    flat = " ".join(out.split())
    for name in cell.info["classes"]:
        m = cell.metrics
        assert (f"{name} │ {m[f'auroc/{name}']:.3f} │ {m[f'auroc_ci_low/{name}']:.3f}-"
                f"{m[f'auroc_ci_high/{name}']:.3f} │ {m[f'threshold/{name}']:.3f}") in flat
    record = json.loads(run_cli("show", cell.cell_id[:6], "--results", tmp_path / "r", "--json").output)
    assert record["cell_id"] == cell.cell_id and record["metrics"]["auroc_mean"] == pytest.approx(
        cell.metrics["auroc_mean"])
    assert [loc["name"] for loc in record["localizations"]] == ["cam", "gradcam"]
    assert record["info"]["best_epoch"] == cell.info["best_epoch"]


def test_dry_run_after_adding_a_localizer_says_nothing_retrains(run_cli, tmp_path, tiny_grid_dict):
    tiny_grid_dict.update(heads=["avg", "max"], localizers=["cam"])
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict))
    assert run_cli("run", "--grid", path, "--results", tmp_path / "r", "--no-progress").exit_code == 0
    tiny_grid_dict["localizers"] = ["cam", "gradcam"]
    path.write_text(yaml.safe_dump(tiny_grid_dict))
    out = run_cli("run", "--grid", path, "--results", tmp_path / "r", "--dry-run").output
    assert out.count("trained; to evaluate: gradcam") == 2 and out.count("to train") == 1
    assert "2 cells: 0 to train, 2 localizer runs on 2 trained cells (no retraining), 0 done" in out
