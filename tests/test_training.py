"""The training loop and the classifier: losses, optimisers, schedules, selection, failures, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import store_records
from sklearn.metrics import roc_auc_score

from cxrbench import training
from cxrbench.config import ComponentSpec, TrainSpec, parse_grid
from cxrbench.data import Augment, BatchLoader, load_split, normalise
from cxrbench.driver import run_grid
from cxrbench.errors import CellError
from cxrbench.events import Progress
from cxrbench.interfaces import Classifier
from cxrbench.options import parse_options
from cxrbench.pipeline import open_dataset as build_dataset
from cxrbench.store import ResultsStore
from cxrbench.training import (
    EpochLoss,
    TrainState,
    make_optimizer,
    make_scheduler,
    masked_bce,
    predict,
    train_model,
)

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- fixtures


def component(registry, kind, name, options=None):
    cls = registry.get(kind, name)
    return ComponentSpec(kind, name, cls, parse_options(cls.Options, options or {}, "x", name))


@pytest.fixture
def toy(toy_registry):
    """The toy dataset's prepared splits and a factory of identical fresh tiny models."""
    dataset = build_dataset(component(toy_registry, "dataset", "toy", {"num_images": 64, "image_size": 32}))
    splits = {name: load_split(dataset, name, 32) for name in ("train", "val", "test")}

    def fresh(head="avg", width=4):
        torch.manual_seed(0)
        return Classifier.build(component(toy_registry, "backbone", "tiny", {"width": width}),
                           component(toy_registry, "head", head), dataset.classes)

    return splits, fresh


def states_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


# --------------------------------------------------------------------------- losses


def targets_with_unknowns(seed=0, shape=(12, 5)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    targets = (torch.rand(shape, generator=g) < 0.3).float()
    targets[torch.rand(shape, generator=g) < 0.25] = float("nan")
    return logits, targets


def test_masked_bce_is_torch_bce_on_known_labels_and_ignores_unknown():
    logits, targets = targets_with_unknowns()
    known = ~torch.isnan(targets)
    assert 0 < known.sum() < known.numel()

    x = logits.clone().requires_grad_(True)
    loss = masked_bce(x, targets)
    reference_x = logits.clone().requires_grad_(True)
    reference = F.binary_cross_entropy_with_logits(reference_x[known], targets[known])
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)

    loss.backward()
    reference.backward()
    assert torch.all(x.grad[~known] == 0)  # unknown labels pull the logit nowhere
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-6, atol=1e-8)


def test_masked_bce_ignored_entries_cannot_poison_the_loss():
    logits, targets = targets_with_unknowns(1)
    unknown = torch.isnan(targets)
    poisoned = logits.clone()
    poisoned[unknown] = float("inf")  # e.g. a diverged logit of a class this dataset does not label
    x = poisoned.requires_grad_(True)
    loss = masked_bce(x, targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, masked_bce(logits, targets))
    loss.backward()
    assert torch.all(x.grad[unknown] == 0) and torch.isfinite(x.grad).all()


def test_masked_bce_with_no_known_label_is_zero_not_nan():
    x = torch.randn(3, 2, requires_grad=True)
    loss = masked_bce(x, torch.full((3, 2), float("nan")))
    loss.backward()
    assert loss.item() == 0 and torch.all(x.grad == 0)
    assert masked_bce(x, torch.full((3, 2), float("nan")), balanced=True).item() == 0


