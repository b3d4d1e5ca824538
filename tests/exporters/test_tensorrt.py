"""exporters.tensorrt: the trtexec line everywhere; engine build and run only where TensorRT and a GPU exist."""

from pathlib import Path

import numpy as np
import pytest

from exporters.tensorrt import EngineOptions, engine_path, implicit_supported, trt_version, trtexec_command


def test_trtexec_line_explicit_and_implicit(tmp_path: Path) -> None:
    m = tmp_path / "model.int8.onnx"
    m.write_bytes(b"onnx bytes")
    opts = EngineOptions(fp16=True, workspace_mb=512, timing_cache=str(tmp_path / "t.cache"))
    eng = engine_path(m, tmp_path / "model.engine", opts)
    assert eng.name.startswith("model.") and eng.suffix == ".engine" and len(eng.stem.split(".")[1]) == 12
    assert engine_path(m, tmp_path / "model.engine", EngineOptions()) != eng  # options are in the hash
    line = trtexec_command(m, eng, opts)
    assert line.startswith("trtexec --onnx=") and "--int8" in line and "--fp16" in line
    assert "--memPoolSize=workspace:512" in line and "--timingCacheFile=" in line and "--calib" not in line
    c = tmp_path / "calib.cache"
    c.write_text("TRT-8601-EntropyCalibration2\n")
    assert f"--calib={c}" in trtexec_command(m, engine_path(m, tmp_path / "e.engine", opts, c), opts, cache=c)
    assert implicit_supported("8.6.1") and implicit_supported("10.7.0") and not implicit_supported("11.0.0")
    assert not implicit_supported(None)


@pytest.mark.skipif(trt_version() is None, reason="TensorRT is not installed (its wheels are not on PyPI here); "
                    "engine build/run is checked on a machine with TensorRT and a GPU")
def test_build_and_run_engine_matches_ort(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    from exporters import PROFILES, export_qdq
    from exporters.tensorrt import TrtRunner, build_engine
    from tests.exporters.test_qdq import _table

    qdq = tmp_path / "m.int8.onnx"
    export_qdq(tiny_conv_onnx, _table(tiny_conv_onnx, "tensorrt", ("/Concat",)), PROFILES["tensorrt"], qdq)
    res = build_engine(qdq, tmp_path / "m.engine", EngineOptions(fp16=True))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    got = TrtRunner(res.engine).run(None, {"input": x})[0]
    ref = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - ref).mean() < 0.05 * np.abs(ref).mean()
