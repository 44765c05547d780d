"""The timm backbone plugin: name matching, channels, freezing, weights, attention."""

from __future__ import annotations

import time

import cxrbench_timm
import pytest
import timm
import torch
import torch.nn.functional as F
from cxrbench_timm import TimmBackbone, TimmOptions
from cxrbench_timm import weights as weights_module
from safetensors.torch import save_file

from cxrbench.errors import ConfigError, UsageError
from cxrbench.manager import build_plugin_manager
from cxrbench.options import parse_options
from cxrbench.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    pm = build_plugin_manager(plugins=[cxrbench_timm], entry_points=False, core=False)
    return Registry.from_plugin_manager(pm)


def build(registry: Registry, name: str, **options) -> TimmBackbone:
    cls = registry.get("backbone", name)
    return cls(cls.Options(**options), name=name)


def images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- names


def test_any_timm_name_is_served(registry):
    assert registry.get("backbone", "mobilenetv3_small_050") is TimmBackbone
    backbone = build(registry, "mobilenetv3_small_050")
    fmap = backbone(images())
    assert fmap.shape[:2] == (2, backbone.num_features) and fmap.ndim == 4


def test_timm_prefix_and_tags(registry):
    assert registry.get("backbone", "timm/resnet10t") is TimmBackbone
    assert TimmBackbone.matches("timm/resnet18.tv_in1k")
    torch.manual_seed(0)
    prefixed = build(registry, "timm/resnet10t")
    torch.manual_seed(0)
    bare = build(registry, "resnet10t")
    x = images()
    assert torch.equal(prefixed(x), bare(x))


def test_named_backbones_win_over_family(registry):
    cls = registry.get("backbone", "densenet121")
    assert cls is not TimmBackbone and issubclass(cls, TimmBackbone) and cls.NAME == "densenet121"
    assert "matches" not in cls.__dict__  # not a second family


def test_unknown_name_not_matched(registry):
    assert not TimmBackbone.matches("resnet9000")
    assert not TimmBackbone.matches("timm/")
    with pytest.raises(ConfigError, match="resnet9000"):
        registry.get("backbone", "resnet9000")
    with pytest.raises(UsageError, match="not a timm model"):
        TimmBackbone(TimmOptions(), name="timm")


# --------------------------------------------------------------------------- channels


def test_in_chans_3_sees_the_grey_image_repeated_as_a_view(registry):
    torch.manual_seed(0)
    backbone = build(registry, "resnet18", in_chans=3).eval()
    seen = {}
    first_conv = backbone.model.get_submodule(backbone.model.pretrained_cfg["first_conv"])
    first_conv.register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    x = images()
    fmap = backbone(x)
    assert seen["x"].shape[1] == 3 and seen["x"].stride(1) == 0  # expanded, not copied
    reference = backbone.model.forward_features(x.repeat(1, 3, 1, 1))
    assert torch.allclose(fmap, reference, atol=1e-6)


def test_in_chans_1_first_conv_takes_one_channel(registry):
    backbone = build(registry, "resnet18")
    assert backbone.model.conv1.weight.shape[1] == 1
    assert backbone.in_chans == 1


def test_options_validation(tmp_path):
    with pytest.raises(ValueError, match="in_chans"):
        TimmOptions(in_chans=2).validate()
    with pytest.raises(ValueError, match="model_kwargs"):
        TimmOptions(model_kwargs={"num_classes": 3}).validate()
    weights = tmp_path / "file.pth"
    weights.write_bytes(b"")
    TimmOptions(pretrained=str(weights), attention="fpa").validate()


def test_a_missing_weights_file_fails_grid_validation_with_its_yaml_path(tmp_path):
    with pytest.raises(ConfigError, match=r"backbones\[0\]\.options\.pretrained: .*weights file not found"):
        parse_options(TimmOptions, {"pretrained": str(tmp_path / "absent.pth")}, "backbones[0].options",
                      "backbone 'resnet18'")


def test_options_parse_from_yaml_values(tmp_path, monkeypatch):
    raw = {"pretrained": True, "attention": "se", "model_kwargs": {"a": 1}}
    parsed = parse_options(TimmOptions, raw, "p", "b")
    assert parsed.pretrained is True and parsed.attention == "se" and parsed.model_kwargs == {"a": 1}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"")
    assert parse_options(TimmOptions, {"pretrained": "w.pth"}, "p", "b").pretrained == "w.pth"
    with pytest.raises(ConfigError, match="attention"):
        parse_options(TimmOptions, {"attention": "cbam"}, "backbones[0].options", "backbone 'resnet18'")
    with pytest.raises(ConfigError, match="in_chans"):
        parse_options(TimmOptions, {"in_chans": 4}, "backbones[0].options", "backbone 'resnet18'")


