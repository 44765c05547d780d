"""The plugin authors' API, cxrbench.testing: its contract mixins pass on good components
(built-ins, the tiny test components, the README's GeM example) and fail on broken ones.

Broken components are checked two ways: by calling a mixin's check directly (it must
raise AssertionError), and by running a generated test module with pytester (a
subclass collects, good components pass, broken ones fail by name).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cxrbench_cam
import cxrbench_heads
import cxrbench_phantom
import cxrbench_timm
import pytest
import torch
from torch import nn

import cxrbench
from cxrbench import testing
from cxrbench.testing import (
    BackboneContract,
    DatasetContract,
    HeadContract,
    LocalizerContract,
    TinyBackbone,
    TinyDataset,
)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


def _load_example(name: str, path: Path):
    """Import the example plugin module from its file under its own name, without touching sys.path.

    A distinct module name keeps it apart from the entry-point test's ``cxrbench_gem``.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


gem = _load_example("cxrbench_gem_example", REPO / "examples" / "cxrbench-gem" / "cxrbench_gem.py")


# --------------------------------------------------------------------------- good components pass


class TestResnet18Contract(BackboneContract):
    name = "resnet18"
    options = {"pretrained": False}
    plugins = (cxrbench_timm,)


class TestTinyBackboneContract(BackboneContract):
    name = "testing_tiny"
    plugins = (("testing", testing.testing_plugin),)
    size = 32


class TestAvgHeadContract(HeadContract):
    name = "avg"
    plugins = (cxrbench_heads,)


class TestLseHeadContract(HeadContract):
    name = "lse"
    options = {"gamma": 5.0}
    plugins = (cxrbench_heads,)


class TestPcamHeadContract(HeadContract):
    name = "pcam"
    plugins = (cxrbench_heads,)


class TestGeMExampleHeadContract(HeadContract):
    """The README's third-party example plugin, through the same mixin."""

    name = "gem"
    options = {"p": 4.0}
    plugins = (gem,)


class TestCamContract(LocalizerContract):
    name = "cam"
    plugins = (cxrbench_cam,)


class TestGradCamContract(LocalizerContract):
    name = "gradcam"
    plugins = (cxrbench_cam,)


class TestGradCamPlusPlusContract(LocalizerContract):
    name = "gradcampp"
    plugins = (cxrbench_cam,)


class TestPcamLocalizerContract(LocalizerContract):
    """Needs a logit-map head: ``model_head = "auto"`` finds one."""

    name = "pcam"
    plugins = (cxrbench_cam,)


class TestPhantomContract(DatasetContract):
    name = "phantom"
    options = {"num_images": 24, "image_size": 64}
    plugins = (cxrbench_phantom,)
    images_per_split = 2


class TestTinyDatasetContract(DatasetContract):
    name = "testing_tiny"
    plugins = (("testing", testing.testing_plugin),)


# --------------------------------------------------------------------------- broken components fail


class LeakyCAM(cxrbench_cam.CAM):
    """CAM that leaves a forward hook on the model."""

    NAME = "leaky_cam"

    def __call__(self, model, images, classes):
        model.backbone.feature_map.register_forward_hook(lambda module, args, out: None)
        return super().__call__(model, images, classes)


class OverflowingCAM(cxrbench_cam.CAM):
    """CAM whose maps reach 2."""

    NAME = "overflowing_cam"

    def __call__(self, model, images, classes):
        return 2 * super().__call__(model, images, classes)


class ModeChangingCAM(cxrbench_cam.CAM):
    """CAM that switches the model to eval mode and leaves it there."""

    NAME = "mode_changing_cam"

    def __call__(self, model, images, classes):
        model.eval()
        return super().__call__(model, images, classes)


class InplaceFlippingCAM(cxrbench_cam.CAM):
    """CAM that turns the model's in-place ReLUs off (as some hook libraries do) and leaves them off."""

    NAME = "inplace_flipping_cam"

    def __call__(self, model, images, classes):
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        return super().__call__(model, images, classes)


class BatchMixingCAM(cxrbench_cam.CAM):
    """CAM normalised over the whole batch: an image's map depends on its neighbours."""

    NAME = "batch_mixing_cam"

    def __call__(self, model, images, classes):
        maps = super().__call__(model, images, classes)
        return maps * maps.mean(dim=(1, 2, 3), keepdim=True) / maps.mean().clamp_min(1e-6) / 2


