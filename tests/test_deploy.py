"""qcal lint / qcal engine: exit codes, stamped caches, stale caches refused, trtexec line recorded."""

import json
from pathlib import Path

import onnx
import pytest

import calib_sets
from exporters import PROFILES, export_qdq
from exporters.trt_cache import read_trt_cache
from qcal.cli import main
from qcal.errors import ExportError
from qcal.runtime.deploy import engine, write_caches
from tests.exporters.qdq_graphs import conforming
from tests.test_engine_export import engine_table

CALIB = "bundled:vtest[0:12]"


@pytest.fixture()
def trt_export(tiny_conv_onnx: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(fp32 onnx, qdq onnx, stamped calib.cache) as `qcal quantize --target tensorrt` leaves them."""
    table = engine_table(tiny_conv_onnx, "tensorrt", ("/Concat",))
    qdq = tmp_path / "model.int8.onnx"
    written = export_qdq(tiny_conv_onnx, table, PROFILES["tensorrt"], qdq)
    fp32 = tmp_path / "model.fp32.onnx"
    fp32.write_bytes(tiny_conv_onnx.read_bytes())
    paths = write_caches(written, tmp_path, fp32, calib_hash=calib_sets.load(CALIB).take(4).content_hash,
                         config_hash="c" * 16, model_sha256="m" * 64, calib_size=4)
    assert set(read_trt_cache(paths["trt_cache"]).tensors) == set(written.activations())
    return fp32, qdq, paths["trt_cache"]


def test_lint_cli_exit_codes(trt_export: tuple[Path, Path, Path], tmp_path: Path, capsys) -> None:
    _, qdq, _ = trt_export
    assert main(["lint", str(qdq), "--target", "tensorrt", "--json", str(tmp_path / "l.json")]) == 0
    assert "0 violations" in capsys.readouterr().out
    assert json.loads((tmp_path / "l.json").read_text())["ok"] is True
    bad = tmp_path / "bad.onnx"
    onnx.save(conforming(act_zp=5, q_on_conv_output=True), str(bad))
    assert main(["lint", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "TRT003" in out and "TRT009" in out and "fixes:" in out and "'r1_Q'" in out
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert main(["lint", str(tmp_path / "junk.onnx")]) == 2
    assert main(["lint", str(tmp_path / "missing.onnx")]) == 2


def test_engine_explicit_prints_trtexec_and_writes_report(trt_export: tuple[Path, Path, Path], tmp_path: Path,
                                                          capsys) -> None:
    _, qdq, _ = trt_export
    assert main(["engine", str(qdq), "-o", str(tmp_path / "out" / "model.engine"), "--fp16-fallback",
                 "--plan-only"]) == 0
    out = capsys.readouterr().out
    assert "trtexec --onnx=" in out and "--fp16" in out and "mode: explicit" in out
    assert f"--saveEngine={tmp_path / 'out' / 'model.engine'}" in out   # -o as given, not renamed
    reports = list((tmp_path / "out").glob("*.build.json"))
    assert [r.name for r in reports] == ["model.engine.build.json"]
    rep = json.loads(reports[0].read_text())
    assert len(rep["extra"]["key"]) == 12 and rep["built"] is False
    assert rep["trtexec"].startswith("trtexec") and rep["lint"]["ok"] and rep["mode"] == "explicit"
    bad = tmp_path / "bad.onnx"
    onnx.save(conforming(act_zp_dtype=__import__("numpy").uint8), str(bad))
    with pytest.raises(ExportError, match="TRT002"):
        engine(bad, tmp_path / "b.engine")
    assert engine(bad, tmp_path / "b.engine", lint=False).mode == "explicit"


def test_engine_implicit_checks_the_cache_stamp(trt_export: tuple[Path, Path, Path], tmp_path: Path,
                                                capsys) -> None:
    fp32, qdq, cache = trt_export
    rep = engine(fp32, tmp_path / "m.engine", cache=cache, calib=CALIB)
    assert rep.mode == "implicit" and f"--calib={cache}" in rep.trtexec and rep.cache_stamp
    # another calibration set: refused, naming the set
    with pytest.raises(ExportError, match="made for calibration set"):
        engine(fp32, tmp_path / "m.engine", cache=cache, calib="bundled:vtest[12:30]")
    assert main(["engine", str(fp32), "--cache", str(cache), "--calib", "bundled:vtest[12:30]", "-o",
                 str(tmp_path / "m.engine")]) == 2
    assert "stale calibration cache" in capsys.readouterr().err
    # another model (the QDQ file is not the FP32 ONNX the cache was keyed for): refused, naming the model
    with pytest.raises(ExportError, match="made for the FP32 ONNX"):
        engine(qdq, tmp_path / "m.engine", cache=cache, calib=CALIB)
    with pytest.raises(ExportError, match="qcal config"):
        engine(fp32, tmp_path / "m.engine", cache=cache, calib=CALIB, config_hash="d" * 16)
    with pytest.raises(Exception, match="--calib"):
        engine(fp32, tmp_path / "m.engine", cache=cache)


@pytest.mark.slow
def test_quantize_target_tensorrt_end_to_end(tmp_path: Path) -> None:
    """An untrained yolov8n (offline) through `quantize --target tensorrt`: the QDQ model lints clean, both
    caches are written with stamps and read back to the table's scales, and `engine` accepts them."""
    import qcal
    from exporters.trt_cache import read_ort_trt_table
    from exporters.trt_lint import lint_tensorrt
    from qcal.models.yolo import YoloAdapter

    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=320)
    cfg = qcal.QuantConfig(imgsz=320, calib_size=4, target=qcal.Target.TENSORRT,
                           keep_float=qcal.KeepFloatConfig(sensitivity_samples=0))
    r = qcal.quantize(adapter, calib="bundled:vtest[0:30]", config=cfg, progress=False)
    paths = r.export(tmp_path)
    res = lint_tensorrt(paths["int8"])
    assert res.ok, res.summary()
    assert res.counts["quantized_inputs_by_op"]["Conv"] >= 100 and "Sigmoid" not in res.counts["quantized_inputs_by_op"]
    acts = r.table.activations()
    for table in (read_trt_cache(paths["trt_cache"]), read_ort_trt_table(paths["ort_trt_table"])):
        assert {k: v.scale for k, v in table.tensors.items()} == {k: v.scale for k, v in acts.items()}
    rep = engine(paths["fp32"], tmp_path / "m.engine", cache=paths["trt_cache"], calib="bundled:vtest[0:30]",
                 config_hash=cfg.hash())
    assert rep.cache_stamp and rep.cache_stamp["calib_hash"] == r.calib_hash


def test_tensorrt_config_rejects_per_tensor_weights() -> None:
    from qcal.config import QuantConfig, Target
    from qcal.errors import ConfigError

    with pytest.raises(ConfigError, match="TRT006"):
        QuantConfig(target=Target.TENSORRT, per_channel=False)
