"""Pure quantization arithmetic, matching ONNX Runtime's quantizer (quant_utils.compute_scale_zp) and the ONNX
QuantizeLinear definition (round half to even, saturate)."""

from __future__ import annotations

import numpy as np

from qcal.errors import ConfigError


def qrange(bits: int = 8, *, signed: bool, reduce_range: bool = False, symmetric: bool = False) -> tuple[int, int]:
    """Integer range. int8 symmetric uses -127..127 (as ORT); reduce_range drops one bit (CPUs without VNNI)."""
    if bits < 2 or bits > 16:
        raise ConfigError(f"bits={bits}: choose 2..16.")
    b = bits - 1 if reduce_range else bits
    if signed:
        qmin, qmax = -(2 ** (b - 1)), 2 ** (b - 1) - 1
        if symmetric:
            qmin = -qmax
        return qmin, qmax
    return 0, 2**b - 1


def compute_qparams_per_channel(rmin: np.ndarray, rmax: np.ndarray, qmin: int, qmax: int, *,
                                symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (int64) per channel; the range always includes 0."""
    rmin = np.minimum(np.asarray(rmin, np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, np.float64), 0.0)
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale = (rmax - rmin) / float(qmax - qmin)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero tensor: any scale is exact; ORT uses 1.0
    if symmetric:
        zp = np.full(scale.shape, (qmax + qmin + 1) // 2 if qmin == 0 else 0, dtype=np.int64)
    else:
        zp = np.round(qmin - rmin / scale).astype(np.int64)
    return scale.astype(np.float32), np.clip(zp, qmin, qmax)


def compute_qparams(rmin: float, rmax: float, qmin: int, qmax: int, *, symmetric: bool) -> tuple[np.float32, int]:
    s, z = compute_qparams_per_channel(np.array([rmin]), np.array([rmax]), qmin, qmax, symmetric=symmetric)
    return s[0], int(z[0])


def weight_qparams(w: np.ndarray, *, axis: int = 0, bits: int = 8, symmetric: bool = True,
                   reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-channel parameters of a weight tensor along `axis` (output channels for Conv/Gemm)."""
    qmin, qmax = qrange(bits, signed=True, reduce_range=reduce_range, symmetric=symmetric)
    red = tuple(i for i in range(w.ndim) if i != axis)
    s, z = compute_qparams_per_channel(w.min(axis=red), w.max(axis=red), qmin, qmax, symmetric=symmetric)
    return s, z, qmin, qmax


def _bcast(p: np.ndarray | float, ndim: int, axis: int | None) -> np.ndarray:
    a = np.asarray(p)
    if axis is None or a.ndim == 0:
        return a
    shape = [1] * ndim
    shape[axis] = -1
    return a.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray | float, zp: np.ndarray | int, qmin: int, qmax: int,
             axis: int | None = None) -> np.ndarray:
    s, z = _bcast(scale, x.ndim, axis), _bcast(zp, x.ndim, axis)
    return np.clip(np.rint(x / s) + z, qmin, qmax).astype(np.int64)  # np.rint rounds half to even


def dequantize(q: np.ndarray, scale: np.ndarray | float, zp: np.ndarray | int, axis: int | None = None) -> np.ndarray:
    s, z = _bcast(scale, q.ndim, axis), _bcast(zp, q.ndim, axis)
    return ((q - z) * s).astype(np.float32)


def fake_quant(x: np.ndarray, scale: np.ndarray | float, zp: np.ndarray | int, qmin: int, qmax: int,
               axis: int | None = None) -> np.ndarray:
    return dequantize(quantize(x, scale, zp, qmin, qmax, axis), scale, zp, axis)


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((np.asarray(ref, np.float64) - approx) ** 2))
    signal = float(np.sum(np.asarray(ref, np.float64) ** 2))
    return 10.0 * float(np.log10(max(signal, 1e-30) / max(noise, 1e-30)))
