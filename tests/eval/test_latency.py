import itertools
from pathlib import Path

import numpy as np
import pytest

from qcal.eval.latency import measure_latencies


def test_models_take_turns_in_blocks_after_two_untimed_runs(tiny_conv_onnx: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    order: list[int] = []
    real = ort.InferenceSession.run

    def counted(self: ort.InferenceSession, *a: object, **k: object) -> object:
        order.append(id(self))
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    feeds = {"input": np.zeros((1, 3, 32, 32), np.float32)}
    lat = measure_latencies({"a": tiny_conv_onnx, "b": tiny_conv_onnx}, feeds, threads=1, warmup=1, runs=7, block=3)
    assert set(lat) == {"a", "b"} and all(v.runs == 7 and 0 < v.median_ms <= v.p90_ms for v in lat.values())
    # after one warm-up run each: a 2+3, b 2+3, a 2+3, b 2+3, a 2+1, b 2+1 consecutive runs
    turns = [len(list(g)) for _, g in itertools.groupby(order[2:])]
    assert turns == [5, 5, 5, 5, 3, 3]
    assert len(set(order[:2])) == 2
