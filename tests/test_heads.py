"""Pooling heads: math against independent references, limits and numerical stability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from cxrbench_heads import AvgHead, AvgMaxHead, HeadOptions, LseHead, LseOptions, MaxHead, PcamHead
from timm.layers import adaptive_avgmax_pool2d

C, K = 6, 3


@pytest.fixture
def fmap() -> torch.Tensor:
    return torch.randn(2, C, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def lse(gamma: float, dropout: float = 0.0) -> LseHead:
    return LseHead(C, K, LseOptions(dropout=dropout, gamma=gamma)).double().eval()


def test_avg_and_max_pool_match_torch(fmap):
    assert torch.allclose(AvgHead(C, K).pool(fmap), F.adaptive_avg_pool2d(fmap, 1).flatten(1))
    assert torch.allclose(MaxHead(C, K).pool(fmap), F.adaptive_max_pool2d(fmap, 1).flatten(1))


def test_avgmax_matches_timm(fmap):
    expected = adaptive_avgmax_pool2d(fmap, 1).flatten(1)
    assert torch.allclose(AvgMaxHead(C, K).pool(fmap), expected)


def test_lse_matches_direct_formula(fmap):
    gamma = 3.0
    # float64 and moderate gamma: the unshifted textbook formula is exact enough here.
    expected = torch.log(torch.exp(gamma * fmap).mean(dim=(2, 3))) / gamma
    assert torch.allclose(lse(gamma).pool(fmap), expected, atol=1e-12)


def test_lse_limits(fmap):
    mean, peak = fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))
    assert torch.allclose(lse(1e-4).pool(fmap), mean, atol=1e-3)
    # At large gamma the gap to the max is at most log(h*w)/gamma.
    assert torch.allclose(lse(1e4).pool(fmap), peak, atol=math.log(20) / 1e4 + 1e-9)
    values = lse(10.0).pool(fmap)
    assert torch.all(values >= mean - 1e-12) and torch.all(values <= peak + 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_lse_stable_at_gamma_1000(dtype):
    head = LseHead(C, K, LseOptions(gamma=1000.0)).to(dtype).eval()
    # exp(1000 * 80) overflows every float type: only the shifted form survives.
    x = (torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(1)) * 40 + 80).to(dtype)
    x.requires_grad_(True)
    pooled = head.pool(x)
    assert torch.isfinite(pooled).all()
    peak = x.detach().amax(dim=(2, 3)).float()
    assert torch.all(pooled.float() <= peak + 1e-2)
    assert torch.all(pooled.float() >= peak - math.log(16) / 1000 - 0.1)
    logits, _ = head(x)
    logits.sum().backward()
    assert torch.isfinite(logits).all() and torch.isfinite(x.grad).all()


def test_lse_gradient_is_softmax_weights(fmap):
    gamma = 2.0
    x = fmap.clone().requires_grad_(True)
    lse(gamma).pool(x).sum().backward()
    expected = torch.softmax(gamma * fmap.flatten(2), dim=-1).view_as(fmap)
    assert torch.allclose(x.grad, expected, atol=1e-12)


def pcam_loop_reference(head: PcamHead, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PCAM written out class by class, following the paper's description."""
    weight, bias = head.classifier.weight, head.classifier.bias
    logits, maps = [], []
    for k in range(weight.shape[0]):
        conv = F.conv2d(fmap, weight[k].view(1, -1, 1, 1), bias[k].view(1))  # N x 1 x h x w
        prob = torch.sigmoid(conv)
        w = prob / prob.sum(dim=(2, 3), keepdim=True)
        pooled = (w * fmap).sum(dim=(2, 3))  # N x C
        logits.append(pooled @ weight[k] + bias[k])
        maps.append(conv[:, 0])
    return torch.stack(logits, dim=1), torch.stack(maps, dim=1)


def test_pcam_matches_loop_reference(fmap):
    head = PcamHead(C, K, HeadOptions()).double().eval()
    logits, logit_map = head(fmap)
    ref_logits, ref_map = pcam_loop_reference(head, fmap)
    assert logits.shape == (2, K) and logit_map.shape == (2, K, 5, 4)
    assert torch.allclose(logits, ref_logits, atol=1e-10)
    assert torch.allclose(logit_map, ref_map, atol=1e-10)


def test_pcam_finite_when_every_probability_underflows():
    head = PcamHead(C, K).eval()
    with torch.no_grad():
        head.classifier.bias.fill_(-500.0)  # sigmoid(-500) is 0 in float32: p / sum(p) would be 0/0
    x = torch.rand(2, C, 3, 3)
    logits, logit_map = head(x)
    assert torch.isfinite(logits).all() and torch.isfinite(logit_map).all()


def test_pcam_many_classes_match_reference():
    head = PcamHead(C, 50).double().eval()
    x = torch.randn(2, C, 3, 3, dtype=torch.float64)
    logits, _ = head(x)
    ref, _ = pcam_loop_reference(head, x)
    assert torch.allclose(logits, ref, atol=1e-10)


@pytest.mark.parametrize("head_cls", [AvgHead, MaxHead, AvgMaxHead, LseHead, PcamHead])
def test_dropout_option_acts_in_training_only(head_cls):
    head = head_cls(C, K, head_cls.Options(dropout=0.5))
    x = torch.rand(4, C, 3, 3) + 0.5
    torch.manual_seed(0)
    train_a, _ = head.train()(x)
    train_b, _ = head(x)
    eval_a, _ = head.eval()(x)
    eval_b, _ = head(x)
    assert not torch.allclose(train_a, train_b)
    assert torch.equal(eval_a, eval_b)


def test_options_validation():
    with pytest.raises(ValueError, match="dropout"):
        HeadOptions(dropout=1.0).validate()
    with pytest.raises(ValueError, match="gamma"):
        LseOptions(gamma=0.0).validate()
    LseOptions(dropout=0.5, gamma=1000.0).validate()


def test_yields_logit_map_flags():
    assert PcamHead.YIELDS_LOGIT_MAP
    assert not any(h.YIELDS_LOGIT_MAP for h in (AvgHead, MaxHead, AvgMaxHead, LseHead))
