"""Building components by registered name, as a grid would, and the inputs to feed them.

A plugin author's tests and the benchmarks both go through these: a registry of the
given plugins (or the installed entry points), ``make_*`` for each kind of component,
the names a registry can build, and reproducible synthetic images.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..interfaces import Backbone, Dataset, DatasetContext, Localizer, PoolingHead
from ..manager import build_plugin_manager
from ..options import parse_options
from ..registry import ComponentSpec, Registry

__all__ = [
    "component_options",
    "iter_names",
    "make_backbone",
    "make_dataset",
    "make_head",
    "make_localizer",
    "component_spec",
    "registry_for",
    "synthetic_images",
]

_REGISTRIES: dict[tuple[Any, ...], tuple[Registry, tuple[Any, ...]]] = {}


def registry_for(plugins: Sequence[Any] = (), *, entry_points: bool | None = None) -> Registry:
    """A registry of the given plugins and/or the installed ``cxrbench`` entry points (cached).

    Args:
        plugins: plugin objects (modules or instances), or ``(name, plugin)`` pairs, to
            register in code.
        entry_points: also load the installed entry points (built-ins and every
            pip-installed plugin). Default: only when ``plugins`` is empty, because a
            plugin that is installed AND listed would be registered twice.

    Returns:
        The registry, built once per distinct argument list.

    """
    plugins = tuple(plugins)
    use_entry_points = not plugins if entry_points is None else entry_points
    # Keyed by identity: plugin objects need not be hashable; the tuple keeps them alive.
    key = (tuple(id(p) for p in plugins), use_entry_points)
    if key not in _REGISTRIES:
        pm = build_plugin_manager(plugins=plugins, entry_points=use_entry_points, core=False)
        _REGISTRIES[key] = (Registry.from_plugin_manager(pm), plugins)
    return _REGISTRIES[key][0]


def component_options(cls: type, kind: str, name: str, raw: Mapping[str, Any] | Any | None) -> Any:
    """Parse ``raw`` the way a grid's ``options`` block is parsed (an instance passes through).

    Args:
        cls: the component class (its ``Options`` dataclass parses ``raw``).
        kind: the component kind (``backbone``, ``head``, ...), for error messages.
        name: the registered name, for error messages.
        raw: a mapping of option values, an ``Options`` instance, or None for the defaults.

    Returns:
        The validated ``Options`` instance.

    """
    if raw is not None and not isinstance(raw, Mapping):
        return raw
    return parse_options(cls.Options, dict(raw or {}), f"{kind}s[{name}].options", f"{kind} '{name}'")


def component_spec(kind: str, name: str, options: Mapping[str, Any] | Any | None = None,
                   registry: Registry | None = None) -> ComponentSpec:
    """The spec a grid entry ``{name, options}`` resolves to (an ``Options`` instance passes through)."""
    registry = registry or registry_for()
    if options is not None and not isinstance(options, Mapping):
        return ComponentSpec(kind, name, registry.get(kind, name), options, f"{kind}s[{name}]")
    return registry.create(kind, {"name": name, "options": dict(options or {})}, f"{kind}s[{name}]")


def make_backbone(name: str, options: Mapping[str, Any] | Any | None = None, *,
                  registry: Registry | None = None) -> Backbone:
    """Build backbone ``name`` as a grid would (``cls(options, name=name)``)."""
    return component_spec("backbone", name, options, registry).build()


def make_head(name: str, num_features: int, num_classes: int, options: Mapping[str, Any] | Any | None = None, *,
              registry: Registry | None = None) -> PoolingHead:
    """Build pooling head ``name`` for ``num_features`` channels and ``num_classes`` classes."""
    return component_spec("head", name, options, registry).build(num_features, num_classes)


def make_localizer(name: str, options: Mapping[str, Any] | Any | None = None, *,
                   registry: Registry | None = None) -> Localizer:
    """Build localizer ``name``."""
    return component_spec("localizer", name, options, registry).build()


def make_dataset(name: str, options: Mapping[str, Any] | Any | None = None, *, registry: Registry | None = None,
                 context: DatasetContext | None = None) -> Dataset:
    """Build dataset ``name`` (warnings are collected in ``dataset.context`` only)."""
    return component_spec("dataset", name, options, registry).build(context or DatasetContext())


def iter_names(registry: Registry, kind: str) -> Iterator[str]:
    """Every buildable name of ``kind``: explicit names, and family classes' ``EXAMPLES``.

    A family class (one serving many names through ``matches``, like every timm model)
    cannot be built under its own ``NAME``; the examples it lists stand in for it.
    """
    for name, cls, _provider in registry.items(kind):
        if "matches" in cls.__dict__ and name == cls.NAME:
            yield from getattr(cls, "EXAMPLES", ())
        else:
            yield name


def synthetic_images(n: int, size: int | tuple[int, int], *, seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """``n x 1 x H x W`` normalised-looking grey images (standard normal), reproducible."""
    height, width = (size, size) if isinstance(size, int) else size
    images = torch.randn(n, 1, height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return images.to(device)
