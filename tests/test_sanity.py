"""Sanity and faithfulness checks (``localization.sanity``): similarity functions against independent
implementations, the randomised copy leaving the trained model bit-identical, deletion and insertion
against hand-computed curves, and the checks validated where the truth is known (a trained CAM passes
the MPRT and beats a random map on deletion; an image-gradient edge map, which never reads the model,
fails the MPRT), in a grid and in the leaderboard's JSON."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

import cxrbench
from cxrbench.config import DeletionSpec, InsertionSpec, MprtSpec, SanitySpec, parse_grid, parse_sanity_spec
from cxrbench.errors import ConfigError
from cxrbench.interfaces import Localizer
from cxrbench.locmetrics.similarity import average_ranks, spearman, ssim
from cxrbench.mprt import mprt, random_logit
from cxrbench.perturbation import Curve, auc, curve_probabilities, gaussian_blur, saliency_ranks
from cxrbench.randomisation import model_blocks, randomise_block
from cxrbench.testing import LocalizerContract, tiny_classifier

# --------------------------------------------------------------------------- similarity


def test_average_ranks_and_spearman_match_scipy_pair_by_pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (20, 9, 7)).astype(np.float32)  # many ties
    b = np.where(rng.random((20, 9, 7)) < 0.5, a, rng.random((20, 9, 7))).astype(np.float32)
    ranks = average_ranks(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(ranks, scipy.stats.rankdata(a.reshape(20, -1), method="average", axis=1))
    rho = spearman(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    reference = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(20)]
    np.testing.assert_allclose(rho, reference, atol=1e-12)


def test_spearman_hand_computed_cases_and_conventions():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    # d = (0, 1, 1, 0): 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(a, torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])).item() == pytest.approx(0.8)
    assert spearman(a, 10 * a + 3).item() == pytest.approx(1.0)
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    flat, other = torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5)
    assert spearman(flat, other).item() == 1.0  # both constant: nothing tells them apart (scipy: NaN)
    assert spearman(flat, a).item() == 0.0  # one constant: no association (scipy: NaN)
    assert np.isnan(spearman(a, torch.tensor([[[1.0, float("nan")], [2.0, 4.0]]])).item())


def test_ssim_matches_skimage_defaults_pair_by_pair():
    skimage_metrics = pytest.importorskip("skimage.metrics")  # the test extra installs scikit-image
    rng = np.random.default_rng(1)
    a = rng.random((6, 23, 17))
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    reference = [skimage_metrics.structural_similarity(a[i], b[i], data_range=1.0) for i in range(6)]
    np.testing.assert_allclose(got, reference, atol=1e-12)
    # float32 maps on the way in (as localizers give them) agree to float32 precision
    got32 = ssim(torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))).numpy()
    np.testing.assert_allclose(got32, reference, atol=1e-5)


def test_ssim_of_one_window_by_hand():
    x = np.arange(49, dtype=np.float64).reshape(7, 7) / 48
    y = x**2
    n = 49
    ux, uy = x.mean(), y.mean()
    vx, vy = x.var() * n / (n - 1), y.var() * n / (n - 1)
    vxy = ((x - ux) * (y - uy)).sum() / (n - 1)
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    got = ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]).item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert ssim(torch.from_numpy(x)[None], torch.from_numpy(x)[None]).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- randomisation


def _bytes(model: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


def test_blocks_run_from_the_head_down():
    names = [b.name for b in model_blocks(tiny_classifier())]
    assert names == ["head", "backbone.body.4", "backbone.body.3", "backbone.body.1", "backbone.body.0"]


def test_blocks_of_a_timm_resnet_descend_through_the_wrapper():
    from cxrbench.testing import make_backbone, make_head

    backbone = make_backbone("resnet18", {"pretrained": False})
    model = cxrbench.interfaces.Classifier(backbone, make_head("avg", backbone.num_features, 3), ["a", "b", "c"])
    names = [b.name for b in model_blocks(model)]
    stem = [f"backbone.model.{n}" for n in ("layer4", "layer3", "layer2", "layer1", "bn1", "conv1")]
    assert names == ["head", *stem]


def test_a_modules_own_parameters_are_the_lowest_block():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.randn(4))
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    blocks = model_blocks(WithToken())
    assert [b.name for b in blocks] == ["b", "a", "model (own)"]
    assert [n for n, _ in blocks[-1].parameters()] == ["token"]


def test_randomisation_keeps_moments_and_buffers_and_is_seeded_per_block():
    trained = tiny_classifier()
    one, two = copy.deepcopy(trained), copy.deepcopy(trained)
    blocks_one, blocks_two = model_blocks(one), model_blocks(two)
    for block in blocks_one:
        randomise_block(block, seed=3)
    randomise_block(blocks_two[2], seed=3)  # one block alone: the same draws as in the cascade
    for (name, p1), (_, p2) in zip(blocks_one[2].parameters(), blocks_two[2].parameters(), strict=True):
        assert torch.equal(p1, p2), name
    original = {name: p.detach() for name, p in trained.named_parameters()}
    for name, param in one.named_parameters():
        was = original[name]
        if float(was.std(unbiased=False)) == 0:  # all values equal (an untrained BatchNorm weight): no structure
            assert torch.equal(param, was), f"{name} was redrawn"
            continue
        assert not torch.equal(param, was), f"{name} was not redrawn"
        assert float(param.detach().mean()) == pytest.approx(float(was.mean()), abs=4 * float(was.std()))
    for (name, buffer), (_, kept) in zip(one.named_buffers(), trained.named_buffers(), strict=True):
        assert torch.equal(buffer, kept), f"buffer {name} changed"


def test_mprt_leaves_the_trained_model_bit_identical_and_counts_its_localizer_calls():
    import cxrbench_cam

    model = tiny_classifier().train()
    next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eval()  # a mixed state must survive
    model.head.fc.weight.requires_grad_(False)
    before, modes = _bytes(model), {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cam, calls = cxrbench_cam.CAM(cxrbench_cam.options.MapOptions()), []

    def explain(net, x):
        calls.append(net)
        return cam(net, x, [0, 1, 2, 3])

    images = [torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))]
    from cxrbench.sanity import preserved_modes

    with preserved_modes(model):
        trained = [explain(model, images[0])]
        blocks = len(model_blocks(model))
        for cascade, independent, stages in ((True, False, blocks), (False, True, blocks),
                                             (True, True, 2 * blocks - 1)):
            calls.clear()
            result = mprt(model, explain, images, trained, cascade=cascade, independent=independent)
            assert len(calls) == stages == result.localizer_calls - 1  # + 1: the trained maps
            assert all(net is not model for net in calls)
    assert _bytes(model) == before
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    both = mprt(model.eval(), explain, images, trained)
    alone = mprt(model, explain, images, trained, cascade=False)
    np.testing.assert_array_equal(both.independent[0].spearman, both.cascade[0].spearman)
    for a, b in zip(both.independent, alone.independent, strict=True):  # the shared stage is the same network
        np.testing.assert_allclose(a.spearman, b.spearman)
        np.testing.assert_allclose(a.ssim, b.ssim)


def test_random_logit_draws_another_class_per_image_from_its_seed():
    maps = torch.rand(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    probs = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.2, 0.3], [0.1, 0.2, 0.7, 0.3], [0.1, 0.2, 0.3, 0.6],
                          [0.9, 0.1, 0.2, 0.3]])
    result = random_logit([maps[:3], maps[3:]], probs, seed=4)
    np.testing.assert_array_equal(result.predicted, [0, 1, 2, 3, 0])
    draws = np.random.default_rng(4).integers(0, 3, size=5)
    np.testing.assert_array_equal(result.other, draws + (draws >= result.predicted))
    assert (result.other != result.predicted).all()
    for i in range(5):
        p, o = result.predicted[i], result.other[i]
        assert result.spearman[i] == pytest.approx(scipy.stats.spearmanr(maps[i, p].ravel(), maps[i, o].ravel())[0])


# --------------------------------------------------------------------------- deletion and insertion


class RegionMean(nn.Module):
    """Probability 0.1 + 0.8 x (mean of the normalised image over a region): a known function of the image."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x):
        p = 0.1 + 0.8 * (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.logit(p).unsqueeze(1)


def test_deletion_and_insertion_auc_by_hand():
    region = torch.zeros(4, 4)
    region[1:3, 1:3] = 1
    image = region.clone()[None, None]  # 1 inside the region, 0 (the zero baseline) elsewhere
    curves = [Curve("deletion", 4, "zero"), Curve("insertion", 4, "zero")]
    deletion, insertion = curve_probabilities(RegionMean(region), image, image[:, 0], torch.tensor([0]),
                                              torch.tensor([0]), curves, batch_size=3)
    # 16 pixels, 4 steps: 0, 4, 8, 12, 16 pixels; the region's 4 pixels are the most salient
    torch.testing.assert_close(deletion, torch.tensor([[0.9, 0.1, 0.1, 0.1, 0.1]]))
    torch.testing.assert_close(insertion, torch.tensor([[0.1, 0.9, 0.9, 0.9, 0.9]]))
    fractions = curves[0].fractions(16)
    np.testing.assert_allclose(fractions, [0, 0.25, 0.5, 0.75, 1])
    # 0.25 (0.9 + 0.1) / 2 + 0.75 x 0.1 = 0.2, and 0.25 (0.1 + 0.9) / 2 + 0.75 x 0.9 = 0.8
    np.testing.assert_allclose(auc(deletion.numpy(), fractions), [0.2], atol=1e-6)
    np.testing.assert_allclose(auc(insertion.numpy(), fractions), [0.8], atol=1e-6)


def _reference_curve(model, image, saliency, klass, curve, baseline):
    """A straightforward loop: rank, perturb one step at a time, read the probability."""
    flat = saliency.ravel()
    order = np.argsort(-flat, kind="stable")
    m = flat.size
    out = []
    for i in range(curve.steps + 1):
        top = np.zeros(m, dtype=bool)
        top[order[: (i * m) // curve.steps]] = True
        pixels = np.where(top, baseline.ravel(), image.ravel()) if curve.kind == "deletion" else \
            np.where(top, image.ravel(), baseline.ravel())
        x = torch.from_numpy(pixels.reshape(1, 1, *image.shape).astype(np.float32))
        with torch.no_grad():
            out.append(float(torch.sigmoid(model(x))[0, klass]))
    return np.array(out)


@pytest.mark.parametrize("baseline", ["blur", "mean", "zero"])
def test_curves_match_a_step_by_step_loop(baseline):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    rng = np.random.default_rng(2)
    images = rng.standard_normal((3, 1, 9, 9)).astype(np.float32)
    maps = rng.integers(0, 5, (5, 9, 9)).astype(np.float32)  # ties: broken by the flat index
    image_index, classes = np.array([0, 0, 1, 2, 2]), np.array([0, 2, 1, 0, 1])
    curves = [Curve("deletion", 7, baseline, sigma=1.3), Curve("insertion", 4, baseline, sigma=1.3)]
    got = curve_probabilities(model, torch.from_numpy(images), torch.from_numpy(maps), torch.from_numpy(image_index),
                              torch.from_numpy(classes), curves, batch_size=6, mean=0.25)
    for curve, table in zip(curves, got, strict=True):
        for p in range(5):
            image = images[image_index[p], 0]
            base = {"blur": scipy.ndimage.gaussian_filter(image, 1.3, mode="nearest", truncate=3.0),
                    "mean": np.full_like(image, 0.25), "zero": np.zeros_like(image)}[baseline]
            expected = _reference_curve(model, image, maps[p], classes[p], curve, base)
            np.testing.assert_allclose(table[p].numpy(), expected, atol=1e-5)


def test_blur_is_scipys_gaussian_filter_and_ranks_break_ties_by_index():
    image = np.random.default_rng(0).standard_normal((2, 1, 40, 40)).astype(np.float32)
    got = gaussian_blur(torch.from_numpy(image), 5.0).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i, 0], scipy.ndimage.gaussian_filter(image[i, 0], 5.0, mode="nearest",
                                                                            truncate=3.0), atol=1e-5)
    ranks = saliency_ranks(torch.tensor([[[0.5, 1.0], [0.5, float("nan")]]]))
    assert ranks.tolist() == [[1, 0, 2, 3]]


# --------------------------------------------------------------------------- configuration


def test_sanity_settings_parse_with_defaults_and_one_line_errors():
    assert not SanitySpec().active and parse_sanity_spec(None, "localization.sanity") == SanitySpec()
    spec = parse_sanity_spec({"mprt": True, "random_logit": True, "deletion": {"steps": 20},
                              "insertion": {"steps": 20}}, "localization.sanity")
    assert spec.mprt == MprtSpec() and spec.deletion == DeletionSpec() and spec.insertion == InsertionSpec()
    assert spec.deletion.baseline == "mean" and spec.insertion.baseline == "blur"
    assert parse_sanity_spec({"mprt": False}, "p").mprt is None
    cases = [({"mprtt": True}, "localization.sanity.mprtt: unknown check; did you mean 'mprt'?"),
             ({"mprt": 1}, "localization.sanity.mprt: expected true, false or a mapping"),
             ({"deletion": {"steps": 0}}, "localization.sanity.deletion.steps: steps must be between 1 and 1000"),
             ({"insertion": {"baseline": "black"}}, "localization.sanity.insertion.baseline: expected one of"),
             ({"mprt": {"cascade": False, "independent": False}}, "nothing would be randomised"),
             ([1], "localization.sanity: expected a mapping")]
    for raw, message in cases:
        with pytest.raises(ConfigError) as info:
            parse_sanity_spec(raw, "localization.sanity")
        assert message in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_sanity_key_in_a_grid_is_a_one_line_config_error(toy_registry, tiny_grid_dict):
    tiny_grid_dict["localization"] = {"sanity": {"mprt": {"imagez": 4}}}
    with pytest.raises(ConfigError, match=r"^localization\.sanity\.mprt\.imagez: unknown option") as info:
        parse_grid(tiny_grid_dict, toy_registry)
    assert "\n" not in str(info.value)


def test_sanity_enters_the_localizer_key_only_when_a_check_is_on(toy_registry, tiny_grid_dict):
    from cxrbench.grid import localizer_key
    from cxrbench.options import options_to_dict

    keys = []
    for sanity in (None, {}, {"mprt": False, "deletion": None}, {"mprt": True}, {"mprt": {"bound": 0.3}}):
        grid = dict(tiny_grid_dict, localization={} if sanity is None else {"sanity": sanity})
        spec = parse_grid(grid, toy_registry)
        keys.append(localizer_key(spec.localizers[0], None, options_to_dict(spec.localization)))
    assert keys[0] == keys[1] == keys[2]  # existing stores keep their keys
    assert len({keys[0], keys[3], keys[4]}) == 3


# --------------------------------------------------------------------------- the contract


class CachingCAM(Localizer):
    """CAM that keeps the class weights of the first model it explains: wrong for every later model."""

    NAME = "caching_cam"

    def __init__(self, options=None):
        super().__init__(options)
        self.weights = None

    def __call__(self, model, images, classes):
        from cxrbench.sanity import preserved_modes

        with torch.no_grad(), preserved_modes(model):
            _, fmap, _ = model.forward_maps(images)
            if self.weights is None:
                self.weights = model.head.fc.weight.detach().clone()
            maps = torch.einsum("kc,nchw->nkhw", self.weights[list(classes)], fmap)
            low = maps.amin(dim=(-2, -1), keepdim=True)
            maps = (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
            return F.interpolate(maps, size=images.shape[-2:], mode="bilinear")


class ReallocatingCAM(CachingCAM):
    """A CAM that moves the model's parameters to new memory (``param.data = ...``), values unchanged."""

    NAME = "reallocating_cam"

    def __call__(self, model, images, classes):
        for param in model.parameters():
            param.data = param.data.clone()
        self.weights = None
        return super().__call__(model, images, classes)


class BrokenLocalizers:
    @cxrbench.hookimpl
    def cxrbench_register_localizers(self):
        return [CachingCAM, ReallocatingCAM]


def _contract(name):
    return type(f"Broken_{name}", (LocalizerContract,), {"name": name, "plugins": (("broken", BrokenLocalizers()),),
                                                          "model_head": "linear"})()


def test_the_contract_catches_state_carried_between_models_and_replaced_parameters():
    with pytest.raises(AssertionError, match="explained another model first"):
        _contract("caching_cam").test_no_state_carried_between_models()
    _contract("caching_cam").test_model_left_unchanged()  # it breaks only what the new check checks
    with pytest.raises(AssertionError, match="replaced or reallocated"):
        _contract("reallocating_cam").test_model_left_unchanged()


# --------------------------------------------------------------------------- known truth, in a grid


class ImageGradient(Localizer):
    """Image-gradient magnitude: an edge map of the image that never reads the model (fails the MPRT)."""

    NAME = "image_gradient"

    def __call__(self, model, images, classes):
        x = images.detach().float()
        gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
        gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        magnitude = torch.sqrt(gx**2 + gy**2)
        low = magnitude.amin(dim=(-2, -1), keepdim=True)
        magnitude = (magnitude - low) / (magnitude.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
        return magnitude.expand(-1, len(classes), -1, -1).clone()


class EdgePlugin:
    @cxrbench.hookimpl
    def cxrbench_register_localizers(self):
        return [ImageGradient]


SANITY = {"mprt": True, "random_logit": True, "deletion": {"steps": 10}, "insertion": {"steps": 10}}


@pytest.fixture
def truth_pm():
    import cxrbench_phantom

    from cxrbench.manager import build_plugin_manager
    from tests.conftest import builtin_plugins
    from tests.plugins import toy

    return build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy), ("phantom", cxrbench_phantom),
                                         ("edges", EdgePlugin())], entry_points=False)


