"""Typed, validated option blocks for components.

Every component declares its options as a dataclass named ``Options`` (defaults live
there, as in hatch's target config or timm's ``PretrainedCfg``). A component only ever
sees its own block; unknown keys and wrong types are errors that name the YAML path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ConfigError, join_key


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options block of a component that takes no options."""


def option_fields(options_cls: type) -> dict[str, dataclasses.Field]:
    """Return the dataclass fields of an options class, by name."""
    return {f.name: f for f in dataclasses.fields(options_cls)}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type hint ``tp`` and return it (lists become tuples).

    Args:
        value: the raw value from YAML.
        tp: a type hint: bool, int, float, str, Literal, Optional/Union, list/tuple, dict, Any.
        path: the YAML path used in the error message.

    Returns:
        The value, with ints widened to float where a float is expected and lists as tuples.

    Raises:
        ConfigError: when the value does not fit the hint.

    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ConfigError(path, f"expected one of {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(path, f"expected null, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")


def parse_options(options_cls: type, raw: Any, path: str, owner: str) -> Any:
    """Validate a raw ``options`` mapping into an instance of ``options_cls``.

    Args:
        options_cls: the component's ``Options`` dataclass.
        raw: the mapping read from YAML (or None for all defaults).
        path: YAML path of the block, e.g. ``backbones[1].options``.
        owner: human name of the component, e.g. ``backbone 'resnet18'``.

    Returns:
        An ``options_cls`` instance.

    Raises:
        ConfigError: on unknown keys, wrong types or a validator's complaint.

    """
    if raw is None:
        raw = {}
    if isinstance(raw, options_cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(path, f"options of {owner} must be a mapping, got {raw!r}")
    fields = option_fields(options_cls)
    hints = typing.get_type_hints(options_cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            message = f"unknown option for {owner}{hint} (valid options: {valid})" if hint else \
                f"unknown option for {owner}; valid options: {valid}"
            raise ConfigError(join_key(path, key), message)
        values[key] = coerce(value, hints[key], join_key(path, key))
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(path, f"{owner} needs option {missing[0]!r}")
    instance = options_cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            # "<option> must be ..." points at the option itself; the owner names the component
            message = str(exc)
            field = message.split(" ", 1)[0]
            where = join_key(path, field) if field in fields else path
            raise ConfigError(where, message if owner == path else f"{owner}: {message}") from None
    return instance


def options_to_dict(options: Any) -> dict[str, Any]:
    """Plain, JSON-friendly dict of an options instance (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(options).items()}
