import pytest

import cxrbench
from cxrbench.errors import ConfigError, PluginError
from cxrbench.interfaces import Localizer
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry


class LocA(Localizer):
    NAME = "same"

    def __call__(self, model, images, classes):
        raise NotImplementedError


class LocB(LocA):
    NAME = "same"


class PluginA:
    @cxrbench.hookimpl
    def cxrbench_register_localizers(self):
        return LocA


class PluginB:
    @cxrbench.hookimpl
    def cxrbench_register_localizers(self):
        return [LocB]


def test_duplicate_names_name_both_providers():
    pm = build_plugin_manager(plugins=[("a", PluginA()), ("b", PluginB())], entry_points=False)
    with pytest.raises(PluginError) as info:
        Registry.from_plugin_manager(pm)
    msg = str(info.value)
    assert "duplicate localizer name 'same'" in msg
    assert "LocA" in msg and "LocB" in msg and "plugin 'a'" in msg and "plugin 'b'" in msg
    assert "test_registry" in msg  # the modules are named


def test_unknown_name_suggests_closest(toy_registry):
    with pytest.raises(ConfigError) as info:
        toy_registry.get("backbone", "densnet121", "backbones[1]")
    msg = str(info.value)
    assert msg.startswith("backbones[1]: unknown backbone 'densnet121'; did you mean 'densenet121'?")
    assert "resnet18" in msg  # the valid names are listed


def test_family_names_resolve(toy_registry):
    cls = toy_registry.get("backbone", "mobilenetv3_small_050")
    assert cls.NAME == "timm"
    assert toy_registry.provider("backbone", "mobilenetv3_small_050") == "timm"


def test_wrong_base_class_is_refused():
    class Bad:
        @cxrbench.hookimpl
        def cxrbench_register_heads(self):
            return None

    class NotAHead:
        @cxrbench.hookimpl
        def cxrbench_register_pooling_heads(self):
            return object

    pm = build_plugin_manager(plugins=[("nah", NotAHead())], entry_points=False)
    with pytest.raises(PluginError, match="not a subclass of cxrbench.interfaces.PoolingHead"):
        Registry.from_plugin_manager(pm)
    with pytest.raises(PluginError, match="unknown hook 'cxrbench_register_heads'"):
        build_plugin_manager(plugins=[("bad", Bad())], entry_points=False)


def test_components_of(toy_registry):
    assert toy_registry.components_of("toy") == {"dataset": ["toy"], "backbone": ["exploding", "tiny"]}
