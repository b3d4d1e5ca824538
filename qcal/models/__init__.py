"""Model adapters: one per checkpoint family. `load_model` picks the family from what it is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qcal.errors import CheckpointError
from qcal.models.base import Detections, ModelAdapter, Prepared


def load_model(model: Any, *, trust_checkpoint: bool = False, imgsz: int = 640,
               example_input: Any = None, task: str = "generic") -> ModelAdapter:
    """A YOLO .pt path, an adapter, or a torch.nn.Module (with example_input; task "classify" for a classifier
    whose output is N x C logits) -> a model adapter."""
    if hasattr(model, "export_onnx") and hasattr(model, "prepare"):
        return model  # type: ignore[no-any-return]
    if isinstance(model, str | Path):
        p = Path(model)
        if p.suffix == ".pt":
            from qcal.models.yolo import YoloAdapter

            return YoloAdapter.load(p, trust_checkpoint=trust_checkpoint, imgsz=imgsz)
        if not p.exists():
            raise CheckpointError(f"checkpoint {p} does not exist.")
        raise CheckpointError(f"{p}: unknown checkpoint family (expected an Ultralytics YOLO .pt file).")
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_input is None:
            raise CheckpointError("a torch.nn.Module needs example_input (a tensor of the input shape).")
        from qcal.models.torch_module import TorchModuleAdapter

        return TorchModuleAdapter(model, example_input, task)
    raise CheckpointError(f"cannot quantize a {type(model).__name__}: pass a YOLO .pt path or a torch.nn.Module.")


__all__ = ["Detections", "ModelAdapter", "Prepared", "load_model"]
