"""Frozen, typed configuration of a quantization run, with a TOML/JSON round trip.

Unknown keys are an error that names the key and the allowed ones; choices are enums, never free strings.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from qcal.config import bounds
from qcal.config.llm import Activations, LLMConfig, Offload, Scheme
from qcal.config.plain import dump_toml, from_plain, to_plain
from qcal.errors import ConfigError
from qcal.runtime.machine import MachineInfo, machine_info


class Target(str, enum.Enum):
    """Where the INT8 model runs; decides dtypes, symmetry and Q/DQ placement (see ARCHITECTURE.md)."""

    ORT_CPU = "ort-cpu"      # uint8 activations, int8 per-channel weights, reduce_range on CPUs without VNNI
    TENSORRT = "tensorrt"    # int8 symmetric everywhere, zero point 0, per-channel weights on axis 0


class Observer(str, enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    BLEND = "blend"          # a mix of the MSE and the percentile range of one histogram (see blend_alphas)


@dataclass(frozen=True)
class KeepFloatConfig:
    """How qcal decides which nodes stay in float, by measurement on the calibration set.

    range_ratio: a Concat whose inputs' ranges differ by more than this factor is kept in float (one scale
        would leave the small input fewer than log2(range_ratio) fewer bits; e.g. YOLO's box pixels 0-640
        beside class scores 0-1).
    sensitivity_samples: calibration samples of the sensitivity probe (per-node SQNR drop, in the report; 0 skips).
    max_nodes: candidates (worst SQNR drop first) tried in float; each is kept only if it raises the model
        output's SQNR by at least min_gain_db on the probe samples. 0 (default): report only. Measured on the
        fall-detection YOLOv8s, local SQNR drops chose nodes that lowered fidelity (0.951 -> 0.937), hence the
        output check and the default.
    min_drop_db: a node is a candidate only if quantizing it loses at least this much SQNR against its inputs.
    attribution_samples: probe samples of the per-tensor error attribution in the report (each quantized tensor's
        output SQNR when only it is quantized, and the gain when only it is left float; 0 skips, the default:
        on the fall-detection YOLOv8s at 640 one sample costs ~120 s on 2 cores; `qcal quantize --attribution`).
    """

    range_ratio: float = 16.0
    sensitivity_samples: int = 8
    max_nodes: int = 0
    min_drop_db: float = 0.5
    min_gain_db: float = 0.2
    attribution_samples: int = 0
    nodes: tuple[str, ...] = ()          # user-named nodes, always kept in float
    fp16_nodes: tuple[str, ...] = ()     # kept float AND computed in float16 in the QDQ model (allocation "fp16")

    def __post_init__(self) -> None:
        bounds.as_tuple(self, "nodes", "fp16_nodes")
        bounds.check_fields(self, "keep_float")
        for name in ("sensitivity_samples", "attribution_samples"):
            bounds.check_count(getattr(self, name), f"keep_float.{name}", 0, bounds.SAMPLES_MAX,
                               f"give e.g. keep_float.{name} = 0 (probe samples come from the calibration set)")
        if self.range_ratio <= 1:
            raise ConfigError(f"keep_float.range_ratio={self.range_ratio}: must be > 1 (e.g. 16).")
        if self.sensitivity_samples < 0 or self.max_nodes < 0 or self.attribution_samples < 0:
            raise ConfigError("keep_float.sensitivity_samples, max_nodes and attribution_samples must be >= 0.")
        if self.attribution_samples > self.sensitivity_samples:
            raise ConfigError(f"keep_float.attribution_samples={self.attribution_samples} is more than the "
                              f"{self.sensitivity_samples} probe samples (keep_float.sensitivity_samples); lower it "
                              "or raise sensitivity_samples.")


class AdaQuantMode(str, enum.Enum):
    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"


class Granularity(str, enum.Enum):
    LAYER = "layer"   # each conv/linear on its own (AdaQuant, AdaRound)
    BLOCK = "block"   # BRECQ: the layers of a residual block jointly, against the FP32 block output


class Rounding(str, enum.Enum):
    FREE = "free"          # AdaQuant: the float weights themselves are optimised (straight-through rounding)
    ADAROUND = "adaround"  # AdaRound: per-weight learned up/down rounding, hardened at the end


@dataclass(frozen=True)
class MetaAugConfig:
    """MetaAug (qcal.augment.metaaug), an option of the reconstruction pass: a small UNet T learned per layer by
    bi-level optimisation. Loss weights follow the reference code's names: alpha (KL of softened logits on the
    validation view), beta (hinge keeping mean((T(x)-x)^2) above margin), gamma (feature preservation, PKT).
    iters: meta-iterations per layer; time_budget_s: stop meta-iterations once spent (0: no budget)."""

    iters: int = 500
    alpha: float = 5.0
    beta: float = 0.5
    gamma: float = 1.0
    margin: float = 0.1      # hinge margin on mean((T(x) - x)^2), in units of the calibration inputs' variance
    lr: float = 1e-3
    inner_lr: float = 1e-2
    temperature: float = 4.0
    batch: int = 32
    width: int = 16
    val_fraction: float = 0.5
    grad_clip: float = 0.1
    skip_first_last: bool = True
    time_budget_s: float = 0.0
    seed: int = 0
    max_delta: float = 1.0   # > 0 bounds |T(x) - x| per pixel by tanh, in input stds (0: unbounded residual)
    inner_clip: float = 0.0  # > 0: the inner step's gradient is rescaled to at most this global norm

    def __post_init__(self) -> None:
        bounds.check_fields(self, "adaquant.augment")
        bounds.check_count(self.iters, "adaquant.augment.iters", 0, bounds.ITERS_MAX, "give e.g. iters = 500")
        bounds.check_count(self.batch, "adaquant.augment.batch", 2, bounds.CALIB_SIZE_MAX, "give e.g. batch = 32")
        if self.iters < 0 or self.batch < 2 or self.width < 1:
            raise ConfigError(f"metaaug: iters={self.iters} must be >= 0, batch={self.batch} >= 2 and "
                              f"width={self.width} >= 1.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"metaaug: val_fraction={self.val_fraction} must be in (0, 1): the calibration set "
                              "is split into a training view and a validation view.")
        if min(self.alpha, self.beta, self.gamma, self.margin, self.lr, self.inner_lr, self.grad_clip,
               self.time_budget_s, self.max_delta, self.inner_clip) < 0 or self.temperature <= 0:
            raise ConfigError("metaaug: weights, margin, learning rates, grad_clip and time_budget_s must be >= 0 "
                              "and temperature > 0.")


MetaAug = MetaAugConfig


@dataclass(frozen=True)
class AdaQuantConfig:
    """AdaQuant (qcal.passes.adaquant). Defaults from the paper's code (CalibTIP): 1000 iterations per layer,
    batch 50, Adam lr 1e-5 (weights), 1e-3 (bias), 1e-3 (weight step sizes), 1e-1 (input step sizes)."""

    iters: int = 1000
    batch: int = 50
    lr_weight: float = 1e-5
    lr_bias: float = 1e-3
    lr_weight_scale: float = 1e-3
    lr_act_scale: float = 1e-1
    mode: AdaQuantMode = AdaQuantMode.SEQUENTIAL
    seed: int = 0
    augment: MetaAugConfig | None = None   # MetaAug: learn a transformation of the calibration inputs
    # The paper baselines of MetaAug (BRECQ / QDrop); the defaults keep plain AdaQuant bit-identical.
    granularity: Granularity = Granularity.LAYER
    rounding: Rounding = Rounding.FREE
    qdrop: float = 0.0          # probability of keeping each activation element in float while reconstructing
    lr_round: float = 1e-3      # AdaRound: Adam lr of the rounding variables V
    round_weight: float = 0.01  # AdaRound: lambda of the regulariser sum(1 - |2h(V) - 1|^b)
    round_beta: tuple[float, float] = (20.0, 2.0)   # AdaRound: b annealed linearly from the first to the second
    round_warmup: float = 0.2   # AdaRound: fraction of iterations before the regulariser starts

    def __post_init__(self) -> None:
        for name, kind in (("granularity", Granularity), ("rounding", Rounding), ("mode", AdaQuantMode)):
            value = getattr(self, name)
            if not isinstance(value, kind):   # accept the plain strings: granularity="block"
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    raise ConfigError(f"adaquant.{name}={value!r}: choose one of {[m.value for m in kind]}.") \
                        from None
        bounds.as_tuple(self, "round_beta")
        bounds.check_fields(self, "adaquant")
        bounds.check_count(self.iters, "adaquant.iters", 0, bounds.ITERS_MAX, "give e.g. adaquant.iters = 1000")
        bounds.check_count(self.batch, "adaquant.batch", 1, bounds.CALIB_SIZE_MAX, "give e.g. adaquant.batch = 50")
        if self.iters < 0 or self.batch < 1:
            raise ConfigError(f"adaquant: iters={self.iters} must be >= 0 and batch={self.batch} >= 1.")
        for key in ("lr_weight", "lr_bias", "lr_weight_scale", "lr_act_scale", "lr_round", "round_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"adaquant.{key}={getattr(self, key)}: must be >= 0 (0 freezes that group); give "
                                  f"e.g. adaquant.{key} = 0 or leave the default.")
        if not 0.0 <= self.qdrop < 1.0 or not 0.0 <= self.round_warmup < 1.0:
            raise ConfigError(f"adaquant: qdrop={self.qdrop} and round_warmup={self.round_warmup} must be in "
                              "[0, 1) (qdrop 0.5 is QDrop's setting; 0 turns it off).")
        if len(self.round_beta) != 2 or min(self.round_beta) <= 0:
            raise ConfigError(f"adaquant: round_beta={self.round_beta} must be two positive numbers "
                              "(start, end), e.g. (20, 2).")


ReconstructConfig = AdaQuantConfig   # the name for the one reconstruction pass's config


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides the quantized model. Two runs with equal configs and calibration sets agree."""

    target: Target = Target.ORT_CPU
    observer: Observer = Observer.BLEND
    percentile: float = 99.999
    # observer "blend": range = (1-alpha) MSE + alpha percentile. One value: used as is (0.5 was best on held-out
    # frames, benchmarks/results/observer_blend.md); several: the one with the best model-output SQNR is kept
    blend_alphas: tuple[float, ...] = (0.5,)
    # with several blend_alphas: > 1 splits the quantized activations (graph order) into this many contiguous
    # groups and, from the best single alpha, chooses each group's alpha in turn by the same probe SQNR
    blend_groups: int = 1
    calib_size: int = 64                  # calibration samples used (the first N of the set)
    imgsz: int = 640
    per_channel: bool = True
    reduce_range: bool | None = None      # None: decided from the CPU (no VNNI -> True) for ort-cpu
    # ort-cpu: one range for the tensors each quantized Concat joins, so ONNX Runtime copies them instead of
    # requantizing (exporters.share): "concat_output" (the Concat's own range), "union" (every member's), "off"
    share_concat_ranges: str = "concat_output"
    opset: int = 17
    keep_float: KeepFloatConfig = field(default_factory=KeepFloatConfig)
    passes: tuple[str, ...] = ()   # torch passes before export: bn_reestimate, adaquant (= reconstruct), bias_correction
    adaquant: AdaQuantConfig = field(default_factory=AdaQuantConfig)
    seed: int = 0
    scheme: Scheme | None = None          # LLM path only; None: w8a8
    llm: LLMConfig | None = None          # LLM path only; None: LLMConfig()
    # The spelling of the reconstruction pass's options: mapped onto `adaquant` (one pass, one field);
    # not a field, so to_dict/TOML always write `adaquant` and the round trip is exact.
    reconstruct: InitVar[AdaQuantConfig | None] = None

    def __post_init__(self, reconstruct: AdaQuantConfig | None) -> None:
        if reconstruct is not None:
            if self.adaquant != AdaQuantConfig():
                raise ConfigError("both reconstruct= and adaquant= were given: they configure the same pass; give "
                                  "one of them (reconstruct=qcal.ReconstructConfig(...)).")
            if not isinstance(reconstruct, AdaQuantConfig):
                raise ConfigError(f"reconstruct={reconstruct!r}: give a qcal.ReconstructConfig(...).")
            object.__setattr__(self, "adaquant", reconstruct)
        # accept the spellings of the Python API (scheme="w8a8", passes=[...]) and keep the fields typed
        if isinstance(self.scheme, str) and not isinstance(self.scheme, Scheme):
            try:
                object.__setattr__(self, "scheme", Scheme(self.scheme))
            except ValueError:
                raise ConfigError(f"scheme={self.scheme!r}: choose one of {[m.value for m in Scheme]}.") from None
        bounds.as_enum(self, "", target=Target, observer=Observer)
        bounds.as_tuple(self, "passes", "blend_alphas")
        bounds.check_fields(self, "")
        bounds.check_quant_limits(self)
        if not self.blend_alphas or any(not 0.0 <= a <= 1.0 for a in self.blend_alphas):
            raise ConfigError(f"blend_alphas={list(self.blend_alphas)}: give one or more mixes in [0, 1] "
                              "(0: MSE ranges, 1: percentile ranges), e.g. [0, 0.25, 0.5, 0.75, 1].")
        if self.blend_groups > 1 and len(self.blend_alphas) < 2:
            raise ConfigError(f"blend_groups={self.blend_groups} needs two or more blend_alphas to choose from per "
                              f"group (got {list(self.blend_alphas)}); list them, e.g. blend_alphas = [0, 0.5, 1], "
                              "or set blend_groups = 1.")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile={self.percentile}: must be in (50, 100], e.g. 99.999.")
        if self.target is Target.TENSORRT and not self.per_channel:
            raise ConfigError("per_channel=False with target=tensorrt: TensorRT wants per-channel weights on the "
                              "output-channel axis (lint rule TRT006); drop per_channel.")
        if self.share_concat_ranges not in ("concat_output", "union", "off"):
            raise ConfigError(f"share_concat_ranges={self.share_concat_ranges!r}: choose 'concat_output' (default), "
                              "'union' or 'off'.")
        if self.target is Target.TENSORRT and self.reduce_range:
            raise ConfigError("reduce_range=True with target=tensorrt: TensorRT uses full int8; drop reduce_range.")
        allowed = ("bn_reestimate", "adaquant", "reconstruct", "bias_correction", "smoothquant", "gptq")
        bounds.check_passes(self.passes, allowed)   # smoothquant, gptq: LLM path only
        if "adaquant" in self.passes and "reconstruct" in self.passes:
            raise ConfigError(f"passes={list(self.passes)}: adaquant and reconstruct are two names of the same "
                              "pass; list it once.")

    # --- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if isinstance(data, dict) and "reconstruct" in data:   # [reconstruct] is the name of [adaquant]
            if "adaquant" in data:
                raise ConfigError("config: both [reconstruct] and [adaquant] tables were given: they configure the "
                                  "same pass; keep one.")
            data = {("adaquant" if k == "reconstruct" else k): v for k, v in data.items()}
        return from_plain(cls, data, "config")

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> QuantConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config TOML does not parse: {e}. Fix the syntax.") from e
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> QuantConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist. Pass a TOML file written by `qcal config`.")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {p} is not text (UTF-8): {e.reason} at byte {e.start}; pass a TOML file "
                              "written by `qcal config`.") from None
        except OSError as e:
            raise ConfigError(f"config file {p} cannot be read ({e.strerror}).") from None
        try:
            return cls.from_dict(json.loads(text)) if p.suffix == ".json" else cls.from_toml(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p}: the JSON does not parse: {e}. Fix the syntax.") from e
        except ConfigError as e:   # name the file: the key and value are in the message
            raise ConfigError(f"config file {p}: {e}") from e

    def replace(self, **changes: Any) -> QuantConfig:
        return dataclasses.replace(self, **changes)

    def resolved(self, machine: MachineInfo | None = None) -> QuantConfig:
        """This config with every machine-dependent choice fixed to the value it takes on `machine` (default:
        this one): reduce_range=None becomes `not has_vnni` for ort-cpu (u8 x s8 kernels without VNNI saturate,
        so weights need 7 bits), False for tensorrt (full int8). Resolving a resolved config changes nothing."""
        if self.reduce_range is not None:
            return self
        if self.target is Target.ORT_CPU:
            return self.replace(reduce_range=not (machine or machine_info()).has_vnni)
        return self.replace(reduce_range=False)

    def check_kind(self, kind: str) -> None:
        """Refuse a field the given model kind would ignore ("vision": detectors and torch modules; "llm"): every
        field set away from its default must mean something for the kind (VISION_FIELDS / LLM_FIELDS)."""
        own = LLM_FIELDS if kind.startswith("llm") else VISION_FIELDS
        default = QuantConfig()
        foreign = [f.name for f in dataclasses.fields(self) if f.name not in own and f.name not in SHARED_FIELDS
                   and getattr(self, f.name) != getattr(default, f.name)]
        if foreign:
            other = "a detector / torch module" if kind.startswith("llm") else "an LLM"
            raise ConfigError(f"config fields {foreign} apply to {other}, not to this {kind} model: they would be "
                              "ignored; drop them (for an LLM, its options live in scheme= and llm=LLMConfig(...)).")

    def hash(self, machine: MachineInfo | None = None) -> str:
        """sha256 (16 hex) of the resolved config (see `resolved`): the same config file hashes differently on a
        VNNI host and an AVX2-only host, because it builds different models there; caches keyed by it follow."""
        import hashlib

        plain = self.resolved(machine).to_dict()
        return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]

# Which QuantConfig fields mean something for which model kind (QuantConfig.check_kind refuses the others).
SHARED_FIELDS = ("calib_size", "seed", "passes")
VISION_FIELDS = ("target", "observer", "percentile", "blend_alphas", "blend_groups", "imgsz", "per_channel",
                 "reduce_range", "share_concat_ranges", "opset", "keep_float", "adaquant")
LLM_FIELDS = ("scheme", "llm")

# The precisions `qcal bench` measures unless told otherwise (here, not in qcal.bench, so the CLI can show it in
# --help without importing the bench machinery).
BENCH_PRECISIONS = "fp32,fp16,int8-dynamic,int8-clean,int8-mixed"

__all__ = ["BENCH_PRECISIONS", "Activations", "AdaQuantConfig", "AdaQuantMode", "Granularity", "KeepFloatConfig", "LLMConfig",
           "MetaAugConfig", "Observer", "Offload", "QuantConfig", "Rounding", "Scheme", "Target", "dump_toml",
           "from_plain", "to_plain"]
