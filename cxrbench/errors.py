"""Exception types the CLI maps to exit codes.

Only :mod:`cxrbench.cli` turns these into exit codes; everything else raises them.
"""

from __future__ import annotations


class CxrbenchError(Exception):
    """Base class of every error cxrbench raises on purpose."""


class UsageError(CxrbenchError):
    """Bad input from the user: a grid, an option, a path. Exit code 4, one line."""


class ConfigError(UsageError):
    """A grid file that does not validate. The message starts with the YAML path."""

    def __init__(self, path: str, message: str, *, source: str | None = None) -> None:
        self.path = path
        self.source = source
        self.message = message
        prefix = f"{source}: " if source else ""
        location = f"{path}: " if path else ""
        super().__init__(f"{prefix}{location}{message}")


class PluginError(UsageError):
    """A plugin that cannot be loaded or registers something invalid."""


class CellError(CxrbenchError):
    """A cell failed for a reason worth a clean message (e.g. a non-finite loss)."""
