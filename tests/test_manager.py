"""Entry-point loading: a plugin registered the way a pip-installed package registers."""

import importlib.metadata
import sys
import textwrap

import pytest

from cxrbench.errors import PluginError
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry


class FakeDist:
    def __init__(self, name, version="1.2.3"):
        self.metadata = {"Name": name}
        self.version = version


def make_entry_point(name, module, dist="cxrbench-thirdparty"):
    ep = importlib.metadata.EntryPoint(name=name, value=module, group="cxrbench")
    attach = getattr(ep, "_for", None)  # attach a distribution, as installed packages have
    return attach(FakeDist(dist)) if attach else ep


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("cxrbench_thirdparty") or m.startswith("broken_plugin")]:
        sys.modules.pop(mod)


def test_third_party_plugin_via_entry_point(plugin_dir, monkeypatch):
    (plugin_dir / "cxrbench_thirdparty_head.py").write_text(textwrap.dedent('''
        import torch
        import cxrbench
        from cxrbench.interfaces import PoolingHead

        class MedianHead(PoolingHead):
            """Spatial median pooling."""
            NAME = "median"

            def __init__(self, num_features, num_classes, options):
                super().__init__(num_features, num_classes, options)
                self.fc = torch.nn.Linear(num_features, num_classes)

            def forward(self, fmap):
                return self.fc(fmap.flatten(2).median(dim=2).values), None

        @cxrbench.hookimpl
        def cxrbench_register_pooling_heads():
            return MedianHead
    '''))
    eps = [make_entry_point("median", "cxrbench_thirdparty_head")]
    monkeypatch.setattr("cxrbench.manager._entry_points", lambda: eps)
    pm = build_plugin_manager()
    info = pm.infos["median"]
    assert info.distribution == "cxrbench-thirdparty" and not info.builtin and info.version == "1.2.3"
    registry = Registry.from_plugin_manager(pm)
    assert registry.get("head", "median").__name__ == "MedianHead"
    assert registry.provider("head", "median") == "median"


def test_broken_plugin_gives_one_named_line(plugin_dir, monkeypatch):
    (plugin_dir / "broken_plugin.py").write_text("import does_not_exist_anywhere\n")
    eps = [make_entry_point("broken", "broken_plugin", dist="cxrbench-broken")]
    monkeypatch.setattr("cxrbench.manager._entry_points", lambda: eps)
    with pytest.raises(PluginError) as info:
        build_plugin_manager()
    msg = str(info.value)
    assert msg.startswith("Error importing plugin 'broken' from cxrbench-broken: ModuleNotFoundError")
    assert "\n" not in msg


def test_misspelt_hook_fails_at_startup(plugin_dir, monkeypatch):
    (plugin_dir / "broken_plugin_hook.py").write_text(textwrap.dedent('''
        import cxrbench

        @cxrbench.hookimpl
        def cxrbench_register_backbone():
            return []
    '''))
    eps = [make_entry_point("typo", "broken_plugin_hook", dist="cxrbench-typo")]
    monkeypatch.setattr("cxrbench.manager._entry_points", lambda: eps)
    with pytest.raises(PluginError) as info:
        build_plugin_manager()
    msg = str(info.value)
    assert msg.startswith("plugin 'typo' from cxrbench-typo: unknown hook 'cxrbench_register_backbone'")
    assert msg.endswith("; did you mean 'cxrbench_register_backbones'?") and "\n" not in msg


def test_builtins_are_entry_points():
    names = {ep.name for ep in importlib.metadata.entry_points(group="cxrbench")}
    assert {"phantom", "timm", "heads", "cam", "executors"} <= names
    pm = build_plugin_manager()
    assert all(pm.infos[n].builtin for n in ("phantom", "timm", "heads", "cam", "executors"))


def test_core_never_imports_builtin_plugins():
    import pathlib

    core = pathlib.Path(__file__).resolve().parents[1] / "cxrbench"
    for path in core.glob("*.py"):
        text = path.read_text()
        for plugin in ("cxrbench_phantom", "cxrbench_timm", "cxrbench_heads", "cxrbench_cam", "cxrbench_nih",
                       "cxrbench_chexpert", "cxrbench_executors", "cxrbench_ray"):
            assert f"import {plugin}" not in text and f"from {plugin}" not in text, (path.name, plugin)


@pytest.mark.parametrize("module, text, expected", [
    ("broken_plugin_cli", "import does_not_exist_anywhere\n",
     "error: Error importing plugin 'broken' from cxrbench-broken: ModuleNotFoundError: "
     "No module named 'does_not_exist_anywhere'"),
    ("broken_plugin_cli_hook", "import cxrbench\n\n@cxrbench.hookimpl\ndef cxrbench_register_head():\n    return []\n",
     "error: plugin 'broken' from cxrbench-broken: unknown hook 'cxrbench_register_head'"),
    ("broken_plugin_cli_other", "import cxrbench\n\n@cxrbench.hookimpl\ndef unrelated_name():\n    pass\n",
     "error: plugin 'broken' from cxrbench-broken: unknown hook 'unrelated_name'"),
])
def test_cli_exits_4_with_one_line_naming_plugin_and_distribution(plugin_dir, monkeypatch, module, text, expected):
    from click.testing import CliRunner

    from cxrbench import cli as cli_module

    (plugin_dir / f"{module}.py").write_text(text)
    eps = [make_entry_point("broken", module, dist="cxrbench-broken")]
    monkeypatch.setattr("cxrbench.manager._entry_points", lambda: eps)
    cli_module.STATE.reset()
    try:
        result = CliRunner().invoke(cli_module.cli, ["list", "heads"], catch_exceptions=False)
    finally:
        cli_module.STATE.reset()
    assert result.exit_code == 4
    assert result.output.startswith(expected)
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
