"""The pooling-head contract: logits, the logit map, and ``class_weights`` as the classifier CAM uses."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ...interfaces import PoolingHead
from .base import ComponentContract, assert_same_parameters, training

__all__ = ["HeadContract"]


class HeadContract(ComponentContract):
    """Contract checks for a pooling head: output shapes, logit map, gradients,
    ``class_weights`` (a linear classifier, one row per class), batch invariance and
    determinism, on several feature-map sizes.

    Class attributes: ``name`` (and ``options``, ``plugins``); optionally
    ``num_features``, ``num_classes``, ``batch``, ``map_sizes``.
    """

    kind = "head"
    num_features: ClassVar[int] = 16
    num_classes: ClassVar[int] = 3
    batch: ClassVar[int] = 2
    map_sizes: ClassVar[tuple[tuple[int, int], ...]] = ((7, 7), (1, 1), (3, 5))
    atol: ClassVar[float] = 1e-5

    def make_head(self) -> PoolingHead:
        torch.manual_seed(0)
        cls = self.component_class()
        return cls(self.num_features, self.num_classes, self.parsed_options())

    def head(self) -> PoolingHead:
        pool = self._cached("head", self.make_head)
        pool.zero_grad(set_to_none=True)
        return pool

    def features(self, hw: tuple[int, int] = (7, 7), n: int | None = None) -> Tensor:
        """A non-negative feature map, like a post-ReLU backbone output."""
        generator = torch.Generator().manual_seed(1)
        return torch.randn(n or self.batch, self.num_features, *hw, generator=generator).clamp_min_(0) + 0.01

    def test_output_shapes(self) -> None:
        pool = self.head().eval()
        k = self.num_classes
        for hw in self.map_sizes:
            with torch.no_grad():
                out = pool(self.features(hw))
            assert isinstance(out, tuple) and len(out) == 2, "forward must return (logits, logit map or None)"
            logits, logit_map = out
            assert logits.shape == (self.batch, k), f"logits {tuple(logits.shape)} for a {hw} map"
            assert torch.isfinite(logits).all()
            if pool.YIELDS_LOGIT_MAP:
                assert logit_map is not None and logit_map.shape == (self.batch, k, *hw), (
                    f"YIELDS_LOGIT_MAP is True but the logit map is {None if logit_map is None else logit_map.shape}"
                )
            else:
                assert logit_map is None, "a logit map was returned but YIELDS_LOGIT_MAP is False"

    def test_gradients_reach_the_features_and_every_parameter(self) -> None:
        with training(self.head()) as pool:
            fmap = self.features().requires_grad_(True)
            logits, _ = pool(fmap)
            logits.sum().backward()
            assert fmap.grad is not None and torch.isfinite(fmap.grad).all() and fmap.grad.abs().sum() > 0
            missing = [n for n, p in pool.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"no gradient reached {missing}"

    def test_class_weights_are_the_linear_classifier(self) -> None:
        pool = self.head().eval()
        weights = pool.class_weights()
        if weights is None:
            return  # not a linear classifier: CAM does not apply, nothing to check
        weight, bias = weights
        k, c = self.num_classes, self.num_features
        assert weight.shape == (k, c) and bias.shape == (k,), (
            f"class_weights: weight {tuple(weight.shape)} (expected {(k, c)}), bias {tuple(bias.shape)}"
        )
        fmap = self.features()
        with torch.no_grad():
            logits, _ = pool(fmap)
            original = weight.detach().clone()
            try:
                # Class 1's row moves only class 1's logit: classes are independent.
                weight[1] += torch.randn(c, generator=torch.Generator().manual_seed(2))
                changed, _ = pool(fmap)
                others = [i for i in range(k) if i != 1]
                torch.testing.assert_close(changed[:, others], logits[:, others],
                                           msg="changing class 1's weights changed another class's logit")
                assert not torch.allclose(changed[:, 1], logits[:, 1]), "class_weights() are not the weights used"
                # The classifier is the whole story: without weights every logit is its bias.
                weight.zero_()
                zeroed, _ = pool(fmap)
                torch.testing.assert_close(zeroed, bias.detach().expand_as(zeroed),
                                           msg="with zero class weights the logits are not the bias")
            finally:
                weight.copy_(original)

    def test_batch_invariance(self) -> None:
        pool = self.head().eval()
        fmap = self.features(n=max(self.batch, 2))
        with torch.no_grad():
            whole, whole_map = pool(fmap)
            alone, alone_map = pool(fmap[-1:])
        torch.testing.assert_close(alone, whole[-1:], atol=self.atol, rtol=1e-4)
        if whole_map is not None:
            torch.testing.assert_close(alone_map, whole_map[-1:], atol=self.atol, rtol=1e-4)

    def test_deterministic(self) -> None:
        pool = self.head().eval()
        fmap = self.features()
        with torch.no_grad():
            torch.testing.assert_close(pool(fmap)[0], pool(fmap)[0])
        assert_same_parameters(pool, self.make_head())
