"""Bit allocation as an integer program (Hubara et al., section 5), solved with scipy.optimize.milp (HiGHS).

Variables: x[l, c] in {0, 1}, one per (layer, precision choice). Exactly one choice per layer. Minimise the
summed measured sensitivity (loss increase when only layer l runs at choice c) subject to one budget:
    sum_l,c cost[l, c] * x[l, c] <= budget
where cost is bits x params (size), MACs x weight bits x activation bits (BOPs) or measured latency. Budgets
are given as a fraction of the all-FP32 cost. An infeasible budget is an error naming the smallest feasible one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcal.errors import ConfigError, QcalError
from qcal.quant.precision import Precision


class AllocationError(QcalError):
    """The bit-allocation problem has no solution (budget too small) or is malformed."""


class AllocationConfigError(AllocationError, ConfigError):
    """An argument of the allocation is wrong (an unknown precision choice, a malformed budget): found before any
    work starts. Both an AllocationError and a ConfigError (CLI exit 2)."""


def check_choices(choices: Sequence[str | Precision], *, deployable: bool = False,
                  what: str = "choices") -> list[Precision]:
    """The precision choices of an allocation as Precisions: each a known name, none twice, at least one.
    deployable: only those the exporters write today (int8, fp16, fp32), as the CLI's exported model needs."""
    allowed = [p.value for p in Precision if p.deployable or not deployable]
    names = [c.value if isinstance(c, Precision) else c for c in choices]
    bad = [c for c in names if not isinstance(c, str) or c not in allowed]
    if bad:
        extra = "" if not deployable else (f" (the simulated ones, {[p.value for p in Precision if not p.deployable]}, "
                                           "only through the Python API: qcal.allocate_bits(..., choices=[...]))")
        raise AllocationConfigError(f"{what}: unknown precision(s) {bad} in {names}; the allowed choices are "
                                    f"{allowed}{extra}; give e.g. int8,fp16.")
    if not names:
        raise AllocationConfigError(f"{what} is empty: give one or more precisions from {allowed}, e.g. int8,fp16.")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise AllocationConfigError(f"{what}: {dup} listed more than once in {names}; list each precision once, "
                                    "e.g. int8,fp16.")
    return [Precision(c) for c in names]


def parse_choices(text: str, *, deployable: bool = True) -> tuple[str, ...]:
    """The CLI's --choices: 'int8,fp16' -> ('int8', 'fp16'), checked (check_choices) before any file is read.
    Raises AllocationConfigError naming the bad names and the allowed ones."""
    names = [c.strip() for c in text.split(",")]
    if any(not c for c in names):
        raise AllocationConfigError(f"--choices {text!r}: an empty name between commas; write a comma list of "
                                    "precisions, e.g. int8,fp16.")
    return tuple(p.value for p in check_choices(names, deployable=deployable, what=f"--choices {text!r}"))


@dataclass(frozen=True)
class Budget:
    """Exactly one of size / bops / latency, as a fraction of the all-FP32 model (e.g. size=0.2)."""

    size: float | None = None
    bops: float | None = None
    latency: float | None = None

    def __post_init__(self) -> None:
        set_ = [(k, v) for k, v in (("size", self.size), ("bops", self.bops), ("latency", self.latency))
                if v is not None]
        if len(set_) != 1:
            raise AllocationError(f"Budget: give exactly one of size=, bops=, latency= (got {dict(set_) or 'none'}),"
                                  " e.g. Budget(size=0.2).")
        kind, ratio = set_[0]
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio <= 0:
            raise AllocationConfigError(f"Budget {kind}={ratio!r}: must be a finite number > 0 (a fraction of the "
                                        f"FP32 model's {kind}); give e.g. {kind}=0.5.")

    @property
    def kind(self) -> str:
        return "size" if self.size is not None else "bops" if self.bops is not None else "latency"

    @property
    def ratio(self) -> float:
        v = self.size if self.size is not None else self.bops if self.bops is not None else self.latency
        assert v is not None
        return float(v)

    @staticmethod
    def parse(text: str) -> Budget:
        """'latency=0.7' / 'size=0.2' / 'bops=0.1' (the CLI's --allocate)."""
        key, _, val = text.partition("=")
        if key not in ("size", "bops", "latency") or not val:
            raise AllocationConfigError(f"--allocate {text!r}: write KIND=RATIO with KIND size, bops or latency, "
                                  "e.g. latency=0.7.")
        try:
            ratio = float(val)
        except ValueError:
            raise AllocationConfigError(f"--allocate {text!r}: {val!r} is not a number; give e.g. {key}=0.5.") \
                from None
        try:
            return Budget(**{key: ratio})
        except AllocationConfigError as e:
            raise AllocationConfigError(f"--allocate {text!r}: {e}") from None