class DroppedChannelBackbone(TinyBackbone):
    """Ignores ``in_chans``: its first layer always takes one channel."""

    NAME = "dropped_channel"

    def __init__(self, options=None, name=None):
        super().__init__(options, name)
        self.in_chans = 1


class BatchStatsBackbone(TinyBackbone):
    """Normalises each feature map by batch statistics, in eval mode too."""

    NAME = "batch_stats"

    def forward_features(self, x):
        fmap = super().forward_features(x)
        return fmap / fmap.mean().clamp_min(1e-6)


class ShuffledWeightsHead(testing.LinearHead):
    """Reports class weights in the wrong order: CAM would explain the wrong class."""

    NAME = "shuffled_weights"

    def class_weights(self):
        return self.fc.weight.flip(0), self.fc.bias.flip(0)


class MislabelledDataset(TinyDataset):
    """Labels with a 2 and a box sticking out of its image."""

    NAME = "mislabelled"

    def split(self, name):
        split = super().split(name)
        split.labels = split.labels.copy()
        split.labels[0, 0] = 2.0
        if not split.boxes.empty:
            split.boxes.loc[0, "w"] = 10 * self.options.image_size
        return split


class BrokenPlugin:
    @cxrbench.hookimpl
    def cxrbench_register_localizers(self):
        return [LeakyCAM, OverflowingCAM, ModeChangingCAM, InplaceFlippingCAM, BatchMixingCAM]

    @cxrbench.hookimpl
    def cxrbench_register_backbones(self):
        return [DroppedChannelBackbone, BatchStatsBackbone]

    @cxrbench.hookimpl
    def cxrbench_register_pooling_heads(self):
        return [ShuffledWeightsHead]

    @cxrbench.hookimpl
    def cxrbench_register_datasets(self):
        return [MislabelledDataset]


BROKEN = (("broken", BrokenPlugin()),)


def contract(base, name, **attributes):
    """A contract subclass for one of the broken components (not collected: no Test prefix)."""
    return type(f"Broken_{name}", (base,), {"name": name, "plugins": BROKEN, **attributes})


@pytest.mark.parametrize(
    ("base", "name", "check", "message"),
    [
        (LocalizerContract, "leaky_cam", "test_no_hooks_left", "hooks left behind"),
        (LocalizerContract, "overflowing_cam", "test_maps_shape_range_and_device", "not within"),
        (LocalizerContract, "mode_changing_cam", "test_model_left_unchanged", "mode changed"),
        (LocalizerContract, "inplace_flipping_cam", "test_model_left_unchanged", "inplace flags changed"),
        (LocalizerContract, "batch_mixing_cam", "test_batch_invariance", "rest of its batch"),
        (BackboneContract, "dropped_channel", "test_in_chans", "in_chans=3"),
        (BackboneContract, "batch_stats", "test_batch_invariance", "rest of its batch"),
        (HeadContract, "shuffled_weights", "test_class_weights_are_the_linear_classifier",
         r"class_weights\(\) are not the weights used"),
        (DatasetContract, "mislabelled", "test_splits", "labels other than 1, 0 and NaN"),
        (DatasetContract, "mislabelled", "test_boxes_lie_inside_their_images", "outside their image"),
    ],
)
def test_a_broken_component_fails_its_check(base, name, check, message):
    cls = contract(base, name, size=32)
    with pytest.raises(AssertionError, match=message):
        getattr(cls(), check)()


def test_the_broken_components_pass_the_checks_they_do_not_break():
    # Each broken component fails for its own reason only: the checks are specific.
    contract(LocalizerContract, "leaky_cam")().test_maps_shape_range_and_device()
    contract(LocalizerContract, "overflowing_cam")().test_no_hooks_left()
    contract(BackboneContract, "dropped_channel", size=32)().test_batch_invariance()


def test_the_mixins_are_not_collected_on_their_own_and_need_a_name():
    assert not any(c.__name__.startswith("Test") for c in (BackboneContract, HeadContract, LocalizerContract,
                                                             DatasetContract))
    with pytest.raises(TypeError, match="set the class attribute `name`"):
        type("Nameless", (HeadContract,), {})().test_output_shapes()


def test_only_cxrbench_testing_imports_pytest():
    # pytest is a test extra: importing cxrbench (or any module but testing) must not need it.
    import ast

    offenders = []
    for path in sorted((REPO / "cxrbench").glob("*.py")):
        if path.name == "testing.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "pytest" or n.startswith(("pytest.", "_pytest")) for n in names):
                offenders.append(path.name)
    assert not offenders


