"""What every contract mixin shares: which component, with which options, from which plugins.

Also the checks and fixtures that more than one kind of contract needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ...interfaces import COMPONENT_KINDS
from ...registry import Registry
from ..factories import component_options, registry_for

__all__ = ["ComponentContract", "assert_same_parameters", "training"]


class ComponentContract:
    """The base of the contract mixins: the component under test and its registry."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    """The registered name of the component under test (required)."""
    options: ClassVar[Mapping[str, Any]] = {}
    """Its ``options`` block, as in a grid."""
    plugins: ClassVar[Sequence[Any]] = ()
    """Plugins to register in code (hermetic); empty = the installed entry points."""
    entry_points: ClassVar[bool | None] = None
    """Load the installed entry points too (default: only when ``plugins`` is empty)."""

    @classmethod
    def registry(cls) -> Registry:
        return registry_for(cls.plugins, entry_points=cls.entry_points)

    @classmethod
    def component_class(cls) -> type:
        if not cls.name:
            raise TypeError(f"{cls.__name__}: set the class attribute `name` to the component's registered name")
        return cls.registry().get(cls.kind, cls.name)

    @classmethod
    def parsed_options(cls, **overrides: Any) -> Any:
        return component_options(cls.component_class(), cls.kind, cls.name, {**cls.options, **overrides})

    @classmethod
    def _cache(cls) -> dict[Any, Any]:
        # One cache per concrete subclass (not inherited), so components are built once per class.
        if "_contract_cache" not in cls.__dict__:
            cls._contract_cache = {}
        return cls.__dict__["_contract_cache"]

    @classmethod
    def _cached(cls, key: Any, build: Callable[[], Any]) -> Any:
        """``build()``'s result, built once per class and ``key``."""
        cache = cls._cache()
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def test_registered_with_a_name_options_and_a_description(self) -> None:
        cls = self.component_class()
        base = COMPONENT_KINDS[self.kind]
        assert issubclass(cls, base), f"{cls.__qualname__} is not a {base.__name__}"
        assert isinstance(cls.NAME, str) and cls.NAME.strip() == cls.NAME
        assert " " not in cls.NAME, f"NAME {cls.NAME!r} has a space"
        assert dataclasses.is_dataclass(cls.Options), f"{cls.__qualname__}.Options is not a dataclass"
        assert cls.describe(), f"{cls.__qualname__} has no docstring (its first line is shown by `cxrbench list`)"
        self.parsed_options()  # the contract's options are valid


@contextlib.contextmanager
def training(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in train mode; afterwards, even on failure, gradients cleared and eval mode.

    The module is cached across checks, so a failing check must not leave it training.
    """
    module.train()
    try:
        yield module
    finally:
        module.zero_grad(set_to_none=True)
        module.eval()


def assert_same_parameters(module: nn.Module, again: nn.Module) -> None:
    """Two builds of a component under the same seed have equal parameters."""
    for (key, a), (_, b) in zip(module.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), f"two builds under the same seed differ in {key!r}"