def _run_truth(pm, tmp_path, tiny_grid_dict, dataset, train):
    from cxrbench.driver import run_grid
    from cxrbench.registry import Registry
    from cxrbench.store import ResultsStore

    tiny_grid_dict.update(datasets=[dataset], heads=["avg"], localizers=["cam", "random", "image_gradient"],
                          train=train, evaluation={"bootstrap": 50}, localization={"sanity": SANITY})
    grid = parse_grid(tiny_grid_dict, Registry.from_plugin_manager(pm))
    with ResultsStore(tmp_path) as store:
        run_grid(grid, pm, store)
        (cell,) = store.cells(grid.name)
    rows = {loc.name: loc for loc in cell.localizations}
    assert all(loc.ok for loc in rows.values()), [loc.error for loc in rows.values()]
    return cell, {name: loc.metrics for name, loc in rows.items()}


def _assert_known_truth(m):
    bound = MprtSpec().bound
    assert m["cam"]["mprt_spearman"] < bound and m["cam"]["mprt_pass"] == 1.0
    for blind in ("random", "image_gradient"):  # neither reads the model: the same maps for every network
        assert m[blind]["mprt_spearman"] == pytest.approx(1.0) and m[blind]["mprt_ssim"] == pytest.approx(1.0)
        assert m[blind]["mprt_independent_spearman"] == pytest.approx(1.0) and m[blind]["mprt_pass"] == 0.0
    assert m["cam"]["deletion_auc"] < m["random"]["deletion_auc"]
    assert m["cam"]["insertion_auc"] > m["random"]["insertion_auc"]


