"""Per-layer precision choices (no torch import: configs and the integer program use them)."""

from __future__ import annotations

import enum


class Precision(str, enum.Enum):
    """A per-layer precision choice. int8/fp16/fp32 deploy today; the 4-bit ones are simulated (research)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"     # W8A8
    W7A8 = "w7a8"     # what ORT CPU deploys without VNNI (reduce_range: 7-bit weights)
    W4A8 = "w4a8"
    W4A4 = "w4a4"
    INT4 = "int4"     # W4A4 (alias kept separate so a plan says what the user asked for)
    W6A6 = "w6a6"     # for uniform baselines between 4 and 8 bits
    W5A5 = "w5a5"
    W3A3 = "w3a3"     # low-bit research settings (MetaAug / BRECQ papers)
    W2A4 = "w2a4"

    @property
    def weight_bits(self) -> int:
        return _BITS[self][0]

    @property
    def act_bits(self) -> int:
        return _BITS[self][1]

    @property
    def is_float(self) -> bool:
        return self in (Precision.FP32, Precision.FP16)

    @property
    def deployable(self) -> bool:
        """What the QDQ/FP16 exporters can write today (int8 QDQ, float layers left float)."""
        return self in (Precision.FP32, Precision.FP16, Precision.INT8)


_BITS = {Precision.FP32: (32, 32), Precision.FP16: (16, 16), Precision.INT8: (8, 8), Precision.W7A8: (7, 8), Precision.W4A8: (4, 8),
         Precision.W4A4: (4, 4), Precision.INT4: (4, 4), Precision.W6A6: (6, 6), Precision.W5A5: (5, 5),
         Precision.W3A3: (3, 3), Precision.W2A4: (2, 4)}
