"""Contract tests over every registered backbone and pooling head.

The names come from a hermetic registry built from the backbone and head plugins, so a
backbone or head added to those plugins is covered here without a new test. A family
class (one that serves many names through ``matches``) is tested through the example
names it lists in ``EXAMPLES``.
"""

from __future__ import annotations

import cxrbench_cam
import cxrbench_heads
import cxrbench_timm
import pytest
import torch

from cxrbench.interfaces import Backbone, Classifier, PoolingHead
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry

SIZE = 64  # the smallest input every registered net turns into a map larger than 1x1
CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion"]

REGISTRY = Registry.from_plugin_manager(
    build_plugin_manager(plugins=[cxrbench_timm, cxrbench_heads], entry_points=False, core=False)
)


def _backbone_names() -> list[str]:
    names = []
    for name in REGISTRY.names("backbone"):
        cls = REGISTRY.get("backbone", name)
        if "matches" in cls.__dict__ and name == cls.NAME:  # a family: test its examples
            names.extend(getattr(cls, "EXAMPLES", ()))
        else:
            names.append(name)
    return names


BACKBONES = _backbone_names()
HEADS = REGISTRY.names("head")
_CACHE: dict[tuple[str, int], Backbone] = {}


def backbone(name: str, in_chans: int = 1) -> Backbone:
    """Build each (name, in_chans) once per session: building dominates the cost."""
    key = (name, in_chans)
    if key not in _CACHE:
        cls = REGISTRY.get("backbone", name)
        torch.manual_seed(0)
        _CACHE[key] = cls(cls.Options(in_chans=in_chans), name=name)
    model = _CACHE[key]
    model.zero_grad(set_to_none=True)
    return model


def head(name: str, num_features: int) -> PoolingHead:
    cls = REGISTRY.get("head", name)
    torch.manual_seed(0)
    return cls(num_features, len(CLASSES), cls.Options())


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def first_parameter(module: torch.nn.Module) -> torch.nn.Parameter:
    return next(p for p in module.parameters() if p.requires_grad)


def test_registry_is_populated():
    assert {"resnet18", "densenet121", "efficientnet_b0", "timm"} <= set(REGISTRY.names("backbone"))
    assert set(HEADS) == {"avg", "max", "avgmax", "lse", "pcam"}
    assert BACKBONES and "timm" not in BACKBONES


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_contract(name, in_chans):
    model = backbone(name, in_chans).train()
    assert model.in_chans == in_chans
    seen = {}
    layer = model.get_submodule(model.target_layer)
    handle = layer.register_forward_hook(lambda m, a, out: seen.update(out=out))
    try:
        fmap = model.forward_features(images())
    finally:
        handle.remove()
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, model.num_features)
    assert fmap.shape[2] >= 2 and fmap.shape[3] >= 2
    assert seen["out"] is fmap  # the default target layer outputs exactly the feature map
    assert torch.equal(model(images()), fmap)  # forward is forward_features
    fmap.square().mean().backward()
    grad = first_parameter(model).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("head_name", HEADS)
@pytest.mark.parametrize("name", BACKBONES)
def test_head_contract_on_backbone_features(name, head_name):
    with torch.no_grad():
        fmap = backbone(name).eval().forward_features(images())
    fmap.requires_grad_(True)
    pool = head(head_name, fmap.shape[1]).eval()
    logits, logit_map = pool(fmap)
    k = len(CLASSES)
    assert logits.shape == (2, k) and torch.isfinite(logits).all()
    if pool.YIELDS_LOGIT_MAP:
        assert logit_map is not None and logit_map.shape == (2, k, *fmap.shape[2:])
    else:
        assert logit_map is None
    logits.sum().backward()
    assert fmap.grad is not None and fmap.grad.abs().sum() > 0
    assert all(p.grad is not None for p in pool.parameters())

    weights = pool.class_weights()
    if weights is None:
        return
    weight, bias = weights
    assert weight.shape == (k, fmap.shape[1]) and bias.shape == (k,)
    with torch.no_grad():
        # Only class 1's row changes: only class 1's logit may change (classes are independent).
        original = weight.clone()
        weight[1] += torch.randn(weight.shape[1])
        changed, _ = pool(fmap)
        assert torch.equal(changed[:, [0, 2]], logits[:, [0, 2]].detach())
        assert not torch.allclose(changed[:, 1], logits[:, 1])
        # The classifier is the whole story: without weights every logit is its bias.
        weight.zero_()
        zeroed, _ = pool(fmap)
        assert torch.allclose(zeroed, bias.expand_as(zeroed))
        weight.copy_(original)