def test_subclassing_in_a_plugin_test_module(pytester):
    """What a plugin author writes: good components pass, broken ones fail by name."""
    pytester.makepyfile(
        test_plugin="""
        import cxrbench_cam
        import cxrbench_heads
        from cxrbench.testing import HeadContract, LocalizerContract

        class LeakyCAM(cxrbench_cam.CAM):
            '''CAM that forgets a hook.'''
            NAME = "leaky"

            def __call__(self, model, images, classes):
                model.backbone.feature_map.register_forward_hook(lambda *args: None)
                return super().__call__(model, images, classes)

        class Plugin:
            import cxrbench
            @cxrbench.hookimpl
            def cxrbench_register_localizers(self):
                return [LeakyCAM]

        class TestGradCam(LocalizerContract):
            name = "gradcam"
            plugins = (cxrbench_cam,)

        class TestLeaky(LocalizerContract):
            name = "leaky"
            plugins = (("leaky", Plugin()),)

        class TestMaxHead(HeadContract):
            name = "max"
            plugins = (cxrbench_heads,)
        """
    )
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-p", "no:benchmark")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*FAILED test_plugin.py::TestLeaky::test_no_hooks_left*"])
    n_localizer = sum(1 for n in dir(LocalizerContract) if n.startswith("test_"))
    n_head = sum(1 for n in dir(HeadContract) if n.startswith("test_"))
    assert outcomes.get("passed") == 2 * n_localizer + n_head - 1


# --------------------------------------------------------------------------- benchmark helpers


def test_benchmark_helpers_run_without_pytest_benchmark(tmp_path):
    registry = testing.registry_for([cxrbench_cam, ("testing", testing.testing_plugin)])
    backbone = testing.make_backbone("testing_tiny", {"width": 4}, registry=registry)
    figures = testing.benchmark_backbone(None, backbone, size=32, batch=2, backward=True, rounds=2)
    assert figures["images_per_s"] > 0 and figures["params"] == sum(p.numel() for p in backbone.parameters())
    assert all(p.grad is None for p in backbone.parameters())

    head = testing.make_head("testing_linear", 4, 3, registry=registry)
    assert testing.benchmark_head(None, head, (2, 4, 5, 5), rounds=2)["images_per_s"] > 0

    model = testing.tiny_classifier(num_classes=3)
    localizer = testing.make_localizer("gradcam", registry=registry)
    ratio = testing.localizer_ratio(None, localizer, model, testing.synthetic_images(2, 32), [0, 2], rounds=2)
    assert ratio["ratio"] > 0 and ratio["shape"] == (2, 2, 32, 32)

    dataset = testing.make_dataset("testing_tiny", {"num_images": 12}, registry=registry)
    for source in ("cache", "originals"):
        loading = testing.benchmark_loading(None, dataset, split="train", size=16, batch=4, source=source,
                                            cache_root=tmp_path, rounds=1)
        assert loading["images"] == len(dataset.split("train")) and loading["images_per_s"] > 0


def test_benchmark_helpers_fill_extra_info(benchmark):
    # Benchmarks are disabled in the test run (pyproject addopts): one call, figures still recorded.
    model = testing.tiny_classifier(num_classes=2)
    localizer = cxrbench_cam.CAM(cxrbench_cam.CAM.Options())
    testing.localizer_ratio(benchmark, localizer, model, testing.synthetic_images(2, 16), [0, 1])
    assert set(benchmark.extra_info) >= {"ratio", "localizer_ms", "forward_ms"}


def test_cuda_device_skips_without_a_gpu():
    if torch.cuda.is_available():
        device = testing.bench_device("cuda")
        assert device.channels_last and device.amp_dtype in (torch.float16, torch.bfloat16)
    else:
        with pytest.raises(pytest.skip.Exception):
            testing.bench_device("cuda")
    cpu = testing.bench_device("cpu")
    assert cpu.amp_dtype is None and not cpu.channels_last
    assert isinstance(cpu.module(nn.Linear(2, 2)), nn.Linear)


def test_the_readme_example_runs(pytester):
    """The README's cxrbench.testing example, verbatim, as a plugin author's test module."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    (example,) = [b for b in blocks if "from cxrbench.testing import" in b]
    pytester.syspathinsert(REPO / "examples" / "cxrbench-gem")
    pytester.makepyfile(test_gem=example)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "--benchmark-disable")
    n_head = sum(1 for n in dir(HeadContract) if n.startswith("test_"))
    result.assert_outcomes(passed=n_head + 1)
