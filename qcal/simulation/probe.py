"""Scoring QuantTables on probe samples, in the one simulator (qcal.simulation.sim): what every search of the pipeline uses.

A Probe holds a few calibration samples and the FP32 model's outputs on them (computed once, by ONNX Runtime).
`output_sqnr(table)` runs the table's QDQ graph -- the graph `export_qdq` would write -- in torch and compares its
outputs with FP32; `tensor_sqnr(table)` does the same for every quantized activation. Candidates that only change
parameters (a blend mix, a shared range) reuse one simulator graph and swap its parameter tensors in place
(`TorchRunner.set_params`), and `output_sqnrs` recomputes only what a candidate's parameters reach; a new placement
(another node in float) lowers a new graph. No candidate is exported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from exporters import QdqProfile, QuantTable
from exporters.qdq import DQ_SUFFIX
from qcal.calibration.calibrate import make_session
from qcal.quant.qparams import sqnr_db
from qcal.simulation.graph import with_outputs
from qcal.simulation.sim import TorchRunner, as_numpy


def channel_sqnr(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Mean SQNR over the outputs' channels (axis 1): YOLO's box coordinates and class scores count alike, whatever
    their scale; an output with more than 1024 channels counts as one."""
    per: list[float] = []
    for f, q in zip(ref, got, strict=True):
        if f.ndim >= 2 and f.shape[1] <= 1024:
            per += [sqnr_db(f[:, c], q[:, c]) for c in range(f.shape[1])]
        else:
            per.append(sqnr_db(f, q))
    return float(np.mean(per))


class Probe:
    def __init__(self, fp32: onnx.ModelProto, profile: QdqProfile, feeds: list[dict[str, np.ndarray]],
                 threads: int = 2) -> None:
        self.fp32, self.profile, self.feeds, self.threads = fp32, profile, feeds, threads
        sess = make_session(fp32.SerializeToString(), threads)
        self.reference = [sess.run(None, f) for f in feeds]
        self._runner: TorchRunner | None = None
        self._layout: tuple[Any, ...] | None = None
        self.evaluations = 0

    def runner(self, table: QuantTable) -> TorchRunner:
        """The simulator of `table`: the last one with new parameters when the placement is unchanged."""
        layout = (tuple(sorted(table.tensors)), table.float_nodes)
        if self._runner is None or layout != self._layout:
            self._runner = TorchRunner(self.fp32, table=table, profile=self.profile)
            self._layout = layout
        else:
            self._runner.set_params(table)
        return self._runner

    def output_sqnr(self, table: QuantTable) -> float:
        runner = self.runner(table)
        self.evaluations += 1
        return float(np.mean([channel_sqnr(ref, runner.run(None, f)) for ref, f in
                              zip(self.reference, self.feeds, strict=True)]))

    def output_sqnrs(self, base: QuantTable, candidates: list[QuantTable]) -> list[float]:
        """`output_sqnr` of each candidate, when each differs from `base` only in parameters (a group's ranges):
        what no candidate changes runs once per sample, on base; each candidate recomputes only the steps its
        changed parameters reach. The scores equal full runs' (tests/test_sim.py)."""
        runner = self.runner(base)
        changed = set().union(*(runner.diff(c) for c in candidates))
        steps, frontier = runner.downstream(changed)
        cuts = [runner.run_except(f, steps, frontier) for f in self.feeds]
        scores = []
        for c in candidates:
            runner.set_params(c)
            self.evaluations += 1
            scores.append(float(np.mean([channel_sqnr(ref, runner.run_from(cut, steps)) for ref, cut in
                                         zip(self.reference, cuts, strict=True)])))
        return scores

    def attribution(self, table: QuantTable, samples: int = 1,
                    progress: Callable[[int, int], object] | None = None) -> dict[str, dict[str, float]]:
        """Per-tensor error attribution on the first `samples` probe samples, in the simulator: for every quantized
        activation and weight, the output SQNR against FP32 when only it is quantized (`alone_db`: low = this tensor
        alone hurts), and how much the whole table's output SQNR rises when only it is left float (`float_gain_db`).
        Each tensor re-runs only the steps downstream of it, from a cached run with everything quantized and one
        with everything float."""
        runner = self.runner(table)
        names = [k for k, v in table.tensors.items() if v.kind in ("activation", "weight")]
        every = frozenset(table.tensors)   # "only it quantized": biases float too
        reach = {n: runner.downstream({f"{n}_scale"}) for n in names}
        keep = set(runner.outputs).union(*(f for _, f in reach.values()))
        alone = dict.fromkeys(names, 0.0)
        gain = dict.fromkeys(names, 0.0)
        feeds = self.feeds[:max(1, samples)]
        for s, (ref, feed) in enumerate(zip(self.reference, feeds, strict=False)):
            quant, flt = runner.run_except(feed, [], keep), runner.run_except(feed, [], keep, every)
            whole = channel_sqnr(ref, [as_numpy(quant[o]) for o in runner.outputs])
            for i, n in enumerate(names):
                steps = reach[n][0]
                alone[n] += channel_sqnr(ref, runner.run_from(flt, steps, every - {n})) / len(feeds)
                gain[n] += (channel_sqnr(ref, runner.run_from(quant, steps, frozenset({n}))) - whole) / len(feeds)
                if progress is not None:
                    progress(s * len(names) + i + 1, len(feeds) * len(names))
        return {n: {"alone_db": alone[n], "float_gain_db": gain[n]} for n in names}

    def tensor_sqnr(self, table: QuantTable) -> dict[str, float]:
        """SQNR of every quantized activation (its dequantized value in the simulator) against FP32's tensor."""
        names = sorted(table.activations())
        runner = self.runner(table)
        fs = make_session(with_outputs(self.fp32, names).SerializeToString(), self.threads, arena=False)
        noise, signal = np.zeros(len(names)), np.zeros(len(names))
        for feed in self.feeds:
            got = runner.run_capture(feed, [t + DQ_SUFFIX for t in names])
            for i, ref in enumerate(fs.run(names, feed)):
                q = got[names[i] + DQ_SUFFIX].float().cpu().numpy().astype(np.float64)
                noise[i] += float(np.sum((q - ref) ** 2))
                signal[i] += float(np.sum(ref.astype(np.float64) ** 2))
        return {t: 10.0 * float(np.log10(max(s, 1e-30) / max(n, 1e-30))) for t, n, s in zip(names, noise, signal,
                                                                                           strict=True)}


__all__ = ["Probe", "channel_sqnr"]