@pytest.mark.parametrize("name", BACKBONES)
def test_avg_head_logits_are_the_mean_of_cam_maps(name):
    with torch.no_grad():
        fmap = backbone(name).eval().forward_features(images())
        pool = head("avg", fmap.shape[1]).eval()
        logits, _ = pool(fmap)
        weight, bias = pool.class_weights()
        cam = torch.einsum("kc,nchw->nkhw", weight, fmap) + bias[:, None, None]
    assert torch.allclose(logits, cam.mean(dim=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("head_name", HEADS)
@pytest.mark.parametrize("name", BACKBONES)
def test_classifier_end_to_end(name, head_name):
    features = backbone(name)
    model = Classifier(features, head(head_name, features.num_features), CLASSES).eval()
    x = images()
    with torch.no_grad():  # gradients through each backbone are checked above, once per backbone
        logits, fmap, logit_map = model.forward_maps(x)
        assert torch.equal(model(x), logits)
    assert logits.shape == (2, len(CLASSES))
    assert fmap.shape[:2] == (2, features.num_features)
    assert (logit_map is not None) == model.head.YIELDS_LOGIT_MAP
    assert model.get_submodule(model.default_target_layer) is features.feature_map


@pytest.mark.parametrize("head_name", HEADS)
def test_classifier_trains_end_to_end(head_name):
    # The smallest registered backbone keeps this cheap; every backbone gets its own
    # gradient check in test_backbone_contract.
    name = min(BACKBONES, key=lambda n: sum(p.numel() for p in backbone(n).parameters()))
    features = backbone(name)
    model = Classifier(features, head(head_name, features.num_features), CLASSES).train()
    logits = model(images())
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    grad = first_parameter(features).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())


# --------------------------------------------------------------------------- localizers on every backbone

LOCALIZERS = Registry.from_plugin_manager(build_plugin_manager(plugins=[cxrbench_cam], entry_points=False, core=False))
# Score-CAM reads the target layer through the same capture as Eigen-CAM (checked here) but runs one
# forward per feature channel: thousands on the wide backbones, too slow for a per-backbone test.
LOCALIZER_NAMES = [n for n in LOCALIZERS.names("localizer") if n != "scorecam"]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_localizer_explains_every_backbone(name):
    """Each localizer, at the backbone's default target layer, gives all-class maps on it and leaves it as found."""
    features = backbone(name).eval()
    x = images()
    classes = list(range(len(CLASSES)))
    for head_name in ("avg", "pcam"):
        model = Classifier(features, head(head_name, features.num_features), CLASSES).eval()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for loc_name in LOCALIZER_NAMES:
            cls = LOCALIZERS.get("localizer", loc_name)
            localizer = cls(cls.Options())
            if localizer.unsupported_reason(model) is not None:
                assert (loc_name, head_name) == ("pcam", "avg"), (loc_name, head_name)  # only PCAM needs its head
                continue
            maps = localizer(model, x, classes)
            assert maps.shape == (2, len(CLASSES), SIZE, SIZE), (loc_name, head_name)
            assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, (loc_name, head_name)
            assert maps.amax(dim=(-2, -1)).gt(0).any(), (loc_name, head_name)  # not all blank
        assert all(not m._forward_hooks and not m.training for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
