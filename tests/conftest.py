"""Shared fixtures: hermetic plugin managers, registries, a tiny grid."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry

torch.set_num_threads(1)

# CI must be reproducible: property tests replay the same examples on every run. Explore new
# ones locally with ``pytest --hypothesis-profile=explore``.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=2000, print_blob=True)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def builtin_plugins():
    import cxrbench_cam
    import cxrbench_executors
    import cxrbench_heads
    import cxrbench_timm

    return [("executors", cxrbench_executors), ("heads", cxrbench_heads), ("cam", cxrbench_cam),
            ("timm", cxrbench_timm)]


@pytest.fixture
def toy_pm():
    """Built-in executors/heads/localizers/backbones + the toy test plugin, no entry points."""
    from tests.plugins import toy

    return build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy)], entry_points=False)


@contextlib.contextmanager
def cli_with(pm):
    """An in-process ``cxrbench`` command line using ``pm``: ``invoke(*args) -> click Result``."""
    from click.testing import CliRunner

    from cxrbench import cli as cli_module

    cli_module.STATE.reset(pm)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli_module.cli, [str(a) for a in args], catch_exceptions=False)

    try:
        yield invoke
    finally:
        cli_module.STATE.reset()


@pytest.fixture
def run_cli(toy_pm):
    """The command line with the built-in components and the toy plugin."""
    with cli_with(toy_pm) as invoke:
        yield invoke


@pytest.fixture
def toy_registry(toy_pm):
    return Registry.from_plugin_manager(toy_pm)


TINY_GRID = {
    "name": "tiny",
    "seeds": [0],
    "datasets": [{"name": "toy", "options": {"num_images": 64, "image_size": 32}}],
    "backbones": [{"name": "tiny", "options": {"width": 4}}],
    "heads": ["avg", "max"],
    "localizers": ["cam", "gradcam"],
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
    "evaluation": {"bootstrap": 20},
}


@pytest.fixture
def tiny_grid_dict():
    import copy

    return copy.deepcopy(TINY_GRID)
