"""Run the configured torch passes on a model adapter's float module before ONNX export.

The passes see the model as W8A8 (W7A8 where the target profile uses reduce_range: ORT CPU without VNNI;
weights per channel, inputs per tensor, simulated in torch). What they
change in the float weights and biases (AdaQuant, BN re-estimation, bias correction) is written back into a
float copy of the module; the ONNX pipeline then exports it and quantizes it with its own observers. The learned
step sizes are not carried into the QDQ graph: the pipeline re-derives them (per-channel min/max weights,
observer-chosen activation ranges), so AdaQuant here runs with frozen weight step sizes by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from qcal.config import QuantConfig
from qcal.errors import ConfigError
from qcal.passes.base import PassContext, PassReport
from qcal.passes.registry import run_passes
from qcal.quant.fakequant import Precision


def calib_tensor(adapter: Any, images: Iterable[np.ndarray]) -> torch.Tensor:
    """The adapter's preprocessed inputs stacked (N, C, H, W), float32."""
    arrays = [adapter.prepare(img).feeds[adapter.input_name] for img in images]
    if not arrays:
        raise ConfigError("the passes need at least one calibration image.")
    return torch.from_numpy(np.concatenate(arrays, axis=0))


def refine(adapter: Any, images: Iterable[np.ndarray], config: QuantConfig, *, progress: bool = True,
           batch: int = 8) -> tuple[Any, list[PassReport]]:
    """(adapter over the refined float module, one report per pass)."""
    if "smoothquant" in config.passes:
        raise ConfigError("the smoothquant pass is for LLMs (Linear layers after a norm); a vision model runs "
                          "bn_reestimate, adaquant, bias_correction. Drop smoothquant from passes.")
    if not hasattr(adapter, "float_module"):
        raise ConfigError(f"passes {list(config.passes)} need a torch model; the {adapter.family} adapter has none.")
    module = adapter.float_module()
    x = calib_tensor(adapter, images)
    ada = config.adaquant
    if ada.lr_weight_scale > 0:   # the QDQ exporter recomputes weight scales from min/max: do not learn them
        ada = dataclasses.replace(ada, lr_weight_scale=0.0)
    from qcal.calibration.pipeline import resolve_profile

    # Simulate the weights the exporter will write: 7-bit where the ort-cpu profile uses reduce_range.
    precision = Precision.W7A8 if resolve_profile(config).reduce_range else Precision.INT8
    ctx = PassContext.build(module, x, precision, batch=batch, progress=progress)
    reports = run_passes(ctx, config.passes, {"adaquant": ada, "reconstruct": ada})
    tag = f"passes={','.join(config.passes)}:{config.hash()}"
    return adapter.with_module(ctx.qmodel.float_module(), tag), reports
