"""TensorRT engines from qcal's ONNX: build (explicit Q/DQ, or implicit FP32 + cache on TensorRT <= 10), the
equivalent trtexec line, and a runner with ONNX Runtime's `run(None, feeds)` interface.

`import tensorrt` happens only inside the functions that need it: this module imports without TensorRT, and
`trtexec_command` works everywhere (a user on a Jetson builds there). Follows TensorRT's Python API
(Builder -> network -> OnnxParser -> BuilderConfig -> build_serialized_network; Runtime ->
deserialize_cuda_engine -> execution context with named I/O tensors, execute_async_v3). Device buffers are torch
CUDA tensors (torch is already a qcal dependency; TensorRT only needs their addresses).
"""

from __future__ import annotations

import hashlib
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.errors import ExporterError


class TensorRTMissingError(ExporterError):
    """TensorRT (its Python package and libraries) is not installed here."""


@dataclass(frozen=True)
class EngineOptions:
    fp16: bool = False                 # allow FP16 kernels where INT8 is not used (layers left in float)
    workspace_mb: int = 1024           # builder workspace memory pool limit
    timing_cache: str | None = None    # a timing cache file, read if present and written after the build

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trt_version() -> str | None:
    """The installed TensorRT version, or None."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        return None
    return str(trt.__version__)


def implicit_supported(version: str | None) -> bool:
    """Implicit INT8 (calibration cache on an FP32 network) exists up to TensorRT 10 and was removed in 11."""
    return version is not None and int(version.split(".")[0]) <= 10


def engine_key(onnx_path: str | Path, options: EngineOptions, cache: str | Path | None = None) -> str:
    """12 hex of sha256(onnx, cache, options): what the engine was built from (recorded in <engine>.build.json)."""
    h = hashlib.sha256(Path(onnx_path).read_bytes())
    if cache is not None:
        h.update(Path(cache).read_bytes())
    h.update(repr(sorted(options.to_dict().items())).encode())
    return h.hexdigest()[:12]


def trtexec_command(onnx_path: str | Path, engine: str | Path, options: EngineOptions, *,
                    cache: str | Path | None = None) -> str:
    """The trtexec line that builds the same engine (TensorRT 8.5-10: --int8 with Q/DQ = explicit; with --calib
    = implicit from the cache; --memPoolSize in MiB)."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}", "--int8"]
    if cache is not None:
        args.append(f"--calib={cache}")
    if options.fp16:
        args.append("--fp16")
    args.append(f"--memPoolSize=workspace:{options.workspace_mb}")
    if options.timing_cache:
        args.append(f"--timingCacheFile={options.timing_cache}")
    return " ".join(shlex.quote(a) for a in args)


@dataclass
class BuildResult:
    engine: Path
    trt_version: str
    mode: str            # "explicit" (Q/DQ) or "implicit" (FP32 + calibration cache)
    seconds: float
    size_mb: float


def build_engine(onnx_path: str | Path, engine: str | Path, options: EngineOptions, *,
                 cache: str | Path | None = None) -> BuildResult:
    """Build and save a serialized engine. cache=None: explicit quantization from the Q/DQ ONNX."""
    trt = _import_trt()
    version = str(trt.__version__)
    if cache is not None and not implicit_supported(version):
        raise ExporterError(f"TensorRT {version} has no implicit INT8 calibration (removed in 11): build the "
                            "Q/DQ model (explicit quantization) instead of FP32 + cache.")
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(version.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExporterError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}. Run `qcal lint` on it.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.INT8)
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    tc_path = Path(options.timing_cache) if options.timing_cache else None
    if tc_path is not None:
        tcache = config.create_timing_cache(tc_path.read_bytes() if tc_path.is_file() else b"")
        config.set_timing_cache(tcache, ignore_mismatch=False)
    if cache is not None:
        config.int8_calibrator = _cache_calibrator(trt, Path(cache).read_bytes())
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExporterError(f"TensorRT could not build an engine from {onnx_path} (see the log above).")
    out = Path(engine)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(out)
    if tc_path is not None:
        tc_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return BuildResult(out, version, "implicit" if cache is not None else "explicit",
                       time.perf_counter() - t0, out.stat().st_size / 2**20)


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise TensorRTMissingError(f"TensorRT is not installed here ({e}); build on the target device with the "
                                   "trtexec line qcal prints, or `pip install tensorrt` where NVIDIA's wheels "
                                   "and a GPU exist.") from e
    return trt


def _cache_calibrator(trt: Any, cache_bytes: bytes) -> Any:
    """An IInt8EntropyCalibrator2 that serves only the cache (no batches: TensorRT reads the scales)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache_bytes

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return CacheCalibrator()


class TrtRunner:
    """Runs a serialized engine: `run(None, {input: array}) -> [outputs]`, like an ORT InferenceSession."""

    def __init__(self, engine: str | Path) -> None:
        trt = _import_trt()
        import torch

        if not torch.cuda.is_available():
            raise ExporterError("a TensorRT engine needs a CUDA GPU; none is visible to torch here.")
        self._trt, self._torch = trt, torch
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine).read_bytes())
        if self.engine is None:
            raise ExporterError(f"{engine} is not an engine this TensorRT ({trt.__version__}) can load.")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._stream = torch.cuda.Stream()

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch, trt = self._torch, self._trt
        keep = []
        for name in self.inputs:
            x = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
            keep.append(x)
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise ExporterError("TensorRT execution failed (execute_async_v3 returned False).")
        self._stream.synchronize()
        return [outs[n].cpu().numpy() for n in (output_names or self.outputs)]