def wcel_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """ChestX-ray8's W-CEL, element by element in Python floats, divided by |P| + |N|."""
    pos, neg = [], []
    for z, y in zip(logits.flatten().tolist(), targets.flatten().tolist(), strict=True):
        if math.isnan(y):
            continue
        p = 1 / (1 + math.exp(-z))
        (pos if y == 1 else neg).append((p, y))
    n_p, n_n = len(pos), len(neg)
    beta_p, beta_n = (n_p + n_n) / n_p, (n_p + n_n) / n_n
    total = beta_p * sum(-math.log(p) for p, _ in pos) + beta_n * sum(-math.log(1 - p) for p, _ in neg)
    return total / (n_p + n_n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_bce_is_chestxray8_wcel(seed):
    logits, targets = targets_with_unknowns(seed)
    got = masked_bce(logits, targets, balanced=True).item()
    assert got == pytest.approx(wcel_by_hand(logits, targets), rel=1e-5)
    # equivalently: mean loss over the positives + mean loss over the negatives
    known = ~torch.isnan(targets)
    per_label = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none")
    pos, neg = known & (targets == 1), known & (targets == 0)
    assert got == pytest.approx((per_label[pos].mean() + per_label[neg].mean()).item(), rel=1e-5)
    # the balancing is real: positives are rarer, so they weigh more than in plain BCE
    assert pos.sum() < neg.sum()
    assert got != pytest.approx(masked_bce(logits, targets).item(), rel=1e-3)


def test_weighted_bce_batch_without_positives_is_plain_bce():
    logits, targets = targets_with_unknowns(3)
    targets = torch.where(targets == 1, torch.zeros_like(targets), targets)  # only 0 and NaN left
    torch.testing.assert_close(masked_bce(logits, targets, balanced=True), masked_bce(logits, targets))


@pytest.mark.parametrize("loss, balanced", [("bce", False), ("weighted_bce", True)])
def test_train_model_uses_the_loss_the_spec_names(toy, monkeypatch, loss, balanced):
    splits, fresh = toy
    seen = []
    real = training.masked_bce

    def spy(logits, targets, **kwargs):
        seen.append(kwargs.get("balanced", False))
        return real(logits, targets, **kwargs)

    monkeypatch.setattr(training, "masked_bce", spy)
    train_model(fresh(), splits["train"], None, TrainSpec(epochs=1, batch_size=16, loss=loss), seed=0, device=CPU)
    assert seen and set(seen) == {balanced}


# --------------------------------------------------------------------------- optimisers and schedules


@pytest.mark.parametrize(
    "name, cls, extra",
    [
        ("adam", torch.optim.Adam, {"amsgrad": False}),  # the type tells L2 (Adam) from decoupled decay (AdamW)
        ("adamw", torch.optim.AdamW, {"amsgrad": False}),
        ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ],
)
def test_optimizer_is_the_one_the_spec_names(toy, name, cls, extra):
    _, fresh = toy
    model = fresh()
    for p in model.backbone.body[0].parameters():  # frozen parameters are not optimised
        p.requires_grad_(False)
    optimizer = make_optimizer(model, TrainSpec(optimizer=name, lr=3e-3, weight_decay=0.01))
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 3e-3 and group["weight_decay"] == 0.01
    for key, value in extra.items():
        assert group[key] == value, key
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in optimised for p in model.backbone.body[0].parameters())


def test_no_trainable_parameters_is_a_cell_error(toy):
    _, fresh = toy
    model = fresh().requires_grad_(False)
    with pytest.raises(CellError, match="no trainable parameters"):
        make_optimizer(model, TrainSpec())


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_train_model_steps_the_named_optimizer(toy, monkeypatch, name):
    splits, fresh = toy
    made = []
    real = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", lambda model, spec: made.append(real(model, spec)) or made[-1])
    model = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = TrainSpec(epochs=1, batch_size=16, optimizer=name, lr=0.01)
    train_model(model, splits["train"], None, spec, seed=0, device=CPU)
    assert len(made) == 1 and made[0].param_groups[0]["lr"] == 0.01
    assert type(made[0]).__name__.lower() == name
    assert not states_equal(before, model.state_dict())


@pytest.mark.parametrize(
    "schedule, options, expected",
    [
        ("none", {}, lambda e: 0.1),
        ("cosine", {}, lambda e: 0.1 * (1 + math.cos(math.pi * (e - 1) / 5)) / 2),
        ("step", {"step_size": 2, "step_gamma": 0.5}, lambda e: 0.1 * 0.5 ** ((e - 1) // 2)),
    ],
)
def test_learning_rate_follows_the_schedule(toy, schedule, options, expected):
    splits, fresh = toy
    spec = TrainSpec(epochs=5, batch_size=16, lr=0.1, optimizer="sgd", schedule=schedule, **options)
    outcome = train_model(fresh(), splits["train"], None, spec, seed=0, device=CPU)
    lrs = [h["lr"] for h in outcome.history]
    assert lrs == pytest.approx([expected(e) for e in range(1, 6)], rel=1e-9, abs=1e-12)
    if schedule == "cosine":
        scheduler = make_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), spec)
        assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 5


