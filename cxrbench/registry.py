"""Name -> component class, per kind, with helpful errors.

Registration hooks contribute classes; the registry refuses duplicate names (naming
both providers) and answers an unknown name with the valid ones and the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import ConfigError, PluginError, join_key
from .interfaces import COMPONENT_KINDS
from .options import options_to_dict, parse_options

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


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """One resolved component choice: kind, grid name, class and validated options."""

    kind: str
    name: str
    cls: type = dataclasses.field(compare=False, repr=False)
    options: Any = None
    path: str = ""
    threshold: dict | None = None  # localizers only
    # what tables and the live display call this choice: the entry's ``label`` key, or one
    # worked out from what differs between the grid's choices (never part of a cell id)
    display: str | None = dataclasses.field(default=None, compare=False)

    def options_dict(self) -> dict[str, Any]:
        """Options as plain JSON-friendly values."""
        return options_to_dict(self.options)

    def key(self) -> dict[str, Any]:
        """What identifies this choice (name + options) in a cell id.

        Options a component added after results existed, listed with their default in its
        ``ID_NEUTRAL_DEFAULTS``, are left out at that default, so finished cells keep their ids.
        """
        neutral = getattr(self.cls, "ID_NEUTRAL_DEFAULTS", {})
        options = {k: v for k, v in self.options_dict().items() if not (k in neutral and neutral[k] == v)}
        out: dict[str, Any] = {"name": self.name, "options": options}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """An instance of the component with its options (the kind decides the arguments).

        Datasets take ``(context)``, backbones nothing (the grid name is passed for
        families), heads ``(num_features, num_classes)``, localizers and executors nothing.
        """
        if self.kind == "backbone":
            return self.cls(self.options, *args, name=self.name, **kwargs)
        if self.kind == "head":
            return self.cls(*args, self.options, **kwargs)
        return self.cls(self.options, *args, **kwargs)

    def label(self) -> str:
        """Display name: the grid's ``label`` for it, else the name plus its non-default options."""
        if self.display:
            return self.display
        return self.full_label()

    def full_label(self) -> str:
        """The name plus every non-default option (``phantom[difficulty=0.15,num_images=800]``)."""
        defaults = options_to_dict(type(self.options)()) if _has_all_defaults(type(self.options)) else {}
        changed = {k: v for k, v in self.options_dict().items() if defaults.get(k, object()) != v}
        if not changed:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
        return f"{self.name}[{inner}]"


def _matches(component: type, provider: str, name: str) -> bool:
    """``component.matches(name)``, a failure of which is the plugin's, named as such."""
    try:
        return bool(component.matches(name))
    except Exception as exc:
        raise PluginError(f"plugin '{provider}': {_qualname(component)}.matches({name!r:.60}) failed: "
                          f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _has_all_defaults(options_cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(options_cls)
    )


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
        options = getattr(component, "Options", None)
        if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            # every grid entry's options block is parsed against it: say whose it is, now
            raise PluginError(f"plugin '{provider}': {_qualname(component)}.Options must be a dataclass, got "
                              f"{options!r:.80}")
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
            if _matches(component, provider, name):
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
        for component, provider in self._families[kind]:
            if _matches(component, provider, name):
                return component
        raise ConfigError(path, self.unknown_message(kind, name))

    def create(self, kind: str, entry: Any, path: str = "", *, allow_threshold: bool = False) -> ComponentSpec:
        """The one way to turn a grid entry into a validated :class:`ComponentSpec`.

        Args:
            kind: the component kind.
            entry: a name, or ``{name, options}`` (and ``threshold`` for localizers), as in
                a grid or a stored cell configuration.
            path: YAML path for error messages.
            allow_threshold: accept a ``threshold`` key (localizer entries).

        Raises:
            ConfigError: unknown name, unknown key or invalid option, with its YAML path.

        """
        threshold, display = None, None
        if isinstance(entry, str):
            name, raw_options = entry, {}
        elif isinstance(entry, dict):
            allowed = {"name", "options", "label"} | ({"threshold"} if allow_threshold else set())
            unknown = sorted(set(entry) - allowed, key=str)
            if unknown:
                raise ConfigError(join_key(path, unknown[0]),
                                  f"unknown key; a {kind} entry has keys: {', '.join(sorted(allowed))}")
            if "name" not in entry:
                raise ConfigError(path, f"a {kind} entry needs a 'name'")
            name, raw_options = entry["name"], entry.get("options") or {}
            if allow_threshold and entry.get("threshold") is not None:
                threshold = parse_threshold(entry["threshold"], f"{path}.threshold")
            display = parse_label(entry.get("label"), f"{path}.label")
        else:
            raise ConfigError(path, f"expected a {kind} name or a mapping with 'name' and 'options', got {entry!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}.name" if isinstance(entry, dict) else path,
                              f"expected a {kind} name, got {name!r}")
        cls = self.get(kind, name, path)
        options = parse_options(cls.Options, raw_options, f"{path}.options", f"{kind} '{name}'")
        return ComponentSpec(kind=kind, name=name, cls=cls, options=options, path=path, threshold=threshold,
                             display=display)

    def families(self, kind: str) -> list[type]:
        """Classes of ``kind`` that serve a family of names (``matches``), in registration order."""
        return [cls for cls, _ in self._families[kind]]

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


MAX_LABEL_LENGTH = 40
"""Longest ``label`` a grid entry may give (it is shown in every table column)."""


def parse_label(raw: Any, path: str) -> str | None:
    """A grid entry's ``label``: a short, printable, single-line name (None when not given)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(path, f"expected a short text label, got {raw!r}")
    text = raw.strip()
    if len(text) > MAX_LABEL_LENGTH or not text.isprintable():
        raise ConfigError(path, f"a label is one printable line of at most {MAX_LABEL_LENGTH} characters")
    return text


def short_labels(specs: Sequence[ComponentSpec]) -> list[str]:
    """Display labels for one axis of a grid: each entry's ``label``, else as short as tells them apart.

    A name used once in the axis is shown alone (``phantom``, not its every option); entries
    sharing a name show only the options in which they differ (``phantom[difficulty=0.3]``).
    Entries that still look alike keep their full label.
    """
    out = []
    for spec in specs:
        if spec.display:
            out.append(spec.display)
            continue
        same = [s for s in specs if s.name == spec.name]
        if len(same) == 1:
            out.append(spec.name)
            continue
        mine = spec.options_dict()
        differing = sorted(k for k in mine if any(s.options_dict().get(k) != mine[k] for s in same))
        inner = ",".join(f"{k}={mine[k]}" for k in differing)
        out.append(f"{spec.name}[{inner}]" if inner else spec.full_label())
    return out


def with_short_labels(specs: Sequence[ComponentSpec]) -> tuple[ComponentSpec, ...]:
    """``specs`` with their display labels set (:func:`short_labels`); ids are unchanged."""
    return tuple(dataclasses.replace(s, display=label) for s, label in zip(specs, short_labels(specs), strict=True))


def parse_threshold(raw: Any, path: str) -> dict[str, Any]:
    """A validated heatmap-to-box threshold policy as plain values."""
    from .boxes import ThresholdPolicy

    return options_to_dict(parse_options(ThresholdPolicy, raw, path, "threshold policy"))
