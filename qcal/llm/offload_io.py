"""Files of the out-of-core LLM path (qcal/llm/offload.py): safetensors weights read one tensor at a time, the
quantized shards written atomically (the result object that names them: qcal/llm/offload_result.py).

Reading: every shard of the source folder is opened with `safetensors.safe_open` (a memory map) only while a
layer's tensors are copied out, then closed, so pages of the file do not stay mapped in this process.
Writing: a shard per decoder layer (`layer-00003.safetensors`), `embed.safetensors`, `head.safetensors`; a
quantized Linear `X` is stored as `X.weight_codes` (int8 (N, K); or uint8 (N, K_padded) 4-bit codes 0..15) and
`X.weight_scale` (float32 (N,) or (N, G)), plus `X.weight_zero` (uint8 (N, G)) for 4-bit; everything else keeps
its name and stays float. `quant_table.json` (+ `quant_table.arrays.npz`) is the run's QuantTable (format 2):
the same codes, scales and zero points as the shards, in the table's layout (qcal/llm/table.py), with the shard
of each Linear in its meta.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qcal.errors import CheckpointError
from qcal.quant.llm_schemes import QuantLinear


class WeightIndex:
    """Tensor name -> safetensors file of a Hugging Face folder; tensors are read as fp32 copies."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = folder
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            self.files = {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        else:
            self.files = {}
            for f in sorted(folder.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as fh:
                    self.files.update(dict.fromkeys(fh.keys(), f))
        missing = sorted({str(p.name) for p in self.files.values() if not p.is_file()})
        if missing:
            raise CheckpointError(f"{folder}: the weight index names missing file(s) {missing}; copy every shard.")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> torch.Tensor:
        return self.read([name])[name]

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor under `prefix` (e.g. 'model.layers.3.'), keyed without it."""
        names = [n for n in self.files if n.startswith(prefix)]
        if not names:
            raise CheckpointError(f"{self.folder}: no tensors under {prefix!r}; is the folder complete?")
        return {n[len(prefix):]: t for n, t in self.read(names).items()}

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        unknown = [n for n in names if n not in self.files]
        if unknown:
            raise CheckpointError(f"{self.folder}: tensor(s) {unknown[:3]} are not in any *.safetensors file.")
        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.files[n], []).append(n)
        for f, ns in by_file.items():
            with safe_open(str(f), framework="pt") as fh:   # mapped only while this layer's tensors are copied
                for n in ns:
                    t = fh.get_tensor(n)   # a private copy: in-place smoothing never reaches the file
                    out[n] = t.float() if t.dtype != torch.float32 else t
        return out


def release_memory() -> None:
    """Give freed heap pages back to the OS after each layer (glibc's malloc_trim; a no-op elsewhere).

    One layer's tensors come and go every step; glibc keeps the freed space of mid-sized blocks (the hidden states,
    16 MB weights) in its heap, fragmented, and the resident size crept up by ~30 MB per layer on the 1.5B model
    without this. Releasing it keeps the peak at one layer's working set."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc (musl, macOS): nothing to trim
        return


def save_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def linear_tensors(name: str, q: QuantLinear) -> dict[str, torch.Tensor]:
    """The shard tensors of one quantized Linear, exactly the codes and scales the simulation uses."""
    if q.int4 is not None:
        out = {f"{name}.weight_codes": q.int4.codes, f"{name}.weight_scale": q.int4.scale,
               f"{name}.weight_zero": q.int4.zero}
    else:
        out = {f"{name}.weight_codes": q.get_buffer("w_codes"), f"{name}.weight_scale": q.get_buffer("w_scale")}
    if q.bias is not None:
        out[f"{name}.bias"] = q.bias.detach()
    return out