def test_model_kwargs_reach_timm(registry):
    backbone = build(registry, "resnet18", model_kwargs={"drop_path_rate": 0.1})
    assert any(type(m).__name__ == "DropPath" for m in backbone.modules())
    with pytest.raises(UsageError, match="refused the options"):
        build(registry, "resnet18", model_kwargs={"no_such_argument": 1})


# --------------------------------------------------------------------------- freezing


def test_freeze_trains_the_head_only_and_keeps_batchnorm_fixed(registry):
    backbone = build(registry, "resnet18", freeze=True, attention="se")
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert all(p.requires_grad for p in backbone.attention.parameters())  # new module: trainable
    backbone.train()
    assert backbone.training and backbone.attention.training
    assert not any(m.training for m in backbone.model.modules())
    before = backbone.model.bn1.running_mean.clone()
    backbone(images() * 3 + 1)
    assert torch.equal(backbone.model.bn1.running_mean, before)
    backbone.eval().train()  # switching back and forth keeps it frozen
    assert not backbone.model.training


def test_unfrozen_batchnorm_updates_in_training(registry):
    backbone = build(registry, "resnet18").train()
    before = backbone.model.bn1.running_mean.clone()
    backbone(images() * 3 + 1)
    assert not torch.equal(backbone.model.bn1.running_mean, before)


# --------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def rgb_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("resnet18", in_chans=3).state_dict()  # with its 1000-class fc


@pytest.mark.parametrize("fmt", ["pth", "wrapped", "safetensors"])
def test_local_weights_adapt_the_first_conv(registry, tmp_path, rgb_resnet18_state, fmt):
    path = tmp_path / f"weights.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in rgb_resnet18_state.items()}, str(path))
    else:
        torch.save({"state_dict": rgb_resnet18_state} if fmt == "wrapped" else rgb_resnet18_state, path)
    backbone = build(registry, "resnet18", pretrained=str(path))
    conv = backbone.model.conv1.weight
    assert conv.shape[1] == 1
    # timm's rule for one-channel models: the RGB kernels summed.
    assert torch.allclose(conv, rgb_resnet18_state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(backbone.model.layer4[1].conv2.weight, rgb_resnet18_state["layer4.1.conv2.weight"])
    assert torch.equal(backbone.model.bn1.running_var, rgb_resnet18_state["bn1.running_var"])


def test_local_weights_into_three_channels_unchanged(registry, tmp_path, rgb_resnet18_state):
    path = tmp_path / "w.pth"
    torch.save(rgb_resnet18_state, path)
    backbone = build(registry, "resnet18", pretrained=str(path), in_chans=3)
    assert torch.equal(backbone.model.conv1.weight, rgb_resnet18_state["conv1.weight"])


def test_local_weights_missing_file(registry, tmp_path):
    with pytest.raises(UsageError, match="not found") as info:
        build(registry, "resnet18", pretrained=str(tmp_path / "absent.pth"))
    assert "\n" not in str(info.value)


def test_local_weights_of_another_architecture(registry, tmp_path):
    path = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), path)
    with pytest.raises(UsageError, match="does not fit timm model 'resnet18'") as info:
        build(registry, "resnet18", pretrained=str(path))
    assert "\n" not in str(info.value)


