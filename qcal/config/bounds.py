"""The limits of configuration values, checked when a config is built (issue 23): a value that passes these checks
cannot crash the run later (a 120 GB allocation, 351 lines of Torch IR, a NaN scale).

Pure functions on values: no torch import, onnx imported only when an opset above the one every supported onnx
has is asked for. Each check raises ConfigError naming the key, the value, the allowed range and the fix. The
config dataclasses call `check_fields` first (types, finiteness, seeds; driven by their type hints), then their
own cross-field checks and `check_quant_limits`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import numbers
import sys
import types
import typing
from typing import Any

from qcal.errors import ConfigError

# --- the limits ------------------------------------------------------------------------------------------------
OPSET_MIN = 13            # QDQ with per-channel weights (QuantizeLinear axis=) needs opset 13
OPSET_ALWAYS_SUPPORTED = 17   # every supported onnx (>= 1.16) and torch (>= 2.2) exports it: no look-up below
TORCH_ONNX_MAX_OPSET = 20     # the highest opset torch.onnx.export(dynamo=False), which qcal uses, writes
                              # (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, private, so not read)
ONNX_RELEASE_OPSET = ((1, 16), 21)   # onnx 1.16 (the oldest qcal supports) knows opset 21; later ones more
IMGSZ_MIN = 32            # one stride-32 cell: the smallest input YOLO's heads accept
IMGSZ_MAX = 4096          # memory: activations grow with imgsz**2; at 4096 a YOLOv8s calibration batch already
                          # takes tens of GB, and 100000 asks for ~120 GB in one allocation
IMGSZ_STRIDE = 32         # YOLO's largest stride: other sizes are padded or fail in the heads
CALIB_SIZE_MIN = 1
CALIB_SIZE_MAX = 10_000   # calibration statistics converge in a few hundred samples; beyond this only time grows
SAMPLES_MAX = CALIB_SIZE_MAX   # probe / sensitivity sample counts are drawn from the calibration set
SEED_MAX = 2**32 - 1      # numpy's and torch's seeds are unsigned 32-bit
PASSES_MAX = 16           # torch passes listed in one config (each is a full pass over the model)
BLEND_ALPHAS_MAX = 101    # each alpha is one probe run (0, 0.01, ..., 1 is the finest useful grid)
BLEND_GROUPS_MAX = 1024   # more groups than quantized activations in any model qcal handles
ITERS_MAX = 10**7         # per-layer optimisation steps (AdaQuant, MetaAug); a typo beyond this runs for days
THREADS_MIN = 1


def _fail(key: str, value: Any, allowed: str, fix: str) -> ConfigError:
    return ConfigError(f"{key}={value!r}: {allowed}; {fix}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --- opset -----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def max_opset() -> tuple[int, str]:
    """The highest opset qcal can export: min(torch.onnx export's, the installed onnx's); and why (for messages).
    The onnx release is read from its metadata (milliseconds); onnx.defs (a second to import) is asked only for
    a release older than ONNX_RELEASE_OPSET's, which knows more opsets than torch exports."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("onnx").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        major, minor = 0, 0
    if (major, minor) >= ONNX_RELEASE_OPSET[0]:
        onnx_max = ONNX_RELEASE_OPSET[1]   # at least this many
    else:
        try:
            from onnx.defs import onnx_opset_version

            onnx_max = int(onnx_opset_version())
        except Exception:   # onnx missing or broken: the export fails on its own; keep torch's limit
            onnx_max = TORCH_ONNX_MAX_OPSET
    if onnx_max < TORCH_ONNX_MAX_OPSET:
        return onnx_max, f"{onnx_max}: the highest opset the installed onnx supports"
    return TORCH_ONNX_MAX_OPSET, f"{TORCH_ONNX_MAX_OPSET}: the highest opset torch.onnx export writes"


