"""A sweep file: models x calibration recipes x conditions x precisions, run by `qcal bench sweep.toml -o DIR`.

    eval = "bundled:vtest[360:480:2]"              # evaluation images (never calibrated on)
    calib = "vtest-qrid.toml"                      # the --calib of int8-clean / int8-mixed
    precisions = ["fp32", "int8-clean", "int8-mixed"]
    conditions = ["qrid"]                          # or names, or one conditions .toml file
    latency_runs = 0
    bootstrap = 0
    threads = 1

    [config]                                       # a QuantConfig, as `qcal config` prints it
    imgsz = 640

    [[recipes]]                                    # each adds a precision int8-NAME calibrated on RECIPE
    name = "qrid64"
    recipe = "vtest64-qrid.toml"

    [[models]]                                     # each gets its own report under DIR/NAME/
    name = "fall-yolov8s"
    package = "fall_detection"                     # optional: checkpoint is inside this installed package
    checkpoint = "models/best.pt"

Relative paths are read from the sweep file's folder when a file of that name is there. A sweep with one model
gives DIR/NAME/report.json equal to `qcal bench CHECKPOINT --eval .. --calib .. -o DIR/NAME` with the same
options (tested). Where the cells run (--executor, --address) and whether checkpoints may be unpickled
(--trust-checkpoint) stay on the command line: they are not part of what is measured.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from qcal.bench.spec import DEFAULT_PRECISIONS
from qcal.config import QuantConfig, dump_toml, from_plain, to_plain
from qcal.errors import ConfigError


@dataclass(frozen=True)
class SweepModel:
    name: str                       # the report's folder under -o
    checkpoint: str                 # a path (relative to the sweep file, or to `package`)
    package: str | None = None      # an installed Python package holding the checkpoint

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"sweep model name {self.name!r}: use letters, digits, '.', '_' and '-' (it names the "
                              "report folder).")


@dataclass(frozen=True)
class SweepRecipe:
    name: str                       # precision int8-NAME
    recipe: str                     # a calib_sets recipe (.toml) or source


@dataclass(frozen=True)
class Sweep:
    eval: str
    models: tuple[SweepModel, ...]
    calib: str | None = None
    precisions: tuple[str, ...] = tuple(DEFAULT_PRECISIONS.split(","))
    recipes: tuple[SweepRecipe, ...] = ()
    conditions: tuple[str, ...] = ("qrid",)
    config: QuantConfig = field(default_factory=QuantConfig)
    latency_runs: int = 30
    bootstrap: int = 1000
    threads: int = 2
    device: str = "cpu"
    runtime: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("sweep: no [[models]]; add at least one table with name and checkpoint.")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"sweep: model names {names} repeat; each names its own report folder.")
        if not self.conditions or not self.precisions + tuple(r.name for r in self.recipes):
            raise ConfigError("sweep: conditions and precisions (or [[recipes]]) must not be empty.")
        if min(self.latency_runs, self.bootstrap) < 0 or self.threads < 1:
            raise ConfigError("sweep: latency_runs and bootstrap must be >= 0, threads >= 1.")
        if self.device not in ("cpu", "cuda") or self.runtime not in (None, "ort", "torch"):
            raise ConfigError(f"sweep: device={self.device!r} must be cpu or cuda, runtime={self.runtime!r} ort or "
                              "torch.")

    # --- what `qcal.robustness` is called with ------------------------------------------------------------
    def precision_spec(self) -> list[str]:
        return [*self.precisions, *(f"int8:{r.name}={r.recipe}" for r in self.recipes)]

    def condition_spec(self) -> str:
        return self.conditions[0] if len(self.conditions) == 1 else ",".join(self.conditions)

    # --- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = to_plain(self)
        d["config"] = self.config.to_dict()
        return d

    def to_toml(self) -> str:
        d = self.to_dict()
        tables = {k: d.pop(k) for k in ("models", "recipes")}
        text = dump_toml(d)
        for k, rows in tables.items():
            for row in rows:
                text += f"\n[[{k}]]\n" + dump_toml(row)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> Sweep:
        if not isinstance(data, dict):
            raise ConfigError("sweep: expected a table.")
        data = dict(data)
        rows = {k: data.pop(k, []) for k in ("models", "recipes")}
        cfg = QuantConfig.from_dict(data.pop("config", {}))
        for k in ("precisions", "conditions"):
            if isinstance(data.get(k), str):
                data[k] = [t.strip() for t in data[k].split(",") if t.strip()]
        for k, v in rows.items():
            if not isinstance(v, list):
                raise ConfigError(f"sweep: {k} must be an array of tables ([[{k}]]), got {type(v).__name__}.")
        models = tuple(from_plain(SweepModel, r, f"sweep.models[{i}]") for i, r in enumerate(rows["models"]))
        recipes = tuple(from_plain(SweepRecipe, r, f"sweep.recipes[{i}]") for i, r in enumerate(rows["recipes"]))
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(_SweepScalars)})
        if unknown:   # before "no eval key": `evall = ...` is a typo of eval, and the message should say so
            raise ConfigError(f"sweep: unknown key(s) {unknown}; allowed keys are "
                              f"{sorted(f.name for f in dataclasses.fields(_SweepScalars))} and [config], [[models]], "
                              "[[recipes]].")
        if "eval" not in data:
            raise ConfigError("sweep: no eval key; name the evaluation images, e.g. eval = \"bundled:vtest[360:480]\".")
        plain = from_plain(_SweepScalars, data, "sweep")
        sweep = cls(models=models, recipes=recipes, config=cfg, **dataclasses.asdict(plain))
        return sweep.resolved(base) if base is not None else sweep

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"sweep file {p} does not exist.")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"sweep file {p} does not parse: {e}. Fix the TOML syntax.") from e
        return cls.from_dict(data, base=p.resolve().parent)

    def resolved(self, base: Path) -> Sweep:
        """Paths named relative to the sweep file's folder made absolute; specs such as bundled:vtest kept."""
        def rel(s: str | None) -> str | None:
            return None if s is None else (str(base / s) if (base / s).exists() else s)

        models = tuple(dataclasses.replace(m, checkpoint=str(_checkpoint(m, base))) for m in self.models)
        recipes = tuple(dataclasses.replace(r, recipe=rel(r.recipe) or r.recipe) for r in self.recipes)
        conds = tuple(rel(c) or c for c in self.conditions)
        return dataclasses.replace(self, eval=rel(self.eval) or self.eval, calib=rel(self.calib), models=models,
                                   recipes=recipes, conditions=conds)