def test_known_truth_on_the_toy_dataset(truth_pm, tmp_path, tiny_grid_dict):
    """A model that separates the toy findings (AUROC ~1 in ~3 s): the margins are wide."""
    cell, m = _run_truth(truth_pm, tmp_path, tiny_grid_dict, {"name": "toy", "options": {"num_images": 256}},
                         {"epochs": 10, "batch_size": 16, "lr": 0.01})
    assert cell.metrics["auroc_mean"] > 0.95
    _assert_known_truth(m)
    assert m["cam"]["deletion_auc_ci_high"] < m["random"]["deletion_auc_ci_low"]  # clearly, not by chance
    assert m["cam"]["mprt_spearman_ci_high"] < MprtSpec().bound


def test_known_truth_on_the_phantom(truth_pm, tmp_path, tiny_grid_dict):
    """The phantom at 64 px, two findings, 15 epochs of the tiny backbone (~8 s): a weak but real model
    (AUROC ~0.7), and the checks already tell its CAM from a random map and from an edge map."""
    phantom = {"name": "phantom", "options": {"num_images": 400, "image_size": 64, "classes": ["Mass", "Effusion"],
                                              "difficulty": 0.0}}
    cell, m = _run_truth(truth_pm, tmp_path, tiny_grid_dict, phantom, {"epochs": 15, "batch_size": 16, "lr": 0.003})
    assert cell.metrics["auroc_mean"] > 0.6
    _assert_known_truth(m)


