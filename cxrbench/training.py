"""The training loop: masked (weighted) BCE, Adam/AdamW/SGD, best-by-validation, resumable.

Design choices:

* No host synchronisation inside the step loop: the running loss and the "non-finite"
  flag live on the device and are read once per epoch.
* Unknown labels (NaN) are masked out of the loss, never treated as negatives.
* A per-epoch checkpoint (model, optimiser, scheduler, RNG streams, history) is written
  atomically, so a killed cell resumes from its last finished epoch.
* On CUDA, mixed precision (bf16 where supported, else fp16 with a grad scaler) and
  channels-last are on by default.
"""

from __future__ import annotations

import contextlib
import copy
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

ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done, total)``; phase like ``epoch 2/5`` or ``predict``."""


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
            progress: ProgressFn | None = None) -> np.ndarray:
    """Sigmoid probabilities ``N x K`` for every image of ``data`` (one copy to the host at the end)."""
    was_training = model.training
    model.eval()
    loader = BatchLoader(data, batch_size, device, channels_last=channels_last)
    outputs = []
    try:
        for step, (x, _y, _rows) in enumerate(loader, start=1):
            with autocast(device, dtype):
                outputs.append(torch.sigmoid(model(x).float()))
            if progress:
                progress("predict", step, len(loader))
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


@dataclasses.dataclass
class TrainOutcome:
    """What training produced."""

    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    train_images_per_s: float
    resumed_from_epoch: int = 0


def _save_atomic(payload: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
) -> TrainOutcome:
    """Train ``model`` in place; on return it holds the selected (best or last) weights.

    Args:
        model: the classifier, on ``device``.
        train_data: the prepared training split.
        val_data: the prepared validation split (None: keep the last epoch).
        spec: training settings.
        seed: the cell's seed (shuffling and augmentation streams).
        device: where to train.
        checkpoint_dir: folder for ``last.pt`` (resume) and ``best.pt``; None = no files.
        progress: callback ``(phase, done, total)`` per step.

    Raises:
        CellError: on a non-finite loss (with the epoch) or an empty training split.

    """
    if len(train_data) == 0:
        raise CellError("the training split is empty")
    dtype = amp_dtype(spec, device)
    channels_last = spec.channels_last if spec.channels_last is not None else device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, spec)
    scheduler = make_scheduler(optimizer, spec)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    balanced = spec.loss == "weighted_bce"
    augment = Augment(spec.flip, spec.affine_degrees, spec.affine_scale, spec.affine_translate,
                      spec.brightness, spec.contrast)
    loader = BatchLoader(train_data, spec.batch_size, device, shuffle=True, seed=seed, augment=augment,
                         channels_last=channels_last, drop_last=True, max_batches=spec.max_steps_per_epoch)
    eval_batch = spec.eval_batch_size or 2 * spec.batch_size
    selecting = bool(spec.select_best and val_data is not None and len(val_data))
    val_labels = np.asarray(val_data.split.labels, dtype=np.float32) if selecting else None

    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_score, best_epoch, start_epoch, stale = -math.inf, 0, 0, 0
    last_path = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if last_path is not None and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        loader.rng.bit_generator.state = _rng_state_from_tensor(state["numpy_rng"])
        loader.generator.set_state(state["torch_rng"])
        torch.set_rng_state(state["global_rng"])
        history = list(state["history"])
        best_state = state.get("best_model")
        best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
        start_epoch, stale = int(state["epoch"]), int(state["stale"])

    images_seen, train_seconds = 0, 0.0
    for epoch in range(start_epoch + 1, spec.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        t0 = time.perf_counter()
        steps = len(loader)
        for step, (x, y, _rows) in enumerate(loader, start=1):
            with autocast(device, dtype):
                logits = model(x)
            loss = masked_bce(logits, y, balanced=balanced)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            detached = loss.detach()
            loss_sum += detached
            nonfinite |= ~torch.isfinite(detached)
            images_seen += x.shape[0]
            if progress:
                progress(f"epoch {epoch}/{spec.epochs}", step, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t0
        if bool(nonfinite):  # one host sync per epoch
            raise CellError(f"training loss became NaN or infinite in epoch {epoch} (try a lower train.lr)")
        record: dict[str, Any] = {"epoch": epoch, "loss": float(loss_sum) / max(steps, 1),
                                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if scheduler is not None:
            scheduler.step()
        score = math.nan
        if selecting:
            scores = predict(model, val_data, eval_batch, device, dtype=dtype, channels_last=channels_last)
            score = record["val_auroc_mean"] = mean_auroc(val_labels, scores)
        history.append(record)
        # Without a validation AUROC to judge by (no val split, select_best off, or no class
        # with both labels in val) the latest epoch is kept. A NaN score never beats a real
        # one; comparing against the training loss instead would mix two scales.
        if math.isfinite(score):
            improved = score > best_score or not math.isfinite(best_score)
        else:
            improved = not math.isfinite(best_score)
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
            # A copy of the weights (a whole state dict) is only needed when a later epoch
            # may be worse; when the last epoch is kept the model already holds it.
            best_state = _state_copy(model) if selecting else None
        else:
            stale += 1
        if last_path is not None:
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "numpy_rng": _rng_state_to_tensor(loader.rng.bit_generator.state),
                    "torch_rng": loader.generator.get_state(),
                    "global_rng": torch.get_rng_state(),
                    "history": history,
                    "best_model": best_state,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "epoch": epoch,
                    "stale": stale,
                },
                last_path,
            )
        if spec.early_stopping is not None and stale >= spec.early_stopping:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    rate = images_seen / train_seconds if train_seconds > 0 else float("nan")
    return TrainOutcome(best_epoch, len(history), history, rate, resumed_from_epoch=start_epoch)


def _rng_state_to_tensor(state: dict[str, Any]) -> dict[str, Any]:
    """Numpy PCG64 state -> a weights_only-loadable structure (ints as strings)."""
    inner = state["state"]
    return {"bit_generator": state["bit_generator"], "state": str(inner["state"]), "inc": str(inner["inc"]),
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def _rng_state_from_tensor(saved: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": saved["bit_generator"],
            "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
            "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy (for tests and comparisons)."""
    return copy.deepcopy(model)
