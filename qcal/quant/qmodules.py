"""Quantized stand-ins for Conv2d / Linear and the model wrapper the passes work on.

`QuantLayer` owns a copy of the float layer's weight and bias plus learnable step sizes: a per-output-channel
weight scale and a per-tensor scale for the layer's input (CalibTIP quantizes the inputs of every conv/linear;
residual adds stay float). `QuantModel` deep-copies a float module, folds BatchNorm into the preceding conv
(remembering the BN's target mean/std for BN re-estimation), and swaps every Conv2d/Linear for a QuantLayer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from qcal.errors import ConfigError
from qcal.quant.fakequant import IntGrid, Precision, fake_quant, mse_scale, to_fp16, weight_scale_minmax

if TYPE_CHECKING:
    from qcal.placement.alloc import LayerCost as LayerCostLike

QUANTIZABLE = (nn.Conv2d, nn.Linear)


class QuantLayer(nn.Module):
    def __init__(self, layer: nn.Conv2d | nn.Linear, precision: Precision) -> None:
        super().__init__()
        self.float_layer = copy.deepcopy(layer)           # its weight/bias are what AdaQuant optimises
        if self.float_layer.bias is None:                 # a bias to correct / optimise, starting at 0
            self.float_layer.bias = nn.Parameter(torch.zeros(self.float_layer.weight.shape[0]))
        self.precision = precision
        self.w_scale = nn.Parameter(torch.ones(self.float_layer.weight.shape[0], *([1] * (layer.weight.dim() - 1))))
        self.a_scale = nn.Parameter(torch.tensor(1.0))
        self.a_signed = True
        self.calibrated = False
        # Set only while a reconstruction pass runs (qcal.passes.reconstruct): a learned-rounding weight
        # function (AdaRound) and QDrop's (probability, generator) for keeping input elements in float.
        self.weight_fn: Callable[[QuantLayer], torch.Tensor] | None = None
        self.drop: tuple[float, torch.Generator] | None = None
        self.set_precision(precision)

    @property
    def weight(self) -> torch.Tensor:
        return self.float_layer.weight

    @property
    def bias(self) -> torch.Tensor:
        assert self.float_layer.bias is not None  # set in __init__
        return self.float_layer.bias

    def set_precision(self, precision: Precision) -> None:
        self.precision = precision
        if not precision.is_float:
            with torch.no_grad():
                self.w_scale.copy_(weight_scale_minmax(self.weight, self.w_grid))

    @property
    def w_grid(self) -> IntGrid:
        return IntGrid.of(self.precision.weight_bits, signed=True)

    @property
    def a_grid(self) -> IntGrid:
        return IntGrid.of(self.precision.act_bits, signed=self.a_signed)

    def calibrate_input(self, x: torch.Tensor) -> None:
        """Set the input step size by MSE search on a sample of this layer's (float) inputs."""
        self.a_signed = bool(x.min() < 0)
        if not self.precision.is_float:
            with torch.no_grad():
                self.a_scale.copy_(mse_scale(x, self.a_grid))
        self.calibrated = True

    def quant_weight(self) -> torch.Tensor:
        if self.precision is Precision.FP32:
            return self.weight
        if self.precision is Precision.FP16:
            return to_fp16(self.weight)
        if self.weight_fn is not None:
            return self.weight_fn(self)
        return fake_quant(self.weight, self.w_scale, self.w_grid)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision is Precision.FP32:
            return x
        if self.precision is Precision.FP16:
            return to_fp16(x)
        if not self.calibrated:
            raise ConfigError("a QuantLayer ran before its input step size was calibrated: call "
                              "QuantModel.calibrate(calib) first.")
        xq = fake_quant(x, self.a_scale, self.a_grid)
        if self.drop is not None and self.drop[0] > 0:
            keep = torch.rand(x.shape, generator=self.drop[1]) < self.drop[0]
            return torch.where(keep, x, xq)
        return xq

    def forward_float(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(x, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._compute(self.quant_input(x), self.quant_weight())
        return to_fp16(y) if self.precision is Precision.FP16 else y

    def _compute(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if isinstance(self.float_layer, nn.Conv2d):
            return self.float_layer._conv_forward(x, w, self.bias)
        return nn.functional.linear(x, w, self.bias)


@dataclass(frozen=True)
class BnTarget:
    """The folded BatchNorm's output statistics on its training data: mean beta, std |gamma| per channel."""

    mean: torch.Tensor
    std: torch.Tensor


def fold_batchnorm(model: nn.Module) -> dict[str, BnTarget]:
    """Fold every BatchNorm2d whose only input is a Conv2d (found by torch.fx tracing) into that conv, in place;
    the BN becomes Identity. Returns conv name -> the BN's target output statistics."""
    import torch.fx

    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow (e.g. Ultralytics' layer loop): nothing is folded here;
        return {}      # such models come with BN already fused by their adapter
    mods = dict(model.named_modules())
    targets: dict[str, BnTarget] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(mods.get(src.target), nn.Conv2d)):
            continue
        conv, bn = mods[src.target], mods[node.target]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
        set_module(model, str(src.target), fused)
        set_module(model, str(node.target), nn.Identity())
        targets[str(src.target)] = BnTarget(bn.bias.detach().clone(), bn.weight.detach().abs().clone())
    return targets


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


class QuantModel(nn.Module):
    """A quantized copy of a float model. `layers` maps module name -> QuantLayer in execution order."""

    def __init__(self, model: nn.Module, precision: Precision | dict[str, Precision], example: torch.Tensor,
                 *, fold_bn: bool = True) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.bn_targets = fold_batchnorm(self.model) if fold_bn else {}
        # Layers whose weight the model itself froze (e.g. YOLO's DFL decode conv) stay as they are.
        names = [n for n, m in self.model.named_modules() if isinstance(m, QUANTIZABLE) and m.weight.requires_grad]
        for n in names:
            p = precision.get(n, Precision.INT8) if isinstance(precision, dict) else precision
            layer = self.model.get_submodule(n)
            assert isinstance(layer, QUANTIZABLE)
            set_module(self.model, n, QuantLayer(layer, p))
        order = execution_order(self.model, example)
        self.layers: dict[str, QuantLayer] = {n: self.model.get_submodule(n) for n in order}  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # type: ignore[no-any-return]

    def calibrate(self, calib: torch.Tensor, batch: int = 32, max_samples: int = 256,
                  per_batch: int = 1 << 16) -> None:
        """Set every layer's input step size by MSE search on the FP32 inputs it sees on the first max_samples
        calibration samples. Memory is bounded: each batch keeps an evenly strided subsample of at most
        per_batch values per layer, plus the batch's true min and max (so the clipping range is exact)."""
        calib = calib[:max_samples]
        saved = {n: lay.precision for n, lay in self.layers.items()}
        for lay in self.layers.values():
            lay.calibrated = True
            lay.precision = Precision.FP32
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}

        def keep(name: str, x: torch.Tensor) -> None:
            t = x.detach().reshape(-1)
            sub = t[:: max(1, t.numel() // per_batch)]
            seen[name].append(torch.cat([sub, t.min().reshape(1), t.max().reshape(1)]))

        hooks = [lay.register_forward_pre_hook(lambda m, a, n=n: keep(n, a[0])) for n, lay in self.layers.items()]
        try:
            with torch.no_grad():
                for i in range(0, len(calib), batch):
                    self.model(calib[i:i + batch])
        finally:
            for h in hooks:
                h.remove()
        for n, lay in self.layers.items():
            lay.precision = saved[n]
            lay.set_precision(saved[n])
            lay.calibrate_input(torch.cat(seen[n]))
            seen[n] = []

    def float_module(self) -> nn.Module:
        """A float copy of the model with every QuantLayer replaced by its (possibly optimised) float layer:
        what the ONNX exporter writes and the QDQ pipeline then quantizes."""
        out = copy.deepcopy(self.model)
        for n in self.layers:
            lay = out.get_submodule(n)
            assert isinstance(lay, QuantLayer)
            set_module(out, n, lay.float_layer)
        for p in out.parameters():
            p.requires_grad_(False)
        return out

    def set_precisions(self, plan: dict[str, Precision]) -> None:
        for n, p in plan.items():
            self.layers[n].set_precision(p)

    def named_quant_layers(self) -> Iterator[tuple[str, QuantLayer]]:
        yield from self.layers.items()


def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the QuantLayers in the order a forward pass calls them."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n) if n not in order else None)
             for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    for lay in layers:
        lay.calibrated = True
    with torch.no_grad():
        saved = [lay.precision for lay in layers]
        for lay in layers:
            lay.precision = Precision.FP32
        model(example[:1])
        for lay, p in zip(layers, saved, strict=True):
            lay.precision = p
            lay.calibrated = False
    for h in hooks:
        h.remove()
    return order


def torch_layer_costs(qmodel: QuantModel, example: torch.Tensor) -> dict[str, LayerCostLike]:
    """Per QuantLayer: weight parameter count and MACs per sample (from one forward pass on `example`)."""
    from qcal.placement.alloc import LayerCost

    macs: dict[str, int] = {}

    def hook(name: str, lay: QuantLayer, out: torch.Tensor) -> None:
        w = lay.weight
        per_out = int(w[0].numel())          # in/groups * kh * kw for conv, in_features for linear
        macs[name] = int(out[0].numel()) * per_out

    hooks = [lay.register_forward_hook(lambda m, a, o, n=n, lay=lay: hook(n, lay, o))
             for n, lay in qmodel.layers.items()]
    with torch.no_grad():
        qmodel(example[:1])
    for h in hooks:
        h.remove()
    return {n: LayerCost(int(lay.weight.numel()), macs[n]) for n, lay in qmodel.layers.items()}
