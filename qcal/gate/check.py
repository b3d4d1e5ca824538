"""`qcal check`: the CI gate over a report.json of schema qcal.robustness/N (qcal.reporting.schema), as `qcal bench`
writes it (every precision x condition) and as `qcal quantize --eval SET` writes it (fp32 and int8 on "clean").

    qcal check report/report.json --max-drop 0.02 --max-drop noise_medium=0.05 \
        --baseline main-report.json --tolerance 0.01 --junit junit.xml

Every gated slice (precision x condition; precisions: all but fp32 unless --precisions names them) is checked
against each rule that applies:
  max-drop   relative mAP50-95 drop vs FP32 on the same condition of the same run must be <= X
  min-map    mAP50-95 must be >= X (absolute)
  baseline   mAP50-95 must be >= the baseline report's same slice minus the tolerance
(for a classifier's report, whose primary metric is top-1, read top-1 for mAP50-95.)
A rule naming a condition (or precision) the report does not have fails as a missing slice: a gate must never
pass because the thing it guards silently disappeared.

Exit status: 0 all pass, 1 a slice failed, 2 the input is unusable. Unusable is everything that is not a measured
slice: a missing or unreadable file, malformed JSON, not a qcal robustness report, a report of `qcal quantize` run
without --eval (it loads, with no slice to gate: NoEvaluationError), a value of the wrong type or
not finite anywhere check reads (each named by its JSON path), a report folder whose output-set manifest is
missing-but-expected or does not match, a baseline of another model (without --allow-other-model), a negative
threshold, an FP32 reference of 0 where a relative drop is asked for, a --junit path that cannot be written.
With --junit, exit 2 still writes the file: one test case in error saying why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.errors import ExporterError
from exporters.outset import verify_member
from qcal.errors import QcalError
from qcal.gate.junit import junit_xml
from qcal.reporting.schema import SCHEMA_PREFIX

WRITERS = "`qcal bench` or `qcal quantize --eval SET`"   # the commands whose report.json check reads


def printable(s: str) -> str:
    """`s` for a one-line message: non-printable characters (controls, newlines, lone surrogates) escaped."""
    return s if s.isprintable() else s.encode("unicode_escape", "backslashreplace").decode("ascii")


class ReportError(QcalError):
    """An input `qcal check` cannot gate on (exit 2): `problem`, at JSON path `field` of the file `source`."""

    def __init__(self, problem: str, field: str | None = None, source: str | Path | None = None,
                 role: str = "report") -> None:
        self.problem, self.field, self.role = problem, field, role
        self.source = None if source is None else str(source)
        where = " ".join(x for x in (role if source is not None else "", printable(self.source or "")) if x)
        parts = [p for p in (where, field) if p]
        super().__init__(printable(": ".join([*parts, problem])))   # one line, whatever the names hold


class NoEvaluationError(ReportError):
    """A report.json of `qcal quantize` run without --eval (exit 2): a valid report that holds no measured slice,
    so there is nothing to gate; quantize again with --eval SET (or bench the model) and gate that report."""

    PROBLEM = ("no evaluation in this report: run qcal quantize with --eval SET (images the calibration never "
               "saw, e.g. --eval 'bundled:vtest[360:480]'), or qcal bench, and gate the report.json it writes.")

    def __init__(self, source: str | Path | None = None, role: str = "report") -> None:
        super().__init__(self.PROBLEM, None, source, role)


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


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
            if "=" in v and not name.strip():
                raise ReportError(f"--{what} {printable(repr(v))}: the condition name before '=' is empty; give "
                                  "CONDITION=NUMBER (e.g. noise_medium=0.05) or just the number.")
            if name:
                per[name] = x
            else:
                default = x
        return Thresholds(default, per).validated(what)

    def validated(self, what: str) -> Thresholds:
        """Itself, when every value is a finite number >= 0 (a negative limit would fail every slice, or pass
        every one for --min-map, whatever the model does)."""
        items = [("", self.default), *self.per_condition.items()]
        for name, x in items:
            arg = f"--{what} {name + '=' if name else ''}{x}"
            if x is None:
                continue
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ReportError(f"{printable(arg)}: the threshold must be a finite number, e.g. 0.02.")
            if x < 0:
                raise ReportError(f"{printable(arg)}: the threshold is negative; it must be >= 0 (a fraction: "
                                  "0.02 = 2%). Pass the positive limit.")
        return self

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
        return "\n".join(printable(line) for line in lines)

    def to_junit(self) -> str:
        return junit_xml(self.cases)


# --- reading and validating a report -----------------------------------------------------------------------
def _manifest_expected(p: Path) -> bool:
    """A report in a folder `qcal bench` wrote, which it only does with a manifest: the bench's writer lock lies
    beside the folder. Reports without it (older, hand-made, a report.json copied elsewhere, such as a baseline
    fetched from main) need no manifest; a marker inside report.json would refuse exactly those copies."""
    d = p.absolute().parent
    return (d.parent / f".{d.name}.qcal.lock").is_file()


def _read(path: str | Path, role: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ReportError(f"is a folder; pass the report.json in it ({p / 'report.json'}).", None, p, role)
    if not p.is_file():
        raise ReportError(f"does not exist: run {WRITERS} with -o DIR and pass DIR/report.json.", None, p, role)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot be read ({e}); pass the report.json {WRITERS} wrote.", None, p, role) from None
    try:   # a report from a qcal output set must come from a whole one (its run finished, nothing changed since)
        verify_member(p, written_by_qcal=_manifest_expected(p))
    except ExporterError as e:
        raise ReportError(f"its output set is not whole: {printable(str(e))}", None, p, role) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, a 5000-digit number, nesting too deep
        raise ReportError(f"is not valid JSON ({printable(str(e))[:200]}); was it truncated? Re-run the command "
                          "that wrote it.", None, p, role) from None
    if not isinstance(data, dict):
        raise ReportError(f"is a JSON {type(data).__name__}, not a qcal robustness report (an object with 'schema': "
                          f"'{SCHEMA_PREFIX}N'); pass the report.json written by {WRITERS}.", None, p, role)
    return data


def _path(*parts: str) -> str:
    return ".".join(printable(x) for x in parts)


def _validate(data: Mapping[str, Any], src: str, role: str) -> dict[str, Any]:
    def err(problem: str, *at: str) -> ReportError:
        return ReportError(problem + f" The file was edited or not written by {WRITERS}: re-run the command that "
                           "wrote it.",
                           _path(*at) if at else None, src, role)

    schema = data.get("schema")
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise ReportError(f"is not a qcal robustness report ('schema' is {_show(schema)}, expected "
                          f"'{SCHEMA_PREFIX}N'); pass the report.json written by {WRITERS}.", "schema", src, role)
    key = data.get("primary_metric", "map50_95")
    if not isinstance(key, str) or not key:
        raise err(f"is {_show(key)}; expected the name of the metric gated on ('map50_95' or 'top1').",
                  "primary_metric")
    model = data.get("model", {})
    if not isinstance(model, dict) or not isinstance(model.get("sha256", ""), str):
        raise err(f"is {_show(model)}; expected an object whose 'sha256' is the model's hash (a string).", "model")
    conds = data.get("conditions", [])
    if not isinstance(conds, list):
        raise err(f"is {_show(conds)} (a {type(conds).__name__}); expected a list of conditions.", "conditions")
    for i, c in enumerate(conds):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise err(f"is {_show(c)}; expected an object with a string 'name'.", f"conditions[{i}]")
    cells = data.get("cells")
    if cells == {} and "evaluation" in data and data["evaluation"] is None:
        return dict(data)   # `qcal quantize` without --eval: a valid report; check() says there is nothing to gate
    if not isinstance(cells, dict) or not cells:
        raise err(f"is {_show(cells)}; 'cells' must map precision -> condition -> metrics (a non-empty object).",
                  "cells")
    for prec, by_cond in cells.items():
        if not isinstance(by_cond, dict):
            raise err(f"is {_show(by_cond)}; 'cells' must map precision -> condition -> metrics.", "cells", prec)
        for cond, m in by_cond.items():
            if not isinstance(m, dict):
                raise err(f"is {_show(m)}; expected an object of metrics.", "cells", prec, cond)
            if key not in m:
                raise err(f"has no {key!r} (it has {sorted(m)[:6]}).", "cells", prec, cond)
            v = m[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise err(f"is {_show(v)} (a {type(v).__name__}); expected a number in [0, 1].",
                          "cells", prec, cond, key)
            if not 0 <= v <= 1:   # nan and inf too (no int -> float conversion: 10**400 would overflow)
                raise err(f"is {_show(v)}; a {key} is a finite fraction in [0, 1].", "cells", prec, cond, key)
    return dict(data)


def load_report(report: str | Path | Mapping[str, Any], role: str = "report") -> dict[str, Any]:
    """The report (a path to report.json, or its dict) validated; ReportError naming what is wrong and where.
    A report of `qcal quantize` without --eval loads too (`cells` {}, `evaluation` null); check() refuses it."""
    if isinstance(report, Mapping):
        return _validate(report, "<dict>", role)
    return _validate(_read(report, role), str(report), role)


def _map(cells: Mapping[str, Any], prec: str, cond: str, key: str) -> float | None:
    v = cells.get(prec, {}).get(cond, {}).get(key)
    return None if v is None else float(v)


def _model_hash(data: Mapping[str, Any]) -> str:
    return str(data.get("model", {}).get("sha256", ""))


# --- the gate ----------------------------------------------------------------------------------------------
def check(report: str | Path | Mapping[str, Any], *, max_drop: Thresholds | None = None,
          min_map: Thresholds | None = None, baseline: str | Path | Mapping[str, Any] | None = None,
          tolerance: float = 0.0, precisions: Sequence[str] | None = None,
          allow_other_model: bool = False) -> CheckResult:
    """Gate `report` (a report.json path or its dict). ReportError when an input is unusable (exit 2)."""
    if max_drop is not None:
        max_drop.validated("max-drop")
    if min_map is not None:
        min_map.validated("min-map")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance < 0:
        raise ReportError(f"--tolerance {tolerance}: must be a finite number >= 0 (the absolute loss allowed vs "
                          "--baseline, e.g. 0.01).")
    src = "<dict>" if isinstance(report, Mapping) else str(report)
    data = load_report(report)
    if not data["cells"]:
        raise NoEvaluationError(src)
    cells = data["cells"]
    key = str(data.get("primary_metric", "map50_95"))
    label, short = ("top-1", "top-1") if key == "top1" else ("mAP50-95", "mAP")
    conds = [c["name"] for c in data.get("conditions", [])] or sorted({k for v in cells.values() for k in v})
    gated = list(precisions) if precisions else [p for p in cells if p != "fp32"]
    if not gated:
        raise ReportError(f"has only the precisions {sorted(cells)}: nothing to gate besides the FP32 reference; "
                          "bench a quantized precision too, or name one with --precisions.", "cells", src)
    base_data = None
    if baseline is not None:   # read before gating: an unusable baseline is exit 2 whatever the report says
        base_data = load_report(baseline, "baseline")
        bsrc = "<dict>" if isinstance(baseline, Mapping) else str(baseline)
        if not base_data["cells"]:
            raise NoEvaluationError(bsrc, "baseline")
        if str(base_data.get("primary_metric", "map50_95")) != key:
            raise ReportError(f"measures {base_data.get('primary_metric', 'map50_95')}, this report {key}: compare "
                              "reports of the same kind of model.", "primary_metric", bsrc, "baseline")
        mine, theirs = _model_hash(data), _model_hash(base_data)
        if mine and theirs and mine != theirs and not allow_other_model:
            raise ReportError(f"was measured on another model (sha256 {theirs[:12]}; this report's model is "
                              f"{mine[:12]}), so its numbers are not this model's baseline. Pass "
                              "--allow-other-model to hold the new model to the old one's numbers, or use a "
                              "baseline of the same model.", "model.sha256", bsrc, "baseline")
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
                if fp is not None and fp <= 0:
                    raise ReportError(
                        f"is {fp}: the relative drop vs FP32 on condition {cond!r} is undefined (FP32 scores "
                        f"nothing there). Check the evaluation set's labels for {cond!r}, or gate it with "
                        f"--min-map {cond}=X instead of --max-drop.", _path("cells", "fp32", cond, key), src)
                if fp is None or x is None:
                    cases.append(Case("max-drop", prec, cond, False, f"missing slice: no {short} for "
                                      f"{'fp32' if fp is None else prec} on {cond}"))
                else:
                    drop = (fp - x) / fp
                    cases.append(Case("max-drop", prec, cond, drop <= lim + 1e-12,
                                      f"relative drop vs FP32 {drop:+.4f} ({short} {x:.4f} vs {fp:.4f}), limit {lim:.4f}"))
            if min_map is not None and (lim := min_map.for_condition(cond)) is not None:
                cases.append(Case("min-map", prec, cond, x is not None and x >= lim,
                                  f"{label} {'missing' if x is None else f'{x:.4f}'}, minimum {lim:.4f}"))
    if base_data is not None:
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
    return CheckResult(cases, src)
