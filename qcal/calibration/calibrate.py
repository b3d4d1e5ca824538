"""Streaming calibration: run the FP32 ONNX model over the calibration samples once and feed every
quantizable activation to its observer. Memory holds one sample's activations plus fixed-size observer
state, whatever the number of samples."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from qcal.quant.observers import BlendObserver, Observer, blend_range, make_observer
from qcal.simulation.graph import GraphInfo, with_outputs


@dataclass
class CalibrationStats:
    """Per tensor: the observer's chosen range and the true min/max seen; plus how the pass went."""

    ranges: dict[str, tuple[float, float]]
    minmax: dict[str, tuple[float, float]]
    samples: int
    seconds: float
    observer: str
    state_bytes: int
    # (samples, tensors) max |x| per sample: 8 bytes per sample and tensor (0.5 MB for 256 x 246), for the
    # range-stability diagnostic (is the set big enough?)
    per_sample_absmax: np.ndarray | None = None
    # blend observer only: per tensor (MSE range, percentile range); `ranges` then holds one mix of the two
    endpoints: dict[str, tuple[tuple[float, float], tuple[float, float]]] | None = None

    def blended(self, alpha: float | Mapping[str, float]) -> CalibrationStats:
        """The same statistics with ranges mixed at `alpha` (0: MSE, 1: percentile), one for every tensor or
        one per tensor (a mapping naming every tensor)."""
        if self.endpoints is None:
            raise ValueError("blended() needs statistics from the blend observer")
        a = alpha if isinstance(alpha, Mapping) else dict.fromkeys(self.endpoints, alpha)
        return dataclasses.replace(self, ranges={t: blend_range(m, p, a[t]) for t, (m, p) in self.endpoints.items()})


def make_session(model_bytes: bytes, threads: int = 2, *, arena: bool = True) -> ort.InferenceSession:
    """A CPU session. arena=False for sessions that return hundreds of intermediate tensors: ORT's arena and
    memory pattern would otherwise keep the largest allocation pattern (~0.4 GB for YOLOv8s at 640) for good."""
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = arena
    so.enable_mem_pattern = arena
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def calibrate(info: GraphInfo, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]], *, observer: str,
              symmetric: bool, qmin: int, qmax: int, percentile: float, total: int | None = None,
              progress: bool = True, threads: int = 2,
              on_sample: Callable[[dict[str, np.ndarray]], None] | None = None) -> CalibrationStats:
    sess = make_session(with_outputs(info.model, tensors).SerializeToString(), threads, arena=False)
    obs: dict[str, Observer] = {t: make_observer(observer, symmetric=symmetric, qmin=qmin, qmax=qmax,
                                                 percentile=percentile) for t in tensors}
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    absmax: list[np.ndarray] = []
    t0, n = time.perf_counter(), 0
    bar = tqdm(total=total, desc=f"calibrating ({observer})", unit="img", disable=not progress, leave=False)
    for feed in feeds:
        outs = sess.run(tensors, feed)
        row = np.empty(len(tensors))
        for i, (name, arr) in enumerate(zip(tensors, outs, strict=True)):
            obs[name].update(arr)
            a_lo, a_hi = float(arr.min()), float(arr.max())
            lo[name], hi[name] = min(lo[name], a_lo), max(hi[name], a_hi)
            row[i] = max(abs(a_lo), abs(a_hi))
        absmax.append(row)
        if on_sample is not None:
            on_sample(dict(zip(tensors, outs, strict=True)))
        del outs
        n += 1
        bar.update(1)
    bar.close()
    if n == 0:
        from qcal.errors import CalibrationError

        raise CalibrationError("the calibration set yielded no samples; give at least one image.")
    ranges = {t: o.compute_range() for t, o in obs.items()}
    ends = {t: o.endpoints() for t, o in obs.items() if isinstance(o, BlendObserver)}
    return CalibrationStats(ranges, {t: (lo[t], hi[t]) for t in tensors}, n, time.perf_counter() - t0, observer,
                            sum(o.nbytes for o in obs.values()), np.stack(absmax), ends or None)
