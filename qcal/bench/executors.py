"""Where the robustness cells run: in this process (serial, the default) or as Ray tasks (local or a cluster).

One small interface: `executor.run(runner, jobs, on_done, progress=...)` computes every job with `runner(job)`,
calls `on_done(job, detections)` in the driver as each one finishes (the driver saves the cell to the CellStore,
so an interrupted sweep keeps every finished cell), and returns the jobs that failed with their error. The report
is the same whatever the executor: a cell is a pure function of (model file, condition, evaluation images).

Ray is an optional extra (`pip install qcal[ray]`), imported only when the Ray executor is built. A Ray task per
cell declares its resources (CPUs = the ONNX Runtime threads it uses, a GPU when the cells run on cuda), is retried
by Ray when its worker dies or it raises (`max_retries`), and is then reported as failed with its error. Ctrl-C
cancels the outstanding tasks. Workers read the model files from the report folder (-o), so on a multi-node
cluster that folder must be on a path every node can read (see docs/SCALE.md). We never start Ray's dashboard and
leave Ray's token authentication as Ray configures it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from calib_sets.degrade import Condition
from qcal.bench.cells import CellOutput
from qcal.bench.spec import condition_name
from qcal.errors import QcalError
from qcal.models.base import ModelAdapter

EXECUTORS = ("serial", "ray")


class ExecutorError(QcalError):
    """The cells could not be run by the chosen executor (Ray missing, cluster unreachable, cells failed)."""


class ClusterUnreachableError(ExecutorError):
    """`--address` names a Ray cluster this machine cannot connect to."""


class CellsFailedError(ExecutorError):
    """Some cells failed after their retries; every other cell was computed and cached."""

    def __init__(self, failures: Sequence[CellFailure]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  {f.job.precision} x {condition_name(f.job.condition)}: {f.error}" for f in failures)
        super().__init__(f"{len(failures)} cell(s) failed after retries:\n{lines}\nFix the cause and rerun with the "
                         "same -o: finished cells are cached and only the missing ones run again.")


@dataclass(frozen=True)
class CellJob:
    """One (precision, condition) cell: its content key and the ONNX file it runs."""

    key: str
    precision: str
    condition: Condition | None
    model_file: str


@dataclass(frozen=True)
class CellFailure:
    job: CellJob
    error: str


@dataclass
class CellRunner:
    """Computes one cell's detections. Picklable (shipped once to Ray's object store); an instance reuses its
    open sessions and the last condition's degraded images, so the serial executor does each only once."""

    adapter: ModelAdapter
    images: list[np.ndarray]
    runtime: str = "ort"
    device: str = "cpu"
    threads: int = 2
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    _degraded: tuple[str, list[np.ndarray]] | None = field(default=None, repr=False)

    def __call__(self, job: CellJob) -> CellOutput:
        from qcal.simulation.sim import open_runner

        if not Path(job.model_file).is_file():
            raise ExecutorError(f"model file {job.model_file} is not readable on this node; on a multi-node "
                                "cluster put the report folder (-o) on a path every node can read.")
        if job.model_file not in self._sessions:
            self._sessions[job.model_file] = open_runner(job.model_file, runtime=self.runtime, device=self.device,
                                                         threads=self.threads)
        sess = self._sessions[job.model_file]
        return [self.adapter.postprocess(sess.run(None, prep.feeds), prep)
                for prep in map(self.adapter.prepare, self._images_for(job.condition))]

    def __getstate__(self) -> dict[str, Any]:   # sessions and caches stay in the process that made them
        return {**self.__dict__, "_sessions": {}, "_degraded": None}

    def _images_for(self, c: Condition | None) -> list[np.ndarray]:
        if c is None:
            return self.images
        name = condition_name(c)
        if self._degraded is None or self._degraded[0] != name:
            self._degraded = (name, [c(img, seed=i) for i, img in enumerate(self.images)])
        return self._degraded[1]


OnDone = Callable[[CellJob, CellOutput], None]


class Executor(Protocol):
    @property
    def name(self) -> str: ...

    def run(self, runner: Callable[[CellJob], CellOutput], jobs: Sequence[CellJob], on_done: OnDone, *,
            progress: bool) -> list[CellFailure]: ...


def _bar(n: int, progress: bool, name: str) -> tqdm:  # type: ignore[type-arg]
    return tqdm(total=n, desc=f"robustness cells ({name})", unit="cell", disable=not progress or not n)


