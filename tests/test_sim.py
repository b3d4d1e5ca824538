"""The torch INT8 simulation agrees with ONNX Runtime on the same QDQ model (and on the FP32 + QuantTable form)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from exporters import PROFILES, export_qdq
from qcal.simulation.sim import SimulationError, TorchRunner, open_runner
from tests.exporters.qdq_graphs import conforming
from tests.test_engine_export import engine_table

# Stated tolerances. The QDQ graph in torch is the ONNX semantics of the graph: against ONNX Runtime with graph
# optimizations off it agrees to float rounding (measured: max 6e-8 on outputs of magnitude ~60). ORT's default
# (optimized) CPU session fuses DQ->Conv->Q into integer kernels that requantize differently; against that, the
# tensorrt-profile model (op inputs only, little to fuse) agrees within 1% mean absolute error; the end-to-end
# agreement bar (fidelity within 0.005) is measured on the real model in benchmarks/tensorrt_profile.py.
EXACT_REL = 1e-6
OPTIMIZED_REL = 0.01
TABLE_TOL_REL = 0.02


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)


def _ort(path: Path, x: np.ndarray, *, optimized: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("profile", ["tensorrt", "ort-cpu"])
def test_torch_qdq_simulation_matches_ort(tiny_conv_onnx: Path, tmp_path: Path, profile: str) -> None:
    table = engine_table(tiny_conv_onnx, profile, ("/Concat",))
    qdq = tmp_path / f"{profile}.onnx"
    export_qdq(tiny_conv_onnx, table, PROFILES[profile], qdq)
    sim = TorchRunner(qdq)
    fp32 = TorchRunner(tiny_conv_onnx)
    for seed in range(3):
        x = _x(seed)
        ref, got = _ort(qdq, x, optimized=False), sim.run(None, {"input": x})[0]
        assert got.shape == ref.shape
        scale = np.abs(ref).mean()
        assert np.abs(got - ref).max() <= EXACT_REL * np.abs(ref).max() * 10 and np.abs(got - ref).mean() < \
            EXACT_REL * scale
        if profile == "tensorrt":
            assert np.abs(got - _ort(qdq, x)).mean() < OPTIMIZED_REL * scale
        # the float graph in torch is ORT's float model, and the INT8 simulation visibly is not
        f = fp32.run(None, {"input": x})[0]
        np.testing.assert_allclose(f, _ort(tiny_conv_onnx, x), rtol=1e-4, atol=1e-3)
        assert np.abs(f - ref).mean() > 1e-3 * scale


def test_fp32_plus_table_matches_qdq(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    table = engine_table(tiny_conv_onnx, "tensorrt", ("/Concat",))
    qdq = tmp_path / "trt.onnx"
    written = export_qdq(tiny_conv_onnx, table, PROFILES["tensorrt"], qdq)
    sim = TorchRunner(tiny_conv_onnx, table=written)
    x = _x(7)
    ref, got = _ort(qdq, x), sim.run(None, {"input": x})[0]
    f = _ort(tiny_conv_onnx, x)
    err, qerr = np.abs(got - ref).mean(), np.abs(f - ref).mean()
    assert err < TABLE_TOL_REL * np.abs(ref).mean()
    assert err < 0.5 * qerr  # much closer to the QDQ model than the float model is


def test_unsupported_ops_and_devices_are_named(tmp_path: Path) -> None:
    m = conforming(integer_op=True)
    with pytest.raises(SimulationError, match="DynamicQuantizeLinear"):
        TorchRunner(m)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SimulationError, match="no CUDA GPU"):
            TorchRunner(conforming(), device="cuda")
    with pytest.raises(SimulationError, match="choose 'ort' or 'torch'"):
        open_runner(tmp_path / "x.onnx", runtime="tvm")


@pytest.mark.slow
def test_bench_cells_through_the_torch_runtime(tmp_path: Path) -> None:
    """The robustness harness runs FP32 and FP16 ONNX files through the torch runtime (what --device cuda uses);
    detections match ONNX Runtime's closely and the cache keys keep the runtimes apart."""
    import json

    import qcal
    from qcal.cli import demo_checkpoint
    from qcal.errors import QcalError

    try:
        ckpt = demo_checkpoint()
    except QcalError:
        pytest.skip("the fall-detection checkpoint is not installed (make test installs it)")
    cfg = qcal.QuantConfig(imgsz=320)
    from qcal.models import load_model

    adapter = load_model(ckpt, trust_checkpoint=True, imgsz=320)
    kw = dict(eval="bundled:vtest[450:462]", conditions="clean", precisions="fp32,fp16", out=tmp_path, config=cfg,
              latency_runs=0, bootstrap=0, progress=False, trust_checkpoint=True)
    t = qcal.robustness(adapter, runtime="torch", device="cpu", **kw).to_dict()
    o = qcal.robustness(adapter, **kw).to_dict()
    assert t["runtime"] == {"cells": "torch", "device": "cpu"} and o["runtime"]["cells"] == "ort"
    assert t["cells"]["fp32"]["clean"]["map50_95"] == 1.0
    assert abs(t["cells"]["fp16"]["clean"]["map50_95"] - o["cells"]["fp16"]["clean"]["map50_95"]) < 0.05
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    assert set(cells) == {"fp32", "fp16"}