@dataclass(frozen=True)
class _SweepScalars:
    """The scalar keys of a sweep file (the tables are read separately), for unknown-key checking and typing."""

    eval: str
    calib: str | None = None
    precisions: tuple[str, ...] = tuple(DEFAULT_PRECISIONS.split(","))
    conditions: tuple[str, ...] = ("qrid",)
    latency_runs: int = 30
    bootstrap: int = 1000
    threads: int = 2
    device: str = "cpu"
    runtime: str | None = None


def _checkpoint(m: SweepModel, base: Path) -> Path:
    if m.package is None:
        p = Path(m.checkpoint)
        return p if p.is_absolute() else (base / p if (base / p).exists() else p)
    spec = importlib.util.find_spec(m.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"sweep model {m.name}: package {m.package!r} is not installed; install it or give "
                          "checkpoint as a path without package.")
    return Path(list(spec.submodule_search_locations)[0]) / m.checkpoint


def run_sweep(sweep: Sweep, out: str | Path, *, trust_checkpoint: bool = False, executor: Any = "serial",
              address: str | None = None, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """One `qcal.robustness` per model into out/NAME/, on the given executor; out/sweep.json indexes them."""
    from exporters.quant_table import atomic_write_text
    from qcal.bench import robustness

    d = Path(out)
    reports: dict[str, Any] = {}
    for m in sweep.models:
        reports[m.name] = robustness(m.checkpoint, eval=sweep.eval, calib=sweep.calib,
                                     conditions=sweep.condition_spec(), precisions=sweep.precision_spec(),
                                     out=d / m.name, config=sweep.config, trust_checkpoint=trust_checkpoint,
                                     latency_runs=sweep.latency_runs, bootstrap=sweep.bootstrap,
                                     threads=sweep.threads, progress=progress, command=command, device=sweep.device,
                                     runtime=sweep.runtime, executor=executor, address=address)
    index = {"sweep": sweep.to_dict(), "reports": {k: str(d / k / "report.json") for k in reports},
             "cells": sum(len(row) for r in reports.values() for row in r.data["cells"].values())}
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "sweep.json", json.dumps(index, indent=1))
    return reports
