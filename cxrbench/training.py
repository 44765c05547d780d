"""The training loop: masked (weighted) BCE, Adam/AdamW/SGD, best-by-validation, resumable.

Design choices:

* No host synchronisation inside the step loop: the running loss and the "non-finite"
  flag live on the device and are read once per epoch (the live progress figure is an
  asynchronous copy, see :class:`EpochLoss`).
* Unknown labels (NaN) are masked out of the loss, never treated as negatives.
* A per-epoch checkpoint (:class:`TrainState`: model, optimiser, scheduler, RNG streams,
  history, selection) is written atomically, so a killed cell resumes from its last
  finished epoch.
* On CUDA, mixed precision (bf16 where supported, else fp16 with a grad scaler) and
  channels-last are on by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainSpec
from .data import Augment, BatchLoader, PreparedSplit
from .errors import CellError
from .events import Progress

ProgressFn = Callable[[Progress], None]
"""Receives a :class:`~cxrbench.events.Progress` per step (training, prediction)."""


def resolve_device(spec: TrainSpec) -> torch.device:
    """The device a cell runs on."""
    if spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CellError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def amp_dtype(spec: TrainSpec, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision."""
    use = spec.amp if spec.amp is not None else device.type == "cuda"
    if not use:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype`` (a no-op when None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python-side RNGs used by torch for initialisation and dropout."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, *, balanced: bool = False) -> torch.Tensor:
    """Binary cross-entropy over KNOWN labels (NaN targets are ignored), optionally W-CEL balanced.

    Plain (``balanced=False``): the mean of the per-label BCE over the known labels.

    Balanced (``balanced=True``) is ChestX-ray8's W-CEL (Wang et al., CVPR 2017)::

        L = beta_P * sum_{y=1} -ln p + beta_N * sum_{y=0} -ln(1 - p),
        beta_P = (|P| + |N|) / |P|,  beta_N = (|P| + |N|) / |N|,

    where |P| and |N| count the 1s and 0s among the known labels of THIS batch (all classes
    together). The sum is divided by |P| + |N| so the loss scale does not grow with the
    batch; it then equals (mean loss over positives) + (mean loss over negatives). A batch
    without positives (or negatives) has an empty sum on that side, which contributes 0.

    Args:
        logits: ``N x K``.
        targets: ``N x K`` with 1, 0 or NaN.
        balanced: apply the W-CEL positive/negative balancing.

    Returns:
        A scalar float32 tensor (no host synchronisation).

    """
    known = ~torch.isnan(targets)
    filled = torch.where(known, targets, torch.zeros_like(targets)).float()
    losses = F.binary_cross_entropy_with_logits(logits.float(), filled, reduction="none")
    # ``where`` rather than a 0/1 multiply: a non-finite logit at an ignored label must not leak in (inf * 0 = NaN).
    losses = torch.where(known, losses, torch.zeros_like(losses))
    n_known = known.sum()
    if not balanced:
        return losses.sum() / n_known.clamp(min=1)
    positive = known & (filled > 0.5)
    n_pos = positive.sum()
    n_neg = n_known - n_pos
    beta_p = n_known / n_pos.clamp(min=1)
    beta_n = n_known / n_neg.clamp(min=1)
    weight = torch.where(positive, beta_p, beta_n)  # ignored labels already contribute 0
    return (losses * weight).sum() / n_known.clamp(min=1)


def make_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    """The optimiser named by ``spec.optimizer`` over trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CellError("the model has no trainable parameters")
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, nesterov=True, weight_decay=spec.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> Any:
    """Per-epoch learning-rate schedule, or None."""
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.step_gamma)
    return None


@torch.no_grad()
def predict(model: nn.Module, data: PreparedSplit, batch_size: int, device: torch.device, *,
            dtype: torch.dtype | None = None, channels_last: bool = False,
            progress: ProgressFn | None = None, detail: str = "") -> np.ndarray:
    """Sigmoid probabilities ``N x K`` for every image of ``data`` (one copy to the host at the end).

    Args:
        model: the classifier, on ``device``; its train/eval mode is restored on return.
        data: the prepared split to predict.
        batch_size: images per forward pass.
        device: where ``model`` is.
        dtype: autocast dtype (None: full precision).
        channels_last: feed images in channels-last memory format.
        progress: receives ``Progress(phase="predict", done, total, detail=detail)`` after every batch.
        detail: what is predicted (a split name), for the progress label.

    Returns:
        ``float32`` probabilities, one row per image of ``data`` in its order.

    """
    was_training = model.training
    model.eval()
    loader = BatchLoader(data, batch_size, device, channels_last=channels_last)
    total = len(loader)
    outputs = []
    try:
        for step, (x, _y, _rows) in enumerate(loader, start=1):
            with autocast(device, dtype):
                outputs.append(torch.sigmoid(model(x).float()))
            if progress:
                progress(Progress("predict", step, total, detail=detail))
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros((0, len(getattr(model, "classes", []))), dtype=np.float32)
    return torch.cat(outputs).cpu().numpy()


def mean_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean per-class AUROC over classes where it is defined (NaN if none)."""
    from .metrics import auroc

    values = auroc(labels, scores)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """What training produced."""

    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    train_images_per_s: float
    resumed_from_epoch: int = 0
    val_scores: np.ndarray | None = None
    """The kept epoch's validation scores (N x K), when this run computed them: the trained
    model's, so the cell need not predict the validation split again."""


# --------------------------------------------------------------------------- resume state


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields by name, shallow (``dataclasses.asdict`` would deep-copy every tensor)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@dataclasses.dataclass
class Selection:
    """Which epoch's weights training keeps, and the epochs since then (for early stopping).

    The loop updates it after every epoch; :class:`TrainState` stores its fields under the
    same names.

    Attributes:
        best_score: the kept epoch's validation mean AUROC (-inf before the first epoch, NaN
            when the kept epoch had none).
        best_epoch: the kept epoch (0 before the first).
        stale: epochs finished since the kept one.
        best_model: a copy of the kept epoch's weights; None when the latest epoch is kept
            anyway (no validation to select by), since the model then holds it.

    """

    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0
    best_model: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, score: float, model: nn.Module, *, copy_weights: bool) -> None:
        """Judge ``epoch`` by its validation ``score`` (NaN: none) and keep it if it is the best so far.

        Without a validation AUROC to judge by (no val split, select_best off, or no class
        with both labels in val) the latest epoch is kept. A NaN score never beats a real one;
        comparing against the training loss instead would mix two scales. A tie is no
        improvement.

        Args:
            epoch: the epoch just finished.
            score: its validation mean AUROC, NaN when there is none.
            model: the model after ``epoch``.
            copy_weights: copy the weights when ``epoch`` is kept. Only needed when a later epoch
                may be worse; when the latest epoch is always kept the model already holds it.

        """
        if math.isfinite(score):
            improved = score > self.best_score or not math.isfinite(self.best_score)
        else:
            improved = not math.isfinite(self.best_score)
        if improved:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_model = {k: v.detach().clone() for k, v in model.state_dict().items()} if copy_weights else None
        else:
            self.stale += 1