# --------------------------------------------------------------------------- selection and early stopping


def scripted_auroc(monkeypatch, model, values):
    """Replace the validation mean AUROC by ``values`` (one per epoch); snapshot the weights it judged."""
    snapshots = []
    it = iter(values)

    def fake(labels, scores):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(it)

    monkeypatch.setattr(training, "mean_auroc", fake)
    return snapshots


@pytest.mark.parametrize(
    "scores, patience, epochs_run, best_epoch",
    [
        ([0.6, 0.8, 0.7, 0.75, 0.9, 0.5], 2, 4, 2),  # epochs 3 and 4 do not beat 0.8: stop after 4
        ([0.5, 0.6, 0.55, 0.7, 0.65, 0.64, 0.9], 2, 6, 4),  # an improvement resets the count
        ([0.6, 0.8, 0.7, 0.75, 0.9, 0.5], None, 6, 5),  # no early stopping: all epochs, best kept
        ([0.7, 0.7, 0.6], 2, 3, 1),  # a tie is not an improvement
    ],
)
def test_best_epoch_by_val_auroc_and_early_stopping(toy, monkeypatch, scores, patience, epochs_run, best_epoch):
    splits, fresh = toy
    model = fresh()
    snapshots = scripted_auroc(monkeypatch, model, scores)
    spec = TrainSpec(epochs=len(scores), batch_size=16, lr=0.01, early_stopping=patience)
    outcome = train_model(model, splits["train"], splits["val"], spec, seed=0, device=CPU)
    assert outcome.epochs_run == epochs_run == len(snapshots)
    assert outcome.best_epoch == best_epoch
    assert [h["val_auroc_mean"] for h in outcome.history] == scores[:epochs_run]
    assert states_equal(model.state_dict(), snapshots[best_epoch - 1])  # the model holds the best epoch
    if best_epoch != epochs_run:
        assert not states_equal(model.state_dict(), snapshots[-1])


def test_undefined_val_auroc_never_beats_a_real_one(toy, monkeypatch):
    splits, fresh = toy
    model = fresh()
    snapshots = scripted_auroc(monkeypatch, model, [math.nan, 0.7, math.nan, 0.6])
    outcome = train_model(model, splits["train"], splits["val"], TrainSpec(epochs=4, batch_size=16), seed=0,
                          device=CPU)
    assert outcome.best_epoch == 2
    assert states_equal(model.state_dict(), snapshots[1])


@pytest.mark.parametrize("with_val, select_best", [(False, True), (True, False)])
def test_without_selection_the_last_epoch_is_kept(toy, with_val, select_best):
    splits, fresh = toy
    spec = TrainSpec(epochs=3, batch_size=16, lr=0.01, select_best=select_best, early_stopping=1)
    model = fresh()
    outcome = train_model(model, splits["train"], splits["val"] if with_val else None, spec, seed=0, device=CPU)
    assert outcome.epochs_run == 3 and outcome.best_epoch == 3
    assert all("val_auroc_mean" not in h for h in outcome.history)
    # same seed, same steps: the model is the one after the third epoch
    reference = fresh()
    train_model(reference, splits["train"], None, TrainSpec(epochs=3, batch_size=16, lr=0.01), seed=0, device=CPU)
    assert states_equal(model.state_dict(), reference.state_dict())