@dataclass(frozen=True)
class SerialExecutor:
    """Every cell in this process, in order (conditions outermost, so degraded images are made once each)."""

    name: str = "serial"

    def run(self, runner: Callable[[CellJob], CellOutput], jobs: Sequence[CellJob], on_done: OnDone, *,
            progress: bool) -> list[CellFailure]:
        failures = []
        with _bar(len(jobs), progress, self.name) as bar:
            for job in jobs:
                try:
                    dets = runner(job)
                except Exception as e:   # reported with the others at the end; KeyboardInterrupt propagates
                    failures.append(CellFailure(job, f"{type(e).__name__}: {e}"))
                else:
                    on_done(job, dets)
                bar.update(1)
        return failures


@dataclass(frozen=True)
class RayExecutor:
    """One Ray task per cell on a local Ray (address None) or an existing cluster (`ray start --head` there).

    cpus/gpus/memory_mb are each task's declared resources; max_retries covers worker deaths and exceptions."""

    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int | None = None
    max_retries: int = 2
    connect_timeout_s: float = 5.0
    name: str = "ray"

    def run(self, runner: Callable[[CellJob], CellOutput], jobs: Sequence[CellJob], on_done: OnDone, *,
            progress: bool) -> list[CellFailure]:
        if not jobs:
            return []
        ray = _import_ray()
        started = self._connect(ray)
        try:
            return self._run(ray, runner, jobs, on_done, progress)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join the cluster (or start a local Ray); True when this call started Ray and must stop it."""
        if ray.is_initialized():
            return False
        if self.address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
            return True
        check_reachable(self.address, self.connect_timeout_s)
        try:
            ray.init(address=self.address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise ClusterUnreachableError(
                f"cannot join the Ray cluster at {self.address}: {e}. Check the address, and that this machine has "
                "the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN) and RAY_AUTH_MODE=token set; see "
                "docs/SCALE.md).") from e
        return True

    def _run(self, ray: Any, runner: Callable[[CellJob], CellOutput], jobs: Sequence[CellJob],
             on_done: OnDone, progress: bool) -> list[CellFailure]:
        opts: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus, "max_retries": self.max_retries,
                                "retry_exceptions": True}
        if self.memory_mb:
            opts["memory"] = self.memory_mb * 2**20
        task = ray.remote(_run_cell).options(**opts)
        runner_ref = ray.put(runner)
        refs = {task.remote(runner_ref, job): job for job in jobs}
        pending, failures = list(refs), []
        with _bar(len(jobs), progress, self.name) as bar:
            try:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    for ref in ready:
                        try:
                            dets = ray.get(ref)
                        except ray.exceptions.RayError as e:   # raised after retries, or the worker died each time
                            failures.append(CellFailure(refs[ref], _ray_error_text(e)))
                        else:
                            on_done(refs[ref], dets)
                        bar.update(1)
            except KeyboardInterrupt:   # finished cells are already saved; stop the rest
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        return failures


def _run_cell(runner: Callable[[CellJob], CellOutput], job: CellJob) -> CellOutput:
    return runner(job)


def _ray_error_text(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ExecutorError("the Ray executor needs Ray: `pip install qcal[ray]` (or use --executor serial).") from e
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to HOST:PORT, so an unreachable cluster fails in seconds with its address named."""
    host, _, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise ClusterUnreachableError(f"address {address!r}: Ray Client (ray://) is not supported; pass the head "
                                      "node's GCS address HOST:PORT (port 6379 by default).")
    if not host or not port.isdigit():
        raise ClusterUnreachableError(f"address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, the address "
                                      "`ray start --head` prints).")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterUnreachableError(f"cannot reach the Ray cluster at {address}: {e}. Start it there with "
                                      "`ray start --head --port PORT`, or check the host, port and firewall.") from e


def make_executor(name: str = "serial", *, address: str | None = None, threads: int = 2,
                  device: str = "cpu") -> Executor:
    """The executor `qcal bench --executor NAME [--address HOST:PORT]` uses. A cluster address is checked here,
    before any model is built, so an unreachable one fails in seconds."""
    if name == "serial":
        if address:
            raise ExecutorError(f"--address {address} needs --executor ray.")
        return SerialExecutor()
    if name == "ray":
        if address:
            check_reachable(address)
        return RayExecutor(address=address, cpus=float(threads), gpus=1.0 if device == "cuda" else 0.0)
    raise ExecutorError(f"executor {name!r}: choose one of {', '.join(EXECUTORS)}.")
