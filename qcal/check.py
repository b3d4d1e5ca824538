"""`qcal check`: the CI gate over a robustness report.json.

    qcal check report/report.json --max-drop 0.02 --max-drop noise_medium=0.05 \
        --baseline main-report.json --tolerance 0.01 --junit junit.xml

Every gated slice (precision x condition; precisions: all but fp32 unless --precisions names them) is checked
against each rule that applies:
  max-drop   relative mAP50-95 drop vs FP32 on the same condition of the same run must be <= X
  min-map    mAP50-95 must be >= X (absolute)
  baseline   mAP50-95 must be >= the baseline report's same slice minus the tolerance
(for a classifier's report, whose primary metric is top-1, read top-1 for mAP50-95.)
A rule naming a condition (or precision) the report does not have fails as a missing slice: a gate must never
pass because the thing it guards silently disappeared. Exit status: 0 all pass, 1 a slice failed, 2 the input
is unusable (missing file, malformed JSON, not a qcal robustness report).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.quant_table import atomic_write_text
from qcal.errors import QcalError

SCHEMA_PREFIX = "qcal.robustness/"


class ReportError(QcalError):
    """A report file that cannot be gated: missing, not JSON, or not a qcal robustness report."""


@dataclass(frozen=True)
class Thresholds:
    """A default value plus per-condition overrides, parsed from `0.02` / `noise_medium=0.05` arguments."""

    default: float | None = None
    per_condition: Mapping[str, float] = field(default_factory=dict)

    @staticmethod
    def parse(values: Sequence[str] | None, what: str) -> Thresholds:
        default, per = None, {}
        for v in values or ():
            name, _, num = v.rpartition("=")
            try:
                x = float(num)
            except ValueError:
                raise ReportError(f"--{what} {v!r}: expected a number or CONDITION=NUMBER, e.g. 0.02 or "
                                  "noise_medium=0.05.") from None
            if not math.isfinite(x):
                raise ReportError(f"--{what} {v!r}: the threshold must be finite.")
            if name:
                per[name] = x
            else:
                default = x
        return Thresholds(default, per)

    def for_condition(self, cond: str) -> float | None:
        return self.per_condition.get(cond, self.default)


@dataclass(frozen=True)
class Case:
    rule: str
    precision: str
    condition: str
    ok: bool
    message: str


@dataclass
class CheckResult:
    cases: list[Case]
    report: str

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.cases)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if not c.ok]

    def summary(self) -> str:
        n, bad = len(self.cases), self.failures
        lines = [f"qcal check {self.report}: {n - len(bad)}/{n} checks passed"]
        lines += [f"  FAIL [{c.rule}] {c.precision} / {c.condition}: {c.message}" for c in bad]
        return "\n".join(lines)

    def to_junit(self) -> str:
        suite = ET.Element("testsuite", name="qcal.check", tests=str(len(self.cases)),
                           failures=str(len(self.failures)), errors="0")
        for c in self.cases:
            tc = ET.SubElement(suite, "testcase", classname=f"qcal.check.{c.rule}", name=f"{c.precision}/{c.condition}")
            if c.ok:
                ET.SubElement(tc, "system-out").text = c.message
            else:
                ET.SubElement(tc, "failure", message=c.message, type=c.rule).text = c.message
        root = ET.Element("testsuites")
        root.append(suite)
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ReportError(f"report {p} does not exist: run `qcal bench ... -o DIR` and pass DIR/report.json.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"report {p} is not valid JSON ({e}); was it truncated? Re-run `qcal bench`.") from e
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith(SCHEMA_PREFIX):
        raise ReportError(f"report {p} is not a qcal robustness report (no 'schema': '{SCHEMA_PREFIX}N'); "
                          "pass the report.json written by `qcal bench`.")
    cells = data.get("cells")
    if not isinstance(cells, dict) or not all(isinstance(v, dict) for v in cells.values()):
        raise ReportError(f"report {p}: 'cells' must map precision -> condition -> metrics.")
    return data


def _map(cells: Mapping[str, Any], prec: str, cond: str, key: str = "map50_95") -> float | None:
    v = cells.get(prec, {}).get(cond, {}).get(key)
    return None if v is None or not math.isfinite(float(v)) else float(v)


def check(report: str | Path, *, max_drop: Thresholds | None = None, min_map: Thresholds | None = None,
          baseline: str | Path | None = None, tolerance: float = 0.0,
          precisions: Sequence[str] | None = None) -> CheckResult:
    data = load_report(report)
    cells = data["cells"]
    key = str(data.get("primary_metric", "map50_95"))
    label, short = ("top-1", "top-1") if key == "top1" else ("mAP50-95", "mAP")
    conds = [c["name"] for c in data.get("conditions", [])] or sorted({k for v in cells.values() for k in v})
    gated = list(precisions) if precisions else [p for p in cells if p != "fp32"]
    cases: list[Case] = []
    for prec in gated:
        if prec not in cells:
            cases.append(Case("missing", prec, "*", False, f"precision {prec!r} is not in the report "
                              f"(it has {sorted(cells)})"))
    gated = [p for p in gated if p in cells]
    for what, th in (("max-drop", max_drop), ("min-map", min_map)):
        for cond in sorted((th.per_condition if th else {}).keys() - set(conds)):
            cases.append(Case("missing", "*", cond, False, f"--{what} names condition {cond!r}, which the report "
                              f"does not have (it has {conds})"))
    for prec in gated:
        for cond in conds:
            x = _map(cells, prec, cond, key)
            if max_drop is not None and (lim := max_drop.for_condition(cond)) is not None:
                fp = _map(cells, "fp32", cond, key)
                if fp is None or x is None:
                    cases.append(Case("max-drop", prec, cond, False, f"missing slice: no {short} for "
                                      f"{'fp32' if fp is None else prec} on {cond}"))
                else:
                    drop = (fp - x) / fp if fp > 0 else 0.0
                    cases.append(Case("max-drop", prec, cond, drop <= lim + 1e-12,
                                      f"relative drop vs FP32 {drop:+.4f} ({short} {x:.4f} vs {fp:.4f}), limit {lim:.4f}"))
            if min_map is not None and (lim := min_map.for_condition(cond)) is not None:
                cases.append(Case("min-map", prec, cond, x is not None and x >= lim,
                                  f"{label} {'missing' if x is None else f'{x:.4f}'}, minimum {lim:.4f}"))
    if baseline is not None:
        base_data = load_report(baseline)
        if str(base_data.get("primary_metric", "map50_95")) != key:
            raise ReportError(f"baseline {baseline} measures {base_data.get('primary_metric', 'map50_95')}, this "
                              f"report {key}: compare reports of the same kind of model.")
        base = base_data["cells"]
        for prec in gated:
            for cond in sorted(base.get(prec, {})):
                b, x = _map(base, prec, cond, key), _map(cells, prec, cond, key)
                if b is None:
                    continue
                if x is None:
                    cases.append(Case("baseline", prec, cond, False, f"missing slice: the baseline has {prec} / "
                                      f"{cond} ({short} {b:.4f}) but this report does not"))
                else:
                    cases.append(Case("baseline", prec, cond, x >= b - tolerance - 1e-12,
                                      f"{label} {x:.4f} vs baseline {b:.4f} ({x - b:+.4f}), tolerance {tolerance:.4f}"))
    if not cases:
        raise ReportError("no rule to check: pass --max-drop, --min-map or --baseline.")
    return CheckResult(cases, str(report))


def write_junit(result: CheckResult, path: str | Path) -> Path:
    atomic_write_text(Path(path), result.to_junit())
    return Path(path)
