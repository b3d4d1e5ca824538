"""The result of an out-of-core LLM run (qcal/llm/offload.py): what it decided, its QuantTable and the folder of
shards -- one kind ("llm-offloaded") of the one result protocol (qcal/result.py), evaluated layer by layer
(qcal/llm/offload_eval.py) so that measuring it needs no more memory than making it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from exporters.outset import OutputSet
from exporters.quant_table import QuantTable, atomic_write_text
from qcal.config import QuantConfig
from qcal.eval.outliers import summarize
from qcal.llm.common import LLMSettings


@dataclass
class OffloadedLLMResult(LLMSettings):
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

    def evaluate(self, eval: Any, *, n_tokens: int = 8192, window: int = 512, stride: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
        """Perplexity and mean KL to FP32 on held-out text (a path, a str, a TextSet or token ids), FP32 read from
        the source folder and the quantized model from this result's shards, one decoder layer at a time."""
        from qcal.eval.perplexity import evaluate_lms
        from qcal.llm.common import act_quant, eval_tokens, refuse_overlap
        from qcal.llm.offload_eval import LayerwiseLM
        from qcal.llm.skeleton import Skeleton
        from qcal.models.hf_llm import HFCausalLM

        skel = Skeleton(Path(self.source))
        lm = HFCausalLM(skel.model, skel.tokenizer, self.source)
        ids = eval_tokens(lm, eval, n_tokens)
        refuse_overlap(self.calib_ids, self.calib.keys(), ids)
        act = act_quant(self.llm_config.activations)
        fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "fp32": LayerwiseLM(skel), self.scheme.value: LayerwiseLM(skel, self.folder, self.table, act)}
        return evaluate_lms(fns, ids, reference="fp32", window=window, stride=stride, progress=progress)

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


__all__ = ["OffloadedLLMResult"]