_RETRAIN_HINT = "; delete it to train the cell from scratch"


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a killed cell needs to continue training after its last finished epoch (``last.pt``).

    The file is a plain dict of these fields by name (the layout written before this class
    existed, so older files still load), readable with ``torch.load(..., weights_only=True)``:
    tensors, numbers, strings and containers of them only.

    Attributes:
        epoch: the last finished epoch.
        history: one record per finished epoch (``epoch``, ``loss``, ``lr``, ``seconds``,
            ``val_auroc_mean`` when validated).
        best_score: see :class:`Selection`.
        best_epoch: see :class:`Selection`.
        stale: see :class:`Selection`.
        best_model: see :class:`Selection`.
        model: the model's state dict after ``epoch``.
        optimizer: the optimiser's state dict.
        scheduler: the schedule's state dict (None without a schedule).
        numpy_rng: the loader's shuffling stream, a numpy PCG64 state with its 128-bit integers
            as strings (``weights_only`` loading refuses integers that large).
        torch_rng: the loader's augmentation stream (a ``torch.Generator`` state, a byte tensor).
        global_rng: torch's global CPU stream (dropout and the like).

    """

    epoch: int
    history: list[dict[str, Any]]
    best_score: float
    best_epoch: int
    stale: int
    best_model: dict[str, torch.Tensor] | None
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    numpy_rng: dict[str, Any]
    torch_rng: torch.Tensor
    global_rng: torch.Tensor

    @classmethod
    def capture(cls, epoch: int, history: list[dict[str, Any]], selection: Selection, model: nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any, loader: BatchLoader) -> TrainState:
        """The state after ``epoch``. It shares tensors with the live objects: save it, do not keep it."""
        return cls(
            epoch=epoch,
            history=list(history),
            **_fields(selection),
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            numpy_rng=_numpy_rng_to_saved(loader.rng.bit_generator.state),
            torch_rng=loader.generator.get_state(),
            global_rng=torch.get_rng_state(),
        )

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                loader: BatchLoader) -> Selection:
        """Put weights, optimiser, schedule and random streams back as they were; return the selection."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        if scheduler is not None and self.scheduler:
            scheduler.load_state_dict(self.scheduler)
        loader.rng.bit_generator.state = _numpy_rng_from_saved(self.numpy_rng)
        # CPU generators only take CPU states; ``load(map_location=cuda)`` moved these to the GPU.
        loader.generator.set_state(self.torch_rng.cpu())
        torch.set_rng_state(self.global_rng.cpu())
        return Selection(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Selection)})

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically: a kill mid-write leaves the previous file whole."""
        tmp = path.with_name(path.name + ".tmp")
        torch.save(_fields(self), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, *, map_location: torch.device | str | None = None) -> TrainState:
        """Read a file written by :meth:`save` (tensors go to ``map_location``).

        Raises:
            CellError: naming ``path``, when the file cannot be read (missing, truncated,
                corrupt, not loadable weights-only) or lacks a field.

        """
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises many types here (RuntimeError, UnpicklingError, EOFError, ...)
            raise CellError(f"cannot read the resume checkpoint {path}: {_first_line(exc)}{_RETRAIN_HINT}") from exc
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(payload, dict):
            raise CellError(f"resume checkpoint {path} is not a dict of training state{_RETRAIN_HINT}")
        missing = [name for name in names if name not in payload]
        if missing:
            raise CellError(f"resume checkpoint {path} lacks {', '.join(missing)}{_RETRAIN_HINT}")
        return cls(**{name: payload[name] for name in names})


def _numpy_rng_to_saved(state: dict[str, Any]) -> dict[str, Any]:
    """Numpy PCG64 state -> a weights_only-loadable structure (its 128-bit ints as strings)."""
    inner = state["state"]
    return {"bit_generator": state["bit_generator"], "state": str(inner["state"]), "inc": str(inner["inc"]),
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def _numpy_rng_from_saved(saved: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": saved["bit_generator"],
            "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
            "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}


# --------------------------------------------------------------------------- the loop


class EpochLoss:
    """An epoch's training loss, summed on the device, with a live mean that never stalls it.

    Reading a CUDA scalar on the host (``float(t)``) waits for every queued kernel; the GPU
    then idles while Python launches the next step. So on CUDA :meth:`running_mean` never
    waits: it starts an asynchronous copy of the sum into pinned host memory and returns the
    latest copy that has landed (a CUDA event says when). The figure lags by the steps in
    flight (None until the first copy lands) and costs one 4-byte copy launch per step. On
    the CPU a read costs nothing and is exact. The epoch's exact mean (:meth:`mean`) and the
    non-finite flag are read once, after the loop's end-of-epoch synchronisation.
    """

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.steps = 0
        self._cuda = device.type == "cuda"
        self._host = torch.zeros((), pin_memory=True) if self._cuda else None
        self._landed = torch.cuda.Event() if self._cuda else None
        self._in_flight = 0  # the step count summed into the copy in flight; 0: no copy in flight
        self._latest: float | None = None

    def add(self, loss: torch.Tensor) -> None:
        """Add one step's (detached, scalar) loss; no host synchronisation."""
        self.total += loss
        self.nonfinite |= ~torch.isfinite(loss)
        self.steps += 1

    def running_mean(self) -> float | None:
        """The mean loss of the epoch so far, or None when not yet read (see the class docstring)."""
        if not self._cuda:
            return float(self.total) / self.steps if self.steps else None
        assert self._host is not None and self._landed is not None
        if self._in_flight and self._landed.query():
            self._latest = float(self._host) / self._in_flight
            self._in_flight = 0
        if not self._in_flight and self.steps:
            self._host.copy_(self.total, non_blocking=True)
            self._landed.record()
            self._in_flight = self.steps
        return self._latest

    def mean(self) -> float:
        """The exact mean over the steps added (synchronises on CUDA: call it at the epoch's end)."""
        return float(self.total) / max(self.steps, 1)

    def finite(self) -> bool:
        """Whether every loss added was finite (synchronises on CUDA)."""
        return not bool(self.nonfinite)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What one training run is made of, built once by :func:`train_model`."""

    spec: TrainSpec
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loader: BatchLoader

    @classmethod
    def create(cls, model: nn.Module, train_data: PreparedSplit, spec: TrainSpec, *, seed: int,
               device: torch.device) -> _Setup:
        dtype = amp_dtype(spec, device)
        channels_last = spec.channels_last if spec.channels_last is not None else device.type == "cuda"
        if channels_last:  # before the optimiser is made: it must hold the converted parameters
            model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, spec)
        augment = Augment(spec.flip, spec.affine_degrees, spec.affine_scale, spec.affine_translate,
                          spec.brightness, spec.contrast)
        loader = BatchLoader(train_data, spec.batch_size, device, shuffle=True, seed=seed, augment=augment,
                             channels_last=channels_last, drop_last=True, max_batches=spec.max_steps_per_epoch)
        return cls(spec, device, dtype, channels_last, optimizer, make_scheduler(optimizer, spec),
                   torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), loader)


@dataclasses.dataclass
class _Validation:
    """The split that selects the best epoch, with its labels read once."""

    data: PreparedSplit
    labels: np.ndarray
    batch_size: int
    last_scores: np.ndarray | None = None

    @classmethod
    def create(cls, val_data: PreparedSplit | None, spec: TrainSpec) -> _Validation | None:
        """The validation to run after each epoch, or None when epochs are not selected by it."""
        if not (spec.select_best and val_data is not None and len(val_data)):
            return None
        labels = np.asarray(val_data.split.labels, dtype=np.float32)
        return cls(val_data, labels, spec.eval_batch_size or 2 * spec.batch_size)

    def score(self, model: nn.Module, setup: _Setup) -> float:
        """The validation mean AUROC of ``model`` (NaN when no class has both labels)."""
        scores = predict(model, self.data, self.batch_size, setup.device, dtype=setup.dtype,
                         channels_last=setup.channels_last)
        self.last_scores = scores
        return mean_auroc(self.labels, scores)


@dataclasses.dataclass(frozen=True)
class _EpochResult:
    steps: int
    loss: float
    images: int
    seconds: float


def _train_epoch(model: nn.Module, setup: _Setup, epoch: int, *, progress: ProgressFn | None,
                 val_auroc: float | None) -> _EpochResult:
    """One pass over the training loader; ``val_auroc`` (the previous epoch's) goes into progress reports.

    Raises:
        CellError: when a loss of the epoch was NaN or infinite.

    """
    model.train()
    loss = EpochLoss(setup.device)
    steps, images = len(setup.loader), 0
    balanced = setup.spec.loss == "weighted_bce"
    t0 = time.perf_counter()
    for step, (x, y, _rows) in enumerate(setup.loader, start=1):
        with autocast(setup.device, setup.dtype):
            logits = model(x)
        batch_loss = masked_bce(logits, y, balanced=balanced)
        setup.optimizer.zero_grad(set_to_none=True)
        setup.scaler.scale(batch_loss).backward()
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
        loss.add(batch_loss.detach())
        images += x.shape[0]
        if progress:
            progress(Progress("train", step, steps, epoch=epoch, epochs=setup.spec.epochs,
                              loss=loss.running_mean(), val_auroc=val_auroc))
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    seconds = time.perf_counter() - t0
    if not loss.finite():  # one host sync per epoch
        raise CellError(f"training loss became NaN or infinite in epoch {epoch} (try a lower train.lr)")
    return _EpochResult(steps, loss.mean(), images, seconds)


def _resume(path: Path, model: nn.Module, setup: _Setup) -> tuple[int, list[dict[str, Any]], Selection]:
    """Restore the run from ``path``: (last finished epoch, history, selection)."""
    state = TrainState.load(path, map_location=setup.device)
    try:
        selection = state.restore(model, setup.optimizer, setup.scheduler, setup.loader)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. weights of another architecture
        raise CellError(f"resume checkpoint {path} does not fit this cell: {_first_line(exc)}{_RETRAIN_HINT}") from exc
    return state.epoch, list(state.history), selection


def _resume_or_restart(path: Path, model: nn.Module, setup: _Setup, train_data: PreparedSplit, spec: TrainSpec,
                       seed: int, warn: Callable[[str], None] | None,
                       ) -> tuple[int, list[dict[str, Any]], Selection, _Setup]:
    """Resume from ``path``; when it cannot be used, move it aside and train from scratch.

    A ``last.pt`` that cannot be read or does not fit the cell would otherwise fail the cell
    on every rerun. It is renamed ``last.pt.corrupt`` (kept for a look, never read again),
    ``warn`` gets one line naming it, and the weights, the global random stream and the
    optimiser are put back as they were, so the cell trains exactly as a fresh one would.
    """
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a failed restore may have begun
    global_rng = torch.get_rng_state()
    try:
        start, history, selection = _resume(path, model, setup)
        return start, history, selection, setup
    except CellError as exc:
        model.load_state_dict(initial)
        torch.set_rng_state(global_rng)
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        if warn is not None:
            warn(f"{str(exc).removesuffix(_RETRAIN_HINT)}; moved it to {aside.name} and training the cell from "
                 "scratch")
        return 0, [], Selection(), _Setup.create(model, train_data, spec, seed=seed, device=setup.device)


def _val_auroc(history: list[dict[str, Any]]) -> float | None:
    """The latest epoch's validation mean AUROC for progress reports (None: not validated or undefined)."""
    value = history[-1].get("val_auroc_mean") if history else None
    return value if value is not None and math.isfinite(value) else None


def train_model(
    model: nn.Module,
    train_data: PreparedSplit,
    val_data: PreparedSplit | None,
    spec: TrainSpec,
    *,
    seed: int,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    progress: ProgressFn | None = None,
    warn: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train ``model`` in place; on return it holds the selected (best or last) weights.

    Args:
        model: the classifier, on ``device``.
        train_data: the prepared training split.
        val_data: the prepared validation split (None: keep the last epoch).
        spec: training settings.
        seed: the cell's seed (shuffling and augmentation streams).
        device: where to train.
        checkpoint_dir: folder for ``last.pt`` (a :class:`TrainState`, for resuming); None = no file.
        progress: receives ``Progress(phase="train", done=step, total=steps, epoch, epochs, loss,
            val_auroc)`` after every step (``loss``: the epoch's running mean, see :class:`EpochLoss`;
            ``val_auroc``: the previous epoch's), and once more after each epoch's validation
            with that epoch's exact mean loss and validation AUROC.
        warn: receives one line when ``last.pt`` cannot be resumed from (it is moved to
            ``last.pt.corrupt`` and training starts from scratch).

    Raises:
        CellError: on a non-finite loss (with the epoch) or an empty training split.

    """
    if len(train_data) == 0:
        raise CellError("the training split is empty")
    setup = _Setup.create(model, train_data, spec, seed=seed, device=device)
    validation = _Validation.create(val_data, spec)
    last_path = checkpoint_dir / "last.pt" if checkpoint_dir else None
    start, history, selection = 0, [], Selection()
    kept_val_scores: np.ndarray | None = None
    if last_path is not None and last_path.exists():
        start, history, selection, setup = _resume_or_restart(last_path, model, setup, train_data, spec, seed, warn)

    images, seconds = 0, 0.0
    for epoch in range(start + 1, spec.epochs + 1):
        result = _train_epoch(model, setup, epoch, progress=progress, val_auroc=_val_auroc(history))
        images, seconds = images + result.images, seconds + result.seconds
        record: dict[str, Any] = {"epoch": epoch, "loss": result.loss, "lr": setup.optimizer.param_groups[0]["lr"],
                                  "seconds": result.seconds}
        if setup.scheduler is not None:
            setup.scheduler.step()
        score = math.nan
        if validation is not None:
            score = record["val_auroc_mean"] = validation.score(model, setup)
        history.append(record)
        selection.update(epoch, score, model, copy_weights=validation is not None)
        if validation is not None and selection.best_epoch == epoch:
            kept_val_scores = validation.last_scores
        if last_path is not None:
            TrainState.capture(epoch, history, selection, model, setup.optimizer, setup.scheduler,
                               setup.loader).save(last_path)
        if progress:  # after the save: a callback that raises here loses nothing
            progress(Progress("train", result.steps, result.steps, epoch=epoch, epochs=spec.epochs,
                              loss=result.loss, val_auroc=_val_auroc(history), epoch_end=True))
        if spec.early_stopping is not None and selection.stale >= spec.early_stopping:
            break
    if selection.best_model is not None:
        model.load_state_dict(selection.best_model)
    rate = images / seconds if seconds > 0 else float("nan")
    return TrainOutcome(selection.best_epoch, len(history), history, rate, resumed_from_epoch=start,
                        val_scores=kept_val_scores)