def test_sanity_metrics_reach_the_store_the_json_leaderboard_and_the_catalogue(run_cli, tmp_path, tiny_grid_dict):
    import yaml

    from cxrbench import catalogue
    from cxrbench.store import ResultsStore

    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    results = tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    with ResultsStore(results) as store:
        (cell,) = store.cells("tiny")
        best = store.artifacts(cell.cell_id).best
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    # switching the checks on evaluates the localizer again, on the stored checkpoint, never retraining
    tiny_grid_dict["localization"] = {"sanity": {**SANITY, "mprt": {"images": 6, "bound": 0.4}}}
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest
    with ResultsStore(results) as store:
        (again,) = store.cells("tiny")
    assert again.metrics["auroc_mean"] == cell.metrics["auroc_mean"]
    loc = next(loc for loc in again.localizations if "mprt_spearman" in loc.metrics)
    keys = ["mprt_spearman", "mprt_ssim", "mprt_independent_spearman", "mprt_pass", "mprt_spearman/Blob",
            "mprt_spearman_ci_low", "random_logit_spearman", "random_logit_ssim", "deletion_auc", "insertion_auc",
            "deletion_auc/Bar", "insertion_auc_ci_high", "deletion_insertion_ms_per_image", "mprt_localizer_calls"]
    assert all(k in loc.metrics for k in keys), sorted(set(keys) - set(loc.metrics))
    assert sorted(k for k in loc.metrics if catalogue.lookup(k) is None) == []
    assert loc.metrics["mprt_images"] == 6 and loc.settings["sanity"]["mprt"]["bound"] == 0.4
    blocks = loc.settings["sanity"]["mprt"]["blocks"]
    assert len(loc.settings["sanity"]["mprt"]["cascade"]) == len(blocks) == 4
    assert loc.metrics["mprt_localizer_calls"] == 2 * len(blocks)  # 1 + B cascade + (B - 1) independent
    steps = loc.settings["sanity"]["deletion"]["steps"]
    assert loc.metrics["deletion_insertion_forward_images"] == loc.metrics["deletion_pairs"] * 2 * (steps + 1)
    assert loc.metrics["mprt_pass"] == float(loc.metrics["mprt_spearman"] < 0.4)
    rows = json.loads(run_cli("leaderboard", "--results", results, "--format", "json").output)
    row = next(r for r in rows if "mprt_spearman" in r["metrics"])
    for key in keys:
        assert row["metrics"][key] == pytest.approx(loc.metrics[key]), key
    table = run_cli("leaderboard", "--results", results)
    assert table.exit_code == 0 and "MPRT pass" in table.output  # a compact column: kept on narrow terminals


