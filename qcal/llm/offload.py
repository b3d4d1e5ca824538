"""Out-of-core LLM calibration: one decoder layer in memory at a time, weights memory-mapped from safetensors.

`QuantConfig(llm=LLMConfig(offload="layers"))` (CLI `--offload layers`) runs the same steps as qcal/llm/pipeline.py on a
Llama-architecture Hugging Face folder whose fp32 weights need not fit in memory, and gives the same decisions,
scales and codes (tested on SmolLM2-135M). The scheme is the sequential one of llm-compressor: the calibration
activations go through the model layer by layer and are kept between layers (32 windows x 512 tokens x hidden
2048 fp32 = 128 MB), so each layer is loaded once per pass.

Pass 1 (calibration), per decoder layer i, with only layer i's weights in memory:
  1. load its tensors from the memory-mapped safetensors (fp32), build the layer from the config;
  2. run every calibration window's hidden states through it, recording the input statistics of its Linears
     (qcal.eval.outliers.ActivationStats, as in memory); the outputs are the next layer's inputs. Hidden states
     are FP32 (un-smoothed, unquantized), as the in-memory path measures on the FP32 model (llm-compressor's
     `quantization_aware_calibration=False`);
  3. smoothquant on this layer (its groups are all inside it), activation ranges, then the sensitivity probe on a
     second, short stream: the first `sensitivity_windows` windows through the smoothed float layers, as the
     in-memory probe runs them through the smoothed float model.
Then the final norm (statistics of lm_head's input, its probe when lm_head is quantized) and the float decisions,
which need every layer's sensitivity (the median over the model).
Pass 2 (write), per layer: load it again, re-apply its smoothing (the same arithmetic, so the same weights),
quantize the Linears not kept in float (QuantLinear), write the layer's shard atomically and keep the Linears'
QuantTable entries (qcal/llm/table.py: the same entries as the in-memory path's table); the table is saved
beside the shards as quant_table.json (+ .arrays.npz).

A per-layer weight solver (GPTQ, qcal/quant/gptq.py on another branch) plugs in at pass 1, step 3: it needs only
that layer's input Hessian, accumulated from the same hidden states while the layer is in memory.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from exporters.quant_table import TensorQuant
from qcal.config import LLMConfig, QuantConfig, Scheme
from qcal.errors import CalibrationError, CheckpointError, ConfigError
from qcal.eval.outliers import ActivationStats, ChannelStats
from qcal.llm.common import (
    KNOWN_PASSES,
    FloatDecision,
    act_quant,
    calib_windows,
    is_ignored,
    keep_float,
    sensitivity,
    tensor_range,
)
from qcal.llm.offload_io import linear_tensors, release_memory, save_shard
from qcal.llm.offload_result import OffloadedLLMResult
from qcal.llm.skeleton import EMBED, Skeleton, scope
from qcal.llm.table import build_table, linear_entries, table_meta
from qcal.models.hf_llm import HFCausalLM
from qcal.quant.llm_schemes import ActQuant, QuantLinear


def quantize_llm_offloaded(model: Any, calib: Any, config: QuantConfig, *, workdir: str | Path | None = None,
                           progress: bool = True) -> OffloadedLLMResult:
    """Calibrate and quantize a safetensors Llama folder layer by layer; the quantized weights are written to
    `workdir` (a new temporary folder by default) shard by shard; `result.export(dir)` moves them to `dir`."""
    cfg, scheme = config.llm or LLMConfig(), config.scheme or Scheme.W8A8
    unknown = [p for p in config.passes if p not in KNOWN_PASSES]
    if unknown:
        raise ConfigError(f"LLM passes {unknown} are unknown; the LLM path runs {list(KNOWN_PASSES)}.")
    t0 = time.perf_counter()
    folder = _folder(model)
    skel = Skeleton(folder)
    lm = HFCausalLM(skel.model, skel.tokenizer, str(folder))   # tokenization only: the skeleton's tensors are meta
    textset = calib_windows(lm, calib, cfg.seq_len, config.calib_size, config.seed)
    windows = lm.token_windows(textset, seq_len=cfg.seq_len)
    if not windows:
        raise CalibrationError("the calibration text gives no window of 2+ tokens; give more text.")
    weight_bits, act = (8, act_quant(cfg.activations)) if scheme is Scheme.W8A8 else (4, ActQuant.NONE)
    smooth_on = "smoothquant" in config.passes
    run = _Calibration(skel, cfg, weight_bits, act, smooth_on)
    seconds = {"load": time.perf_counter() - t0}

    out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"qcal-{os.getpid()}-ooc-"))
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    hidden = skel.embed(windows, out / EMBED)                       # (1, T, H) each, FP32; embedding shard written
    probe = [h.clone() for h in hidden[: cfg.sensitivity_windows]]  # the smoothed float model's stream
    for i in tqdm(range(skel.n_layers), desc="calibrate layers", disable=not progress, leave=False):
        run.layer(i, hidden, probe)
        release_memory()                                            # the layer is gone: return its pages
    run.head(hidden, probe)
    del hidden, probe
    seconds["calibrate"] = time.perf_counter() - t

    decisions = [FloatDecision(n, "ignore", "in config.llm.ignore") for n in skel.linear_names
                 if is_ignored(n, cfg.ignore)]
    decisions += keep_float(run.sens, cfg.keep_float_ratio, cfg.keep_float_max)
    floats = {d.layer for d in decisions}

    t = time.perf_counter()
    written = _write(skel, run, floats, out, progress)
    seconds["write"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    meta = table_meta(scheme.value, cfg.activations.value, cfg.group_size, config.passes, smooth_on,
                      files=written.files, tied_lm_head=skel.tied and "lm_head" in floats, shards=written.shards)
    result = OffloadedLLMResult(config, str(folder), textset, sum(len(w) for w in windows), run.stats.table(),
                                run.sens, decisions, smooth_on, seconds, windows, out,
                                build_table(written.entries, decisions, meta))
    result.write_metadata(skel.tokenizer, folder)
    return result


class _Calibration:
    """Pass 1 state: activation statistics, smoothing scales, ranges and sensitivities, filled layer by layer."""

    def __init__(self, skel: Skeleton, cfg: LLMConfig, weight_bits: int, act: ActQuant, smooth_on: bool) -> None:
        self.skel, self.cfg, self.weight_bits, self.act, self.smooth_on = skel, cfg, weight_bits, act, smooth_on
        self.stats = ActivationStats(skel.model)     # names in the model's order; filled from per-layer stats
        self.smooth: dict[str, torch.Tensor] = {}    # consumer Linear -> s
        self.ranges: dict[str, tuple[float, float]] = {}
        self.sens: dict[str, float] = {}

    def quantizable(self, names: list[str]) -> list[str]:
        return [n for n in names if not is_ignored(n, self.cfg.ignore)]

    @torch.no_grad()
    def layer(self, i: int, hidden: list[torch.Tensor], probe: list[torch.Tensor]) -> None:
        skel = self.skel
        layer = skel.layer(i)
        tree = scope(f"model.layers.{i}", layer)
        st = ActivationStats(tree)
        with st.recording():
            for j, h in enumerate(hidden):
                hidden[j] = skel.run_layer(layer, h)
        self.stats.stats.update(st.stats)
        if self.smooth_on:
            from qcal.passes.smoothquant import apply_smoothquant

            self.smooth.update(apply_smoothquant(tree, st.absmax(), self.cfg.smoothquant_alpha))
        names = self.quantizable(st.names)
        self.ranges.update({n: tensor_range(self.stats, n, self.smooth.get(n)) for n in names})

        def forward(_m: nn.Module, j: int) -> None:
            probe[j] = skel.run_layer(layer, probe[j])

        self.sens.update(sensitivity(tree, names, list(range(len(probe))), self.weight_bits, self.act,
                                     self.cfg.group_size, self.ranges, forward=forward))

    @torch.no_grad()
    def head(self, hidden: list[torch.Tensor], probe: list[torch.Tensor]) -> None:
        """Final norm: statistics of lm_head's input (without computing logits), and its probe if quantized."""
        norm = self.skel.norm()
        if "lm_head" not in self.stats.names:
            return
        k = int(self.skel.config.hidden_size)    # as ActivationStats' hook starts it on its first input
        st = self.stats.stats["lm_head"] = ChannelStats(torch.zeros(k), torch.full((k,), float("inf")),
                                                        torch.full((k,), float("-inf")))
        for h in hidden:
            st.update(norm(h))
        if not self.quantizable(["lm_head"]):
            return
        self.ranges["lm_head"] = tensor_range(self.stats, "lm_head", None)
        lm_head = self.skel.lm_head()
        probe_x = [norm(h) for h in probe]
        self.sens.update(sensitivity(scope("lm_head", lm_head), ["lm_head"], probe_x, self.weight_bits, self.act,
                                     self.cfg.group_size, self.ranges, forward=lambda _m, x: lm_head(x)))