def check_opset(opset: Any, key: str = "opset") -> None:
    if not _is_int(opset):
        raise _fail(key, opset, "must be an integer opset version", "give e.g. opset = 17 (the default)")
    if OPSET_MIN <= opset <= OPSET_ALWAYS_SUPPORTED:
        return
    hi, why = max_opset()
    if not OPSET_MIN <= opset <= hi:
        raise _fail(key, opset, f"must be in {OPSET_MIN}..{hi} ({OPSET_MIN}: QDQ with per-channel weights needs it; "
                    f"{why})", "give e.g. opset = 17 (the default)")


# --- sizes -----------------------------------------------------------------------------------------------------
def check_imgsz(imgsz: Any, key: str = "imgsz") -> None:
    allowed = (f"must be a multiple of {IMGSZ_STRIDE} (YOLO's largest stride) in {IMGSZ_MIN}..{IMGSZ_MAX} "
               f"(memory: activations grow with imgsz squared, {IMGSZ_MAX} already needs tens of GB)")
    if not _is_int(imgsz) or not IMGSZ_MIN <= imgsz <= IMGSZ_MAX or imgsz % IMGSZ_STRIDE:
        near = min(max(round(imgsz / IMGSZ_STRIDE) * IMGSZ_STRIDE, IMGSZ_MIN), IMGSZ_MAX) if _is_real(imgsz) \
            and math.isfinite(imgsz) else 640
        raise _fail(key, imgsz, allowed, f"give e.g. imgsz = {near} (640 is the Ultralytics default)")


def check_count(value: Any, key: str, lo: int, hi: int, fix: str) -> None:
    """An integer in lo..hi (e.g. calib_size, sample counts, iterations)."""
    if not _is_int(value) or not lo <= value <= hi:
        raise _fail(key, value, f"must be an integer in {lo}..{hi}", fix)


def check_calib_size(n: Any, key: str = "calib_size") -> None:
    check_count(n, key, CALIB_SIZE_MIN, CALIB_SIZE_MAX, f"give the number of calibration samples to use, e.g. "
                f"{key} = 64 (the default, CLI --calib-size 64)")


def check_seed(seed: Any, key: str = "seed") -> None:
    check_count(seed, key, 0, SEED_MAX, f"give a non-negative integer below 2**32, e.g. {key} = 0")


def check_bench_counts(*, threads: Any, latency_runs: Any, bootstrap: Any) -> None:
    """`qcal bench`'s counts (ConfigError naming the flag): light enough for the CLI to run before torch loads."""
    for flag, v, lo in (("--threads", threads, 1), ("--latency-runs", latency_runs, 0), ("--bootstrap", bootstrap, 0)):
        if not _is_int(v) or v < lo:
            raise ConfigError(f"{flag} {v!r}: must be >= {lo}, an integer"
                              + (" (ONNX Runtime threads per session)." if lo else " (0 skips it)."))


def check_threads(threads: Any, key: str = "threads") -> None:
    if not _is_int(threads) or threads < THREADS_MIN:
        raise _fail(key, threads, f"must be an integer >= {THREADS_MIN}", f"give e.g. {key} = 2")


def check_passes(passes: tuple[Any, ...], allowed: tuple[str, ...], key: str = "passes") -> None:
    bad = [p for p in passes if not isinstance(p, str) or p not in allowed]
    if bad:
        raise _fail(key, list(passes), f"unknown pass(es) {bad}; the passes are {list(allowed)}",
                    "list only those, in the order they should run")
    if len(passes) > PASSES_MAX:
        raise _fail(key, list(passes), f"{len(passes)} passes, at most {PASSES_MAX}", "list each pass you need once")


def check_quant_limits(cfg: Any) -> None:
    """QuantConfig's single-value limits (after check_fields has checked the types)."""
    check_calib_size(cfg.calib_size)
    check_imgsz(cfg.imgsz)
    check_opset(cfg.opset)
    if len(cfg.blend_alphas) > BLEND_ALPHAS_MAX:
        raise _fail("blend_alphas", f"<{len(cfg.blend_alphas)} values>", f"at most {BLEND_ALPHAS_MAX} values "
                    "(each is one probe run)", "give a coarser grid, e.g. [0, 0.25, 0.5, 0.75, 1]")
    if not 1 <= cfg.blend_groups <= BLEND_GROUPS_MAX:
        raise _fail("blend_groups", cfg.blend_groups, f"must be >= 1 (1: one alpha for the whole model) and <= "
                    f"{BLEND_GROUPS_MAX}", "give e.g. blend_groups = 1")


