"""A cell's numbers always come from one model: no silent retrain, no retrain after a finished training."""

from __future__ import annotations

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.store import ResultsStore


def _grid(tiny_grid_dict, localizers):
    tiny_grid_dict.update(heads=["avg"], localizers=localizers)
    return tiny_grid_dict


def _no_training(monkeypatch):
    import cxrbench.training

    def refuse(*args, **kwargs):
        raise AssertionError("the cell was trained again")

    monkeypatch.setattr(cxrbench.training, "train_model", refuse)


def test_a_missing_checkpoint_fails_the_new_localizer_instead_of_retraining(toy_pm, toy_registry, tiny_grid_dict,
                                                                            tmp_path, monkeypatch):
    grid = parse_grid(_grid(tiny_grid_dict, ["cam"]), toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        (cell,) = store.cells(grid.name)
        store.artifacts(cell.cell_id).best.unlink()
        _no_training(monkeypatch)
        more = parse_grid(_grid(tiny_grid_dict, ["cam", "gradcam"]), toy_registry)
        run_grid(more, toy_pm, store)
        (again,) = store.cells(grid.name)
    assert again.ok and again.metrics == cell.metrics  # the recorded AUROC is untouched
    new = again.localizer("gradcam")
    assert new is not None and not new.ok
    assert "best.pt is missing" in new.error and "--force" in new.error
    assert again.localizer("cam").ok


def test_a_cell_interrupted_after_training_only_re_evaluates(toy_pm, toy_registry, tiny_grid_dict, tmp_path,
                                                             monkeypatch):
    import cxrbench.pipeline

    grid = parse_grid(_grid(tiny_grid_dict, ["cam"]), toy_registry)
    real = cxrbench.pipeline._CellRun.classify

    def interrupted(self, model, info):
        raise RuntimeError("simulated failure while predicting the test split")

    monkeypatch.setattr(cxrbench.pipeline._CellRun, "classify", interrupted)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        (failed,) = store.cells(grid.name)
        assert not failed.ok
        best = store.artifacts(failed.cell_id).best
        assert best.exists()
        monkeypatch.setattr(cxrbench.pipeline._CellRun, "classify", real)
        _no_training(monkeypatch)
        run_grid(grid, toy_pm, store, rerun_failed=True)
        (cell,) = store.cells(grid.name)
    assert cell.ok and cell.info["reused_checkpoint"] is True
    assert cell.info["epochs_run"] == tiny_grid_dict["train"]["epochs"] and cell.info["history"]
    assert any("without retraining" in w for w in cell.warnings)


def test_force_retrains_even_with_a_finished_checkpoint(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    grid = parse_grid(_grid(tiny_grid_dict, []), toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        run_grid(grid, toy_pm, store, force=True)
        (cell,) = store.cells(grid.name)
    assert "reused_checkpoint" not in cell.info


def test_an_empty_test_split_fails_the_cell(toy_pm, toy_registry, tiny_grid_dict, tmp_path, monkeypatch):
    from tests.plugins import toy

    real = toy.ToyDataset.split

    def no_test(self, name):
        split = real(self, name)
        return split.subset(split.labels[:0, 0].astype(int)) if name == "test" else split

    monkeypatch.setattr(toy.ToyDataset, "split", no_test)
    grid = parse_grid(_grid(tiny_grid_dict, []), toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        (cell,) = store.cells(grid.name)
    assert not cell.ok and "empty test split" in cell.error


def test_validation_is_predicted_once_and_reused_after_training(toy_pm, toy_registry, tiny_grid_dict, tmp_path,
                                                                monkeypatch):
    """The kept epoch's validation scores are the trained model's: reusing them changes no number."""
    import dataclasses

    import cxrbench.training

    grid = parse_grid(_grid(tiny_grid_dict, []), toy_registry)
    with ResultsStore(tmp_path / "reused") as store:
        run_grid(grid, toy_pm, store)
        (reused,) = store.cells(grid.name)
    real = cxrbench.training.train_model
    monkeypatch.setattr(cxrbench.training, "train_model",
                        lambda *a, **k: dataclasses.replace(real(*a, **k), val_scores=None))
    with ResultsStore(tmp_path / "predicted") as store:
        run_grid(grid, toy_pm, store)
        (predicted,) = store.cells(grid.name)
    assert reused.info["val_scores_from_training"] is True and "val_scores_from_training" not in predicted.info
    assert reused.metrics == predicted.metrics  # cut-offs chosen on val: the same, to the bit


def test_max_eval_images_caps_every_split_but_train(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    tiny_grid_dict["train"].update(max_eval_images=5, max_steps_per_epoch=1)
    grid = parse_grid(_grid(tiny_grid_dict, ["cam"]), toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        (cell,) = store.cells(grid.name)
        predictions = __import__("numpy").load(store.artifacts(cell.cell_id).predictions)
    assert cell.ok and len(predictions["ids"]) == 5
    assert cell.localizations[0].metrics["loc_images"] <= 5