@pytest.mark.parametrize("name", [cls.NAME for cls in __import__("cxrbench_cam").LOCALIZERS])
def test_every_builtin_localizer_carries_nothing_between_models(name):
    import cxrbench_cam

    check = type(f"Check_{name}", (LocalizerContract,), {"name": name, "plugins": (cxrbench_cam,)})()
    check.test_no_state_carried_between_models()
    check.test_model_left_unchanged()


def test_a_masks_only_dataset_samples_its_images_and_scores_its_mask_boxes(toy_pm, toy_registry, tiny_grid_dict,
                                                                           tmp_path):
    from cxrbench.driver import run_grid
    from cxrbench.store import ResultsStore

    tiny_grid_dict.update(datasets=[{"name": "toy", "options": {"num_images": 64, "masks": True}}], heads=["avg"],
                          localizers=["cam"], localization={"sanity": SANITY})
    grid = parse_grid(tiny_grid_dict, toy_registry)
    with ResultsStore(tmp_path) as store:
        run_grid(grid, toy_pm, store)
        (cell,) = store.cells(grid.name)
    (loc,) = cell.localizations
    assert loc.ok, loc.error
    # every image of the masks' split is sampled (negatives too); the curves run on the masks' boxes
    assert loc.metrics["mprt_images"] == min(32, loc.metrics["mask_images"])
    assert loc.metrics["deletion_pairs"] == loc.metrics["n_pairs"] > 0


