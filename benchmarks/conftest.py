"""Options, registry and devices for the benchmark suite (``pytest benchmarks``).

The components come from the installed ``cxrbench`` entry points (plus
``CXRBENCH_PLUGINS``), so a pip-installed plugin is benchmarked with no new code. Select
them with ``--backbones``, ``--heads``, ``--localizers``, ``--datasets``: a comma list of
names, ``all``, or ``default`` (every registered component except the built-ins listed in
``SLOW_BY_DEFAULT``, which take minutes each on a 2-core CPU; name them to run them).

Every benchmark that takes a ``device`` runs on ``cpu`` and on ``cuda``; the CUDA variant
skips without a GPU and otherwise runs with autocast mixed precision, channels-last and a
synchronised timer (``cxrbench.testing.BenchDevice``).

Runs are stored under ``results/benchmarks/`` (``--benchmark-autosave``,
``--benchmark-compare``) unless ``--benchmark-storage`` says otherwise, and benchmarks run
even though the project's pytest ``addopts`` disable them for the unit tests (an explicit
``--benchmark-disable`` on the command line still disables them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cxrbench.errors import CxrbenchError
from cxrbench.manager import build_plugin_manager
from cxrbench.registry import Registry
from cxrbench.testing import BenchDevice, bench_device, iter_names

REPO = Path(__file__).resolve().parents[1]
STORAGE = REPO / "results" / "benchmarks"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
PYTEST_BENCHMARK_DEFAULT_STORAGE = "file://./.benchmarks"

KINDS = {"backbone": "backbones", "head": "heads", "localizer": "localizers", "dataset": "datasets"}
"""Registry kind -> command-line option (``--backbones``) and parametrised argument (``backbone_name``)."""

SLOW_BY_DEFAULT = {
    "backbone": {
        "resnet34", "resnet50", "densenet121", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
        "efficientnet_b4", "timm/resnet10t",
    },
    # One forward per feature channel and image: thousands of forwards per batch.
    "localizer": {"scorecam"},
}
"""Built-in names left out of ``default`` to keep a 2-core CPU run to minutes (densenet121,
the seed's backbone, is timed by test_localizer_speed.py)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cxrbench", "cxrbench benchmarks")
    for kind, option in KINDS.items():
        group.addoption(
            f"--{option}",
            default="default",
            help=f"{option} to benchmark: comma-separated names, 'all', or 'default' "
            f"(every registered {kind} but the slow built-ins)",
        )
    group.addoption("--bench-size", type=int, default=224, help="square input size in pixels (default 224)")
    group.addoption("--bench-batch", type=int, default=8, help="images per batch (default 8)")
    group.addoption("--bench-rounds", type=int, default=3, help="timed rounds per benchmark (default 3)")
    group.addoption(
        "--bench-threads",
        type=int,
        default=0,
        help="torch CPU threads for the whole run (default 0: torch's own choice, one per core)",
    )
    group.addoption(
        "--localizer-backbone",
        default="resnet18",
        help="backbone of the model the localizers explain (default resnet18)",
    )
    group.addoption(
        "--bench-data-root",
        default=str(DEFAULT_DATA_ROOT),
        help="folder holding nih/ and chexpert/ (their benchmarks skip when absent)",
    )


def _given(config: pytest.Config, option: str) -> bool:
    """Whether ``option`` was typed on the command line (not merely set by addopts)."""
    return any(arg == option or arg.startswith(option + "=") for arg in config.invocation_params.args)


def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark's own (trylast) pytest_configure reads these options.
    option = config.option
    if getattr(option, "benchmark_storage", None) == PYTEST_BENCHMARK_DEFAULT_STORAGE:
        option.benchmark_storage = STORAGE.as_uri()
    if getattr(option, "benchmark_disable", False) and not _given(config, "--benchmark-disable"):
        option.benchmark_disable = False  # pyproject's addopts disable benchmarks for the unit tests only
    threads = getattr(option, "bench_threads", 0)
    if threads:
        # On a small shared machine, tiny ops split over every core wait for descheduled threads.
        torch.set_num_threads(threads)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """The suite's command-line settings."""

    size: int
    batch: int
    rounds: int
    localizer_backbone: str
    data_root: Path


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config) -> BenchSettings:
    return BenchSettings(
        size=pytestconfig.getoption("--bench-size"),
        batch=pytestconfig.getoption("--bench-batch"),
        rounds=pytestconfig.getoption("--bench-rounds"),
        localizer_backbone=pytestconfig.getoption("--localizer-backbone"),
        data_root=Path(pytestconfig.getoption("--bench-data-root")),
    )


_REGISTRY: list[Registry] = []


def installed_registry() -> Registry:
    """The registry of every installed plugin (entry points and ``CXRBENCH_PLUGINS``), built once."""
    if not _REGISTRY:
        try:
            _REGISTRY.append(Registry.from_plugin_manager(build_plugin_manager(core=False)))
        except CxrbenchError as exc:
            raise pytest.UsageError(f"cxrbench plugins: {exc}") from None
    return _REGISTRY[0]


@pytest.fixture(scope="session")
def bench_registry() -> Registry:
    return installed_registry()


def selected(config: pytest.Config, kind: str) -> list[str]:
    """The names of ``kind`` chosen on the command line (see the module docstring)."""
    registry = installed_registry()
    raw = config.getoption(f"--{KINDS[kind]}")
    everything = list(dict.fromkeys(iter_names(registry, kind)))
    if raw == "all":
        return everything
    if raw == "default":
        return [n for n in everything if n not in SLOW_BY_DEFAULT.get(kind, ())]
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for name in names:
        try:
            registry.get(kind, name, f"--{KINDS[kind]}")
        except CxrbenchError as exc:
            raise pytest.UsageError(str(exc)) from None
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for kind in KINDS:
        argument = f"{kind}_name"
        if argument in metafunc.fixturenames:
            metafunc.parametrize(argument, selected(metafunc.config, kind))
    if "device" in metafunc.fixturenames:
        no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
        metafunc.parametrize("device", ["cpu", pytest.param("cuda", marks=no_gpu)])


@pytest.fixture
def bench(device: str) -> BenchDevice:
    """The ``device`` parameter as a :class:`~cxrbench.testing.BenchDevice` (precision, memory format)."""
    return bench_device(device)


FIGURES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def bench_figures(pytestconfig: pytest.Config) -> list[tuple[str, str]]:
    """(what, figure) lines that the run's terminal summary lists, e.g. for results/benchmarks/README.md."""
    return pytestconfig.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if not figures:
        return
    terminalreporter.section("cxrbench figures (ratios compare across machines; absolute figures do not)")
    width = max(len(what) for what, _ in figures)
    for what, figure in figures:
        terminalreporter.write_line(f"{what:<{width}}  {figure}")
    terminalreporter.write_line(f"torch threads: {torch.get_num_threads()}")
