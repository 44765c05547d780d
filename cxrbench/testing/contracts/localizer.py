"""The localizer contract: correct maps, and the model left exactly as the localizer found it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...interfaces import Classifier, Localizer
from ..components import tiny_classifier
from ..factories import synthetic_images
from .base import ComponentContract

__all__ = ["LocalizerContract"]


def _hook_counts(model: nn.Module) -> dict[str, int]:
    """Every kind of module hook, counted over the model and globally."""
    from torch.nn.modules import module as module_mod

    counts = {"global_forward": len(module_mod._global_forward_hooks),
              "global_forward_pre": len(module_mod._global_forward_pre_hooks),
              "global_backward": len(module_mod._global_backward_hooks)}
    for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        counts[attr] = sum(len(getattr(m, attr, {})) for m in model.modules())
    return counts


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, bool], dict[str, bool]]:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
    )


def _bit_identical(a: Tensor, b: Tensor) -> bool:
    """Same dtype, shape, device and bytes (``torch.equal`` calls NaN unequal and -0.0 equal to 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    return torch.equal(a.detach().contiguous().view(-1).view(torch.uint8), b.detach().contiguous().view(-1)
                       .view(torch.uint8))


def _storage(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``(id, data_ptr)`` of every parameter and buffer: a localizer may not replace or reallocate them."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: (id(t), t.data_ptr()) for name, t in tensors.items()}


def _changed(before: dict[str, bool], after: dict[str, bool]) -> list[str]:
    """The keys of ``before`` whose value is not the same in ``after`` (sorted)."""
    return sorted(k for k in before if after.get(k) != before[k])


def _inplace_flags(model: nn.Module) -> dict[str, bool]:
    """``inplace`` of every module that has one (ReLU, Dropout, ...): a localizer may not flip them."""
    return {name: bool(m.inplace) for name, m in model.named_modules() if isinstance(getattr(m, "inplace", None), bool)}


class LocalizerContract(ComponentContract):
    """Contract checks for a localizer: shape, [0, 1] range and device of the maps; the
    model left exactly as found (modes, flags, weights and BatchNorm statistics bit for bit,
    the same tensors, no gradients, no hooks); nothing carried from one model to the next
    (the model-parameter randomisation test explains randomised copies with the same
    instance); all classes in one call equal to one class at a time; batch invariance;
    determinism; frozen models and ``no_grad`` callers.

    Runs on :func:`tiny_classifier` (a linear head, or a logit-map head when the
    localizer needs one); override :meth:`make_model` for another model.

    Class attributes: ``name`` (and ``options``, ``plugins``); optionally ``model_head``
    (``auto``, ``linear``, ``logit_map``), ``image_size``, ``batch``, ``num_classes``,
    ``classes``, ``atol``.
    """

    kind = "localizer"
    model_head: ClassVar[str] = "auto"
    image_size: ClassVar[int] = 32
    batch: ClassVar[int] = 3
    num_classes: ClassVar[int] = 4
    classes: ClassVar[tuple[int, ...]] = (2, 0, 3)
    atol: ClassVar[float] = 1e-5

    def localizer(self) -> Localizer:
        cls = self.component_class()
        return cls(self.parsed_options())

    def make_model(self) -> Classifier:
        """The classifier to explain (eval mode). Default: a tiny one the localizer supports."""
        heads = ("linear", "logit_map") if self.model_head == "auto" else (self.model_head,)
        reasons = []
        for head in heads:
            model = tiny_classifier(head, num_classes=self.num_classes)
            reason = self.localizer().unsupported_reason(model)
            if reason is None:
                return model
            reasons.append(f"{head}: {reason}")
        raise AssertionError(f"localizer {self.name!r} supports none of the test models ({'; '.join(reasons)}); "
                             "override make_model()")

    def images(self, n: int | None = None) -> Tensor:
        return synthetic_images(n or self.batch, self.image_size, seed=1)

    def run(self, model: Classifier | None = None, images: Tensor | None = None,
            classes: Sequence[int] | None = None) -> Tensor:
        model = model if model is not None else self.make_model()
        images = images if images is not None else self.images()
        return self.localizer()(model, images, list(self.classes if classes is None else classes))

    def test_maps_shape_range_and_device(self) -> None:
        images = self.images()
        maps = self.run(images=images)
        expected = (self.batch, len(self.classes), self.image_size, self.image_size)
        assert isinstance(maps, Tensor) and tuple(maps.shape) == expected, (
            f"maps of shape {tuple(getattr(maps, 'shape', ()))}, expected N x classes x H x W = {expected}"
        )
        assert maps.is_floating_point() and maps.device == images.device
        assert torch.isfinite(maps).all(), "maps hold NaN or inf"
        low, high = float(maps.min()), float(maps.max())
        assert low >= 0.0 and high <= 1.0, f"maps range over [{low:.4g}, {high:.4g}], not within [0, 1]"
        assert not maps.requires_grad, "maps still hold an autograd graph"

    def test_model_left_unchanged(self) -> None:
        model = self.make_model().train()
        # A mixed state must come back as it was: not merely "train() afterwards".
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eval()
        for p in model.head.parameters():
            p.requires_grad_(False)
        state, modes, flags = _snapshot(model)
        inplace = _inplace_flags(model)
        storage = _storage(model)
        self.run(model)
        after_state, after_modes, after_flags = _snapshot(model)
        changed_modes = _changed(modes, after_modes)
        assert not changed_modes, f"train/eval mode changed for {changed_modes[:5]}"
        changed_flags = _changed(flags, after_flags)
        assert not changed_flags, f"requires_grad changed for {changed_flags[:5]}"
        changed_inplace = _changed(inplace, _inplace_flags(model))
        assert not changed_inplace, f"inplace flags changed for {changed_inplace[:5]}"
        changed_state = [k for k, v in state.items() if k not in after_state or not _bit_identical(after_state[k], v)]
        assert not changed_state and set(after_state) == set(state), f"weights or buffers changed: {changed_state[:5]}"
        moved = _changed(storage, _storage(model))
        assert not moved, f"parameters or buffers replaced or reallocated: {moved[:5]}"
        with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
        assert not with_grad, f"parameter gradients left behind: {with_grad[:5]}"

    def test_no_state_carried_between_models(self) -> None:
        """The model-parameter randomisation test explains a trained model, then randomised copies of it.

        So one localizer instance must give each model its own maps (nothing cached from the
        model it saw first), and the model must still deep-copy after a call (nothing left on
        it that ``copy.deepcopy`` refuses, such as a tensor holding an autograd graph).
        """
        from ...randomisation import model_blocks, randomise_block

        trained, images = self.make_model(), self.images()
        localizer = self.localizer()
        classes = list(self.classes)
        first = localizer(trained, images, classes)
        randomised = copy.deepcopy(trained)
        for block in model_blocks(randomised):
            randomise_block(block, seed=0)
        of_randomised = localizer(randomised, images, classes)
        torch.testing.assert_close(of_randomised, self.localizer()(randomised, images, classes), atol=self.atol,
                                   rtol=1e-4, msg="a localizer that explained another model first gives other maps")
        torch.testing.assert_close(localizer(trained, images, classes), first, atol=self.atol, rtol=1e-4,
                                   msg="a model's maps changed after the localizer explained another model")

    def test_no_hooks_left(self) -> None:
        model = self.make_model()
        before = _hook_counts(model)
        self.run(model)
        after = _hook_counts(model)
        assert after == before, f"hooks left behind: before {before}, after {after}"

    def test_all_classes_at_once_equal_one_class_at_a_time(self) -> None:
        model, images = self.make_model(), self.images()
        together = self.run(model, images)
        for j, k in enumerate(self.classes):
            alone = self.run(model, images, [k])
            torch.testing.assert_close(together[:, j : j + 1], alone, atol=self.atol, rtol=1e-4,
                                       msg=f"class {k}'s maps differ when asked with others")

    def test_batch_invariance(self) -> None:
        model, images = self.make_model(), self.images()
        whole = self.run(model, images)
        alone = self.run(model, images[-1:])
        torch.testing.assert_close(alone, whole[-1:], atol=self.atol, rtol=1e-4,
                                   msg="an image's maps depend on the rest of its batch")

    def test_deterministic(self) -> None:
        model, images = self.make_model(), self.images()
        torch.testing.assert_close(self.run(model, images), self.run(model, images))

    def test_frozen_model_and_no_grad_caller(self) -> None:
        model, images = self.make_model(), self.images()
        expected = self.run(model, images)
        for p in model.parameters():
            p.requires_grad_(False)
        torch.testing.assert_close(self.run(model, images), expected, atol=self.atol, rtol=1e-4,
                                   msg="a frozen model gives different maps")
        assert not any(p.requires_grad for p in model.parameters()), "requires_grad was switched on"
        for p in model.parameters():
            p.requires_grad_(True)
        # Evaluation code often runs inside no_grad: gradient methods must still work there.
        with torch.no_grad():
            inside = self.run(model, images)
        torch.testing.assert_close(inside, expected, atol=self.atol, rtol=1e-4,
                                   msg="maps differ when called inside torch.no_grad()")
