"""Named conditions: the QRID preset and a five-level severity ladder per degradation.

Values are for images at model resolution (e.g. 640 px long side): resize before degrading, so that a blur
sigma of 1 px means 1 px to the model. Change a value here and every recipe that names the condition by name
changes meaning, so recipes written by `DegradationMix.to_toml` spell out the steps instead.
"""

from __future__ import annotations

from calib_sets.degrade import Condition, Step
from calib_sets.errors import DegradationParamError

# Severity ladder: level 1 (barely visible) .. 5 (severe), one parameter set per level.
LADDER: dict[str, tuple[dict[str, float | int], ...]] = {
    "gaussian_noise": tuple({"sigma": s} for s in (5.0, 10.0, 15.0, 25.0, 40.0)),
    "gaussian_blur": tuple({"sigma": s} for s in (0.5, 1.0, 1.5, 2.0, 3.0)),
    "motion_blur": tuple({"length": n, "angle": 0.0} for n in (3, 5, 9, 15, 25)),
    "low_contrast": tuple({"factor": f} for f in (0.8, 0.6, 0.5, 0.4, 0.25)),
    "low_light": tuple({"brightness": b, "gamma": g} for b, g in ((0.8, 1.2), (0.6, 1.5), (0.45, 1.8),
                                                                    (0.3, 2.2), (0.2, 2.6))),
    "jpeg": tuple({"quality": q} for q in (70, 50, 30, 20, 10)),
}
LEVELS = (1, 2, 3, 4, 5)


def ladder_condition(kind: str, level: int) -> Condition:
    """The condition '<kind>_l<level>', e.g. 'gaussian_blur_l2' = gaussian_blur sigma 1.0 px."""
    if kind not in LADDER:
        raise DegradationParamError(f"no severity ladder for {kind!r}; ladders: {sorted(LADDER)}.")
    if level not in LEVELS:
        raise DegradationParamError(f"{kind}: level {level} is not one of {LEVELS}.")
    return Condition(f"{kind}_l{level}", (Step.of(kind, **LADDER[kind][level - 1]),))


# QRID conditions (degraded-input robustness): each is a ladder level, except `mixed`.
QRID: dict[str, Condition] = {
    "noise_low": Condition("noise_low", (Step.of("gaussian_noise", sigma=10.0),)),          # ladder l2
    "noise_medium": Condition("noise_medium", (Step.of("gaussian_noise", sigma=25.0),)),    # ladder l4
    "blur_low": Condition("blur_low", (Step.of("gaussian_blur", sigma=1.0),)),              # ladder l2
    "blur_medium": Condition("blur_medium", (Step.of("gaussian_blur", sigma=2.0),)),        # ladder l4
    "low_contrast": Condition("low_contrast", (Step.of("low_contrast", factor=0.4),)),      # ladder l4
    "jpeg_heavy": Condition("jpeg_heavy", (Step.of("jpeg", quality=10),)),                  # ladder l5
    # optics, then sensor, then codec: the order a camera applies them
    "mixed": Condition("mixed", (Step.of("gaussian_blur", sigma=1.0), Step.of("gaussian_noise", sigma=10.0),
                                 Step.of("jpeg", quality=30))),
}

# Further named conditions outside the QRID preset.
EXTRA: dict[str, Condition] = {
    "motion_blur": Condition("motion_blur", (Step.of("motion_blur", length=9, angle=0.0),)),        # ladder l3
    "low_light": Condition("low_light", (Step.of("low_light", brightness=0.45, gamma=1.8),)),      # ladder l3
}


def named_condition(name: str) -> Condition:
    """A QRID/extra condition by name, or a ladder rung '<kind>_l<level>'."""
    if name in QRID:
        return QRID[name]
    if name in EXTRA:
        return EXTRA[name]
    kind, _, level = name.rpartition("_l")
    if kind in LADDER and level.isdigit():
        return ladder_condition(kind, int(level))
    raise DegradationParamError(f"unknown condition {name!r}; named: {sorted(QRID) + sorted(EXTRA)}, or a ladder "
                                f"rung '<kind>_l<1-5>' with kind in {sorted(LADDER)}; or define it with steps.")


def all_named() -> list[Condition]:
    """Every named condition and ladder rung (for the gallery and the docs)."""
    return [*QRID.values(), *EXTRA.values(), *(ladder_condition(k, lv) for k in LADDER for lv in LEVELS)]
