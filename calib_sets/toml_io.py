"""Reading and writing the small TOML subset recipes use (tomllib reads; the standard library has no writer)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from calib_sets.errors import RecipeError


def loads(text: str, where: str = "recipe") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{where} is not valid TOML: {e}.") from e


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise RecipeError(f"cannot write {v} to a TOML recipe.")
        return repr(v)  # shortest round-tripping spelling
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items()) + " }"
    raise RecipeError(f"cannot write {type(v).__name__} {v!r} to a TOML recipe.")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps(d: Mapping[str, Any], prefix: str = "") -> str:
    """Scalars and lists first, then sub-tables as [a.b] sections (lists of tables stay inline)."""
    lines = [f"{_key(k)} = {_scalar(v)}" for k, v in d.items() if not isinstance(v, Mapping)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in d.items():
        if isinstance(v, Mapping):
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            body = dumps(v, name)
            # a table holding only sub-tables needs no header of its own
            has_scalars = any(not isinstance(x, Mapping) for x in v.values())
            out += (f"\n[{name}]\n" + body.lstrip("\n")) if has_scalars or not v else body
    return out


def check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Unknown keys are an error naming the key and the allowed ones (a typo must not be ignored)."""
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")
