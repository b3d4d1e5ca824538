"""Passes by name: make_pass(name, config) and run_passes(ctx, names, configs).

Apart from qcal.passes.base so that the base imports none of its implementations (each of them imports the base).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from qcal.config import AdaQuantConfig
from qcal.errors import ConfigError
from qcal.passes.base import Pass, PassContext, PassReport


def run_passes(ctx: PassContext, names: Sequence[str], configs: dict[str, Any] | None = None) -> list[PassReport]:
    reports = []
    for name in names:
        p = make_pass(name, (configs or {}).get(name))
        t0 = time.perf_counter()
        r = p.run(ctx)
        r.seconds = time.perf_counter() - t0
        reports.append(r)
    return reports


PASS_NAMES = ("bn_reestimate", "adaquant", "reconstruct", "bias_correction")


def make_pass(name: str, config: Any = None) -> Pass:
    if name in ("adaquant", "reconstruct"):   # one reconstruction pass, two names; its report keeps the name asked
        from qcal.passes.adaquant import AdaQuant

        return AdaQuant(config or AdaQuantConfig(), name=name)
    if name == "bn_reestimate":
        from qcal.passes.bn_reestimate import BnReestimate

        return BnReestimate()
    if name == "bias_correction":
        from qcal.passes.bias_correction import BiasCorrection

        return BiasCorrection()
    raise ConfigError(f"unknown pass {name!r}; choose from {list(PASS_NAMES)}.")
