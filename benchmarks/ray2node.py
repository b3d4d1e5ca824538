"""The scale sweep on a two-node Ray cluster on loopback (issue 11, part 2): `benchmarks/scale.py --stage ray2node`.

A head (`ray start --head --num-cpus 1 --port P`, its own temp dir) and a second node (`ray start --address
127.0.0.1:P --num-cpus 1`, its own custom resource `node2`) are started by this script, each `--block`ed in a
process group of its own; the sweep runs with `--executor ray --address 127.0.0.1:P`; both groups are then stopped
by their process-group ids (SIGTERM, then SIGKILL), always, in `finally`. Only what this script started is
stopped: `ray stop` would also stop other users' Ray on a shared machine.

Token authentication stays on: the head uses ~/.ray/auth_token (created by Ray on first use), and the second node
and the driver present the same token with RAY_AUTH_MODE=token (Ray 2.60 joins without sending a token otherwise:
"Authentication token is missing or incorrect. Note: RAY_AUTH_MODE is currently 'disabled'").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen([_ray_bin(), "start", "--block", "--disable-usage-stats", *args], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)       # the group this script created (start_new_session)
    for p in procs:
        try:
            p.wait(timeout=40)                     # Ray drains up to 30 s before shutting its processes down
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_for_nodes(address: str, n: int, timeout_s: float = 90.0) -> float:
    import ray

    t0 = time.perf_counter()
    ray.init(address=address, log_to_driver=False)
    try:
        while sum(1 for x in ray.nodes() if x["Alive"]) < n:
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"only {sum(1 for x in ray.nodes() if x['Alive'])} of {n} Ray nodes joined "
                                   f"{address} in {timeout_s:.0f} s")
            time.sleep(0.5)
        return sum(float(x["Resources"].get("CPU", 0)) for x in ray.nodes() if x["Alive"])
    finally:
        ray.shutdown()


def stage_ray2node(work: Path, sweep: Callable[..., dict[str, Any]], untimed: Callable[[dict[str, Any]], str]) -> None:
    serial_dir = work / "serial"
    if not (serial_dir / "report.json").is_file():
        raise SystemExit(f"{serial_dir}/report.json is missing: run benchmarks/scale.py --work {work} first")
    out = work / "ray2node"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(serial_dir / "models", out / "models")       # same models, no cells: every cell computed
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ["RAY_AUTH_MODE"] = "token"                         # the driver (this process) presents the token too
    logs = work / "ray2node-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        procs.append(start_node(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                                 f"--temp-dir={work / 'ray-head'}"], logs / "head.log", env))
        time.sleep(3)
        procs.append(start_node([f"--address={address}", "--num-cpus=1", '--resources={"node2": 1}'],
                                logs / "node2.log", env))
        cpus = wait_for_nodes(address, 2)
        res["ray_2node_start_s"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        report = sweep(out, "ray", address)
        res["ray_2node_total_s"] = round(time.perf_counter() - t1, 2)
        res["ray_2node_cells_s"] = report["seconds"]["cells"]
        serial = json.loads((serial_dir / "report.json").read_text())
        res["ray_2node_report_equals_serial"] = _normal(untimed(report), out) == _normal(untimed(serial), None)
        res["ray_2node_cluster"] = (f"2 nodes on loopback ({address}), {cpus:g} CPUs in all (1 per node), token "
                                    "authentication on, no dashboard; 1 ONNX Runtime thread per cell")
    except Exception as e:   # recorded, not hidden: the exact error is the result when Ray refuses two nodes
        res["ray_2node_error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        stop(procs)
        _save(res, work)


def _normal(text: str, out: Path | None) -> str:
    """Paths that differ between runs (output folder, repository checkout) replaced by placeholders."""
    import re

    text = re.sub(r'"[^"]*/(models/[^"/]+\.onnx)"', r'"OUT/\1"', text)
    text = re.sub(r'"[^"]*/((calib_sets|benchmarks)/recipes/[^"]+)"', r'"ROOT/\1"', text)
    return text if out is None else text.replace(str(out), "OUT")


def _save(res: dict[str, Any], work: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from exporters.quant_table import atomic_write_text

    path = RESULTS / "scale.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(res)
    data.setdefault("wall_s", {})["ray_2node"] = res.get("ray_2node_cells_s")
    from benchmarks.provenance import git_commit

    data["ray_2node_git_commit"] = git_commit()
    data["ray_2node_command"] = ("OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/scale.py --stage ray2node "
                                 f"--work {work}")
    atomic_write_text(path, json.dumps(data, indent=1))
    md = (RESULTS / "scale.md").read_text() if (RESULTS / "scale.md").is_file() else ""
    row = next((ln for ln in md.splitlines() if ln.startswith("| Ray 2-node loopback")), None)
    new = (f"| Ray 2-node loopback, 1 CPU per node (separate run: `{data['ray_2node_command']}`) | "
           f"{res.get('ray_2node_cells_s', 'failed: ' + str(res.get('ray_2node_error')))} |")
    if row is not None:
        md = md.replace(row, new)
    note = (f"Two-node loopback run: cluster start {res.get('ray_2node_start_s')} s (two `ray start --block`, "
            f"token auth on), sweep {res.get('ray_2node_total_s')} s in all; report equals serial except timing: "
            f"{res.get('ray_2node_report_equals_serial')}. Measured in a separate run from the rows above, on the "
            "same shared machine (noisy_machine).")
    md = "\n".join(ln for ln in md.splitlines() if not ln.startswith("Two-node loopback run:"))
    marker = "## Out-of-core LLM calibration"
    md = md.replace(marker, note + "\n\n" + marker) if marker in md else md.rstrip() + "\n\n" + note + "\n"
    atomic_write_text(RESULTS / "scale.md", md)
