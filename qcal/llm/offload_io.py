"""Files of the out-of-core LLM path (qcal/llm/offload.py): safetensors weights read one tensor at a time, the
quantized shards written atomically, and the result object that names them.

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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from exporters.outset import OutputSet
from exporters.quant_table import QuantTable, atomic_write_text
from qcal.config import LLMConfig, QuantConfig, Scheme
from qcal.errors import CheckpointError
from qcal.eval.outliers import summarize
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


@dataclass
class OffloadedLLMResult:
    """What an out-of-core run decided (the same fields as qcal.llm.LLMQuantResult, without the models), its
    QuantTable, and the folder holding the quantized shards, quant_table.json, report.json, config and tokenizer.
    qcal.result.Result, kind "llm-offloaded"."""

    kind: ClassVar[str] = "llm-offloaded"

    config: QuantConfig
    source: str
    calib: Any                       # the calib_sets.TextSet used
    calib_tokens: int
    act_stats: dict[str, dict[str, float]]
    sensitivity: dict[str, float]
    decisions: list[Any]             # qcal.llm.FloatDecision
    smoothed: bool
    seconds: dict[str, float]
    calib_ids: list[list[int]] = field(repr=False)
    folder: Path = Path()
    table: QuantTable = field(default_factory=lambda: QuantTable({}), repr=False)

    @property
    def scheme(self) -> Scheme:
        return self.config.scheme or Scheme.W8A8

    @property
    def llm_config(self) -> LLMConfig:
        return self.config.llm or LLMConfig()

    def quantized_layers(self) -> list[str]:
        return [n for n in self.table.meta.get("shards", {}) if n + ".weight" in self.table.tensors]

    @property
    def files(self) -> list[str]:
        return list(self.table.meta.get("files", []))

    def to_dict(self) -> dict[str, Any]:
        from qcal.runtime.machine import machine_info
        from qcal.version import __version__

        return {"qcal_version": __version__, "model": {"source": self.source, "family": "hf-llm"},
                "scheme": self.scheme.value, "offload": "layers", "config": self.config.resolved().to_dict(),
                "config_hash": self.config.hash(),
                "calibration": {"set_hash": self.calib.content_hash, "recipe": self.calib.recipe,
                                "windows": len(self.calib_ids), "tokens": self.calib_tokens},
                "smoothquant": self.smoothed, "quantized_layers": len(self.quantized_layers()),
                "kept_in_float": [d.__dict__ for d in self.decisions],
                "sensitivity_top": [{"layer": k, "noise_to_signal": round(v, 6)} for k, v in
                                    sorted(self.sensitivity.items(), key=lambda kv: -kv[1])[:10]],
                "activation_summary": summarize(self.act_stats), "files": self.files,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "machine": machine_info().to_dict()}

    def summary(self) -> str:
        d = self.to_dict()
        lines = [f"scheme {d['scheme']} (offload: layers)  smoothquant={d['smoothquant']}  calibration "
                 f"{d['calibration']['windows']} windows / {d['calibration']['tokens']} tokens",
                 f"quantized Linear layers: {d['quantized_layers']}  ->  {self.folder}"]
        lines += [f"  float: {k['layer']} ({k['rule']}: {k['reason']})" for k in d["kept_in_float"]]
        return "\n".join(lines)

    def write_metadata(self, tokenizer: Any, source: Path) -> None:
        """quant_table.json (+ .arrays.npz), report.json, config.json and the tokenizer beside the shards."""
        shutil.copyfile(source / "config.json", self.folder / ".config.json.tmp")
        (self.folder / ".config.json.tmp").replace(self.folder / "config.json")
        tokenizer.save_pretrained(str(self.folder))
        self.table.save(self.folder / "quant_table.json")
        atomic_write_text(self.folder / "report.json", json.dumps(self.to_dict(), indent=1))

    def export(self, directory: str | Path | OutputSet) -> dict[str, Path]:
        """Move the shards, quant_table.json, report.json, config and tokenizer into `directory` as one whole set
        (exporters.outset; renames on the same file system). `directory` may be an OutputSet opened before the
        work (the CLI quantizes straight into its staging folder: then nothing moves)."""
        from qcal.runtime.output import open_output, write_set

        t0 = time.perf_counter()

        def write(s: OutputSet) -> dict[str, str]:
            staging = s.path(".")
            if staging.resolve() != self.folder.resolve():
                for f in sorted(self.folder.iterdir()):
                    if f.is_file():
                        shutil.move(str(f), str(staging / f.name))
            names = {k: str(p.relative_to(self.folder)) for k, p in self.paths().items()}
            if self.folder.resolve() != staging.resolve() and not any(self.folder.iterdir()):
                self.folder.rmdir()
            return names

        if isinstance(directory, OutputSet):
            paths = write_set(directory, write)
        else:
            with open_output(directory) as s:
                paths = write_set(s, write)
        self.folder = paths["table"].parent
        self.seconds["export"] = time.perf_counter() - t0
        return self.paths()

    def paths(self) -> dict[str, Path]:
        return {"table": self.folder / "quant_table.json", "report_json": self.folder / "report.json",
                **{f: self.folder / f for f in self.files}}
