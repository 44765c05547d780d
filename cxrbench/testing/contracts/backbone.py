"""The backbone contract: what the host and the localizers rely on from ``forward_features``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ...interfaces import Backbone
from ...options import option_fields
from ..factories import synthetic_images
from .base import ComponentContract, assert_same_parameters, training

__all__ = ["BackboneContract"]


class BackboneContract(ComponentContract):
    """Contract checks for a backbone: feature-map shape, target layer, ``in_chans``,
    gradients, batch invariance and determinism.

    Class attributes to set: ``name`` (and ``options``, ``plugins``); optionally
    ``size``/``batch`` of the test images, ``in_chans_values`` to check, ``min_map_size``
    (smallest spatial side of the feature map at ``size``) and ``atol``.
    """

    kind = "backbone"
    size: ClassVar[int] = 64
    batch: ClassVar[int] = 2
    in_chans_values: ClassVar[tuple[int, ...]] = (1, 3)
    min_map_size: ClassVar[int] = 2
    atol: ClassVar[float] = 1e-4

    def make_backbone(self, **overrides: Any) -> Backbone:
        """A fresh backbone (seed 0) with the contract's options and ``overrides``."""
        torch.manual_seed(0)
        cls = self.component_class()
        return cls(self.parsed_options(**overrides), name=self.name)

    def backbone(self, **overrides: Any) -> Backbone:
        """The backbone, built once per class and set of overrides; gradients cleared."""
        model = self._cached(tuple(sorted(overrides.items())), lambda: self.make_backbone(**overrides))
        model.zero_grad(set_to_none=True)
        return model

    def images(self, n: int | None = None) -> Tensor:
        return synthetic_images(n or self.batch, self.size)

    def test_feature_map_shape(self) -> None:
        model = self.backbone().eval()
        with torch.no_grad():
            fmap = model.forward_features(self.images())
        assert isinstance(fmap, Tensor) and fmap.ndim == 4, f"feature map {tuple(fmap.shape)}, not N x C x h x w"
        assert fmap.shape[:2] == (self.batch, model.num_features), (
            f"feature map {tuple(fmap.shape)}: expected batch {self.batch} and num_features {model.num_features}"
        )
        assert min(fmap.shape[2:]) >= self.min_map_size, f"feature map {tuple(fmap.shape)} at {self.size} px"
        assert fmap.is_floating_point() and torch.isfinite(fmap).all()

    def test_forward_is_forward_features(self) -> None:
        model = self.backbone().eval()
        x = self.images()
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.forward_features(x))

    def test_target_layer_outputs_the_feature_map(self) -> None:
        model = self.backbone().eval()
        try:
            layer = model.get_submodule(model.target_layer)
        except AttributeError:
            raise AssertionError(f"target_layer {model.target_layer!r} is not a submodule of the backbone") from None
        seen: dict[str, Tensor] = {}
        handle = layer.register_forward_hook(lambda module, args, out: seen.update(out=out))
        try:
            with torch.no_grad():
                fmap = model.forward_features(self.images())
        finally:
            handle.remove()
        assert "out" in seen, f"target_layer {model.target_layer!r} did not run in forward_features"
        out = seen["out"]
        # Gradient localizers hook this layer and differentiate the head w.r.t. its output.
        assert out is fmap or (out.shape == fmap.shape and torch.equal(out, fmap)), (
            f"target_layer {model.target_layer!r} outputs {tuple(out.shape)}, not the feature map {tuple(fmap.shape)}"
        )

    def test_in_chans(self) -> None:
        accepts = "in_chans" in option_fields(self.component_class().Options)
        for in_chans in self.in_chans_values if accepts else (None,):
            model = self.backbone(in_chans=in_chans) if in_chans is not None else self.backbone()
            if in_chans is not None:
                assert model.in_chans == in_chans, f"in_chans={in_chans} built in_chans={model.in_chans}"
            assert model.in_chans in (1, 3)
            # The host always feeds one grey channel, whatever the first layer expects.
            with torch.no_grad():
                fmap = model.eval().forward_features(self.images())
            assert fmap.shape[:2] == (self.batch, model.num_features)

    def test_gradients_reach_the_input_and_the_parameters(self) -> None:
        with training(self.backbone()) as model:
            x = self.images().requires_grad_(True)
            model.forward_features(x).square().mean().backward()
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            assert trainable, "no trainable parameters"
            grads = [p.grad for _, p in trainable if p.grad is not None]
            assert grads, "backward reached none of the parameters"
            assert all(torch.isfinite(g).all() for g in grads), "non-finite parameter gradients"
            assert any(g.abs().sum() > 0 for g in grads), "all parameter gradients are zero"
            assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    def test_batch_invariance(self) -> None:
        model = self.backbone().eval()
        x = self.images()
        with torch.no_grad():
            whole = model.forward_features(x)
            alone = model.forward_features(x[-1:])
        torch.testing.assert_close(alone, whole[-1:], atol=self.atol, rtol=1e-3,
                                   msg="in eval mode an image's feature map depends on the rest of its batch")

    def test_deterministic(self) -> None:
        model = self.backbone().eval()
        x = self.images()
        with torch.no_grad():
            first = model.forward_features(x)
            second = model.forward_features(x)
        torch.testing.assert_close(second, first, msg="two eval forwards of the same batch differ")
        # Parameters, not buffers: other checks ran train-mode forwards that moved BatchNorm statistics.
        assert_same_parameters(model, self.make_backbone())
