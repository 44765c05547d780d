"""Exception types the CLI maps to exit codes.

Only :mod:`cxrbench.cli` turns these into exit codes; everything else raises them.
"""

from __future__ import annotations


def join_key(path: str, key: object) -> str:
    """Extend a YAML path by a mapping key, quoting keys that are not plain words.

    Keys come from user files and may hold spaces or control characters; quoting them
    keeps an error message on one readable line.
    """
    text = str(key)
    if text and all(ch.isalnum() or ch in "_-" for ch in text):
        return f"{path}.{text}" if path else text
    return f"{path}[{text!r}]"


def one_line(message: str) -> str:
    """Escape line breaks and other non-printable characters so a message stays one line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in message)


MAX_MESSAGE = 300
"""Characters of a configuration error's message kept (the rest is cut)."""


class CxrbenchError(Exception):
    """Base class of every error cxrbench raises on purpose."""


class UsageError(CxrbenchError):
    """Bad input from the user: a grid, an option, a path. Exit code 4, one line."""


class ConfigError(UsageError):
    """A grid file that does not validate. The message starts with the YAML path."""

    def __init__(self, path: str, message: str, *, source: str | None = None) -> None:
        self.path = path
        self.source = source
        # values quoted in messages come from user files: keep the line readable and bounded
        self.message = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "... (cut)"
        prefix = f"{source}: " if source else ""
        location = f"{path}: " if path else ""
        super().__init__(f"{prefix}{location}{self.message}")


class PluginError(UsageError):
    """A plugin that cannot be loaded or registers something invalid."""


class CellError(CxrbenchError):
    """A cell failed for a reason worth a clean message (e.g. a non-finite loss)."""
