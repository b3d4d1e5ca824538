"""What a robustness run measures: the precisions (rows) and the conditions (columns) of the matrix.

Precisions, as the CLI spells them (comma separated):
  fp32 | fp16 | int8-dynamic          the FP32 export, its FP16 conversion, ORT dynamic uint8
  int8-clean (alias: int8)            static INT8 calibrated on the --calib set with every degradation removed
  int8-mixed                          static INT8 calibrated on --calib as given if it is a recipe with a [mix],
                                      else on --calib plus the QRID mix (half clean; calib_sets.DegradationMix.qrid)
  int8:NAME=SRC                       static INT8 calibrated on SRC (any recipe / source calib_sets.load takes)
  onnx:PATH or onnx:NAME=PATH         any ONNX file the user names (same input/output as the FP32 export)
Conditions: "qrid" (clean + the seven QRID conditions), a comma list of named conditions / ladder rungs
(`noise_low,gaussian_blur_l3`), or a TOML file of [conditions.<name>] steps tables. "clean" is always first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

import calib_sets
from calib_sets.degrade import Condition
from calib_sets.presets import QRID, named_condition
from qcal.config import BENCH_PRECISIONS
from qcal.errors import ConfigError

KINDS = ("fp32", "fp16", "dynamic", "static", "onnx")
DEFAULT_PRECISIONS = BENCH_PRECISIONS
# Other spellings of a precision, read as the name they stand for (reports and caches carry that name only).
# "int8" is unambiguous: the one static INT8 on --calib as given, minus its degradations, is int8-clean.
ALIASES = {"int8": "int8-clean"}


@dataclass(frozen=True)
class Precision:
    name: str
    kind: str                       # one of KINDS
    calib: str | None = None        # static: the calibration spec (recipe or source)
    degrade: bool = False           # static: apply the QRID mix to a plain --calib source
    clean: bool = False             # static: strip the recipe's mix (int8-clean)
    path: str | None = None         # onnx: the file

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False)}


def parse_precisions(spec: str | Sequence[str], calib: str | None) -> list[Precision]:
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not tokens:
        raise ConfigError(f"no precisions given; e.g. --precisions {DEFAULT_PRECISIONS}")
    out: list[Precision] = []
    for t in (ALIASES.get(t, t) for t in tokens):
        if t in ("fp32", "fp16"):
            p = Precision(t, t)
        elif t == "int8-dynamic":
            p = Precision(t, "dynamic")
        elif t in ("int8-clean", "int8-mixed"):
            if calib is None:
                raise ConfigError(f"precision {t} needs a calibration set: pass --calib (a recipe or a source).")
            mixed = t == "int8-mixed"
            p = Precision(t, "static", calib, degrade=mixed and not _has_mix(calib), clean=not mixed)
        elif t.startswith("int8:") and "=" in t:
            name, src = t[5:].split("=", 1)
            p = Precision(f"int8-{name}", "static", src)
        elif t.startswith("onnx:"):
            body = t[5:]
            name, path = body.split("=", 1) if "=" in body else (Path(body).stem, body)
            if not Path(path).is_file():
                raise ConfigError(f"precision {t}: ONNX file {path} does not exist.")
            p = Precision(name, "onnx", path=path)
        else:
            raise ConfigError(f"unknown precision {t!r}; use fp32, fp16, int8-dynamic, int8-clean (or int8), "
                              "int8-mixed, int8:NAME=RECIPE or onnx:[NAME=]PATH.")
        if any(q.name == p.name for q in out):
            alias = "".join(f" ({a} is another name for {b})" for a, b in ALIASES.items() if b == p.name)
            raise ConfigError(f"precision {p.name!r} is given twice{alias}; name it once.")
        out.append(p)
    return out


def _has_mix(calib: str) -> bool:
    if Path(calib).suffix.lower() != ".toml":
        return False
    return calib_sets.Recipe.read(calib).mix is not None


def calibration_set(p: Precision, imgsz: int, *, allow_outside_root: bool = False) -> calib_sets.CalibSet:
    """The calibration set of a static precision, resized to the model's input size before any degradation
    (so blur sigma and noise are in model pixels, as the presets assume). Paths written in a recipe stay under
    the recipe's folder unless allow_outside_root."""
    if p.calib is None:
        raise ConfigError(f"precision {p.name} has no calibration set: pass --calib.")
    try:
        if Path(p.calib).suffix.lower() == ".toml":
            recipe = calib_sets.Recipe.read(p.calib)
            if p.clean:
                recipe = dataclasses.replace(recipe, mix=None)
            if recipe.imgsz is None:
                recipe = dataclasses.replace(recipe, imgsz=imgsz)
            return recipe.build(allow_outside_root=allow_outside_root)
        cs = calib_sets.load(p.calib, allow_outside_root=allow_outside_root).resized(imgsz)
        return calib_sets.DegradationMix.qrid().apply(cs, seed=0) if p.degrade else cs
    except calib_sets.CalibSetError as e:
        raise ConfigError(f"calibration set of {p.name}: {e}") from e


def parse_conditions(spec: str | Sequence[str] | None) -> list[Condition | None]:
    """[None (clean), Condition, ...] in the order given."""
    if spec is None or spec == "clean":
        return [None]
    conds: list[Condition] = []
    try:
        if isinstance(spec, str) and spec.endswith(".toml"):
            conds = _conditions_toml(Path(spec))
        else:
            for t in (spec.split(",") if isinstance(spec, str) else spec):
                t = t.strip()
                if t == "qrid":
                    conds += list(QRID.values())
                elif t and t != "clean":
                    conds.append(named_condition(t))
    except calib_sets.CalibSetError as e:
        raise ConfigError(f"conditions {spec!r}: {e}") from e
    names = [c.name for c in conds]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"condition(s) {sorted(dup)} given twice.")
    return [None, *conds]


def _conditions_toml(path: Path) -> list[Condition]:
    if not path.is_file():
        raise ConfigError(f"conditions file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"conditions file {path} does not parse: {e}") from e
    extra = set(data) - {"conditions"}
    if extra or not isinstance(data.get("conditions"), dict):
        raise ConfigError(f"conditions file {path}: expected only [conditions.<name>] tables with steps = [...]; "
                          f"found keys {sorted(extra) or 'none'}.")
    return [Condition.from_dict(name, d) for name, d in data["conditions"].items()]


def condition_name(c: Condition | None) -> str:
    return "clean" if c is None else c.name


def condition_dict(c: Condition | None) -> dict[str, Any]:
    return {"name": condition_name(c), **({"steps": c.to_dict()["steps"]} if c is not None else {"steps": []})}