def test_recorded_val_auroc_is_the_models_real_auroc(toy):
    splits, fresh = toy
    model = fresh()
    outcome = train_model(model, splits["train"], splits["val"], TrainSpec(epochs=2, batch_size=16, lr=0.01),
                          seed=0, device=CPU)
    labels = splits["val"].split.labels
    scores = predict(model, splits["val"], 8, CPU)
    reference = np.mean([roc_auc_score(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])
    assert outcome.history[outcome.best_epoch - 1]["val_auroc_mean"] == pytest.approx(reference, abs=1e-12)
    assert max(h["val_auroc_mean"] for h in outcome.history) == pytest.approx(reference, abs=1e-12)


# --------------------------------------------------------------------------- failures


def poison_loss_at(monkeypatch, call, value):
    """Make the ``call``-th loss of the run ``value`` (NaN or inf), later ones finite again."""
    real = training.masked_bce
    count = [0]

    def poisoned(logits, targets, **kwargs):
        count[0] += 1
        loss = real(logits, targets, **kwargs)
        return loss + value if count[0] == call else loss

    monkeypatch.setattr(training, "masked_bce", poisoned)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_fails_with_the_reason(toy, monkeypatch, tmp_path, value):
    splits, fresh = toy
    poison_loss_at(monkeypatch, 3, value)  # 2 steps per epoch: the first step of epoch 2
    with pytest.raises(CellError, match=r"NaN or infinite in epoch 2"):
        train_model(fresh(), splits["train"], None, TrainSpec(epochs=3, batch_size=16), seed=0, device=CPU,
                    checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # the poisoned epoch was never saved as resumable


def test_non_finite_loss_fails_the_cell_in_a_grid(toy_pm, toy_registry, tiny_grid_dict, tmp_path, monkeypatch):
    poison_loss_at(monkeypatch, 1, math.nan)
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path / "results") as store:
        summary = run_grid(grid, toy_pm, store)
        record = store_records(store, grid.name)[0]
    assert summary.failed == 1 and record["status"] == "failed"
    assert record["error"].startswith("CellError: training loss became NaN or infinite in epoch 1")


def test_empty_training_split_is_a_cell_error(toy):
    splits, fresh = toy
    empty = type(splits["train"])("train", splits["train"].split, splits["train"].images[:0],
                                  splits["train"].boxes, splits["train"].source_sizes[:0])
    with pytest.raises(CellError, match="empty"):
        train_model(fresh(), empty, None, TrainSpec(epochs=1), seed=0, device=CPU)


def test_device_and_precision_settings():
    assert training.resolve_device(TrainSpec(device="cpu")) == CPU
    assert training.amp_dtype(TrainSpec(), CPU) is None  # mixed precision is a CUDA default only
    assert training.amp_dtype(TrainSpec(amp=True), CPU) is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(CellError, match="no CUDA device"):
            training.resolve_device(TrainSpec(device="cuda"))


# --------------------------------------------------------------------------- checkpoints


def test_cell_checkpoint_has_weights_and_resolved_config(toy_pm, toy_registry, tiny_grid_dict, tmp_path):
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path / "results") as store:
        run_grid(grid, toy_pm, store)
        record = store.cells(grid.name)[0]
        cell_dir = store.cell_dir(record.cell_id)
    assert record.status == "ok"
    state = torch.load(cell_dir / "best.pt", map_location="cpu", weights_only=True)
    assert state["config"] == record.config
    train = state["config"]["train"]
    assert train["epochs"] == 2 and train["optimizer"] == "adam" and train["loss"] == "bce"  # defaults resolved
    assert state["classes"] == ["Blob", "Bar"]
    # the weights reproduce the stored test predictions
    model = Classifier.build(grid.backbones[0], grid.heads[0], state["classes"])
    model.load_state_dict(state["model"])
    dataset = build_dataset(grid.datasets[0])
    stored = np.load(cell_dir / "predictions.npz")
    np.testing.assert_allclose(predict(model, load_split(dataset, "test", 32), 8, CPU), stored["scores"], atol=1e-6)


