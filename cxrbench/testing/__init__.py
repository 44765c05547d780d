"""Contract tests and benchmark helpers for cxrbench components: yours and the built-ins.

This package imports pytest (install ``cxrbench[test]``); nothing else in cxrbench imports
it, so importing cxrbench never needs pytest.

**Contract tests.** Subclass a mixin in a ``test_*.py`` file, name your component, and
pytest runs every check of that kind of component on it::

    import cxrbench_gem
    from cxrbench.testing import HeadContract

    class TestGeMHead(HeadContract):
        name = "gem"
        options = {"p": 4.0}
        plugins = [cxrbench_gem]  # hermetic; leave out to use the installed entry points

The mixins are :class:`BackboneContract`, :class:`HeadContract`,
:class:`LocalizerContract` and :class:`DatasetContract`. Their names do not start with
``Test``, so importing one into a test module does not collect it on its own. Every check
is a plain method (``test_*``) that raises ``AssertionError`` on a broken component, so it
can also be called directly.

**Benchmarks** (pytest-benchmark): :func:`benchmark_backbone`, :func:`benchmark_head`,
:func:`localizer_ratio` and :func:`benchmark_loading` time a component the way
``benchmarks/test_components.py`` times the built-ins, on ``"cpu"`` or on ``"cuda"``
(mixed precision, channels-last, synchronised timing), and put their figures in the
benchmark's ``extra_info``. Each accepts ``benchmark=None`` to time without pytest.

The modules: :mod:`.factories` (registries, ``make_*``, synthetic images),
:mod:`.components` (tiny components to test against), :mod:`.contracts` (the mixins),
:mod:`.timing` (devices and timed rounds) and :mod:`.bench` (the benchmark helpers).
"""

from .bench import benchmark_backbone, benchmark_head, benchmark_loading, localizer_ratio
from .components import LinearHead, LogitMapHead, TinyBackbone, TinyDataset, testing_plugin, tiny_classifier
from .contracts import BackboneContract, DatasetContract, HeadContract, LocalizerContract
from .factories import (
    iter_names,
    make_backbone,
    make_dataset,
    make_head,
    make_localizer,
    registry_for,
    synthetic_images,
)
from .timing import BenchDevice, bench_device, measure

__all__ = [
    "BackboneContract",
    "BenchDevice",
    "DatasetContract",
    "HeadContract",
    "LinearHead",
    "LocalizerContract",
    "LogitMapHead",
    "TinyBackbone",
    "TinyDataset",
    "benchmark_backbone",
    "benchmark_head",
    "benchmark_loading",
    "bench_device",
    "iter_names",
    "localizer_ratio",
    "measure",
    "make_backbone",
    "make_dataset",
    "make_head",
    "make_localizer",
    "registry_for",
    "synthetic_images",
    "testing_plugin",
    "tiny_classifier",
]
