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