def test_epoch_checkpoint_loads_with_weights_only(toy, tmp_path):
    splits, fresh = toy
    model = fresh()
    spec = TrainSpec(epochs=2, batch_size=16, schedule="cosine", early_stopping=5)
    outcome = train_model(model, splits["train"], splits["val"], spec, seed=0, device=CPU, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["best_epoch"] == outcome.best_epoch
    assert state["history"] == outcome.history
    assert state["scheduler"]["T_max"] == 2
    assert states_equal(state["best_model"], model.state_dict())
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


# --------------------------------------------------------------------------- augmentation


def test_augmentation_options_reach_the_training_loader_only(toy, monkeypatch):
    splits, fresh = toy
    loaders = []

    class Recording(BatchLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            loaders.append(self)

    calls = [0]
    real_call = Augment.__call__

    def counting(self, x, generator):
        calls[0] += 1
        return real_call(self, x, generator)

    monkeypatch.setattr(training, "BatchLoader", Recording)
    monkeypatch.setattr(Augment, "__call__", counting)
    spec = TrainSpec(epochs=2, batch_size=16, flip=True, affine_degrees=5, affine_scale=0.1, affine_translate=0.05,
                     brightness=0.1, contrast=0.2)
    model = fresh()
    train_model(model, splits["train"], splits["val"], spec, seed=0, device=CPU)
    train_loader, *eval_loaders = loaders
    assert train_loader.augment == Augment(True, 5, 0.1, 0.05, 0.1, 0.2) and train_loader.shuffle
    assert len(eval_loaders) == 2 and all(loader.augment is None for loader in eval_loaders)
    assert calls[0] == 2 * 2  # once per training batch, never while validating

    # prediction sees exactly the normalised images: no augmentation at evaluation
    images = torch.from_numpy(np.asarray(splits["val"].images))
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(normalise(images))).numpy()
    np.testing.assert_allclose(predict(model, splits["val"], 16, CPU), expected, atol=1e-6)


@pytest.mark.parametrize("field", ["flip", "degrees", "scale", "translate", "brightness", "contrast"])
def test_each_augmentation_option_changes_training_batches(field):
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert not Augment().active
    augment = Augment(**{field: True if field == "flip" else 0.3})
    assert augment.active
    out = augment(x.clone(), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert out.min() >= 0 and out.max() <= 1
    if field == "flip":  # each image is either itself or its mirror
        for a, b in zip(out, x, strict=True):
            assert torch.equal(a, b) or torch.equal(a, b.flip(-1))


# --------------------------------------------------------------------------- prediction and the classifier


def test_predict_matches_a_plain_forward_in_order(toy):
    splits, fresh = toy
    model = fresh().train()
    images = torch.from_numpy(np.asarray(splits["test"].images))
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(normalise(images))).numpy()
    model.train()
    got = predict(model, splits["test"], 5, CPU)  # 16 images: the last batch is partial
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert model.training  # the caller's mode is restored
    empty = type(splits["test"])("test", splits["test"].split, splits["test"].images[:0], splits["test"].boxes,
                                 splits["test"].source_sizes[:0])
    assert predict(model, empty, 5, CPU).shape == (0, 2)


@pytest.mark.parametrize("head", ["avg", "pcam"])
def test_classifier_is_backbone_then_head(toy, head):
    _, fresh = toy
    model = fresh(head).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        logits, fmap, logit_map = model.forward_maps(x)
        torch.testing.assert_close(model(x), logits)
        torch.testing.assert_close(fmap, model.backbone.forward_features(x))
        torch.testing.assert_close(model.head(fmap)[0], logits)
    assert logits.shape == (3, 2) and fmap.shape == (3, 8, 8, 8)
    assert (logit_map is not None) == model.head.YIELDS_LOGIT_MAP
    if logit_map is not None:
        assert logit_map.shape == (3, 2, 8, 8)
    assert model.classes == ["Blob", "Bar"]
    assert model.get_submodule(model.default_target_layer) is model.backbone.get_submodule(
        model.backbone.target_layer)


# --------------------------------------------------------------------------- progress


def recording_losses(monkeypatch):
    """Record every training loss masked_bce returns, as a Python float."""
    losses = []
    real = training.masked_bce

    def spy(logits, targets, **kwargs):
        loss = real(logits, targets, **kwargs)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(training, "masked_bce", spy)
    return losses


@pytest.mark.parametrize("with_val", [True, False])
def test_training_reports_every_step_and_each_epoch(toy, monkeypatch, with_val):
    splits, fresh = toy
    losses = recording_losses(monkeypatch)
    seen: list[Progress] = []
    spec = TrainSpec(epochs=2, batch_size=16, lr=0.01)
    outcome = train_model(fresh(), splits["train"], splits["val"] if with_val else None, spec, seed=0, device=CPU,
                          progress=seen.append)
    steps = len(splits["train"]) // 16
    assert steps >= 2 and len(losses) == 2 * steps
    assert all(isinstance(p, Progress) and p.phase == "train" and p.epochs == 2 for p in seen)
    # every step, then once more after the epoch's validation
    expected = [(e, s) for e in (1, 2) for s in [*range(1, steps + 1), steps]]
    assert [(p.epoch, p.done) for p in seen] == expected and {p.total for p in seen} == {steps}
    fractions = [p.fraction() for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for e in (1, 2):
        epoch = [p for p in seen if p.epoch == e]
        epoch_losses = losses[(e - 1) * steps : e * steps]
        for p in epoch[:-1]:  # the running mean of the epoch so far (on the CPU it is read every step)
            assert isinstance(p.loss, float) and p.loss == pytest.approx(np.mean(epoch_losses[: p.done]), rel=1e-6)
            previous = outcome.history[e - 2].get("val_auroc_mean") if e > 1 else None
            assert p.val_auroc == previous  # the last finished epoch's validation
        end, record = epoch[-1], outcome.history[e - 1]
        assert end.loss == record["loss"] == pytest.approx(np.mean(epoch_losses), rel=1e-6)
        assert end.val_auroc == record.get("val_auroc_mean")
        assert (end.val_auroc is not None) == with_val
    assert all(h["seconds"] > 0 for h in outcome.history)


def test_an_undefined_val_auroc_is_reported_as_none(toy, monkeypatch):
    splits, fresh = toy
    scripted_auroc(monkeypatch, fresh(), [math.nan, 0.7])
    seen: list[Progress] = []
    train_model(fresh(), splits["train"], splits["val"], TrainSpec(epochs=2, batch_size=16), seed=0, device=CPU,
                progress=seen.append)
    assert {p.val_auroc for p in seen if p.epoch == 1} == {None}
    assert seen[-1].val_auroc == 0.7


def test_predict_reports_each_batch_with_its_detail(toy):
    splits, fresh = toy
    seen: list[Progress] = []
    predict(fresh(), splits["test"], 5, CPU, progress=seen.append, detail="test")  # 16 images: 4 batches
    assert seen == [Progress("predict", step, 4, detail="test") for step in range(1, 5)]
    assert seen[-1].label() == "predict test" and seen[-1].fraction() == 1.0


def test_epoch_loss_running_mean_on_the_cpu_is_exact():
    meter = EpochLoss(CPU)
    assert meter.running_mean() is None
    for value in (1.0, 2.0, 6.0):
        meter.add(torch.tensor(value))
    assert meter.running_mean() == meter.mean() == 3.0 and meter.finite()
    meter.add(torch.tensor(math.inf))
    assert not meter.finite()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_epoch_loss_running_mean_on_cuda_never_synchronises():
    cuda = torch.device("cuda")
    meter = EpochLoss(cuda)
    values = torch.arange(1, 21, dtype=torch.float32, device=cuda)
    torch.cuda.synchronize()
    seen = []
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation below raises
    try:
        for value in values:
            meter.add(value)
            seen.append(meter.running_mean())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert seen[0] is None  # the first copy has only just been started
    prefix_means = {sum(range(1, k + 1)) / k for k in range(1, 21)}
    assert all(m is None or m in prefix_means for m in seen)  # a lagging but exact mean of a prefix
    torch.cuda.synchronize()
    meter.running_mean()  # collects the copy in flight, starts one of the full sum
    torch.cuda.synchronize()
    assert meter.running_mean() == meter.mean() == 10.5


# --------------------------------------------------------------------------- resume state


LAST_PT_KEYS = {"model", "optimizer", "scheduler", "numpy_rng", "torch_rng", "global_rng", "history", "best_model",
                "best_score", "best_epoch", "epoch", "stale"}
"""The layout of ``last.pt`` as written before TrainState existed."""


class Killed(Exception):
    pass


def kill_at(epoch, done):
    """A progress callback that stops training at the first report of (``epoch``, ``done``)."""

    def callback(p: Progress):
        if p.epoch == epoch and p.done == done:
            raise Killed

    return callback


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_killed_training_resumes_from_its_last_epoch(toy, tmp_path, device):
    splits, fresh = toy
    device = torch.device(device)
    spec = TrainSpec(epochs=3, batch_size=8, lr=0.01, schedule="cosine", flip=True)

    def run(progress=None, checkpoint_dir=None):
        model = fresh().to(device)
        outcome = train_model(model, splits["train"], splits["val"], spec, seed=0, device=device,
                              checkpoint_dir=checkpoint_dir, progress=progress)
        return model, outcome

    reference, reference_outcome = run()
    with pytest.raises(Killed):
        run(kill_at(3, 1), tmp_path)
    assert TrainState.load(tmp_path / "last.pt").epoch == 2
    seen: list[Progress] = []
    resumed, outcome = run(seen.append, tmp_path)
    assert outcome.resumed_from_epoch == 2
    assert [h["epoch"] for h in outcome.history] == [1, 2, 3]
    assert np.isfinite(outcome.history[-1]["loss"])
    assert {p.epoch for p in seen} == {3}
    assert seen[0].val_auroc == outcome.history[1]["val_auroc_mean"]  # epoch 2's, from the file
    if device.type == "cpu":  # bit for bit (CUDA kernels need not be deterministic)
        for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        assert [h["loss"] for h in outcome.history] == [h["loss"] for h in reference_outcome.history]


def test_train_state_round_trips_in_the_old_file_layout(toy, tmp_path):
    splits, fresh = toy
    model = fresh()
    spec = TrainSpec(epochs=2, batch_size=16, schedule="step", step_size=1)
    outcome = train_model(model, splits["train"], splits["val"], spec, seed=0, device=CPU, checkpoint_dir=tmp_path)
    path = tmp_path / "last.pt"
    assert set(torch.load(path, weights_only=True)) == LAST_PT_KEYS
    state = TrainState.load(path)
    assert state.epoch == 2 and state.history == outcome.history and state.best_epoch == outcome.best_epoch
    assert isinstance(state.numpy_rng["state"], str)  # 128-bit ints travel as strings
    state.save(tmp_path / "copy.pt")
    again = TrainState.load(tmp_path / "copy.pt")
    assert again.history == state.history and again.numpy_rng == state.numpy_rng
    assert (again.epoch, again.best_epoch, again.stale, again.best_score) == (
        state.epoch, state.best_epoch, state.stale, state.best_score)
    assert states_equal(again.model, state.model) and states_equal(again.best_model, model.state_dict())
    assert torch.equal(again.torch_rng, state.torch_rng) and torch.equal(again.global_rng, state.global_rng)
    assert again.scheduler == state.scheduler
    assert not list(tmp_path.glob("*.tmp"))


def test_resumes_from_a_file_written_by_the_old_code(toy, tmp_path, monkeypatch):
    """``last.pt`` exactly as the loop wrote it before TrainState (the dict literal below is that code)."""
    splits, fresh = toy
    spec = TrainSpec(epochs=3, batch_size=8, lr=0.01, schedule="cosine", flip=True)
    reference = fresh()
    train_model(reference, splits["train"], None, spec, seed=0, device=CPU)

    made = {}
    real_optimizer, real_scheduler = training.make_optimizer, training.make_scheduler

    class Recording(BatchLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made["loader"] = self

    with monkeypatch.context() as patch:
        patch.setattr(training, "BatchLoader", Recording)
        patch.setattr(training, "make_optimizer", lambda m, s: made.setdefault("optimizer", real_optimizer(m, s)))
        patch.setattr(training, "make_scheduler", lambda o, s: made.setdefault("scheduler", real_scheduler(o, s)))
        model = fresh()
        seen = []

        def stop_after_epoch_1(p: Progress):
            seen.append(p)
            if len(seen) == len(made["loader"]) + 1:  # epoch 1's steps, then its end: nothing of epoch 2 ran
                raise Killed

        with pytest.raises(Killed):
            train_model(model, splits["train"], None, spec, seed=0, device=CPU, progress=stop_after_epoch_1)
    assert {p.epoch for p in seen} == {1}

    def old_rng_state_to_tensor(state):
        inner = state["state"]
        return {"bit_generator": state["bit_generator"], "state": str(inner["state"]), "inc": str(inner["inc"]),
                "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}

    model, optimizer, scheduler, loader = model, made["optimizer"], made["scheduler"], made["loader"]
    history = [{"epoch": 1, "loss": 0.5, "lr": 0.01, "seconds": 0.1}]
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "numpy_rng": old_rng_state_to_tensor(loader.rng.bit_generator.state),
            "torch_rng": loader.generator.get_state(),
            "global_rng": torch.get_rng_state(),
            "history": history,
            "best_model": None,
            "best_score": math.nan,
            "best_epoch": 1,
            "epoch": 1,
            "stale": 0,
        },
        tmp_path / "last.pt",
    )
    resumed = fresh()
    outcome = train_model(resumed, splits["train"], None, spec, seed=0, device=CPU, checkpoint_dir=tmp_path)
    assert outcome.resumed_from_epoch == 1 and outcome.history[0] == history[0] and outcome.best_epoch == 3
    assert states_equal(resumed.state_dict(), reference.state_dict())


class NotATensor:
    pass


def write_garbage(path, real):
    path.write_bytes(b"this is not a checkpoint")


def write_truncated(path, real):
    path.write_bytes(real.read_bytes()[: real.stat().st_size // 2])


def write_missing_field(path, real):
    state = torch.load(real, weights_only=True)
    del state["stale"]
    torch.save(state, path)


def write_pickled_object(path, real):
    torch.save({"epoch": 1, "history": [NotATensor()]}, path)


def write_list(path, real):
    torch.save([1, 2, 3], path)


@pytest.mark.parametrize("write, reason", [
    (write_garbage, "cannot read"),
    (write_truncated, "cannot read"),
    (write_pickled_object, "cannot read"),  # weights_only refuses arbitrary objects
    (write_missing_field, "lacks stale"),
    (write_list, "not a dict"),
])
def test_an_unreadable_resume_file_is_moved_aside_with_one_warning_naming_it(toy, tmp_path, write, reason):
    """Issue 18 item 12: it used to fail the cell on every rerun; now the cell trains from scratch."""
    splits, fresh = toy
    spec = TrainSpec(epochs=1, batch_size=16)
    real, cell = tmp_path / "real", tmp_path / "cell"
    real.mkdir()
    cell.mkdir()
    reference = fresh()
    train_model(reference, splits["train"], None, spec, seed=0, device=CPU, checkpoint_dir=real)
    write(cell / "last.pt", real / "last.pt")
    said: list[str] = []
    model = fresh()
    outcome = train_model(model, splits["train"], None, spec, seed=0, device=CPU, checkpoint_dir=cell,
                          warn=said.append)
    (message,) = said
    assert str(cell / "last.pt") in message and reason in message and "\n" not in message
    assert "moved it to last.pt.corrupt" in message and (cell / "last.pt.corrupt").exists()
    assert outcome.resumed_from_epoch == 0 and states_equal(model.state_dict(), reference.state_dict())


def test_a_resume_file_of_another_model_is_moved_aside_and_training_starts_again(toy, tmp_path):
    splits, fresh = toy
    spec = TrainSpec(epochs=2, batch_size=16)
    with pytest.raises(Killed):
        train_model(fresh(width=8), splits["train"], None, spec, seed=0, device=CPU, checkpoint_dir=tmp_path,
                    progress=kill_at(2, 1))
    said: list[str] = []
    model, reference = fresh(width=4), fresh(width=4)
    train_model(model, splits["train"], None, spec, seed=0, device=CPU, checkpoint_dir=tmp_path, warn=said.append)
    train_model(reference, splits["train"], None, spec, seed=0, device=CPU, checkpoint_dir=None)
    assert len(said) == 1 and f"resume checkpoint {tmp_path / 'last.pt'} does not fit" in said[0]
    assert states_equal(model.state_dict(), reference.state_dict())  # a partly loaded state left nothing behind