@dataclass(frozen=True)
class LayerCost:
    """What one layer costs: parameters and MACs per sample; latency per choice (ms) when measured."""

    params: int
    macs: int
    latency_ms: Mapping[str, float] = field(default_factory=dict)

    def cost(self, kind: str, p: Precision) -> float:
        if kind == "size":
            return float(self.params * p.weight_bits)
        if kind == "bops":
            return float(self.macs * p.weight_bits * p.act_bits)
        if p.value not in self.latency_ms:
            raise AllocationError(f"latency budget: no measured latency for choice {p.value!r}; measure it "
                                  "(qcal.alloc_latency) or use a size/bops budget.")
        return float(self.latency_ms[p.value])


@dataclass
class Allocation:
    """The solved plan: each layer's choice with its sensitivity and cost, and the predicted totals."""

    choices: dict[str, Precision]
    budget: Budget
    cost_ratio: float                           # predicted cost / FP32 cost
    predicted_loss_increase: float              # sum of the chosen sensitivities
    sensitivity: dict[str, dict[str, float]]    # layer -> choice -> measured loss increase
    measured: dict[str, Any] = field(default_factory=dict)   # filled by whoever evaluates the plan (JSON-able)
    export_config: Any = None                   # a QuantConfig keeping the float layers float (allocate_bits)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": {self.budget.kind: self.budget.ratio}, "cost_ratio": self.cost_ratio,
                "predicted_loss_increase": self.predicted_loss_increase,
                "layers": [{"layer": n, "choice": p.value, "sensitivity": self.sensitivity.get(n, {})}
                           for n, p in self.choices.items()],
                "float_layers": [n for n, p in self.choices.items() if p.is_float],
                "measured": self.measured}


def solve(sensitivity: np.ndarray, cost: np.ndarray, budget: float,
          exclude: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The integer program on arrays: sensitivity, cost (L, C); returns the chosen column per layer (L,).

    `exclude`: picks (each (L,)) the solution must differ from in at least one layer (a "no-good" cut per pick:
    sum_l x[l, pick_l] <= L - 1), which is how solve_k finds the next-best plans.
    Raises AllocationError when even the cheapest choice per layer exceeds `budget`, naming that minimum."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    s, c = np.asarray(sensitivity, np.float64), np.asarray(cost, np.float64)
    if s.shape != c.shape or s.ndim != 2 or s.size == 0:
        raise AllocationError(f"sensitivity {s.shape} and cost {c.shape} must be equal, non-empty (layers, choices).")
    if not (np.isfinite(s).all() and np.isfinite(c).all()):
        raise AllocationError("sensitivity/cost contain NaN or inf: re-measure the sensitivities.")
    n_layers, n_choices = s.shape
    smallest = float(c.min(axis=1).sum())
    if budget < smallest * (1 - 1e-12):
        raise AllocationError(f"budget {budget:.6g} is infeasible: the cheapest choice for every layer already "
                              f"costs {smallest:.6g}; the smallest feasible budget is {smallest:.6g}.")
    one_each = np.kron(np.eye(n_layers), np.ones((1, n_choices)))
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(c.reshape(1, -1), -np.inf, budget)]
    for pick in exclude:
        row = np.zeros(s.size)
        row[np.arange(n_layers) * n_choices + np.asarray(pick)] = 1.0
        constraints.append(LinearConstraint(row.reshape(1, -1), -np.inf, n_layers - 1))
    res = milp(s.reshape(-1), constraints=constraints, integrality=np.ones(s.size), bounds=Bounds(0, 1))
    if res.x is None:
        raise AllocationError(f"the integer program found no solution ({res.message}); the smallest feasible "
                              f"budget is {smallest:.6g}.")
    x = np.round(res.x).reshape(n_layers, n_choices)
    return np.asarray(x.argmax(axis=1))


def solve_k(sensitivity: np.ndarray, cost: np.ndarray, budget: float, k: int) -> list[np.ndarray]:
    """The k best distinct plans within `budget`, best (lowest summed sensitivity) first; fewer when fewer exist."""
    picks = [solve(sensitivity, cost, budget)]
    while len(picks) < k:
        try:
            picks.append(solve(sensitivity, cost, budget, exclude=picks))
        except AllocationError:     # every feasible plan is already listed
            break
    return picks


