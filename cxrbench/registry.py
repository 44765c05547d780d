"""Name -> component class, per kind, with helpful errors.

Registration hooks contribute classes; the registry refuses duplicate names (naming
both providers) and answers an unknown name with the valid ones and the closest match.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError, PluginError
from .interfaces import COMPONENT_KINDS

HOOK_OF_KIND = {
    "dataset": "cxrbench_register_datasets",
    "backbone": "cxrbench_register_backbones",
    "head": "cxrbench_register_pooling_heads",
    "localizer": "cxrbench_register_localizers",
    "executor": "cxrbench_register_executors",
}

PLURAL = {
    "dataset": "datasets",
    "backbone": "backbones",
    "head": "heads",
    "localizer": "localizers",
    "executor": "executors",
}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry:
    """``{kind: {name: class}}`` built from the plugin manager's registration hooks."""

    def __init__(self) -> None:
        self._classes: dict[str, dict[str, type]] = {kind: {} for kind in COMPONENT_KINDS}
        self._providers: dict[str, dict[str, str]] = {kind: {} for kind in COMPONENT_KINDS}
        self._families: dict[str, list[tuple[type, str]]] = {kind: [] for kind in COMPONENT_KINDS}

    @classmethod
    def from_plugin_manager(cls, pm: Any) -> Registry:
        """Call every registration hook implementation, one plugin at a time."""
        registry = cls()
        for kind, hook_name in HOOK_OF_KIND.items():
            hook = getattr(pm.hook, hook_name)
            # Call implementations one by one (oldest first) so each class is attributed
            # to the plugin that contributed it.
            for impl in reversed(hook.get_hookimpls()):
                try:
                    returned = impl.function()
                except Exception as exc:
                    raise PluginError(
                        f"plugin '{impl.plugin_name}': {hook_name} failed: {type(exc).__name__}: {exc}"
                    ) from None
                for component in _as_list(returned):
                    registry.add(kind, component, impl.plugin_name)
        return registry

    def add(self, kind: str, component: type, provider: str) -> None:
        """Register ``component`` under its ``NAME``.

        Raises:
            PluginError: on a non-class, a missing ``NAME``, a wrong base class or a
                duplicate name.

        """
        base = COMPONENT_KINDS[kind]
        if not isinstance(component, type) or not issubclass(component, base):
            raise PluginError(
                f"plugin '{provider}' registered {component!r} as a {kind}, "
                f"but it is not a subclass of cxrbench.interfaces.{base.__name__}"
            )
        name = getattr(component, "NAME", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{provider}': {_qualname(component)} has no NAME")
        existing = self._classes[kind].get(name)
        if existing is not None and existing is not component:
            raise PluginError(
                f"duplicate {kind} name '{name}': {_qualname(existing)} "
                f"(plugin '{self._providers[kind][name]}') and {_qualname(component)} (plugin '{provider}')"
            )
        self._classes[kind][name] = component
        self._providers[kind][name] = provider
        if "matches" in component.__dict__:  # serves a family of names, not only NAME
            self._families[kind].append((component, provider))

    def names(self, kind: str) -> list[str]:
        """Sorted explicit names of ``kind``."""
        return sorted(self._classes[kind])

    def items(self, kind: str) -> Iterable[tuple[str, type, str]]:
        """(name, class, providing plugin) of every explicit component of ``kind``."""
        for name in self.names(kind):
            yield name, self._classes[kind][name], self._providers[kind][name]

    def provider(self, kind: str, name: str) -> str:
        """The plugin that provides ``name`` (family members: the family's plugin)."""
        if name in self._providers[kind]:
            return self._providers[kind][name]
        for component, provider in self._families[kind]:
            if component.matches(name):
                return provider
        raise KeyError(name)

    def get(self, kind: str, name: str, path: str = "") -> type:
        """Return the class for ``name``.

        Args:
            kind: one of ``dataset``, ``backbone``, ``head``, ``localizer``, ``executor``.
            name: the name from the grid.
            path: YAML path for the error message.

        Raises:
            ConfigError: unknown name; the message lists valid names and the closest.

        """
        if kind not in self._classes:
            raise ConfigError(path, f"unknown component kind '{kind}'")
        found = self._classes[kind].get(name)
        if found is not None:
            return found
        for component, _provider in self._families[kind]:
            if component.matches(name):
                return component
        raise ConfigError(path, self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        """The "unknown X; did you mean Y?" line for ``name``."""
        valid = self.names(kind)
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
        message = f"unknown {kind} {name!r}"
        if close:
            message += f"; did you mean {close[0]!r}?"
        shown = ", ".join(valid) if valid else "none registered"
        message += f" (valid {PLURAL[kind]}: {shown}"
        if self._families[kind]:
            message += "; or any name matched by " + ", ".join(c.NAME for c, _ in self._families[kind])
        return message + ")"

    def components_of(self, provider: str) -> dict[str, list[str]]:
        """What one plugin registered: ``{kind: [names]}``, empty kinds left out."""
        out: dict[str, list[str]] = {}
        for kind, providers in self._providers.items():
            names = sorted(n for n, p in providers.items() if p == provider)
            if names:
                out[kind] = names
        return out


def build_registry(pm: Any) -> Registry:
    """Shorthand for :meth:`Registry.from_plugin_manager`."""
    return Registry.from_plugin_manager(pm)
