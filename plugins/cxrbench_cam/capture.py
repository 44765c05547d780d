"""Read a layer's activation and its gradients with one forward and one batched backward.

The target layer's forward hook returns a detached, grad-requiring copy of its output,
so the rest of the forward builds its graph from that copy and backward stops there:
nothing before the target layer is differentiated, the model's parameters and
``requires_grad`` flags are never touched, and a frozen backbone works as well as a
trainable one. The layers before the target run without autograd at all.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from cxrbench.api import UsageError


def resolve_layer(model: nn.Module, path: str, option: str = "target_layer") -> nn.Module:
    """The submodule of ``model`` at dotted ``path``.

    Raises:
        UsageError: one line naming the option, with the closest valid path.

    """
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"localizer option {option}: no module {path!r} in the model{hint}") from None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode and restore every submodule's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _target_path(model: nn.Module, target_layer: str | None) -> str:
    if target_layer is not None:
        return target_layer
    default = getattr(model, "default_target_layer", None)
    if default is None:
        raise UsageError("localizer option target_layer: the model has no default_target_layer; set one")
    return default


def forward_capture(
    model: nn.Module, images: Tensor, target_layer: str | None, track_grad: bool
) -> tuple[Tensor, Tensor]:
    """One forward pass that also returns the target layer's output.

    Args:
        model: the classifier (``model(images)`` returns logits ``N x K``).
        images: the input batch.
        target_layer: dotted path of the layer to read, or None for the model default.
        track_grad: build the autograd graph from the activation to the logits (and
            only that part), so :func:`class_gradients` can run.

    Returns:
        (logits ``N x K``, activation ``N x C x h x w``); with ``track_grad`` the
        activation is a leaf that requires grad and the logits depend on it.

    Raises:
        UsageError: unknown layer, a layer that does not run, or runs more than once.

    """
    path = _target_path(model, target_layer)
    layer = resolve_layer(model, path)
    captured: list[Tensor] = []

    def hook(module: nn.Module, inputs: object, output: object) -> Tensor:
        if not isinstance(output, Tensor):
            raise UsageError(f"localizer option target_layer: {path!r} does not output a single tensor")
        if captured:
            raise UsageError(f"localizer option target_layer: {path!r} runs more than once per forward")
        activation = output.detach()
        if track_grad:
            activation.requires_grad_(True)
            # From here on the forward records the graph the backward needs; the
            # caller's no_grad block restores the previous mode when the forward ends.
            torch.set_grad_enabled(True)
        captured.append(activation)
        # A clone, so that an in-place op downstream (ReLU(inplace=True)) cannot
        # modify the captured activation or trip over a grad-requiring leaf.
        return activation.clone() if track_grad else activation

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        handle.remove()
    if not captured:
        raise UsageError(f"localizer option target_layer: {path!r} did not run in the model's forward")
    activation = captured[0]
    if activation.dim() != 4:
        raise UsageError(
            f"localizer option target_layer: {path!r} outputs shape {tuple(activation.shape)}, not N x C x h x w"
        )
    if track_grad and not logits.requires_grad:
        raise UsageError(f"localizer option target_layer: the logits do not depend on {path!r}")
    return logits, activation


def class_gradients(logits: Tensor, activation: Tensor, classes: Sequence[int]) -> Tensor:
    """Gradients d logit_k / d activation for every requested class, in one batched backward.

    Args:
        logits: ``N x K_all`` logits from :func:`forward_capture` with ``track_grad``.
        activation: the captured leaf activation ``N x C x h x w``.
        classes: class indices; the gradient of each image's own logit is taken.

    Returns:
        ``K x N x C x h x w`` gradients (K = len(classes)).

    """
    index = torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)
    with torch.enable_grad():  # the caller may be inside no_grad; the selection is in the graph
        selected = logits.index_select(1, index)  # N x K
    k = selected.shape[1]
    # One one-hot selector per class, batched through a single vmapped backward.
    selectors = torch.eye(k, dtype=selected.dtype, device=selected.device)
    selectors = selectors[:, None, :].expand(k, selected.shape[0], k)
    (grads,) = torch.autograd.grad(selected, activation, grad_outputs=selectors, is_grads_batched=True)
    return grads
