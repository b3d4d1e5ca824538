import struct
from pathlib import Path

import numpy as np
import pytest

from exporters import QuantTable, TensorQuant
from exporters.errors import ExporterError
from exporters.trt_cache import (
    StaleCacheError,
    check_stamp,
    read_ort_trt_table,
    read_trt_cache,
    stamp_path,
    trt_scale,
    write_ort_trt_table,
    write_trt_cache,
)

STAMP = {"calib_hash": "a" * 64, "config_hash": "c" * 16, "model_sha256": "m" * 64}


def _table(n: int = 200) -> QuantTable:
    """Random float32 scales over 12 decades (including awkward ones), plus a weight TensorRT caches never hold."""
    rng = np.random.default_rng(0)
    scales = (10.0 ** rng.uniform(-9, 3, n)).astype(np.float32)
    scales[:3] = [np.float32(1 / 127), np.nextafter(np.float32(1), np.float32(2)), np.float32(3.4e-38)]
    t = {f"/model.{i}/act/Mul_output_{i}": TensorQuant("int8", (float(s),), (0,)) for i, s in enumerate(scales)}
    t["images"] = TensorQuant("int8", (float(np.float32(1 / 127)),), (0,))
    t["w"] = TensorQuant("int8", (0.1, 0.2), (0, 0), axis=0, kind="weight")
    return QuantTable(t, target="tensorrt")


def test_native_cache_round_trip_is_exact(tmp_path: Path) -> None:
    table = _table()
    p = write_trt_cache(table, tmp_path / "calib.cache", stamp=STAMP)
    lines = p.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert "images: 3c010204" in lines  # 1/127 as big-endian float32 hex
    back = read_trt_cache(p)
    acts = table.activations()
    assert set(back.tensors) == set(acts) and "w" not in back.tensors
    for k, tq in acts.items():
        assert back.tensors[k].scale == tq.scale and back.tensors[k].zero_point == (0,)
    assert back.meta == {"trt_version": 8601, "calibrator": "EntropyCalibration2"}
    assert struct.pack(">f", back.tensors["images"].scale[0]).hex() == "3c010204"


def test_ort_trt_table_round_trip_is_exact(tmp_path: Path) -> None:
    table = _table()
    fb = write_ort_trt_table(table, tmp_path / "ort_trt", stamp=STAMP)
    assert {p.name for p in fb.parent.iterdir()} >= {"calibration.flatbuffers", "calibration.cache",
                                                    "calibration.json", "calibration.flatbuffers.qcal.json"}
    back = read_ort_trt_table(fb)
    for k, tq in table.activations().items():
        assert back.tensors[k].scale == tq.scale, k
    # the value ORT's TensorRT EP reads is amax; TensorRT derives scale = amax / 127 in float32
    first = fb.parent.joinpath("calibration.cache").read_text().splitlines()[0].split(" ")
    amax = float(first[1])
    assert np.float32(np.float32(amax) / np.float32(127)) == np.float32(back.tensors[first[0]].scale[0])


def test_scales_no_float32_amax_reaches_are_snapped_and_then_round_trip(tmp_path: Path) -> None:
    """amax / 127 in float32 steps over ~1% of float32 scales: those cannot be what TensorRT runs. trt_scale
    moves them to the nearest reachable one (and leaves the others alone); a table of such scales reads back
    bit for bit from the ORT TensorRT EP table (seen on a yolov8n: 2.5419e-06 came back one ulp off)."""
    rng = np.random.default_rng(1)
    scales = (10.0 ** rng.uniform(-9, 3, 20000)).astype(np.float32).astype(float)
    snapped = np.array([trt_scale(s) for s in scales])
    moved = snapped != scales
    assert 0 < moved.sum() < 0.05 * len(scales)
    assert np.all(np.abs(snapped[moved] - scales[moved]) <= 2 * np.spacing(scales[moved].astype(np.float32)))
    assert all(trt_scale(s) == s for s in snapped[:500])   # idempotent
    t = QuantTable({f"t{i}": TensorQuant("int8", (float(s),), (0,)) for i, s in enumerate(snapped[:2000])},
                   target="tensorrt")
    back = read_ort_trt_table(write_ort_trt_table(t, tmp_path / "ort", stamp=STAMP))
    assert all(back.tensors[k].scale == tq.scale for k, tq in t.tensors.items())


def test_uint8_table_is_converted_from_its_range(tmp_path: Path) -> None:
    t = QuantTable({"x": TensorQuant("uint8", (0.01,), (128,), rmin=-1.27, rmax=0.5)})
    back = read_trt_cache(write_trt_cache(t, tmp_path / "c", stamp=STAMP))
    assert back.tensors["x"].scale[0] == pytest.approx(0.01, rel=1e-6)
    with pytest.raises(ExporterError, match="without a range"):
        write_trt_cache(QuantTable({"x": TensorQuant("uint8", (0.01,), (128,))}), tmp_path / "d", stamp=STAMP)


def test_stale_or_tampered_cache_is_refused(tmp_path: Path) -> None:
    p = write_trt_cache(_table(5), tmp_path / "calib.cache", stamp=STAMP)
    assert check_stamp(p, STAMP)["calib_hash"] == STAMP["calib_hash"]
    with pytest.raises(StaleCacheError, match="made for calibration set calib_hash=aaaa.*has bbbb"):
        check_stamp(p, {**STAMP, "calib_hash": "b" * 64})
    with pytest.raises(StaleCacheError, match="qcal config"):
        check_stamp(p, {**STAMP, "config_hash": "d" * 16})
    with pytest.raises(StaleCacheError, match="model"):
        check_stamp(p, {**STAMP, "model_sha256": "x" * 64})
    p.write_text(p.read_text().replace("EntropyCalibration2", "MinMaxCalibration"))
    with pytest.raises(StaleCacheError, match="modified after qcal wrote it"):
        check_stamp(p, STAMP)
    stamp_path(p).unlink()
    with pytest.raises(StaleCacheError, match="no sidecar"):
        check_stamp(p, STAMP)
    with pytest.raises(ExporterError, match="needs \\['calib_hash'\\]"):
        write_trt_cache(_table(5), tmp_path / "e", stamp={**STAMP, "calib_hash": ""})
    assert not (tmp_path / "e").exists()  # nothing written without a full stamp


def test_malformed_caches_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cache"
    bad.write_text("not a header\n")
    with pytest.raises(ExporterError, match="first line should look like"):
        read_trt_cache(bad)
    bad.write_text("TRT-8601-EntropyCalibration2\nimages 3c010204\n")
    with pytest.raises(ExporterError, match="line 2"):
        read_trt_cache(bad)
    with pytest.raises(ExporterError, match="not an ORT TensorRT calibration table"):
        read_ort_trt_table(bad)