@pytest.mark.parametrize("profile", ["ort-cpu", "tensorrt"])
def test_table_onnx_table_is_exact_and_simulator_codes_match_ort(tiny_conv_onnx: Path, tmp_path: Path,
                                                                  profile: str) -> None:
    """The one rule: the exported graph holds the table's codes and parameters bit for bit; the saved table loads
    back equal; the simulator of the table gives ONNX Runtime's own integer codes on every QuantizeLinear."""
    import onnx

    from exporters import QuantTable, read_quant_table
    from exporters.qdq import same_params
    from qcal.simulation.graph import with_outputs

    table = engine_table(tiny_conv_onnx, profile, ("/Concat",))
    assert any(t.kind == "weight" and t.codes is not None for t in table.tensors.values())
    qdq = tmp_path / "m.onnx"
    export_qdq(tiny_conv_onnx, table, PROFILES[profile], qdq)
    back = read_quant_table(qdq)
    assert same_params(table, back, ("weight", "bias")) and same_params(table, back, ("activation",))
    table.save(tmp_path / "quant_table.json")
    assert QuantTable.load(tmp_path / "quant_table.json") == table
    # a changed code is seen
    name, w = next((k, v) for k, v in table.tensors.items() if v.kind == "weight")
    bumped = w.codes.copy()
    bumped.reshape(-1)[0] = 0 if bumped.reshape(-1)[0] else 1
    assert not same_params(table.replace(tensors={**table.tensors, name: w.replace(codes=bumped)}), back,
                           ("weight", "bias"))
    sim = TorchRunner(tiny_conv_onnx, table=table)
    m = onnx.load(str(qdq))
    qnames = [n.output[0] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    m = with_outputs(m, [])
    for q in qnames:
        dtype = table.tensors[q.removesuffix("_QuantizeLinear_Output")].dtype
        m.graph.output.append(onnx.helper.make_tensor_value_info(q, 2 if dtype == "uint8" else 3, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    same = total = 0
    for seed in range(3):
        feed = {"input": _x(seed)}
        got = sim.run_capture(feed, qnames)
        for q, r in zip(qnames, sess.run(qnames, feed), strict=True):
            same += int(np.sum(got[q].numpy() == r.astype(np.float32)))
            total += r.size
    assert total > 0 and same / total >= 0.999


def test_partial_rerun_scores_equal_full_runs(tiny_conv_onnx: Path) -> None:
    """The blend group search scores candidates by re-running only what their changed ranges reach: the scores
    are bit for bit those of full runs, and a change of one late tensor re-runs fewer steps than one of the first."""
    import onnx

    from qcal.simulation.probe import Probe

    table = engine_table(tiny_conv_onnx, "ort-cpu")
    acts = list(table.activations())
    probe = Probe(onnx.load(str(tiny_conv_onnx)), PROFILES["ort-cpu"], [{"input": _x(s)} for s in range(2)])

    def scaled(names: list[str], f: float):  # type: ignore[no-untyped-def]
        return table.replace(tensors={**table.tensors, **{n: table.tensors[n].replace(
            scale=table.tensors[n].scale * f) for n in names}})

    runner = probe.runner(table)
    assert runner.diff(table) == set() and runner.diff(scaled(acts[-1:], 2.0)) == {f"{acts[-1]}_scale"}
    early, _ = runner.downstream(runner.diff(scaled(acts[:1], 2.0)))
    late, _ = runner.downstream(runner.diff(scaled(acts[-1:], 2.0)))
    assert 0 < len(late) < len(early)
    for names in (acts[:1], acts[len(acts) // 2:]):
        cands = [scaled(names, f) for f in (0.5, 1.5)]
        partial = probe.output_sqnrs(table, cands)
        assert partial == [probe.output_sqnr(c) for c in cands]
        assert partial[0] != partial[1]


def test_per_tensor_attribution_equals_tables_with_one_tensor_changed(tiny_conv_onnx: Path) -> None:
    """Attribution by bypassing Q/DQ in the simulator gives the scores of the real tables: the table without the
    tensor (left float) and the table of that tensor alone; one tensor alone hurts less than the whole table."""
    import onnx

    from qcal.simulation.probe import Probe

    table = engine_table(tiny_conv_onnx, "ort-cpu")
    probe = Probe(onnx.load(str(tiny_conv_onnx)), PROFILES["ort-cpu"], [{"input": _x(s)} for s in range(2)])
    whole = probe.output_sqnr(table)
    att = probe.attribution(table, samples=2)
    assert set(att) == {k for k, v in table.tensors.items() if v.kind in ("activation", "weight")}
    assert {v.kind for k, v in table.tensors.items() if k in att} == {"activation", "weight"}
    for name in (next(iter(table.activations())), next(k for k, v in table.tensors.items() if v.kind == "weight")):
        rest = table.replace(tensors={k: v for k, v in table.tensors.items() if k != name})
        assert att[name]["float_gain_db"] == pytest.approx(probe.output_sqnr(rest) - whole, abs=1e-4)
        alone = table.replace(tensors={name: table.tensors[name]}, float_nodes=())
        assert att[name]["alone_db"] == pytest.approx(probe.output_sqnr(alone), abs=1e-4)
        assert att[name]["alone_db"] > whole
