"""ONNX Runtime latency: warm-up, then median and p90 over repeated runs, on a fixed thread count."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    runs: int
    threads: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "runs": self.runs, "threads": self.threads}


def timing_session(path: str | Path, threads: int, *, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session as latency is timed: `threads` intra-op threads, one inter-op thread.
    spinning=False sets session.intra_op.allow_spinning = 0 (idle workers sleep at once)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure_latencies(models: dict[str, str | Path], feeds: dict[str, np.ndarray], *, threads: int = 2,
                      warmup: int = 5, runs: int = 30, block: int = 10) -> dict[str, Latency]:
    """Time several models in the same run: they take turns in blocks of `block` consecutive runs, so machine
    drift hits all of them alike, and each block starts after two untimed runs.

    Not run by run: after each run ONNX Runtime's worker threads keep spinning for a while. With as many cores
    as threads, the previous model's spinning pool then takes the cores of the model being timed (YOLOv8s INT8,
    2 threads on 2 cores: 68.8 ms a run when three models alternate run by run, 38.4 ms in blocks;
    benchmarks/latency_interleave.py), and the penalty depends on which model ran before. A deployed model runs
    alone, so blocks time what a user gets.
    """
    sessions = {name: timing_session(path, threads) for name, path in models.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    while any(len(v) < runs for v in times.values()):
        for name, s in sessions.items():
            n = min(block, runs - len(times[name]))
            for _ in range(2 if n else 0):   # the previous model's threads stop spinning; caches refill
                s.run(None, feeds)
            for _ in range(n):
                t = time.perf_counter()
                s.run(None, feeds)
                times[name].append((time.perf_counter() - t) * 1e3)
    return {k: Latency(float(np.median(v)), float(np.percentile(v, 90)), runs, threads) for k, v in times.items()}
