from __future__ import annotations

import itertools

import numpy as np
import pytest

from qcal.placement.alloc import (
    AllocationError,
    Budget,
    LayerCost,
    allocate,
    candidates,
    refine,
    solve,
    solve_k,
)
from qcal.quant.fakequant import Precision


def brute_force(s: np.ndarray, c: np.ndarray, budget: float) -> float:
    best = np.inf
    for pick in itertools.product(range(s.shape[1]), repeat=s.shape[0]):
        cost = sum(c[i, j] for i, j in enumerate(pick))
        if cost <= budget + 1e-9:
            best = min(best, sum(s[i, j] for i, j in enumerate(pick)))
    return float(best)


def test_hand_made_problem() -> None:
    # 3 layers, choices (4-bit, 8-bit): cost 4/8 units; sensitivities of 4-bit 5, 1, 3 (8-bit free).
    s = np.array([[5.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    c = np.array([[4.0, 8.0], [4.0, 8.0], [4.0, 8.0]])
    assert solve(s, c, 24).tolist() == [1, 1, 1]
    assert solve(s, c, 20).tolist() == [1, 0, 1]       # drop the least sensitive layer to 4 bits
    assert solve(s, c, 16).tolist() == [1, 0, 0]
    assert solve(s, c, 12).tolist() == [0, 0, 0]


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s, c = rng.random((5, 3)), rng.integers(1, 10, (5, 3)).astype(float)
    budget = float(c.min(1).sum() + rng.random() * (c.max(1).sum() - c.min(1).sum()))
    pick = solve(s, c, budget)
    assert sum(c[i, j] for i, j in enumerate(pick)) <= budget + 1e-9
    assert sum(s[i, j] for i, j in enumerate(pick)) == pytest.approx(brute_force(s, c, budget))


def test_infeasible_budget_names_the_smallest_feasible_one() -> None:
    s = np.zeros((2, 2))
    c = np.array([[4.0, 8.0], [2.0, 8.0]])
    with pytest.raises(AllocationError, match="smallest feasible budget is 6"):
        solve(s, c, 5.0)


def test_allocate_on_size_budget() -> None:
    costs = {"a": LayerCost(params=1000, macs=10), "b": LayerCost(params=100, macs=1000)}
    sens = {"a": {"w4a4": 0.1, "int8": 0.0}, "b": {"w4a4": 0.5, "int8": 0.0}}
    choices = [Precision.W4A4, Precision.INT8]
    plan = allocate(sens, costs, choices, Budget(size=0.2))     # all-8-bit is 0.25: one layer must drop
    assert plan.choices == {"a": Precision.W4A4, "b": Precision.INT8}
    assert plan.cost_ratio == pytest.approx((1000 * 4 + 100 * 8) / (1100 * 32))
    assert plan.predicted_loss_increase == pytest.approx(0.1)
    bops = allocate(sens, costs, choices, Budget(bops=0.04))    # BOPs weigh b's 1000 MACs
    assert bops.choices["b"] is Precision.W4A4
    with pytest.raises(AllocationError, match=r"size budget 0.1 .*smallest feasible budget is 0.125"):
        allocate(sens, costs, choices, Budget(size=0.1))


def test_float_choice_and_latency() -> None:
    costs = {"a": LayerCost(1, 1, {"fp32": 10.0, "fp16": 6.0, "int8": 4.0}),
             "b": LayerCost(1, 1, {"fp32": 10.0, "fp16": 6.0, "int8": 4.0})}
    sens = {"a": {"int8": 0.3, "fp16": 0.0}, "b": {"int8": 0.01, "fp16": 0.0}}
    plan = allocate(sens, costs, [Precision.INT8, Precision.FP16], Budget(latency=0.5))
    assert plan.choices == {"a": Precision.FP16, "b": Precision.INT8}
    assert plan.to_dict()["float_layers"] == ["a"]
    with pytest.raises(AllocationError, match="no measured latency"):
        allocate(sens, {"a": LayerCost(1, 1), "b": LayerCost(1, 1)}, [Precision.INT8, Precision.FP16],
                 Budget(latency=0.5))


def test_budget_validation() -> None:
    assert Budget.parse("latency=0.7") == Budget(latency=0.7)
    with pytest.raises(AllocationError, match="exactly one"):
        Budget(size=0.2, bops=0.1)
    with pytest.raises(AllocationError, match="KIND=RATIO"):
        Budget.parse("speed=2")


@pytest.mark.parametrize("seed", range(3))
def test_solve_k_lists_the_k_best_distinct_plans_in_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s, c = rng.random((4, 3)), rng.integers(1, 10, (4, 3)).astype(float)
    budget = float(c.min(1).sum() + 0.6 * (c.max(1).sum() - c.min(1).sum()))
    feasible = sorted(sum(s[i, j] for i, j in enumerate(p)) for p in itertools.product(range(3), repeat=4)
                      if sum(c[i, j] for i, j in enumerate(p)) <= budget + 1e-9)
    picks = solve_k(s, c, budget, 5)
    assert len({tuple(p.tolist()) for p in picks}) == 5
    got = [sum(s[i, j] for i, j in enumerate(p)) for p in picks]
    assert got == pytest.approx(feasible[:5])
    # asking for more plans than exist returns every feasible plan once
    assert len(solve_k(s, c, float(c.max(1).sum()), 200)) == 3 ** 4


def test_refine_keeps_the_best_measured_candidate_and_lists_all() -> None:
    # The per-layer sensitivities say "a at 4 bits" is cheapest; measured jointly it is not (interaction).
    costs = {"a": LayerCost(params=100, macs=1), "b": LayerCost(params=100, macs=1)}
    sens = {"a": {"w4a4": 0.1, "w6a6": 0.3, "int8": 0.0}, "b": {"w4a4": 0.2, "w6a6": 0.3, "int8": 0.0}}
    choices = [Precision.W4A4, Precision.W6A6, Precision.INT8]
    plans = candidates(sens, costs, choices, Budget(size=0.1875), k=2)
    names = [p.measured["candidate"] for p in plans]
    assert names == ["ip#1", "ip#2", "uniform w4a4", "uniform w6a6"]       # int8 (0.25) does not fit
    assert plans[0].choices == {"a": Precision.W4A4, "b": Precision.INT8}
    assert plans[1].choices == {"a": Precision.INT8, "b": Precision.W4A4}
    measured = {("w4a4", "int8"): 0.9, ("int8", "w4a4"): 0.5, ("w4a4", "w4a4"): 2.0, ("w6a6", "w6a6"): 0.4}
    best = refine(plans, lambda plan: measured[(plan["a"].value, plan["b"].value)])
    assert best.measured["candidate"] == "uniform w6a6"
    assert best.measured["measured_loss_increase"] == pytest.approx(0.4)
    rows = best.measured["refinement"]
    assert [r["measured_loss_increase"] for r in rows] == [0.9, 0.5, 2.0, 0.4]
    assert rows[0]["predicted_loss_increase"] == pytest.approx(0.1)
    assert best.cost_ratio == pytest.approx(0.1875)
    with pytest.raises(AllocationError, match="no candidate plans"):
        refine([], lambda plan: 0.0)
