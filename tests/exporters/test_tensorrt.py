"""exporters.tensorrt: the trtexec line everywhere; engine build and run only where TensorRT and a GPU exist."""

from pathlib import Path

from exporters.tensorrt import EngineOptions, engine_key, implicit_supported, trtexec_command


def test_trtexec_line_explicit_and_implicit(tmp_path: Path) -> None:
    m = tmp_path / "model.int8.onnx"
    m.write_bytes(b"onnx bytes")
    opts = EngineOptions(fp16=True, workspace_mb=512, timing_cache=str(tmp_path / "t.cache"))
    eng = tmp_path / "model.engine"
    key = engine_key(m, opts)
    assert len(key) == 12 and int(key, 16) >= 0
    assert engine_key(m, EngineOptions()) != key  # options are in the hash
    line = trtexec_command(m, eng, opts)
    assert line.startswith("trtexec --onnx=") and "--int8" in line and "--fp16" in line
    assert "--memPoolSize=workspace:512" in line and "--timingCacheFile=" in line and "--calib" not in line
    c = tmp_path / "calib.cache"
    c.write_text("TRT-8601-EntropyCalibration2\n")
    assert engine_key(m, opts, c) != key       # so is the calibration cache
    assert f"--calib={c}" in trtexec_command(m, tmp_path / "e.engine", opts, cache=c)
    assert implicit_supported("8.6.1") and implicit_supported("10.7.0") and not implicit_supported("11.0.0")
    assert not implicit_supported(None)
