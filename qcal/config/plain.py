"""Frozen config dataclasses to plain data and back (types coerced, unknown keys named), and to TOML."""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import fields
from typing import Any, TypeVar

from qcal.errors import ConfigError

T = TypeVar("T")


def to_plain(obj: Any) -> Any:
    """A frozen config dataclass as plain dicts/lists/scalars (enums by value, None fields left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj) if getattr(obj, f.name) is not None}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    return obj


def from_plain(cls: type[T], data: Any, where: str) -> T:
    """The dataclass `cls` from plain data, types coerced; unknown keys are a ConfigError naming `where`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}.")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(known)}.")
    hints = _resolved_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def _resolved_hints(cls: type) -> dict[str, Any]:

    return typing.get_type_hints(cls)


def _coerce(hint: Any, value: Any, where: str) -> Any:

    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(f"{where}={value!r}: choose one of {[m.value for m in hint]}.") from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_plain(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        return tuple(value)
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[...]
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _coerce(inner[0], value, where)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):   # bool is an int subclass: opset = true is not an opset
        raise ConfigError(f"{where}={value!r}: expected int, e.g. {where.rsplit('.', 1)[-1]} = 1.")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}={value!r}: expected {hint.__name__}.")
    return value


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the shapes our configs have: scalars, lists of scalars, nested tables."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise ConfigError(f"cannot write {v!r} to TOML")

    def table(d: dict[str, Any], prefix: str) -> list[str]:
        lines = [f"{k} = {scalar(v)}" for k, v in d.items() if not isinstance(v, dict)]
        for k, v in d.items():
            if isinstance(v, dict):
                name = f"{prefix}.{k}" if prefix else k
                lines += ["", f"[{name}]", *table(v, name)]
        return lines

    return "\n".join(table(data, "")) + "\n"
