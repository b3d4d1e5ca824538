"""Executors: a tiny sweep on a local Ray (2 CPUs) gives the serial report, a rerun computes nothing, a cell that
raises is retried then reported, and an unreachable cluster is a clear error naming its address."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

import qcal
from qcal.bench.executors import (
    CellJob,
    CellsFailedError,
    ClusterUnreachableError,
    ExecutorError,
    RayExecutor,
    SerialExecutor,
    make_executor,
)
from qcal.cli import demo_checkpoint, main
from qcal.errors import QcalError
from qcal.models.base import Detections

needs_ray = pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install qcal[ray]); the serial executor is tested")


@pytest.fixture(scope="module")
def local_ray() -> Any:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jobs() -> list[CellJob]:
    return [CellJob(f"k{i}", name, None, "unused.onnx") for i, name in enumerate(["good", "bad", "good2"])]


def _flaky(log: Path) -> Any:
    """A cell function that records every attempt and raises on the cell named 'bad' (runs in Ray workers)."""
    def run(job: CellJob) -> list[Detections]:
        with open(log, "a") as f:
            f.write(job.precision + "\n")
        if job.precision == "bad":
            raise ValueError("boom in bad")
        return []
    return run


def test_serial_executor_reports_a_failing_cell_and_finishes_the_rest(tmp_path: Path) -> None:
    done: list[str] = []
    failures = SerialExecutor().run(_flaky(tmp_path / "log"), _jobs(), lambda j, d: done.append(j.key),
                                    progress=False)
    assert done == ["k0", "k2"]
    assert [(f.job.precision, f.error) for f in failures] == [("bad", "ValueError: boom in bad")]
    msg = str(CellsFailedError(failures))
    assert "bad x clean: ValueError: boom in bad" in msg and "rerun with the same -o" in msg


def test_executor_choice_errors() -> None:
    assert make_executor("serial").name == "serial"
    with pytest.raises(ExecutorError, match="executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="needs --executor ray"):
        make_executor("serial", address="127.0.0.1:6379")
    with pytest.raises(ClusterUnreachableError, match="not HOST:PORT"):
        make_executor("ray", address="nohost")


def test_unreachable_address_is_a_clear_error_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    addr = f"127.0.0.1:{_free_port()}"
    with pytest.raises(ClusterUnreachableError, match=f"cannot reach the Ray cluster at {addr}.*ray start --head"):
        make_executor("ray", address=addr)
    # the CLI fails before loading anything (the checkpoint is not even a model: it is never opened)
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"\x80\x02")
    assert main(["bench", str(ckpt), "--trust-checkpoint", "--eval", "bundled:vtest[0:2]", "-o", str(tmp_path / "r"),
                 "--executor", "ray", "--address", addr, "--no-progress"]) == 2
    assert f"cannot reach the Ray cluster at {addr}" in capsys.readouterr().err


@needs_ray
def test_ray_retries_a_raising_cell_then_reports_it(local_ray: Any, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    done: list[str] = []
    failures = RayExecutor(max_retries=2).run(_flaky(log), _jobs(), lambda j, d: done.append(j.key),
                                              progress=False)
    assert sorted(done) == ["k0", "k2"]
    assert [(f.job.key, f.error) for f in failures] == [("k1", "ValueError: boom in bad")]
    attempts = log.read_text().split()
    assert attempts.count("bad") == 3 and attempts.count("good") == 1   # 1 try + 2 retries, then reported


def _sweep(out: Path, executor: str) -> dict[str, Any]:
    """The real fall-detection YOLOv8s at 320 px: 3 precisions x 3 conditions on 10 frames."""
    try:
        ckpt = demo_checkpoint()
    except QcalError:
        pytest.skip("the fall-detection checkpoint is not installed (make test installs it)")
    return qcal.robustness(ckpt, eval="bundled:vtest[450:480]", calib="bundled:vtest[0:40]",
                           conditions="noise_medium,blur_medium", precisions="fp32,int8-dynamic,int8-clean",
                           out=out, config=qcal.QuantConfig(imgsz=320, calib_size=4), latency_runs=1,
                           bootstrap=20, threads=1, progress=False, executor=executor,
                           trust_checkpoint=True).to_dict()


def _untimed(data: dict[str, Any], out: Path) -> str:
    """The report without its timing fields, output folder written as OUT; JSON text, so NaN equals NaN."""
    d = {k: v for k, v in data.items() if k not in ("seconds", "latency_ms")}
    d["precisions"] = [{k: str(v).replace(str(out), "OUT") if k == "file" else v
                        for k, v in p.items() if k != "quantize_seconds"} for p in d["precisions"]]
    return json.dumps(d, sort_keys=True)


@pytest.mark.slow
@needs_ray
def test_ray_sweep_equals_serial_and_rerun_hits_the_cache(local_ray: Any, tmp_path: Path) -> None:
    serial = _sweep(tmp_path / "serial", "serial")
    ray_run = _sweep(tmp_path / "ray", "ray")
    assert len(serial["cells"]) == 3 and all(len(row) == 3 for row in serial["cells"].values())
    assert serial["cells"]["fp32"]["clean"]["map50_95"] == 1.0 and serial["eval"]["reference_boxes"] > 0
    assert serial["cells"]["int8-clean"]["blur_medium"]["detections"] > 0
    assert _untimed(ray_run, tmp_path / "ray") == _untimed(serial, tmp_path / "serial")
    on_disk = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert _untimed(on_disk, tmp_path / "ray") == _untimed(serial, tmp_path / "serial")
    cells = sorted((tmp_path / "ray" / "cells").glob("*.npz"))
    assert len(cells) == 9                                              # 3 precisions x 3 conditions
    before = {p.name: p.stat().st_mtime_ns for p in cells}
    again = _sweep(tmp_path / "ray", "ray")                             # every cell cached: nothing recomputed
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "cells").glob("*.npz")} == before
    assert _untimed(again, tmp_path / "ray") == _untimed(ray_run, tmp_path / "ray")