def _problem(sensitivity: Mapping[str, Mapping[str, float]], costs: Mapping[str, LayerCost],
             choices: Sequence[Precision], kind: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Layer names, the sensitivity matrix and the cost matrix as fractions of the all-FP32 cost."""
    layers = list(costs)
    missing = [n for n in layers if any(p.value not in sensitivity.get(n, {}) for p in choices)]
    if missing:
        raise AllocationError(f"no sensitivity measured for layer(s) {missing[:3]} at every choice "
                              f"{[p.value for p in choices]}: measure them first (qcal.passes.sensitivity).")
    s = np.array([[sensitivity[n][p.value] for p in choices] for n in layers])
    fp32_cost = sum(costs[n].cost(kind, Precision.FP32) for n in layers)
    c = np.array([[costs[n].cost(kind, p) / fp32_cost for p in choices] for n in layers])
    return layers, s, c


def _plan(layers: list[str], s: np.ndarray, c: np.ndarray, pick: np.ndarray, choices: Sequence[Precision],
          budget: Budget, sensitivity: Mapping[str, Mapping[str, float]]) -> Allocation:
    plan = {n: choices[int(j)] for n, j in zip(layers, pick, strict=True)}
    return Allocation(plan, budget, float(sum(c[i, j] for i, j in enumerate(pick))),
                      float(sum(s[i, j] for i, j in enumerate(pick))),
                      {n: dict(sensitivity[n]) for n in layers})


def allocate(sensitivity: Mapping[str, Mapping[str, float]], costs: Mapping[str, LayerCost],
             choices: Sequence[Precision], budget: Budget) -> Allocation:
    """Per-layer choices minimising summed sensitivity under `budget` (a fraction of the all-FP32 cost)."""
    return candidates(sensitivity, costs, choices, budget, k=1, uniform=False)[0]


def candidates(sensitivity: Mapping[str, Mapping[str, float]], costs: Mapping[str, LayerCost],
               choices: Sequence[Precision], budget: Budget, *, k: int, uniform: bool = True) -> list[Allocation]:
    """The k best plans of the integer program (by summed sensitivity), then, with `uniform`, each all-one-choice
    plan that fits the budget and is not already listed. Each plan's measured["candidate"] says which it is."""
    layers, s, c = _problem(sensitivity, costs, choices, budget.kind)
    try:
        picks = solve_k(s, c, budget.ratio, k)
    except AllocationError as e:
        raise AllocationError(f"{budget.kind} budget {budget.ratio:g} of FP32: {e}") from None
    out = []
    for rank, pick in enumerate(picks, 1):
        out.append(_plan(layers, s, c, pick, choices, budget, sensitivity))
        out[-1].measured["candidate"] = f"ip#{rank}"
    seen = {tuple(pick.tolist()) for pick in picks}
    for j, p in enumerate(choices if uniform else ()):
        pick = np.full(len(layers), j)
        if tuple(pick.tolist()) not in seen and c[:, j].sum() <= budget.ratio * (1 + 1e-12):
            out.append(_plan(layers, s, c, pick, choices, budget, sensitivity))
            out[-1].measured["candidate"] = f"uniform {p.value}"
    return out


def refine(plans: Sequence[Allocation], measure: Callable[[Mapping[str, Precision]], float]) -> Allocation:
    """The plan with the lowest measured loss increase (measure: plan -> loss increase over the base model,
    every layer at its choice at once). The integer program adds per-layer sensitivities as if they were
    independent; measuring its best few plans (and the uniform ones) jointly catches where they are not.
    The chosen plan's measured["refinement"] lists every candidate, predicted vs measured."""
    if not plans:
        raise AllocationError("refine: no candidate plans to measure.")
    rows = []
    for plan in plans:
        rows.append({"candidate": plan.measured.get("candidate", "?"), "cost_ratio": plan.cost_ratio,
                     "predicted_loss_increase": plan.predicted_loss_increase,
                     "measured_loss_increase": float(measure(plan.choices)),
                     "choices": {n: p.value for n, p in plan.choices.items()}})
    best = min(range(len(plans)), key=lambda i: (rows[i]["measured_loss_increase"], i))
    chosen = plans[best]
    chosen.measured["measured_loss_increase"] = rows[best]["measured_loss_increase"]
    chosen.measured["refinement"] = rows
    return chosen
