"""Quantization passes, one algorithm per file. Over a QuantModel (YOLO/torch): BN re-estimation, AdaQuant,
bias correction; sensitivity for bit allocation. LLM path: smoothquant.

Every pass has the same interface (`qcal.passes.base.Pass`): a `name` and `run(ctx) -> PassReport`.
"""

from qcal.passes.base import Pass, PassContext, PassReport
from qcal.passes.registry import make_pass, run_passes

__all__ = ["Pass", "PassContext", "PassReport", "make_pass", "run_passes"]