def test_local_weights_refuse_pickled_code(registry, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": object()}, path)
    with pytest.raises(UsageError, match="could not read"):
        build(registry, "resnet18", pretrained=str(path))


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it, so cached weights cannot mask the failure."""
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))


def test_pretrained_offline_fails_fast_with_one_line(registry, empty_hf_cache, monkeypatch):
    monkeypatch.setattr(weights_module, "host_reachable", lambda host, *a, **k: False)
    start = time.monotonic()
    with pytest.raises(UsageError, match="could not download pretrained weights") as info:
        build(registry, "resnet18", pretrained=True)
    assert time.monotonic() - start < 5
    assert str(info.value).startswith("backbone 'resnet18': ") and "\n" not in str(info.value)


@pytest.mark.slow
def test_pretrained_without_network_fails_within_30s(registry, empty_hf_cache):
    if weights_module.host_reachable("huggingface.co"):
        pytest.skip("huggingface.co is reachable: the offline path cannot be exercised here")
    start = time.monotonic()
    with pytest.raises(UsageError, match="offline"):
        build(registry, "densenet121", pretrained=True)
    assert time.monotonic() - start < 30


def test_pretrained_for_a_model_without_weights(registry):
    with pytest.raises(UsageError, match="no pretrained weights in timm for 'botnet50ts_256'"):
        build(registry, "botnet50ts_256", pretrained=True)


def test_probe_times_out_quickly():
    start = time.monotonic()
    # 192.0.2.0/24 is reserved for documentation (RFC 5737): never routable.
    assert not weights_module.host_reachable("192.0.2.1", timeout=0.5)
    assert time.monotonic() - start < 2


# --------------------------------------------------------------------------- attention


@pytest.mark.parametrize("attention", ["se", "spatial", "fpa"])
def test_attention_keeps_the_feature_map_shape(registry, attention):
    torch.manual_seed(0)
    plain = build(registry, "resnet18").eval()
    torch.manual_seed(0)
    backbone = build(registry, "resnet18", attention=attention).eval()
    if attention == "spatial":  # starts as the identity (gamma = 0): give it a say
        backbone.attention.gamma.data.fill_(0.5)
    x = images(size=96)
    fmap = backbone(x)
    assert fmap.shape == plain(x).shape == (2, 512, 3, 3)
    assert not torch.allclose(fmap, plain(x))  # same network weights: the module acted
    # The feature map is what `feature_map` outputs: after the attention module.
    seen = {}
    backbone.feature_map.register_forward_hook(lambda m, a, out: seen.update(out=out))
    assert torch.equal(backbone(x), seen["out"])


def test_spatial_attention_starts_as_identity(registry):
    torch.manual_seed(0)
    plain = build(registry, "resnet18").eval()
    torch.manual_seed(0)
    attended = build(registry, "resnet18", attention="spatial").eval()
    x = images()
    assert torch.allclose(plain(x), attended(x))
    assert attended.attention.gamma.item() == 0.0


# --------------------------------------------------------------------------- feature-map semantics


def test_densenet_feature_map_is_what_its_classifier_pools(registry):
    """timm's densenet121 applies the final ReLU inside ``norm5``, as torchvision's head does."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    backbone = build(registry, "densenet121", in_chans=3).eval()
    reference = torchvision.models.densenet121(weights=None).eval()
    missing, unexpected = reference.load_state_dict(backbone.model.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"classifier.weight", "classifier.bias"}
    x = images()
    fmap = backbone(x)
    with torch.no_grad():
        expected = F.relu(reference.features(x.expand(-1, 3, -1, -1)))  # torchvision's forward
    assert (fmap >= 0).all()
    assert torch.allclose(fmap, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0"])
def test_pooled_feature_map_equals_timm_pooled_features(registry, name):
    torch.manual_seed(0)
    backbone = build(registry, name).eval()
    pooled_model = timm.create_model(name, in_chans=1, num_classes=0).eval()  # timm's own avg pool
    pooled_model.load_state_dict(backbone.model.state_dict())
    x = images()
    with torch.no_grad():
        assert torch.allclose(backbone(x).mean(dim=(2, 3)), pooled_model(x), atol=1e-5)


def test_token_models_give_a_feature_map(registry):
    backbone = build(registry, "vit_tiny_patch16_224", model_kwargs={"img_size": 64}).eval()
    x = images()
    fmap = backbone(x)
    assert fmap.shape == (2, 192, 4, 4)
    tokens = backbone.model.forward_features(x)
    prefix = backbone.model.num_prefix_tokens
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, prefix + 1 * 4 + 2])


def test_output_stride_gives_finer_maps_and_keeps_old_cell_ids():
    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry
    from tests.conftest import builtin_plugins

    registry = Registry.from_plugin_manager(build_plugin_manager(plugins=builtin_plugins(), entry_points=False))
    plain = registry.create("backbone", "resnet10t")
    finer = registry.create("backbone", {"name": "resnet10t", "options": {"output_stride": 16}})
    x = torch.zeros((1, 1, 64, 64))
    with torch.no_grad():
        assert plain.build().eval().forward_features(x).shape[-2:] == (2, 2)
        assert finer.build().eval().forward_features(x).shape[-2:] == (4, 4)
    assert "output_stride" not in plain.key()["options"]  # at its default: the id of older cells
    assert finer.key()["options"]["output_stride"] == 16 and finer.label() == "resnet10t[output_stride=16]"
    with pytest.raises(Exception, match="output_stride must be 8, 16 or 32"):
        registry.create("backbone", {"name": "resnet10t", "options": {"output_stride": 12}})
