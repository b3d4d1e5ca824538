"""Passes over a QuantModel: BN re-estimation, AdaQuant, bias correction; sensitivity for bit allocation.

Every pass has the same interface (`qcal.passes.base.Pass`): a `name` and `run(ctx) -> PassReport`.
"""

from qcal.passes.base import Pass, PassContext, PassReport, make_pass, run_passes

__all__ = ["Pass", "PassContext", "PassReport", "make_pass", "run_passes"]
