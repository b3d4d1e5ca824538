"""Model adapters: one per checkpoint family. `load_model` picks the family from what it is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qcal.errors import CheckpointError, UntrustedCheckpointError
from qcal.models.base import Detections, ModelAdapter, Prepared


def load_model(model: Any, *, trust_checkpoint: bool = False, imgsz: int = 640,
               example_input: Any = None, task: str = "generic") -> ModelAdapter:
    """A YOLO .pt path, an adapter, or a torch.nn.Module (with example_input; task "classify" for a classifier
    whose output is N x C logits) -> a model adapter."""
    if hasattr(model, "export_onnx") and hasattr(model, "prepare"):
        return model  # type: ignore[no-any-return]
    if isinstance(model, str | Path):
        preflight(model, trust_checkpoint=trust_checkpoint)
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


def preflight(model: str | Path, *, trust_checkpoint: bool = False) -> None:
    """The checks of a checkpoint path that need neither torch nor the file's contents: it exists, is a file with
    bytes, and a pickle (.pt) is loaded only when trusted. The CLI runs it before anything heavy is imported."""
    p = Path(model)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist. Pass the path of a YOLO .pt file.")
    if p.suffix != ".pt":
        what = ("an ONNX model: ONNX input is not supported yet; pass the Ultralytics .pt it was exported from"
                if p.suffix == ".onnx" else
                "a folder without config.json or .gguf (not a Hugging Face model)" if p.is_dir() else
                "not a .pt file")
        raise CheckpointError(f"{p}: unknown checkpoint family ({what}); qcal quantizes Ultralytics YOLO .pt files, "
                              "Hugging Face LLM folders and .gguf files.")
    if p.suffix == ".pt":
        if p.is_dir():
            raise CheckpointError(f"checkpoint {p} is a folder, not a .pt file; pass the .pt file inside it.")
        if not p.is_file():
            raise CheckpointError(f"checkpoint {p} is not a regular file (a pipe, socket or device); copy the "
                                  "checkpoint to a file and pass that.")
        if p.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {p} is empty (0 bytes): the copy or download did not finish; "
                                  "copy it again.")
        if not trust_checkpoint:
            raise UntrustedCheckpointError(
                f"{p} is a pickle: loading it runs code from the file. If you trust it, pass "
                "trust_checkpoint=True (CLI: --trust-checkpoint); otherwise export it to ONNX where you trust it.")
        _sniff_torch_file(p)


def _sniff_torch_file(p: Path) -> None:
    """torch.save writes a zip archive holding */data.pkl (or, before torch 1.6, a bare pickle): anything else
    (text, random bytes, a truncated download) is refused from its first bytes, before torch is imported."""
    import zipfile

    with open(p, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        if not zipfile.is_zipfile(p):
            raise CheckpointError(f"checkpoint {p} is a damaged zip archive (truncated? its directory is missing); "
                                  "copy or download it again.")
        with zipfile.ZipFile(p) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                raise CheckpointError(f"checkpoint {p} is a zip archive but not one torch.save wrote (no data.pkl); "
                                      "pass the .pt file Ultralytics saved.")
    elif head[:1] != b"\x80":
        raise CheckpointError(f"checkpoint {p} is not a PyTorch checkpoint (neither torch.save's zip format nor a "
                              f"pickle: it starts with {head!r}); pass the .pt file Ultralytics saved.")


__all__ = ["Detections", "ModelAdapter", "Prepared", "load_model", "preflight"]
