"""SmoothQuant folds its scales exactly: the float model computes the same logits, with flatter inputs."""

from __future__ import annotations

import copy

import pytest
import torch

from qcal.errors import ConfigError
from qcal.eval.outliers import ActivationStats
from qcal.passes.smoothquant import apply_smoothquant, llama_groups, smoothing_scales
from tests.llm_tiny import tiny_llama

pytest.importorskip("transformers")


def _stats(model: torch.nn.Module, ids: torch.Tensor) -> ActivationStats:
    st = ActivationStats(model)
    with torch.no_grad(), st.recording():
        model(input_ids=ids)
    return st


def test_smoothquant_preserves_fp32_function_and_flattens_inputs() -> None:
    model = tiny_llama(outlier=30.0)
    ids = torch.randint(3, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    before = _stats(model, ids)
    smoothed = copy.deepcopy(model)
    scales = apply_smoothquant(smoothed, before.absmax(), alpha=0.5)
    assert len(scales) == 2 * 6       # q, k, v, gate, up, down in each of 2 layers
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, smoothed(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    after = _stats(smoothed, ids)
    q = "model.layers.0.self_attn.q_proj"
    ratio = lambda s: float(s.absmax.max() / s.absmax.median())  # noqa: E731
    assert ratio(after.stats[q]) < ratio(before.stats[q]) / 3     # the outlier channel is flattened
    # lm_head is tied to the embedding: never touched
    torch.testing.assert_close(smoothed.lm_head.weight, model.lm_head.weight)


def test_scales_follow_the_formula() -> None:
    act = torch.tensor([4.0, 1.0])
    w = [torch.tensor([[1.0, 2.0], [0.5, 1.0]])]
    s = smoothing_scales(act, w, alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([4.0**0.5 / 1.0**0.5, 1.0 / 2.0**0.5]))
    with pytest.raises(ConfigError, match="alpha"):
        smoothing_scales(act, w, alpha=1.5)


def test_non_llama_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a Llama-style decoder"):
        llama_groups(torch.nn.Sequential(torch.nn.Linear(4, 4)))