# --- types, driven by the dataclass's hints ---------------------------------------------------------------------
_HINTS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """(field name, resolved type hint) of a config dataclass, resolved once per class."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))
    return _HINTS[cls]


def _check_value(hint: Any, value: Any, key: str) -> Any:
    """`value` checked against `hint`; returned as the plain Python type (numpy's int64/float32 scalars become
    int/float, so the config hashes and writes to TOML)."""
    if hint is bool:
        if not isinstance(value, bool | np_bool()):
            raise _fail(key, value, "must be a boolean", f"write {key} = true or false (not 0/1 or a string)")
        return bool(value)
    if hint is int:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool | np_bool()):
            raise _fail(key, value, "must be an integer", f"write a whole number for {key}")
        return value if type(value) is int else int(value)
    if hint is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool | np_bool()):
            raise _fail(key, value, "must be a number", f"write a number for {key}")
        if not math.isfinite(value):
            raise _fail(key, value, "must be finite (nan and inf are not values)", f"write a finite number for {key}")
        return value if type(value) in (int, float) else float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(key, value, "must be a string", f"quote the value of {key}")
        return value
    if typing.get_origin(hint) is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, tuple):
            raise _fail(key, value, "must be a list", f"write {key} as a list, e.g. {key} = []")
        out = tuple(_check_value(args[min(i, len(args) - 1)] if args else Any, v, f"{key}[{i}]")
                    for i, v in enumerate(value))
        return value if all(a is b for a, b in zip(out, value, strict=True)) else out
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return value
        inner = [a for a in members if a is not type(None)]
        return _check_value(inner[0], value, key) if len(inner) == 1 else value
    if isinstance(hint, type) and issubclass(hint, enum.Enum) and not isinstance(value, hint):
        raise _fail(key, value, f"choose one of {[m.value for m in hint]}", f"set {key} to one of them")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and not isinstance(value, hint):
        raise _fail(key, value, f"must be a {hint.__name__}", f"give qcal.{hint.__name__}(...) (a [{key}] "
                    "table in a config file)")
    return value


def np_bool() -> type:
    """numpy's bool scalar type when numpy is imported (it is not a bool), else bool."""
    np = sys.modules.get("numpy")
    return np.bool_ if np is not None else bool  # type: ignore[no-any-return]


def check_fields(obj: Any, section: str) -> None:
    """Every field of the config dataclass `obj` against its type hint: bools are bools (not 0/1), ints are
    ints (not bools), floats are finite numbers, tuples hold their element type, enums are members; fields
    named seed are in 0..2**32-1. numpy scalars are stored as the Python type. Nested config dataclasses check
    themselves. `section`: the TOML table ("" for the top level, e.g. "keep_float"), so messages name the key
    as the config file spells it."""
    prefix = f"{section}." if section else ""
    for name, hint in _hints(type(obj)):
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            continue
        plain = _check_value(hint, value, prefix + name)
        if plain is not value:
            object.__setattr__(obj, name, plain)
        if name == "seed":
            check_seed(plain, prefix + name)


def as_tuple(obj: Any, *names: str) -> None:
    """Lists given to tuple fields of a frozen dataclass (the Python API's spelling) become tuples."""
    for name in names:
        if isinstance(getattr(obj, name), list):
            object.__setattr__(obj, name, tuple(getattr(obj, name)))


def as_enum(obj: Any, section: str, **kinds: type[enum.Enum]) -> None:
    """Plain strings given to enum fields (target="tensorrt") become the members; others are a ConfigError."""
    prefix = f"{section}." if section else ""
    for name, kind in kinds.items():
        value = getattr(obj, name)
        if isinstance(value, kind):
            continue
        try:
            object.__setattr__(obj, name, kind(value))
        except ValueError:
            raise _fail(prefix + name, value, f"choose one of {[m.value for m in kind]}",
                        f"set {prefix + name} to one of them") from None
