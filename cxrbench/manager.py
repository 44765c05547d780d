"""The plugin manager: hook specs, entry points loaded one at a time, clear errors.

Built-in plugins are found exactly like third-party ones, through the ``cxrbench``
entry-point group; the host never imports them by name.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sys
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "cxrbench"
TRACE_ENV = "CXRBENCH_TRACE_PLUGINS"
PLUGINS_ENV = "CXRBENCH_PLUGINS"
CORE_DISTRIBUTION = "cxrbench"


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from, for ``cxrbench plugins`` and error messages."""

    name: str
    distribution: str
    version: str
    builtin: bool
    module: str


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution", "?"
    return dist.metadata["Name"] or "unknown distribution", dist.version or "?"


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("cxrbench")
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def register_plugin(self, plugin: Any, info: PluginInfo) -> None:
        """Register ``plugin`` under ``info.name``, turning pluggy's errors into one line."""
        try:
            self.register(plugin, name=info.name)
        except ValueError as exc:
            raise PluginError(f"plugin '{info.name}' from {info.distribution}: {exc}") from None
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{info.name}' from {info.distribution}: {exc}") from None
        self.infos[info.name] = info

    def load_entry_points(self, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> None:
        """Import and register every ``cxrbench`` entry point, one at a time.

        Raises:
            PluginError: naming the entry point and its distribution when one fails.

        """
        for ep in _entry_points() if entry_points is None else entry_points:
            if self.has_plugin(ep.name):
                continue
            dist, version = _dist_of(ep)
            try:
                plugin = ep.load()
            # any import failure of a plugin is the plugin's, not ours; a sys.exit() at import
            # time too (it would otherwise end every command silently with its code)
            except (Exception, SystemExit) as exc:
                detail = str(exc).splitlines()[0] if str(exc) else ""
                raise PluginError(
                    f"Error importing plugin '{ep.name}' from {dist}: {type(exc).__name__}: {detail}"
                ) from None
            info = PluginInfo(
                name=ep.name,
                distribution=dist,
                version=version,
                builtin=dist == CORE_DISTRIBUTION,
                module=getattr(plugin, "__name__", repr(plugin)),
            )
            self.register_plugin(plugin, info)

    def load_env_plugins(self) -> None:
        """Import the modules named in ``CXRBENCH_PLUGINS`` (comma-separated) as plugins.

        A quick way to use a plugin module without packaging it (and how worker
        processes of an executor get the same plugins as the driver): like
        ``PYTEST_PLUGINS``.

        Raises:
            PluginError: naming the module when one fails to import.

        """
        import importlib

        for module_name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            if self.has_plugin(module_name):
                continue
            try:
                module = importlib.import_module(module_name)
            except (Exception, SystemExit) as exc:
                raise PluginError(
                    f"Error importing plugin '{module_name}' from {PLUGINS_ENV}: {type(exc).__name__}: {exc}"
                ) from None
            self.register_plugin(module, PluginInfo(module_name, f"{PLUGINS_ENV} environment variable", "", False,
                                                    module_name))

    def check(self) -> None:
        """Fail on hook implementations that match no spec (a misspelt hook name)."""
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin_name = self.get_name(exc.plugin) if exc.plugin is not None else "?"
            info = self.infos.get(plugin_name)
            where = f" from {info.distribution}" if info else ""
            message = str(exc).splitlines()[0]
            raise PluginError(f"plugin '{plugin_name}'{where}: {message}{self._hook_hint(message)}") from None

    def _hook_hint(self, message: str) -> str:
        """``"; did you mean 'cxrbench_...'?"`` for pluggy's "unknown hook 'NAME' ..." message."""
        import difflib
        import re

        unknown = re.search(r"unknown hook '([^']+)'", message)
        if unknown is None:
            return ""
        specs = [name for name in vars(self.hook) if not name.startswith("_") and getattr(self.hook, name).has_spec()]
        close = difflib.get_close_matches(unknown.group(1), specs, n=1, cutoff=0.6)
        return f"; did you mean {close[0]!r}?" if close else ""


def _trace_writer(message: str) -> None:
    sys.stderr.write(f"[cxrbench trace] {message}")


def build_plugin_manager(
    plugins: Iterable[Any] = (), *, entry_points: bool = True, core: bool = True
) -> PluginManager:
    """Create the plugin manager used by the CLI, workers and tests.

    Args:
        plugins: extra plugin objects (modules or instances) to register, e.g. in tests.
            Each may be a ``(name, plugin)`` pair.
        entry_points: load the ``cxrbench`` entry-point group (built-ins and installed
            third-party plugins). Tests pass False to stay hermetic.
        core: register the host's own default hook implementations (running a cell).

    Returns:
        A checked :class:`PluginManager`.

    Raises:
        PluginError: when a plugin fails to import or implements an unknown hook.

    """
    pm = PluginManager()
    if core:
        from . import pipeline

        pm.register_plugin(
            pipeline.CorePlugin(),
            PluginInfo("cxrbench.core", CORE_DISTRIBUTION, _core_version(), True, pipeline.__name__),
        )
    if entry_points:
        pm.load_entry_points()
        pm.load_env_plugins()
    for item in plugins:
        name, plugin = item if isinstance(item, tuple) else (getattr(item, "__name__", None), item)
        name = name or f"plugin-{id(plugin)}"
        pm.register_plugin(plugin, PluginInfo(name, "(registered in code)", "", False, name))
    pm.check()
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(_trace_writer)
        pm.enable_tracing()
    return pm


_current: PluginManager | None = None


def current_plugin_manager() -> PluginManager:
    """The plugin manager of this process: the one the CLI set, else one built from entry points.

    Worker processes and Ray tasks build theirs on first use, from the installed plugins.
    """
    global _current
    if _current is None:
        _current = build_plugin_manager()
    return _current


def set_plugin_manager(pm: PluginManager | None) -> None:
    """Use ``pm`` for everything this process runs (the CLI and tests call this)."""
    global _current
    _current = pm


def _core_version() -> str:
    from . import __version__

    return __version__