# --- pass 2: quantize and write, layer by layer --------------------------------------------------------------

class _Written:
    """Pass 2's output: the shard files in order, each Linear's shard, the quantized Linears' table entries."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.shards: dict[str, str] = {}
        self.entries: dict[str, TensorQuant] = {}


def _write(skel: Skeleton, run: _Calibration, floats: set[str], out: Path, progress: bool) -> _Written:
    w = _Written()

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_shard(out / name, tensors)
        w.files.append(name)

    w.files.append(EMBED)                                              # written in pass 1 (Skeleton.embed)
    for i in tqdm(range(skel.n_layers), desc="write layers", disable=not progress, leave=False):
        layer = skel.layer(i)
        tree = scope(f"model.layers.{i}", layer)
        if run.smooth_on:
            from qcal.passes.smoothquant import apply_smoothquant

            apply_smoothquant(tree, {n: run.stats.stats[n].absmax for n in _names(tree)}, run.cfg.smoothquant_alpha)
        fname = f"layer-{i:05d}.safetensors"
        shard(fname, _quantized(tree, run, floats, w, fname))
        del layer, tree
        release_memory()
    head: dict[str, torch.Tensor] = {"model.norm.weight": skel.weights.get("model.norm.weight")}
    if "lm_head" not in floats or not skel.tied:
        head.update(_quantized(scope("lm_head", skel.lm_head()), run, floats, w, "head.safetensors"))
    shard("head.safetensors", head)
    return w


def _names(tree: nn.Module) -> list[str]:
    return [n for n, m in tree.named_modules() if isinstance(m, nn.Linear)]


def _quantized(tree: nn.Module, run: _Calibration, floats: set[str], written: _Written,
               fname: str) -> dict[str, torch.Tensor]:
    """The shard of one scope: its parameters with each quantized Linear replaced by its codes and scales (and
    that Linear's table entries kept in `written`)."""
    tensors: dict[str, torch.Tensor] = {}
    linears = {n: m for n, m in tree.named_modules() if isinstance(m, nn.Linear)}
    for name, p in tree.named_parameters():
        owner = name.rsplit(".", 1)[0]
        if owner not in linears or owner in floats:
            tensors[name] = p.detach().contiguous()
    for n, m in linears.items():
        written.shards[n] = fname
        if n in floats:
            continue
        q = QuantLinear(m, weight_bits=run.weight_bits, act=run.act, group=run.cfg.group_size,
                        act_range=run.ranges.get(n))
        tensors.update(linear_tensors(n, q))
        written.entries.update(linear_entries(n, q, run.ranges.get(n)))
    return tensors


def _folder(model: Any) -> Path:
    if isinstance(model, HFCausalLM):
        model = model.source
    if not isinstance(model, str | Path):
        raise CheckpointError(f"offload='layers' reads a model folder, not an in-memory {type(model).__name__}; "
                              "save it with save_pretrained(safe_serialization=True) and pass the folder.")
    p = Path(model)
    if p.suffix == ".gguf" or (p.is_dir() and not (p / "config.json").is_file()):
        raise CheckpointError(f"{p}: offload='layers' memory-maps safetensors; a GGUF file cannot be. Convert it "
                              "(load it with transformers, save_pretrained) or use offload='none'.")
    if not p.is_dir() or not any(p.glob("*.safetensors")):
        raise CheckpointError(f"{p}: offload='layers' needs a Hugging Face folder with config.json and "
                              "*.safetensors weights.")
    return p