def test_a_one_class_model_gets_the_mprt_and_skips_the_random_logit_test():
    import cxrbench_cam

    from cxrbench.data import PreparedSplit
    from cxrbench.interfaces import Split
    from cxrbench.sanity import sample_checks

    n = 3
    split = Split(ids=[f"i{i}" for i in range(n)], patient_ids=["a", "a", "b"], labels=np.zeros((n, 1), np.float32))
    data = PreparedSplit("boxes", split, np.random.default_rng(0).integers(0, 255, (n, 32, 32), dtype=np.uint8),
                         split.boxes, np.full((n, 2), 32))
    spec = parse_sanity_spec({"mprt": True, "random_logit": True}, "localization.sanity")
    cam = cxrbench_cam.CAM(cxrbench_cam.options.MapOptions())
    metrics, settings = sample_checks(tiny_classifier(num_classes=1), cam, data, np.arange(n), ["only"], spec,
                                      batch_size=2, device=torch.device("cpu"), dtype=None, n_boot=20, boot_seed=0,
                                      ci=0.9)
    assert settings["random_logit"] == {"skipped": "the model has one class"} and "random_logit_spearman" not in metrics
    assert metrics["mprt_images"] == 3 and np.isfinite(metrics["mprt_spearman"])
    blocks = len(model_blocks(tiny_classifier(num_classes=1)))
    assert metrics["mprt_localizer_calls"] == 2 * blocks * 2  # two batches of sampled images
    assert metrics["mprt_spearman_ci_low"] <= metrics["mprt_spearman"] <= metrics["mprt_spearman_ci_high"]
